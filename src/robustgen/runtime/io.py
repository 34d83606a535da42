"""File output that never leaves a partial file behind: atomic writes, JSON, text and PNG figures.

Every write goes to a temporary file in the destination's folder, is fsynced and renamed into
place (``os.replace`` is atomic on one file system), then the folder is fsynced: a reader sees the
old file or the new one, never a part, even after a crash or a power loss. A full disk is a
one-line ``DiskFullError`` and leaves the old file intact. Checkpoints (``robustgen.checkpoint``),
stores, training histories and reports all write through here.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from robustgen.runtime.errors import RobustgenError

__all__ = ["DiskFullError", "atomic_write", "read_json", "save_figure", "write_json", "write_text"]


def atomic_write(path: str | Path, write: Callable[[str], Any], *, size: int | None = None) -> None:
    """Call ``write(tmp_path)``, fsync the temporary file and rename it onto ``path`` (then fsync
    the folder). ``size``: the bytes about to be written, when known; too little free space is
    reported before writing. A full disk (ENOSPC, EDQUOT) is a ``DiskFullError`` naming the file and
    the space needed; the previous file at ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is not None and _free_bytes(path.parent) < size:
        raise DiskFullError(path, size, _free_bytes(path.parent))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path, size, _free_bytes(path.parent), written=written) from None
        raise


class DiskFullError(RobustgenError):
    """A write found no space left; the file it was to replace is unchanged."""

    def __init__(self, path: Path, need: int | None, free: int, *, written: int = 0):
        needed = f"{_fmt_bytes(need)} needed" if need is not None else \
            f"more than the {_fmt_bytes(written)} written before the disk filled"
        kept = f"the previous {path.name} is intact" if path.exists() else f"no partial {path.name} is left"
        super().__init__(f"{path}: no space left on the device ({needed}, {_fmt_bytes(free)} free); {kept}; "
                         f"free space and run the same command again to resume")


def _free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _fmt_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (the new name survives a power loss)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not fsync folders
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> None:
    data = text.encode()
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), size=len(data))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RobustgenError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RobustgenError(f"{path}: corrupt JSON ({e})") from None


def save_figure(fig, path: str | Path, **savefig_kwargs) -> str:
    """A matplotlib figure as a PNG file at ``path`` (its folder is created); returns the path."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", **savefig_kwargs))
    return os.fspath(path)
