"""One run per dump folder: `<dump_folder>/flame.lock`, created atomically by the run that uses the folder.

Two runs writing one folder interleave their metrics and checkpoints. The lock file (O_CREAT | O_EXCL, atomic on
local and NFS file systems) records host, pid, the process' start time and a random token. A lock left by a run
that died without cleaning up (SIGKILL, a lost node) is stale when its host is this host and its pid is gone (or
is another process now); then it is taken over. A lock from another host cannot be checked from here: the error
says how to remove it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid

LOCK_NAME = "flame.lock"


class DumpFolderInUse(RuntimeError):
    """Another live run holds the dump folder."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else fields[19]  # a zombie is a dead run
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    if os.path.exists(f"/proc/{pid}"):
        now = _process_start(pid)
        return now is not None and (start is None or now == start)
    return True


class RunLock:
    """Hold `<folder>/flame.lock` from `acquire()` to `release()`; `acquire` returns a note when it took over a stale
    lock, and raises DumpFolderInUse while another live run holds it."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.token: str | None = None

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
                "token": uuid.uuid4().hex, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": " ".join(sys.argv)[:500]}

    def _read(self, path: str) -> dict | None:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # being written right now, or damaged

    def acquire(self) -> str | None:
        os.makedirs(self.folder, exist_ok=True)
        note = None
        for attempt in range(50):
            record = self._record()
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read(self.path)
                if holder is None:
                    continue  # released in between: try again
                if not holder:  # empty or torn: its writer may be mid-write; a few tries, then say so
                    if attempt < 10:
                        time.sleep(0.1)
                        continue
                    raise DumpFolderInUse(f"job.dump_folder {self.folder!r} holds an unreadable lock file "
                                          f"{self.path}: if no run uses this folder, remove that file and start "
                                          f"again")
                if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)),
                                                                             holder.get("start")):
                    if self._take_over(holder):
                        note = (f"[lock] took over the stale lock of pid {holder.get('pid')} on "
                                f"{holder.get('host')} (since {holder.get('since')}; that process is gone)")
                    continue
                raise DumpFolderInUse(
                    f"job.dump_folder {self.folder!r} is in use by another run (pid {holder.get('pid')} on host "
                    f"{holder.get('host')}, since {holder.get('since')}): wait for it to finish or use another "
                    f"job.dump_folder; if that run is gone (e.g. its node died), remove {self.path} and start again")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            self.token = record["token"]
            return note
        raise DumpFolderInUse(f"could not lock job.dump_folder {self.folder!r} ({self.path} keeps changing hands)")

    def _take_over(self, stale: dict) -> bool:
        """Move the stale lock aside, atomically; False when another process was faster (or it changed)."""
        aside = f"{self.path}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        moved = self._read(aside)
        if moved and moved.get("token") != stale.get("token"):  # a fresh lock was renamed: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            os.remove(aside)
            return False
        os.remove(aside)
        return True

    def release(self) -> None:
        if self.token is None:
            return
        holder = self._read(self.path)
        if holder and holder.get("token") == self.token:
            os.remove(self.path)
        self.token = None
