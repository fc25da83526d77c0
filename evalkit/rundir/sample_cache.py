"""A cache of generated samples, so that no sample is paid for twice.

Keyed by everything that decides a sample: the model's hash (or hub revision, or served endpoint), the
dtype, device and CPU threads it runs with, the prompt
as the model sees it (token ids, and the image's sha256 for vision-language prompts), the
setting, the sample's seed and index, max_new_tokens, stop strings, end-of-sequence tokens
and the engine version. Stored in SQLite (WAL) at ``$EVALKIT_SAMPLE_CACHE``, default
``<evalkit cache>/samples.sqlite``. A model whose weights cannot be identified (no hash, no
revision) is not cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from evalkit.generation.base import SampleRecord, WorkUnit
from evalkit.generation.gguf import cache_dir
from evalkit.rundir.files import check_database

ENGINE_VERSION = "8"  # bump when the engine's output for the same inputs changes (2: the key holds dtype,
# device and CPU threads; 3: each prompt prefilled alone and decode steps of fixed shape, for batch invariance;
# 4: a dense row is drawn from its exponentials, not its softmax, and candidates' tied logits ordered otherwise;
# 5: weights under 2^-125 are 0, and top-p's whole-row probabilities come from the row's normaliser;
# 6: a decode step's attention is evalkit's own, not torch's SDPA kernel; 7: top-p rows whose cut lies within the
# rounding of torch's softmax normaliser (cut_margin) leave the candidate path for the dense one, and rows a chain
# cut densely draw from their kept tokens alone; 8: a weight between exp(-87) and 2^-125 is 0 whatever the row's
# chunk, where it could be kept in a chunk that did not clamp)


def cache_path() -> Path:
    return Path(os.environ.get("EVALKIT_SAMPLE_CACHE") or cache_dir() / "samples.sqlite").expanduser()


def model_identity(info) -> str | None:
    """What decides every sample besides its unit: the weights (or the served endpoint) and how they run:
    dtype, device and, on a CPU, torch's thread count; where the engine is not evalkit's (vLLM: random streams
    of its own), the engine, its version and what it was started and asked with (its arguments, the logprobs the
    metrics needed: a sample cached without them must not serve a run that reads them). None (no caching) when
    the weights are unknown."""
    if not info.weights_id:
        return None
    engine = [info.engine, info.engine_info] if info.engine else []
    return json.dumps([info.weights_id, info.dtype, info.device, info.threads, *engine], sort_keys=True)


def unit_key(model_id: str, unit: WorkUnit, decides: list) -> str:
    """The unit's key: the weights, the prompt's tokens, the setting, seed and index, and ``decides``: what
    else decides the output (text: max_new_tokens, stop strings, end tokens; images: text, size, batch)."""
    key = [ENGINE_VERSION, model_id, list(unit.prompt.token_ids), unit.setting.key_params(), unit.seed,
           unit.sample_index, *decides]
    if unit.prompt.prompt.image_sha256:  # the image's pixels are not in the token ids
        key.append(unit.prompt.prompt.image_sha256)
    payload = json.dumps(key, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


TABLES = {"samples": ("key", "value")}


class SampleCache:
    """The cache of samples. Its file is checked before a run starts (:func:`check_database`); one that turns out
    damaged beyond its header only when it is read is set aside for the run (``problem`` says why, for a note):
    a sample cache saves time, and a run never fails for it."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_path()
        check_database(self.path, field="sample cache", tables=TABLES)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.problem: str | None = None
        self.db: sqlite3.Connection | None = sqlite3.connect(self.path, timeout=30)
        with self._guarded():
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.commit()

    @contextmanager
    def _guarded(self):
        try:
            yield
        except (sqlite3.DatabaseError, ValueError) as e:  # a damaged file, or a value that is not JSON
            self.problem = (f"the sample cache {self.path} cannot be read ({e}): this run makes its samples without "
                            "it; move the file away to start a new cache")
            self.close()

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        """The cached samples of ``keys``; none from a cache set aside (before, or while reading them)."""
        out: dict[str, dict] = {}
        if self.db is None:
            return out
        with self._guarded():
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                rows = self.db.execute(f"SELECT key, value FROM samples WHERE key IN ({','.join('?' * len(chunk))})",
                                       chunk).fetchall()
                out.update({k: json.loads(v) for k, v in rows})
        return out if self.db is not None else {}

    def put_many(self, items: list[tuple[str, dict]]) -> None:
        if items and self.db:
            with self._guarded():
                self.db.executemany("INSERT OR REPLACE INTO samples (key, value) VALUES (?, ?)",
                                    [(k, json.dumps(v)) for k, v in items])
                self.db.commit()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class CachedGeneration:
    """Any generation behind the sample cache, as a wrapper (it knows nothing of the backend or executor):
    :meth:`split` answers the units it holds and leaves the others to make; :meth:`through` passes the records
    made for those on, each in its cacheable form, and keeps them (``BATCH`` at a time: images are large).
    ``key`` is a unit's cache key, ``keep`` a record's cacheable form; with no cache (None) it only passes on."""

    BATCH = 64  # fresh samples written to the cache together

    def __init__(self, cache: SampleCache | None, key: Callable[[WorkUnit], str],
                 keep: Callable[[SampleRecord], dict]):
        self.cache, self.key, self.keep = cache, key, keep
        self._fresh: list[tuple[str, dict]] = []
        self._said = False

    def split(self, units: list[WorkUnit]) -> tuple[list[tuple[WorkUnit, dict]], list[WorkUnit]]:
        """(the units the cache holds, each with its cached form; the units still to make), in ``units``' order."""
        if self.cache is None:
            return [], list(units)
        keys = {u.key: self.key(u) for u in units}
        hits = self.cache.get_many(list(keys.values()))
        return ([(u, hits[keys[u.key]]) for u in units if keys[u.key] in hits],
                [u for u in units if keys[u.key] not in hits])

    def through(self, records: Iterator[SampleRecord]) -> Iterator[tuple[WorkUnit, dict]]:
        """Each record as (its unit, its cacheable form), kept in the cache on the way."""
        for record in records:
            result = self.keep(record)
            if self.cache is not None:
                self._fresh.append((self.key(record.unit), result))
                if len(self._fresh) >= self.BATCH:
                    self._flush()
            yield record.unit, result

    def _flush(self) -> None:
        self.cache.put_many(self._fresh)
        self._fresh.clear()

    def note(self) -> str | None:
        """Once: why the cache was set aside (damaged when it was opened, read or written), for the user."""
        if self.cache is None or not self.cache.problem or self._said:
            return None
        self._said = True
        return self.cache.problem

    def close(self) -> None:
        """Keep what is left and close the cache."""
        if self.cache is not None:
            self._flush()
            self.cache.close()
