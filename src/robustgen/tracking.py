"""Live metrics of a training stage: an append-only ``metrics.jsonl`` (the record; readable while
the run goes on, e.g. ``tail -f`` or pandas ``read_json(lines=True)``) mirrored to optional
trackers: TensorBoard (``torch.utils.tensorboard``), Weights & Biases and MLflow, each an extra
imported only when ``logging.<tracker>: true`` asks for it.

Resumption: a stage resumed from its checkpoint at step s replays steps s+1.. exactly, so
``MetricsLog`` first drops the records after step s (written after the checkpoint by the killed
run) and the replay writes them again: no duplicates, no gaps. TensorBoard is told the same
(``purge_step``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from robustgen.runtime.errors import RobustgenError
from robustgen.runtime.io import atomic_write

__all__ = ["MetricsLog", "TRACKERS", "open_trackers", "read_metrics"]

TRACKERS = ("tensorboard", "wandb", "mlflow")


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a last line cut by a kill is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


class MetricsLog:
    """Append-only JSON lines, one record per call, each with a ``step``; see the module doc."""

    def __init__(self, path: Path, *, resume_step: int = 0, trackers: Sequence = ()):
        self.path, self.trackers = Path(path), list(trackers)
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any], *, prefix: str = "") -> None:
        """Append ``record`` (it must have ``step``); trackers get its finite numbers as
        ``prefix/name`` scalars."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        scalars = {f"{prefix}{k}": float(v) for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        for tracker in self.trackers:
            tracker.log(scalars, int(record["step"]))

    def close(self) -> None:
        self._file.close()
        for tracker in self.trackers:
            tracker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _TensorBoard:
    def __init__(self, log_dir: Path, *, resume_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RobustgenError("logging.tensorboard: the tensorboard package is not installed "
                                 "(pip install 'robustgen[tensorboard]')") from None
        # purge_step: events after the resumed checkpoint, from the killed run, are discarded
        self.writer = SummaryWriter(str(log_dir), purge_step=resume_step if resume_step else None)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, log_dir: Path, *, name: str, project: str, config: dict):
        try:
            import wandb
        except ImportError:
            raise RobustgenError("logging.wandb: the wandb package is not installed "
                                 "(pip install 'robustgen[wandb]')") from None
        # one W&B run per stage folder, resumed under the same id after an interruption
        self.run = wandb.init(project=project, name=name, id=name.replace("/", "-"), resume="allow",
                              dir=str(log_dir), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, *, name: str, project: str, config: dict):
        try:
            import mlflow
        except ImportError:
            raise RobustgenError("logging.mlflow: the mlflow package is not installed "
                                 "(pip install 'robustgen[mlflow]')") from None
        self.mlflow = mlflow
        mlflow.set_experiment(project)
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({k: str(v)[:250] for k, v in config.items()})

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_trackers(settings, stage_dir: Path, *, name: str, resume_step: int, config: dict | None = None) -> list:
    """The trackers ``settings`` (``LoggingConfig``) turns on, writing next to ``stage_dir``:
    TensorBoard event files in ``stage_dir/tensorboard``."""
    flat = _flatten(config or {})
    trackers = []
    if settings is None:
        return trackers
    if settings.tensorboard:
        trackers.append(_TensorBoard(Path(stage_dir) / "tensorboard", resume_step=resume_step))
    if settings.wandb:
        trackers.append(_Wandb(Path(stage_dir), name=name, project=settings.project, config=flat))
    if settings.mlflow:
        trackers.append(_MLflow(name=name, project=settings.project, config=flat))
    return trackers


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
