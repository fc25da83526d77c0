"""Reference outputs: what a run's samples are compared with (human continuations, reference images).

A references file is JSONL, one reference per line: ``text`` (a reference text) or ``image`` (a path
relative to the file), and ``prompt_id`` where the reference belongs to one prompt. Lines without a
prompt id form one corpus for the whole run. A file holds texts or images, not both. Checked when it is
read, one line per problem: an empty file, a line that is not JSON or has neither text nor image, a
prompt id that is not one of the run's prompts, an image that cannot be read.

Metrics that compare a setting's samples with the references (``mauve``, ``clip_fid``, ...) pool the
references of the setting's prompts and the corpus; metrics that can be computed on the references
themselves (``zipf``, ``repetition``, ``self_bleu``, ...) give the reference value a report draws as the
human row (see :func:`evalkit.scoring.references.reference_values`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evalkit.errors import ConfigError, shown
from evalkit.prompts import read_jsonl_rows, unreadable_image

MAX_REFERENCES = 1_000_000


class ReferenceRow(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_id: str | int | None = None
    text: str | None = None
    image: str | None = Field(None, min_length=1)

    @field_validator("prompt_id", mode="before")
    @classmethod
    def _no_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError(f"a string or a whole number is needed, not true/false, got {shown(v)}")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> ReferenceRow:
        if (self.text is None) == (self.image is None):
            raise ValueError("a reference line needs exactly one of 'text' or 'image'")
        if self.text is not None and not self.text.strip():
            raise ValueError("the reference text is empty")
        return self


@dataclass(frozen=True, eq=False)
class ReferenceSet:
    """A run's references: per prompt (by prompt id) and a corpus for the whole run; texts, or image paths."""

    source: str  # the file they were read from
    sha256: str  # of that file: two runs compared with other references are not comparable
    images: bool  # image paths (True) or texts
    by_prompt: dict[str, tuple[str, ...]]
    corpus: tuple[str, ...]

    @property
    def what(self) -> str:
        return "images" if self.images else "texts"

    def keyed(self, prompt_ids: Iterable[str], corpus: bool = True) -> list[tuple[str, str]]:
        """(prompt id, reference) of these prompts' references (each prompt once, in the order given), then of
        the corpus (prompt id ""), unless ``corpus`` is False."""
        out = [(pid, r) for pid in dict.fromkeys(prompt_ids) for r in self.by_prompt.get(pid, ())]
        return out + [("", r) for r in self.corpus] if corpus else out

    def pooled(self, prompt_ids: Iterable[str]) -> list[str]:
        """The references of these prompts (each prompt once, in the order given) and the corpus."""
        return [r for _, r in self.keyed(prompt_ids)]

    def info(self) -> dict[str, Any]:
        """What a manifest records of them."""
        return {"file": self.source, "sha256": self.sha256, "kind": self.what,
                "per_prompt": sum(len(v) for v in self.by_prompt.values()), "prompts": len(self.by_prompt),
                "corpus": len(self.corpus)}


def load_references(path: Path, prompt_ids: Iterable[str] | None, *, images: bool, field: str = "references",
                    config_source: str | None = None) -> ReferenceSet:
    """The references in ``path`` (JSONL), checked: ``prompt_ids`` are the run's prompts (None: any id is
    taken); ``images``: whether the run compares images (else texts). Raises ConfigError naming the line."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a references file (JSONL)", source=config_source, path=field)
    if not path.exists():  # a device or a FIFO is said so when the file is read
        raise ConfigError(f"references file not found: {path}", source=config_source, path=field)
    source = str(path)
    known = set(prompt_ids) if prompt_ids is not None else None
    by_prompt: dict[str, list[str]] = {}
    corpus: list[str] = []
    first_kind: tuple[str, int] | None = None
    for number, row in read_jsonl_rows(path, "references file", ReferenceRow):
        where = f"line {number}"
        kind = "image" if row.image is not None else "text"
        if first_kind is None:
            first_kind = (kind, number)
        elif kind != first_kind[0]:
            raise ConfigError(f"a reference {kind}, while line {first_kind[1]} has a reference {first_kind[0]}: a "
                              "references file holds texts or images, not both", source=source, path=where)
        if (kind == "image") != images:
            want, got = ("images", "texts") if images else ("texts", "images")
            raise ConfigError(f"the references are {got}, and this run's samples are compared with {want}",
                              source=source, path=where)
        pid = str(row.prompt_id) if row.prompt_id is not None else None
        if pid is not None and known is not None and pid not in known:
            some = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
            raise ConfigError(f"prompt_id {shown(pid)} is not a prompt of the run (its prompts: {some})",
                              source=source, path=where)
        if row.image is not None:
            image = (path.parent / row.image).expanduser()
            if not image.is_file():
                raise ConfigError(f"image not found: {image}", source=source, path=where)
            why = unreadable_image(image)
            if why:
                raise ConfigError(f"image {image} cannot be read: {why}", source=source, path=where)
            value = str(image.resolve())
        else:
            value = row.text
        (by_prompt.setdefault(pid, []) if pid is not None else corpus).append(value)
        if len(corpus) + sum(map(len, by_prompt.values())) > MAX_REFERENCES:
            raise ConfigError(f"more than {MAX_REFERENCES} references: use a sample of them", source=source,
                              path=where)
    if first_kind is None:
        raise ConfigError("the references file has no references", source=source)
    frozen = {k: tuple(v) for k, v in by_prompt.items()}
    return ReferenceSet(source=str(path.resolve()), sha256=content_hash(frozen, tuple(corpus), images),
                        images=images, by_prompt=frozen, corpus=tuple(corpus))


def content_hash(by_prompt: dict[str, tuple[str, ...]], corpus: tuple[str, ...], images: bool) -> str:
    """sha256 of what the references are (texts, or the images' bytes), not of the file's layout: a byte
    order mark, blank lines, another order of the lines or other image file names give the same hash."""
    def digests(items: tuple[str, ...]) -> list[bytes]:
        return sorted(hashlib.sha256(Path(x).read_bytes() if images else x.encode("utf-8")).digest() for x in items)

    digest = hashlib.sha256(b"images" if images else b"texts")
    for pid in sorted(by_prompt):
        digest.update(b"P" + hashlib.sha256(pid.encode("utf-8")).digest())
        for d in digests(by_prompt[pid]):
            digest.update(d)
    digest.update(b"C")
    for d in digests(corpus):
        digest.update(d)
    return digest.hexdigest()
