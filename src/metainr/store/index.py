"""The index of a field store: one SQLite file (stdlib ``sqlite3``, WAL mode, a busy timeout), so
several processes (the ranks of a ``torchrun``) add signals to it concurrently.

Tables:

- ``meta (key, value)``: what every signal of the store shares, values as JSON: ``format`` and
  ``version``, ``field`` (the field config), ``task`` (the task spec), ``learner`` (its spec),
  ``init`` (the checkpoint's path and sha256), ``rule`` and ``steps`` (how each signal was fitted),
  ``template`` and ``decode`` (how a signal is decoded without its data), and ``split:NAME`` (the
  source and signal count each encoded split came from).
- ``shards (name, bytes, sha256, count)``: one row per shard file (``shards/NAME.safetensors``).
- ``signals (id, source, task, learner, steps, metrics, bytes, shard)``: one row per stored signal;
  ``metrics`` is a JSON object name -> number (``Infinity`` where a fit was exact), ``bytes`` the
  size of its params, ``shard`` the shard that holds them.

A shard's row and its signals' rows are committed in ONE transaction, after the shard file was
written (see :mod:`metainr.store.shards`): a row never names a shard that is not on disk.
Anything that is not such an index (another file, a damaged database) is a one-line
:class:`MetaINRError` naming the file.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import MetaINRError

INDEX_NAME = "index.sqlite"
STORE_FORMAT = "metainr-field-store"
STORE_VERSION = 1
BUSY_TIMEOUT_S = 300.0
"""how long a writer waits for another one's transaction before giving up"""
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
"""signal ids and shard names: never a path separator (a shard name becomes a file name)"""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shards (name TEXT PRIMARY KEY, bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, "
    "count INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS signals (id TEXT PRIMARY KEY, source TEXT NOT NULL, task TEXT NOT NULL, "
    "learner TEXT NOT NULL, steps INTEGER NOT NULL, metrics TEXT NOT NULL, bytes INTEGER NOT NULL, "
    "shard TEXT NOT NULL REFERENCES shards(name))",
)


@dataclass(frozen=True)
class ShardRow:
    """One shard file: ``shards/{name}.safetensors`` of ``bytes`` bytes with this sha256, holding ``count`` signals."""

    name: str
    bytes: int
    sha256: str
    count: int


@dataclass(frozen=True)
class SignalRow:
    """One stored signal: where it came from, how it was fitted, its metrics and its shard."""

    id: str
    source: str
    task: str
    learner: str
    steps: int
    metrics: dict[str, float]
    bytes: int
    shard: str


