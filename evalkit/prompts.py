"""Prompts: inline in the config or read from a JSONL file, each with a unique id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from evalkit.config import PromptItem, SweepConfig
from evalkit.errors import ConfigError, first_error


@dataclass(frozen=True)
class Prompt:
    """One prompt of the sweep: plain text, or chat messages (``[{"role", "content"}, ...]``)."""

    id: str
    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None

    @property
    def display(self) -> str:
        """The prompt as a user reads it (messages joined as ``role: content``)."""
        if self.text is not None:
            return self.text
        return "\n".join(f"{role}: {content}" for role, content in self.messages or ())

    def chat(self, system_prompt: str | None) -> list[dict[str, str]]:
        msgs = [{"role": r, "content": c} for r, c in self.messages] if self.messages else [{"role": "user", "content": self.text or ""}]
        if system_prompt is not None and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system_prompt})
        return msgs


def load_prompts(config: SweepConfig) -> list[Prompt]:
    """The config's prompts, validated, ids unique. Raises ConfigError naming the file and line."""
    pc = config.prompts
    if pc.items is not None:
        items = [(f"prompts.items[{i}]", item) for i, item in enumerate(pc.items)]
        source = config.source
    else:
        path = config.resolve_path(pc.file or "")
        items = list(read_prompt_jsonl(path))
        source = str(path)
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for index, (where, item) in enumerate(items):
        pid = item.id if item.id is not None else f"p{index}"
        if not pid.strip():
            raise ConfigError("prompt id is empty", source=source, path=where)
        if pid in seen:
            raise ConfigError(f"duplicate prompt id {pid!r} (also at {seen[pid]})", source=source, path=where)
        seen[pid] = where
        messages = tuple((m.role, m.content) for m in item.messages) if item.messages else None
        prompts.append(Prompt(id=pid, text=item.prompt, messages=messages))
    if not prompts:
        raise ConfigError("the prompt file has no prompts", source=source)
    return prompts


def read_prompt_jsonl(path: Path):
    """Yield ``("line N", PromptItem)`` for each non-blank line of a JSONL prompt file."""
    source = str(path)
    for number, text in read_jsonl_lines(path, "prompt file"):
        where = f"line {number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"invalid JSON: {e.msg} at column {e.colno}", source=source, path=where) from None
        if not isinstance(obj, dict):
            raise ConfigError(f"expected a JSON object, got {type(obj).__name__}", source=source, path=where)
        if "id" in obj and not isinstance(obj["id"], (str, int)):
            raise ConfigError(f"'id' must be a string, got {obj['id']!r}", source=source, path=where)
        if isinstance(obj.get("id"), int):
            obj["id"] = str(obj["id"])
        try:
            yield where, PromptItem.model_validate(obj)
        except ValidationError as e:
            field, msg, _ = first_error(e)
            raise ConfigError(f"{field + ': ' if field else ''}{msg}", source=source, path=where) from None


def read_jsonl_lines(path: Path, what: str):
    """Yield ``(line number, text)`` for each non-blank line of a UTF-8 file. Raises ConfigError naming the line."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", source=source) from None
    except IsADirectoryError:
        raise ConfigError(f"{what} is a directory", source=source) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror}", source=source) from None
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8 (byte {e.start} of the line)", source=source, path=f"line {number}") from None
        if text.strip():
            yield number, text
