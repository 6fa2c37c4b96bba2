"""One trainer per run directory: an exclusive lock on ``<run>/.lock``, held by the main process for the
trainer's lifetime.

The lock is a POSIX record lock (``fcntl.lockf``): the kernel drops it when the process dies, however it
dies, so a SIGKILL leaves no stale lock to clean up. The file holds who has it (host, PID, since when), for
the error a second trainer prints. On NFS, POSIX locks are held by the server's lock manager, so they work
across hosts on NFSv4 and on NFSv3 with lockd; a mount with ``nolock`` (and some FUSE filesystems) keeps
locks local to each host, and two hosts could then both train into one directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from cifarlab import files
from cifarlab.errors import UsageError
from cifarlab.run.rundir import RunDir, planted_link


class RunLock:
    """``acquire`` on the main process; ``release`` (or process exit) lets the next trainer in."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self._fd: Optional[int] = None
        self._created: Optional[Path] = None  # the outermost folder acquire() created, if any

    def acquire(self) -> None:
        """Create the run directory if needed and lock it, or raise :class:`UsageError` naming the holder, or the
        first symbolic link found in the run directory (:func:`~cifarlab.run.rundir.planted_link`: nothing is
        written through it, not even the lock file)."""
        missing = [folder for folder in (self.run.root, *self.run.root.parents) if not folder.exists()]
        make_run_directory(self.run)
        self._created = missing[-1] if missing else None
        fd = files.open_nofollow(self.run.lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise UsageError(f"cannot lock run directory {files.typed(self.run.root)} ({error.strerror}); use a "
                                 f"train.output_dir on a filesystem with file locks") from None
            raise UsageError(f"run directory {files.typed(self.run.root)} is in use by another trainer ({holder}); "
                             f"wait for it to finish or stop it, or pick another train.run_name") from None
        link = planted_link(self.run)  # checked under the lock: nobody else adds files meanwhile
        if link is not None:
            os.close(fd)
            raise files.link_refusal(link)
        # Written in place, never truncated by a waiting trainer: only the holder writes.
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}).encode())
        self._fd = fd

    def release(self) -> None:
        """Unlock; a run directory this lock created and nothing else wrote to (the run failed while starting)
        is removed again, with the folders made for it."""
        if self._fd is None:
            return
        if self._created is not None and [p.name for p in self.run.root.iterdir()] == [self.run.lock.name]:
            self.run.lock.unlink()
            for folder in (self.run.root, *self.run.root.parents):
                try:
                    folder.rmdir()
                except OSError:  # another run has written there meanwhile: keep it
                    break
                if folder == self._created:
                    break
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = None


def _holder(fd: int) -> str:
    try:
        found = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"host {found['host']}, PID {found['pid']}, since {found['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown: it is still starting"


def make_run_directory(run: RunDir) -> None:
    """``mkdir -p`` the run directory, turning the ways it fails into one line."""
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (run.root, *run.root.parents) if p.exists() and not p.is_dir()), run.root)
        what = {run.root: "run directory", run.root.parent: "train.output_dir"}.get(blocking, "path")
        raise UsageError(f"{what} {blocking} is a file, not a folder; choose another train.output_dir or "
                         f"train.run_name") from None
    except OSError as error:
        raise UsageError(f"cannot create run directory {files.typed(run.root)} ({error.strerror}); choose a writable "
                         f"train.output_dir") from None
    if not os.access(run.root, os.W_OK):
        raise UsageError(f"run directory {files.typed(run.root)} is not writable; choose a writable train.output_dir")
