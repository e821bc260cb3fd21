"""The rationale file: append-only JSONL that survives crashes, and the reader training uses.

Each record is written as one line in a single write, then flushed and fsync'ed, so after a crash
or `kill -9` the file holds every finished post plus at most one partial last line (no newline).
Readers ignore that partial line and the writer cuts it off before appending, so re-running the
same command continues where the last one stopped without losing or duplicating a post.

A post may have several records only when a failed request was retried in a later run
(`--retry-failed`); the last record of an id is the one that counts.

One writer at a time: resuming is "read the ids in the file, ask for the others", so two runs on one
file would both ask for the same posts and interleave duplicate records. `exclusive_writer` holds an
exclusive `flock` on `<output>.lock` for a whole run (read, generate, summarise); a second run is
refused with one line naming the holder (pid, host, start time, written into the lock file). The
kernel drops the lock when its process dies, so a crashed or killed run never blocks the next one.
(flock is advisory and per host: runs on different machines sharing an NFS folder are not kept
apart.)

Record fields: id, rationale, answer (list), kept, reason, detail, teacher, model,
template_version, mode, usage {prompt_tokens, completion_tokens}, attempts, samples, error,
image_problem, output (the raw reply), and extra_rationales with `keep_all_samples`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mmkp_edge.errors import InputError


def _scan(path: Path) -> tuple[list[dict], int]:
    """Complete records, and the byte length of the file's complete-line prefix."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1          # bytes after this are a partial last line
    records: list[dict] = []
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}:{number}: not a rationale record ({exc})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise InputError(f"{path}:{number}: not a rationale record (no string 'id')")
        records.append(obj)
    return records, end


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every complete record in file order ([] when the file does not exist)."""
    path = Path(path)
    return _scan(path)[0] if path.exists() else []


def latest_records(path: str | os.PathLike) -> dict[str, dict]:
    """The last record of each post id."""
    return {r["id"]: r for r in read_records(path)}


def load_rationales(path: str | os.PathLike, kept_only: bool = True) -> dict[str, str]:
    """post id → rationale, for the `cot` and `dynamic_cot` stages.

    With `kept_only` (the default) only rationales that passed the answer filter are returned;
    otherwise every non-empty rationale is. Raises InputError when the file is missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"rationale file not found: {path}")
    out: dict[str, str] = {}
    for post_id, rec in latest_records(path).items():
        rationale = rec.get("rationale")
        if isinstance(rationale, str) and rationale.strip() and (rec.get("kept") or not kept_only):
            out[post_id] = rationale
    return out


class RecordWriter:
    """Appends records durably; first cuts off a partial last line left by a crash."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.dropped_partial = 0     # bytes of a partial last line that were cut off
        if self.path.exists():
            _, end = _scan(self.path)
            size = self.path.stat().st_size
            if size > end:
                self.dropped_partial = size - end
                with open(self.path, "r+b") as fh:
                    fh.truncate(end)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


LOCK_SUFFIX = ".lock"


def lock_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}{LOCK_SUFFIX}")


@contextmanager
def exclusive_writer(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock on the rationale file `path` for the block (see the module
    docstring); raises InputError naming the holder when another process holds it."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "starting up"
            raise InputError(f"{path}: another cot-data run is writing it ({holder}; lock "
                             f"{lock}); wait for it to finish, or write to another file") from None
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)          # a leftover lock file names nobody
    finally:
        os.close(fd)                     # releases the flock
