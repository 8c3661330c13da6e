"""The durable job store: SQLite in WAL mode, behind the small `JobStore` interface.

Jobs survive a crash: a job is `Pending` until a worker claims it (`Running`, with the worker
process's id `host:pid`), then `Ready`, `Error`, `Request Moderated` or `Content Moderated`.
Worker processes heartbeat into the `workers` table; `recover()` (at start-up and periodically)
puts back in the queue the running jobs whose worker is gone: a process of this host that no
longer exists, or any worker whose heartbeat is older than `stale_s`. Workers may be threads of
the server process or separate processes (`flowfactory worker`) sharing the database. Results are files written atomically, whose paths the job row
holds; they expire after `ttl_s`. API keys are stored as SHA-256 hashes. Every moderation
decision and every feedback item is a row.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, hash TEXT UNIQUE NOT NULL, name TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, endpoint TEXT NOT NULL, batch_key TEXT NOT NULL,
    status TEXT NOT NULL, request TEXT NOT NULL, result TEXT, error TEXT,
    created REAL NOT NULL, started REAL, finished REAL, expires REAL, attempts INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, batch_key, created);
CREATE INDEX IF NOT EXISTS jobs_key ON jobs (key_id);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, job_id TEXT NOT NULL, other_job_id TEXT, kind TEXT NOT NULL,
    rating REAL, preferred TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, heartbeat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS moderation (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT, key_id TEXT, stage TEXT NOT NULL, allowed INTEGER NOT NULL,
    reason TEXT NOT NULL, created REAL NOT NULL);
"""

ACTIVE = ("Pending", "Running")


@dataclass
class Job:
    id: str
    key_id: str
    endpoint: str
    batch_key: str
    status: str
    request: dict
    result: dict | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    expires: float | None
    attempts: int


def process_id() -> str:
    """This worker process's id: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(worker: str) -> bool | None:
    """Whether a worker process of this host still exists; None for another host's (unknowable here)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class JobStore:
    """The interface the server and workers use (a server database could implement it too)."""

    def create_key(self, name: str = "") -> tuple[str, str]: ...
    def key_id(self, key: str) -> str | None: ...
    def enqueue(self, key_id: str, endpoint: str, batch_key: str, request: dict, max_queue: int) -> str | None: ...
    def claim(self, limit: int, max_attempts: int, worker: str = "") -> list[Job]: ...
    def finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def heartbeat(self, worker: str) -> None: ...
    def recover(self, stale_s: float) -> int: ...


