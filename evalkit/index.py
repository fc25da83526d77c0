"""The run index: an embedded SQLite database that records every run, for listing, comparing
against a baseline and following a sweep's history.

One file (default ``<output_dir>/index.sqlite``; ``$EVALKIT_INDEX`` or the config's ``index``
point every job at a shared one). Tables: ``runs`` (id, name, config hash, model id and hash,
git commit, times, status, the comparison protocol), ``aggregates`` (per setting and metric:
mean, CI, std, counts) and ``scores`` (the per-prompt group values that paired comparisons
need, so the index alone can compare and chart runs whose directories are gone).

Concurrent writers are safe: WAL journal, a busy timeout, and each run written in one
``BEGIN IMMEDIATE`` transaction that is retried while another writer holds the lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pandas as pd

from evalkit.errors import EvalkitError, shown
from evalkit.rundir.files import check_database
from evalkit.rundir.manifest import utc_now
from evalkit.rundir.protocol import config_hash, protocol
from evalkit.rundir.reader import Run

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, name TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
    config_hash TEXT, model_id TEXT, model_hash TEXT, git_commit TEXT, git_dirty INTEGER,
    started_at TEXT NOT NULL, ended_at TEXT, seed INTEGER, n_samples INTEGER, error TEXT,
    protocol TEXT NOT NULL, metric_info TEXT NOT NULL, recorded_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_name ON runs (name, started_at);
CREATE TABLE IF NOT EXISTS aggregates (
    run_id TEXT NOT NULL, setting_id TEXT NOT NULL, params TEXT NOT NULL,
    metric TEXT NOT NULL, mean REAL, ci_low REAL, ci_high REAL, std REAL, n_prompts INTEGER, n_undefined INTEGER,
    PRIMARY KEY (run_id, setting_id, metric));
CREATE TABLE IF NOT EXISTS scores (
    run_id TEXT NOT NULL, setting_id TEXT NOT NULL, prompt_id TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, setting_id, prompt_id, metric));
"""
TABLES = {"runs": ("run_id", "name", "path", "kind", "status", "protocol", "metric_info"),
          "aggregates": ("run_id", "setting_id", "metric", "mean"),
          "scores": ("run_id", "setting_id", "metric", "value")}  # what a database must have to be taken as an index
RETRY_SECONDS = 120  # how long a writer waits for others before giving up
RUN_COLUMNS = ["run_id", "name", "status", "started_at", "ended_at", "model_id", "model_hash", "git_commit",
               "git_dirty", "config_hash", "n_samples", "seed", "path"]


class NoSuchRun(EvalkitError):
    """A run id the index does not hold."""


def index_path(index: str | Path | None = None, output_dir: str | Path = "runs") -> Path:
    """``index`` (a config's or a command's), else ``$EVALKIT_INDEX``, else ``index.sqlite`` next to the runs."""
    if index:
        return Path(index).expanduser()
    if os.environ.get("EVALKIT_INDEX"):
        return Path(os.environ["EVALKIT_INDEX"]).expanduser()
    return Path(output_dir) / "index.sqlite"


