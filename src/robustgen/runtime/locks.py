"""Ownership of a run folder or a store being written: one process at a time.

A second ``robustgen run --out X`` launched while the first still works (a double-submitted
job) would reuse stages the first has not finished. ``FolderLock(folder)`` makes ``folder/.lock``
say who owns the folder (host, pid, the process's start time, the command, a heartbeat) and
holds an ``flock`` on it for the owner's lifetime:

* held by a live process: ``LockHeld`` (a ``RobustgenError``: exit status 2) naming the owner,
  or, with ``wait=True``, a message and a wait until it is free;
* left by a dead process on this host (pid gone, or reused by another program): taken over
  with a message (the kernel drops a dead process's ``flock`` anyway; the file names who it was);
* left by a process on another host: its heartbeat (the file's mtime, refreshed every
  ``HEARTBEAT_S`` seconds by the owner) tells whether it still runs; older than ``STALE_S``
  means the owner is gone (a preempted node) and the lock is taken over. Shared file systems
  without cross-host ``flock`` are covered by the heartbeat alone.

Clean exits (errors, preemption) release the lock and empty the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from robustgen.runtime.errors import RobustgenError

__all__ = ["FolderLock", "LockHeld", "LOCK_FILE", "HEARTBEAT_S", "STALE_S"]

LOCK_FILE = ".lock"
HEARTBEAT_S = 30.0  # the owner refreshes the lock file's mtime this often (seconds)
STALE_S = 300.0  # a lock of another host whose heartbeat is older is taken over (seconds)
_POLL_S = 2.0  # how often --wait looks again (seconds)


class LockHeld(RobustgenError):
    """The folder is owned by another live process."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


def _describe(owner: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    command = owner.get("command")
    return (f"pid {owner.get('pid')} on host {owner.get('host')} since {since}"
            + (f" ({command})" if command else ""))


class FolderLock:
    """``with FolderLock(folder, wait=False, what="run folder"):`` owns ``folder`` for the block.

    ``log(message)`` receives the take-over and waiting messages (default: stderr)."""

    def __init__(self, folder, *, wait: bool = False, what: str = "folder", log=None,
                 heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.wait, self.what = wait, what
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.log = log or (lambda m: print(f"[robustgen] {m}", file=sys.stderr, flush=True))
        self._file = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- acquiring
    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        announced = False
        while True:
            holder = self._try_acquire()
            if holder is None:
                break
            if not self.wait:
                raise LockHeld(f"{self.folder}: this {self.what} is in use by another process, {_describe(holder)}; wait for it "
                               f"with --wait, or use another folder (if that process is gone, delete {self.path})")
            if not announced:
                self.log(f"{self.folder}: waiting for {_describe(holder)} to finish")
                announced = True
            time.sleep(_POLL_S)
        self._beat = threading.Thread(target=self._heartbeat, name="robustgen-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _try_acquire(self) -> dict | None:
        """Take the lock and return None, or return the live owner's record."""
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self._read(f)
            f.close()
            return owner or {"pid": "?", "host": "?"}
        owner = self._read(f)
        if owner:
            here = owner.get("host") == socket.gethostname()
            mine = here and owner.get("pid") == os.getpid() and owner.get("start") == _process_start(os.getpid())
            if not mine and here and _alive(int(owner.get("pid", -1)), owner.get("start")):
                # alive but no flock: a file system whose flock does not reach this process
                f.close()
                return owner
            age = time.time() - os.stat(f.fileno()).st_mtime
            if not here and age < self.stale_s:
                f.close()
                return owner
            reason = "no longer running" if here else f"no heartbeat for {age:.0f} s"
            if not mine:  # (a handle of this process closed without releasing: nothing to say)
                self.log(f"{self.folder}: taking over the lock of {_describe(owner)} ({reason})")
        me = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid()),
              "since": time.time(), "command": " ".join(os.path.basename(a) if i == 0 else a
                                                        for i, a in enumerate(sys.argv))[:300]}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(me) + "\n")
        f.flush()
        os.fsync(f.fileno())
        self._file = f
        return None

    @staticmethod
    def _read(f) -> dict | None:
        f.seek(0)
        text = f.read().strip()
        if not text:
            return None
        try:
            owner = json.loads(text)
        except json.JSONDecodeError:
            return None
        return owner if isinstance(owner, dict) else None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass

    # -- releasing
    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self._file is not None and not self._file.closed:
            try:
                self._file.seek(0)
                self._file.truncate()  # an empty lock file: nobody owns the folder
            except OSError:
                pass
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None and not self._file.closed

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
