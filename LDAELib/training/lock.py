"""One `ldae train` at a time per work folder.

Two processes training in the same work folder would write the same checkpoints, logs and bundle
over each other (a second `ldae train all` started while the first is still in its last stage
resumes that stage from its last checkpoint beside it). The first process holds an exclusive
lock on ``WORKDIR/.ldae-train.lock`` while it works; a second one stops at once with a message
that names the first. The operating system drops the lock when its holder ends, however it ends,
so a crash leaves no stale lock behind.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import LDAEError

LOCK_NAME = ".ldae-train.lock"

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextmanager
def workdir_lock(workdir: str | Path, what: str = "ldae train"):
    """Hold the work folder's training lock for the ``with`` block, or raise LDAEError naming its holder."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
            raise LDAEError(f"another {holder.get('what', 'ldae train')} is working in {workdir} ({who}); "
                            "wait for it to finish, stop it, or use another --workdir")
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            yield path
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