class RunIndex:
    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and (not self.path.exists() or (self.path.is_file() and self.path.stat().st_size == 0)):
            raise EvalkitError(f"--index: no run index at {self.path} (runs are recorded there when they end; "
                               f"set EVALKIT_INDEX or --index to use another)")
        check_database(self.path, field="index" if create else "--index", tables=TABLES)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            self.db.execute("PRAGMA busy_timeout = 30000")
            self._retry(lambda: self.db.execute("PRAGMA journal_mode=WAL"))
            self._write(self._create)
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise EvalkitError(f"index: {self.path} cannot be used as a run index ({e})") from None

    @staticmethod
    def _create(db) -> None:
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def _retry(self, fn):
        deadline, delay = time.monotonic() + RETRY_SECONDS, 0.02
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _write(self, fn) -> None:
        def attempt():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                fn(self.db)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

        self._retry(attempt)

    def record(self, run: Run) -> None:
        """Add or replace ``run`` (its manifest, and its aggregates and scores when it has them)."""
        m = run.manifest
        summary = run.summary if (run.path / "summary.csv").is_file() else None
        scores = run.scores if (run.path / "scores.parquet").is_file() else None
        row = (m.run_id, m.name, str(run.path.resolve()), m.kind, m.status, config_hash(run), str(m.model.get("id")),
               m.model.get("sha256") or m.model.get("revision"), m.git.commit if m.git else None,
               int(m.git.dirty) if m.git else None, m.started_at, m.ended_at, m.seed, m.n_samples, m.error,
               json.dumps(protocol(run), ensure_ascii=False), json.dumps(m.metric_info), utc_now())

        def write(db):
            for table in ("runs", "aggregates", "scores"):
                db.execute(f"DELETE FROM {table} WHERE run_id = ?", (m.run_id,))
            db.execute(f"INSERT INTO runs VALUES ({','.join('?' * len(row))})", row)
            if summary is not None:
                params = {s.id: json.dumps(s.params) for s in m.settings}  # the setting's parameters
                db.executemany("INSERT INTO aggregates VALUES (?,?,?,?,?,?,?,?,?,?)", [
                    (m.run_id, r.setting_id, params.get(r.setting_id, "{}"), r.metric, _f(r.mean), _f(r.ci_low),
                     _f(r.ci_high), _f(r.std), int(r.n_prompts), int(r.n_undefined)) for r in summary.itertuples()])
            if scores is not None:
                db.executemany("INSERT INTO scores VALUES (?,?,?,?,?)", [
                    (m.run_id, r.setting_id, str(r.prompt_id), r.metric, _f(r.value)) for r in scores.itertuples()])

        self._write(write)

    # ------------------------------------------------------------------ reading
    def runs(self, name: str | None = None, status: str | None = None) -> pd.DataFrame:
        """Runs, oldest first."""
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        return pd.read_sql_query(sql + " ORDER BY started_at, run_id", self.db, params=args)

    def get(self, run_id: str) -> dict:
        """The run's row, its ``protocol`` and ``metric_info`` read back as the mappings they were written as."""
        cur = self.db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise NoSuchRun(f"no run {run_id!r} in the run index {self.path}")
        row = dict(zip([c[0] for c in cur.description], row))
        for column in ("protocol", "metric_info"):
            try:
                value = json.loads(row[column])
            except (TypeError, ValueError) as e:
                raise self._damaged(run_id, column, f"not JSON: {e}") from None
            if not isinstance(value, dict):
                raise self._damaged(run_id, column, f"JSON {type(value).__name__}, not an object")
            if column == "metric_info" and not all(isinstance(v, dict) for v in value.values()):
                raise self._damaged(run_id, column, "a metric's entry is not an object")
            row[column] = value
        return row

    def latest(self, name: str, *, exclude: str | None = None) -> str | None:
        """The id of the latest complete run named ``name`` (other than ``exclude``), or None."""
        row = self.db.execute("SELECT run_id FROM runs WHERE name = ? AND status = 'complete' AND run_id != ? "
                              "ORDER BY started_at DESC, run_id DESC LIMIT 1", (name, exclude or "")).fetchone()
        return row[0] if row else None

    def scores(self, run_id: str) -> pd.DataFrame:
        return self._numbers(pd.read_sql_query("SELECT run_id, setting_id, prompt_id, metric, value FROM scores "
                                               "WHERE run_id = ?", self.db, params=[run_id]), ("value",),
                             "scores").drop(columns="run_id")

    def aggregates(self, run_ids: list[str]) -> pd.DataFrame:
        marks = ",".join("?" * len(run_ids))
        return self._numbers(pd.read_sql_query(f"SELECT * FROM aggregates WHERE run_id IN ({marks})", self.db,
                                               params=run_ids), ("mean", "ci_low", "ci_high", "std"), "aggregates")

    def _numbers(self, frame: pd.DataFrame, columns: tuple[str, ...], table: str) -> pd.DataFrame:
        """``frame`` with ``columns`` as floats; a value that is no number (an edited or damaged index) refused,
        naming its run."""
        for column in columns:
            numbers = pd.to_numeric(frame[column], errors="coerce")
            bad = numbers.isna() & frame[column].notna()
            if bool(bad.any()):
                first = frame[bad].iloc[0]
                raise self._damaged(first["run_id"], f"{table} ({column})", f"{shown(first[column])} is no number",
                                    plural=True)
            frame[column] = numbers.astype(float)
        return frame

    def _damaged(self, run_id: str, what: str, detail: str, plural: bool = False) -> EvalkitError:
        return EvalkitError(f"index: {self.path}: the {what} of run {shown(run_id)} {'are' if plural else 'is'} "
                            f"damaged: {detail}")


def _f(x) -> float | None:
    x = float(x)
    return None if x != x else x
