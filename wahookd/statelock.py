"""One daemon per state directory (SPEC §9): an exclusive lock held for the process's life.

A second `wahookd serve` on the same directory used to start, fail its commits with
`UNIQUE constraint failed`, and deliver the first one's events a second time. `flock(2)`
is released by the kernel when the holder dies, SIGKILL included, so a stale lock file
never blocks a restart; the file holds the holder's PID only to name it in the error.
CLI commands that only read (`status`, `replay`) never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from wahookd.errors import WahookdError

LOCK_NAME = "wahookd.lock"
RELOAD_RESULT = "reload.json"  # the last reload's verdict, for `wahookd reload`


def prepare_state_dir(directory: Path) -> None:
    """Create the state directory for the service user only (0700), and refuse one that
    exists as something else."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_uid == os.geteuid():
            directory.chmod(0o700)
    except FileExistsError:
        raise WahookdError(f"state.dir {directory} exists and is not a directory") from None
    except OSError as exc:
        raise WahookdError(f"cannot create state.dir {directory}: {exc.strerror or exc}") from None


def holder_pid(directory: Path) -> int | None:
    """The PID of the daemon holding `directory`, or None when no daemon holds it."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else None
        return None  # we could lock it: nobody holds it
    finally:
        os.close(fd)


class StateLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise WahookdError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WahookdError(
                f"state directory {self.path.parent} is used by pid {holder} (one daemon per state.dir)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None
