"""Deletion tombstones: content that must never be trained on again.

One append-only JSONL file, one record per deletion, by content hash (SHA-256 of the file's
bytes) and/or by id (a file name, a shard key, a serving job id):

    {"hash": "9f86d0...", "id": "photos/cat.jpg", "reason": "user request", "time": 1732262400.0}

Every data source checks it when it reads a sample, and `flowfactory cache` when it (re)builds;
`flowfactory data delete` and the server's deletion endpoint append to it. The file is re-read
whenever it changes, so a deletion reaches a running job at its next read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

DEFAULT_TOMBSTONES = Path("~/.local/share/flowfactory/tombstones.jsonl")


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Tombstones:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or DEFAULT_TOMBSTONES).expanduser()
        self.hashes: set[str] = set()
        self.ids: set[str] = set()
        self._stamp: tuple[int, int] | None = None

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.hashes, self.ids, self._stamp = set(), set(), None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        hashes, ids = set(), set()
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crashed writer: the rest stays valid
            if rec.get("hash"):
                hashes.add(rec["hash"])
            if rec.get("id"):
                ids.add(str(rec["id"]))
        self.hashes, self.ids, self._stamp = hashes, ids, stamp

    def is_deleted(self, hash: str | None = None, id: str | None = None) -> bool:
        self._refresh()
        return (hash is not None and hash in self.hashes) or (id is not None and str(id) in self.ids)

    def add(self, hashes: list[str] = (), ids: list[str] = (), reason: str = "") -> int:
        """Append tombstones (under an exclusive lock, fsynced); returns how many were written."""
        now = time.time()
        lines = [json.dumps({"hash": h, "reason": reason, "time": now}) for h in hashes]
        lines += [json.dumps({"id": str(i), "reason": reason, "time": now}) for i in ids]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)
        return len(lines)

    def __len__(self) -> int:
        self._refresh()
        return len(self.hashes) + len(self.ids)