class SQLiteJobStore(JobStore):
    def __init__(self, path: str | Path, ttl_s: float = 24 * 3600):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self._local = threading.local()
        c = self._conn()
        c.execute("PRAGMA journal_mode=WAL")
        c.executescript(SCHEMA)
        if "worker" not in {r["name"] for r in c.execute("PRAGMA table_info(jobs)")}:  # a database of an older release
            c.execute("ALTER TABLE jobs ADD COLUMN worker TEXT")

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread; `with conn:` is one transaction."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # explicit BEGIN where needed
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    # ----- keys -------------------------------------------------------------------------------
    def create_key(self, name: str = "") -> tuple[str, str]:
        """-> (key id, the key itself: shown once, stored only as a hash)."""
        key, kid = "ff-" + secrets.token_urlsafe(24), uuid.uuid4().hex[:12]
        with self._conn() as c:
            c.execute("INSERT INTO keys VALUES (?, ?, ?, ?)", (kid, hash_key(key), name, time.time()))
        return kid, key

    def key_id(self, key: str) -> str | None:
        row = self._conn().execute("SELECT id FROM keys WHERE hash = ?", (hash_key(key),)).fetchone()
        return row["id"] if row else None

    # ----- jobs -------------------------------------------------------------------------------
    def enqueue(self, key_id: str, endpoint: str, batch_key: str, request: dict, max_queue: int,
                status: str = "Pending", error: str | None = None) -> str | None:  # fmt: skip
        """A new job, or None when `max_queue` jobs are already waiting or running."""
        job_id = str(uuid.uuid4())
        now = time.time()
        c = self._conn()
        with c:
            c.execute("BEGIN IMMEDIATE")
            if status == "Pending":
                n = c.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('Pending', 'Running')").fetchone()[0]
                if n >= max_queue:
                    return None
            finished = None if status == "Pending" else now
            c.execute("INSERT INTO jobs (id, key_id, endpoint, batch_key, status, request, error, created, finished, "
                      "expires) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, key_id, endpoint, batch_key, status, json.dumps(request), error, now, finished,
                       now + self.ttl_s))  # fmt: skip
        return job_id

    def queued(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM jobs WHERE status IN ('Pending', 'Running')").fetchone()[0]

    def claim(self, limit: int, max_attempts: int = 3, worker: str = "") -> list[Job]:
        """Atomically take up to `limit` pending jobs sharing the oldest job's batch key, for `worker`
        (default: this process)."""
        worker = worker or process_id()
        c = self._conn()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE jobs SET status = 'Error', error = 'failed too many times', finished = ? "
                      "WHERE status = 'Pending' AND attempts >= ?", (time.time(), max_attempts))  # fmt: skip
            first = c.execute("SELECT batch_key FROM jobs WHERE status = 'Pending' ORDER BY created LIMIT 1").fetchone()
            if first is None:
                return []
            rows = c.execute("SELECT * FROM jobs WHERE status = 'Pending' AND batch_key = ? ORDER BY created LIMIT ?",
                             (first["batch_key"], limit)).fetchall()  # fmt: skip
            ids = [r["id"] for r in rows]
            c.executemany("UPDATE jobs SET status = 'Running', started = ?, attempts = attempts + 1, worker = ? "
                          "WHERE id = ?", [(time.time(), worker, i) for i in ids])  # fmt: skip
        return [self._job(r, status="Running") for r in rows]

    def finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None) -> None:
        with self._conn() as c:
            c.execute("UPDATE jobs SET status = ?, result = ?, error = ?, finished = ? WHERE id = ?",
                      (status, json.dumps(result) if result is not None else None, error, time.time(), job_id))  # fmt: skip

    def get(self, job_id: str) -> Job | None:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def heartbeat(self, worker: str = "") -> None:
        """A worker process says it is alive (every few seconds)."""
        with self._conn() as c:
            c.execute("INSERT INTO workers VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET heartbeat = excluded.heartbeat",
                      (worker or process_id(), time.time()))  # fmt: skip

    def live_workers(self, stale_s: float = 60.0) -> list[str]:
        """Worker processes alive now (heartbeat within `stale_s`, and the process exists if it is this host's)."""
        rows = self._conn().execute("SELECT id FROM workers WHERE heartbeat >= ?", (time.time() - stale_s,)).fetchall()
        return [r["id"] for r in rows if _process_alive(r["id"]) is not False]

    def recover(self, stale_s: float = 60.0) -> int:
        """Running jobs whose worker is gone (a crash) go back to the queue; returns how many."""
        c = self._conn()
        with c:
            c.execute("BEGIN IMMEDIATE")
            running = {r["worker"] or "" for r in c.execute("SELECT DISTINCT worker FROM jobs WHERE status = 'Running'")}
            live = set(self.live_workers(stale_s))
            gone = [w for w in running if w not in live]
            n = c.executemany("UPDATE jobs SET status = 'Pending', worker = NULL WHERE status = 'Running' AND "
                              "IFNULL(worker, '') = ?", [(w,) for w in gone]).rowcount  # fmt: skip
            c.execute("DELETE FROM workers WHERE heartbeat < ?", (time.time() - 10 * stale_s,))
        return max(n, 0)

    def expired(self, now: float | None = None) -> list[Job]:
        rows = self._conn().execute("SELECT * FROM jobs WHERE expires < ? AND status NOT IN ('Pending', 'Running')",
                                    (now or time.time(),)).fetchall()  # fmt: skip
        return [self._job(r) for r in rows]

    def jobs_of_key(self, key_id: str) -> list[Job]:
        return [self._job(r) for r in self._conn().execute("SELECT * FROM jobs WHERE key_id = ?", (key_id,))]

    def delete_job(self, job_id: str) -> None:
        c = self._conn()
        with c:
            c.execute("BEGIN IMMEDIATE")
            c.execute("DELETE FROM feedback WHERE job_id = ? OR other_job_id = ?", (job_id, job_id))
            c.execute("DELETE FROM moderation WHERE job_id = ?", (job_id,))
            c.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def _job(self, r: sqlite3.Row, status: str | None = None) -> Job:
        return Job(r["id"], r["key_id"], r["endpoint"], r["batch_key"], status or r["status"], json.loads(r["request"]),
                   json.loads(r["result"]) if r["result"] else None, r["error"], r["created"], r["started"],
                   r["finished"], r["expires"], r["attempts"])  # fmt: skip

    # ----- feedback and moderation log ----------------------------------------------------------
    def add_feedback(self, key_id: str, job_id: str, kind: str, rating: float | None = None,
                     other_job_id: str | None = None, preferred: str | None = None) -> str:  # fmt: skip
        fid = uuid.uuid4().hex
        with self._conn() as c:
            c.execute("INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (fid, key_id, job_id, other_job_id, kind, rating, preferred, time.time()))  # fmt: skip
        return fid

    def feedback(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute("SELECT * FROM feedback ORDER BY created")]

    def log_moderation(self, job_id: str | None, key_id: str | None, stage: str, allowed: bool, reason: str) -> None:
        with self._conn() as c:
            c.execute("INSERT INTO moderation (job_id, key_id, stage, allowed, reason, created) VALUES (?, ?, ?, ?, ?, ?)",
                      (job_id, key_id, stage, int(allowed), reason, time.time()))  # fmt: skip

    def moderation_log(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute("SELECT * FROM moderation ORDER BY id")]

    def recent_requests(self, key_id: str, window_s: float) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM jobs WHERE key_id = ? AND created > ?",
                                    (key_id, time.time() - window_s)).fetchone()[0]  # fmt: skip