class Index:
    """An open index (use :func:`open_index` or :func:`create_index`); close it when done."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        with _named(self.path):
            yield

    def close(self) -> None:
        """Close the connection (the last one to close checkpoints the WAL into the file)."""
        self._conn.close()

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def meta(self) -> dict[str, Any]:
        """key -> JSON value of the store-level ``meta`` table (checked to be a field store's)."""
        with self._errors():
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        try:
            meta = {str(k): json.loads(v) for k, v in rows}
        except (TypeError, ValueError, RecursionError):
            raise MetaINRError(f"{self.path} is not a metainr field store index (unreadable meta values)") from None
        if meta.get("format") != STORE_FORMAT:
            raise MetaINRError(f"{self.path} is not a metainr field store index (no '{STORE_FORMAT}' format)")
        if meta.get("version") != STORE_VERSION:
            raise MetaINRError(f"{self.path} has field store version {meta.get('version')}, expected {STORE_VERSION}")
        return meta

    def add_meta(self, values: Mapping[str, Any]) -> None:
        """Insert the ``meta`` entries that are not there yet (existing ones are kept: compare them)."""
        with self._errors(), self._transaction():
            self._conn.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                                   [(k, json.dumps(v, allow_nan=False)) for k, v in values.items()])

    def signals(self) -> list[SignalRow]:
        """Every signal row, ordered by id (each checked: names, numbers, metrics)."""
        with self._errors():
            rows = self._conn.execute("SELECT id, source, task, learner, steps, metrics, bytes, shard FROM signals "
                                      "ORDER BY id").fetchall()
        return [self._signal(row) for row in rows]

    def ids(self) -> set[str]:
        """The ids of the stored signals."""
        with self._errors():
            return {str(r[0]) for r in self._conn.execute("SELECT id FROM signals")}

    def shards(self) -> dict[str, ShardRow]:
        """name -> shard row, every one checked (a name that could leave the shard folder is refused)."""
        with self._errors():
            rows = self._conn.execute("SELECT name, bytes, sha256, count FROM shards").fetchall()
        out = {}
        for name, size, digest, count in rows:
            if not (isinstance(name, str) and NAME.match(name) and _count(size) and _count(count)
                    and isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise MetaINRError(f"{self.path}: a damaged shard row ({str(name)[:60]!r})")
            out[name] = ShardRow(name, size, digest, count)
        return out

    def commit_shard(self, shard: ShardRow, rows: Sequence[SignalRow]) -> int:
        """Index a shard written to disk and its signals in one transaction; signals another process
        stored meanwhile keep their rows (their copy in this shard is never read). Returns the
        number of signals added."""
        with self._errors(), self._transaction():
            have = {r[0] for r in self._conn.execute(
                f"SELECT id FROM signals WHERE id IN ({','.join('?' * len(rows))})", [r.id for r in rows])}
            new = [r for r in rows if r.id not in have]
            self._conn.execute("INSERT INTO shards (name, bytes, sha256, count) VALUES (?, ?, ?, ?)",
                               (shard.name, shard.bytes, shard.sha256, len(new)))
            self._conn.executemany(
                "INSERT INTO signals (id, source, task, learner, steps, metrics, bytes, shard) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.id, r.source, r.task, r.learner, r.steps, json.dumps(r.metrics), r.bytes, shard.name) for r in new])
        return len(new)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")  # takes the write lock now (waiting up to the busy timeout)
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _check_ours(self) -> int:
        """The number of tables; a database with tables but no ``meta`` table is another program's."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not {"meta", "shards", "signals"} <= tables:
            raise MetaINRError(f"{self.path} is not a metainr field store index (another database)")
        return len(tables)

    def _signal(self, row: tuple) -> SignalRow:
        sid, source, task, learner, steps, metrics, size, shard = row
        try:
            values = json.loads(metrics)
            ok = (isinstance(sid, str) and NAME.match(sid) and isinstance(shard, str) and NAME.match(shard)
                  and all(isinstance(v, str) for v in (source, task, learner)) and _count(steps) and _count(size)
                  and isinstance(values, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       for v in values.values()))
        except (TypeError, ValueError, RecursionError):
            ok = False
        if not ok:
            raise MetaINRError(f"{self.path}: a damaged signal row ({str(sid)[:60]!r})")
        return SignalRow(sid, source, task, learner, steps, {str(k): float(v) for k, v in values.items()}, size, shard)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """sqlite3 errors as one-line MetaINRErrors naming the index file."""
    try:
        yield
    except sqlite3.Error as exc:
        what = " ".join(str(exc).split()) or type(exc).__name__
        if "locked" in what or "busy" in what:
            raise MetaINRError(f"{path}: the index stayed locked by another process ({what})") from None
        raise MetaINRError(f"{path} is not a readable metainr field store index ({what})") from None


def _connect(target: str, path: Path, uri: bool = False) -> sqlite3.Connection:
    with _named(path):
        conn = sqlite3.connect(target, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=uri)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return conn


def open_index(store: str | Path, writable: bool = False) -> Index:
    """The index of an existing store directory (read-only unless ``writable``); a missing store,
    or a file that is not a field store index, is a one-line MetaINRError."""
    store = Path(store)
    path = store / INDEX_NAME
    if not store.exists():
        raise MetaINRError(f"field store not found: {store}")
    if not store.is_dir():
        raise MetaINRError(f"{store} is not a field store (not a directory)")
    if not path.is_file():
        raise MetaINRError(f"{store} is not a field store (no {INDEX_NAME})")
    index = Index(path, _connect(f"{path.resolve().as_uri()}?mode={'rw' if writable else 'ro'}", path, uri=True))
    try:
        index.meta()
    except BaseException:
        index.close()
        raise
    return index


def create_index(store: str | Path, meta: Mapping[str, Any]) -> Index:
    """The index of ``store``, created (with the tables and ``meta``) if the directory has none; an
    existing index keeps its meta untouched (compare it with :meth:`Index.meta`, then
    :meth:`Index.add_meta` what is new). Safe to call from several
    processes at once. A non-empty directory that is not a store is refused (never written into)."""
    store = Path(store)
    path = store / INDEX_NAME
    if store.exists() and not store.is_dir():
        raise MetaINRError(f"{store} is not a field store (not a directory)")
    if not path.exists() and store.is_dir() and any(p.name not in ("shards", "lock") for p in store.iterdir()):
        raise MetaINRError(f"refusing to create a field store in {store}: a non-empty directory that is not one")
    store.mkdir(parents=True, exist_ok=True)
    index = Index(path, _connect(str(path), path))
    try:
        with _named(path):
            index._check_ours()  # before anything is written: another program's database is never touched
            index._conn.execute("PRAGMA journal_mode = WAL")
            index._conn.execute("PRAGMA synchronous = FULL")
            with index._transaction():
                if index._check_ours() == 0:  # a new file (or one another process is creating): make the tables
                    for statement in _SCHEMA:
                        index._conn.execute(statement)
                    index._conn.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [(k, json.dumps(v, allow_nan=False)) for k, v in
                         {"format": STORE_FORMAT, "version": STORE_VERSION, **meta}.items()])
        index.meta()
    except BaseException:
        index.close()
        raise
    return index


def finite_mean(values: Sequence[float]) -> float | None:
    """The mean of the finite values (None when there are none)."""
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None
