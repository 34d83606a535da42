"""What ran, with which code, where: the records a run folder gets when it starts.

``OUT/config.yaml`` (the resolved config), ``OUT/command.json`` (command line, preset,
``--set`` overrides, working folder, start time) and ``OUT/environment.json`` (robustgen version
and git revision when the package is a checkout, Python, the libraries whose versions decide the
numbers, devices, host). Stage manifests carry the environment too, and their code digests
(``stages.code``). ``portable`` / ``localize`` turn a result's paths inside the run folder into
relative ones (``stages/...``) and back, so a run folder can be moved or shared.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["LIBRARIES", "command_record", "environment", "localize", "portable", "write_run_records"]

LIBRARIES = ("torch", "torchvision", "numpy", "pyautoattack", "diffusers", "torch-fidelity", "safetensors")


@lru_cache(maxsize=None)
def _git_revision(folder: Path) -> dict | None:
    """{"commit", "dirty"} of the git checkout holding ``folder``, or None (an installed wheel).
    Once per process: every stage manifest records it, and the code a process runs is what it loaded."""
    try:
        top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        if top.returncode != 0:
            return None
        root, commit = top.stdout.split()[:2]
        status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
        return {"commit": commit, "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device=None) -> dict[str, Any]:
    """The software and hardware a result came from (JSON-ready)."""
    import torch

    from robustgen.runtime.version import __version__

    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"robustgen": __version__, "git": _git_revision(Path(__file__).resolve().parent),
            "python": platform.python_version(), "libraries": {name: _version(name) for name in LIBRARIES},
            "device": str(device) if device is not None else None, "cuda_devices": devices,
            "cuda": torch.version.cuda, "cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
            "host": socket.gethostname()}


def command_record(command: dict | None = None) -> dict[str, Any]:
    """The command line (``sys.argv``) with what the CLI parsed from it (``command``: preset,
    overrides), the working folder and the start time."""
    return {"argv": [Path(sys.argv[0]).name, *sys.argv[1:]], **(command or {}), "cwd": os.getcwd(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_run_records(out: Path, config: dict, *, command: dict | None, device=None) -> dict:
    """``config.yaml``, ``command.json`` and ``environment.json`` in the run folder (atomic writes);
    returns the environment."""
    import yaml

    from robustgen.runtime.io import write_json, write_text

    env = environment(device)
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    write_json(out / "command.json", command_record(command))
    write_json(out / "environment.json", env)
    return env


def portable(obj: Any, run: Path) -> Any:
    """``obj`` (JSON-like) with every path string that points inside the run folder made relative to it."""
    root = str(Path(run).resolve()) + os.sep
    if isinstance(obj, dict):
        return {k: portable(v, run) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, run) for v in obj]
    if isinstance(obj, str) and os.sep in obj and "\n" not in obj:  # a path (absolute, or from the cwd)
        resolved = str(Path(obj).resolve())
        if resolved.startswith(root):
            return Path(resolved[len(root):]).as_posix()
    return obj


def localize(obj: Any, run: Path) -> Any:
    """The inverse of ``portable``: ``stages/...`` strings become paths under the run folder."""
    if isinstance(obj, dict):
        return {k: localize(v, run) for k, v in obj.items()}
    if isinstance(obj, list):
        return [localize(v, run) for v in obj]
    if isinstance(obj, str) and obj.startswith("stages/"):
        return str(Path(run) / obj)
    return obj
