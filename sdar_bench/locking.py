"""Advisory locks that keep two processes from writing one results folder, or one run, at once.

* ``<results>/.lock``: taken by ``run`` and ``report`` (exclusive) and by ``tune`` (shared:
  several tune workers may share a study and its folder, but never while a ``run`` or
  ``report`` writes there). A second holder is refused at once (:class:`FolderInUse`), or waits
  with ``wait=True``.
* ``runs/<run_id>/.lock``: taken by whoever executes a run (this process, a worker process, a
  Ray task), so a run is never executed twice at the same time (:class:`RunInUse`).
* ``<cache>/warmstart/<name>.partial.lock``: taken while a warm start trains; a second process
  needing the same warm start waits for it.

``fcntl.flock`` locks belong to an open file and vanish with the process that holds them, so a
killed process never leaves a stale lock behind (the ``.lock`` file may stay; it is harmless).
On NFS, Linux emulates ``flock`` with POSIX record locks, which work across machines. Without
``fcntl`` (Windows) there is no locking.

Within one process a lock is re-entrant: ``run`` holds the folder lock, and ``run_suite`` below
it asks again without deadlocking on itself.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"

# path → (open lock file, how many nested holders in this process)
_held: dict[str, tuple[IO[str], int]] = {}
_held_guard = threading.Lock()


class LockBusy(RuntimeError):
    """Another process holds the lock; ``holder`` says who (pid and start time), if it said."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(holder)
        self.path = path
        self.holder = holder


class FolderInUse(LockBusy):
    """A results folder is being written by another sdar-bench process."""

    def __str__(self) -> str:
        return (
            f"{self.path.parent} is in use by another sdar-bench process ({self.holder}); "
            "wait for it (--wait) or use another --results folder"
        )


class RunInUse(LockBusy):
    """A run is being executed by another process."""

    def __str__(self) -> str:
        return f"run {self.path.parent.name} is being executed by another process ({self.holder})"


class WarmStartInUse(LockBusy):
    """A warm start is being trained by another process."""

    def __str__(self) -> str:
        return f"warm start {self.path.stem} is being trained by another process ({self.holder})"


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    text = handle.read().strip()
    return text or "pid unknown"


@contextmanager
def _flock(
    path: Path, error: type[LockBusy], *, shared: bool = False, wait: bool = False
) -> Iterator[None]:
    key = str(path.resolve())
    with _held_guard:
        if key in _held:  # this process holds it already: nested use
            handle, depth = _held[key]
            _held[key] = (handle, depth + 1)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                handle, depth = _held[key]
                _held[key] = (handle, depth - 1)
        return
    if fcntl is None:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(handle, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise error(path, _holder(handle)) from None
        if not shared:  # a shared holder must not overwrite another shared holder's line
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
            handle.flush()
        with _held_guard:
            _held[key] = (handle, 1)
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        handle.close()  # closing the file releases the lock


def folder_lock(
    results: Path, *, shared: bool = False, wait: bool = False
) -> AbstractContextManager[None]:
    """Hold ``<results>/.lock``; raises :class:`FolderInUse` when another process has it."""
    return _flock(Path(results) / LOCK_FILE, FolderInUse, shared=shared, wait=wait)


def run_lock(run_dir: Path) -> AbstractContextManager[None]:
    """Hold ``<run_dir>/.lock``; raises :class:`RunInUse` when another process executes it."""
    return _flock(Path(run_dir) / LOCK_FILE, RunInUse)


def warmstart_lock(partial: Path) -> AbstractContextManager[None]:
    """Hold ``<partial>.lock`` while training the warm start whose checkpoints go to ``partial``;
    a second process waits, then finds the finished warm start."""
    return _flock(partial.with_name(partial.name + LOCK_FILE), WarmStartInUse, wait=True)
