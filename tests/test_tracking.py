"""Live metrics (robustgen.tracking): metrics.jsonl across resumption, optional trackers."""

import importlib.util
import json

import pytest

from robustgen.config import LoggingConfig
from robustgen.runtime.errors import RobustgenError
from robustgen.tracking import MetricsLog, open_trackers, read_metrics


def test_metrics_log_is_append_only_and_a_resume_drops_what_it_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in range(1, 9):
            log.log({"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in read_metrics(path)] == list(range(1, 9))
    # resumed from the checkpoint of step 5: steps 6-8 are redone, so their old records go
    with MetricsLog(path, resume_step=5) as log:
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
        log.log({"step": 6, "loss": 0.5})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5, 6]
    path.write_text(path.read_text() + '{"step": 7, "lo')  # a line cut by a kill
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5, 6]
    assert json.loads(path.read_text().splitlines()[0]) == {"step": 1, "loss": 1.0}


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
def test_a_tracker_without_its_package_is_a_one_line_error(tracker, tmp_path):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed")
    expected = rf"logging.{tracker}: the {tracker} package is not installed \(pip install 'robustgen\[{tracker}\]'\)"
    with pytest.raises(RobustgenError, match=expected):
        open_trackers(LoggingConfig(**{tracker: True}), tmp_path, name="train-x", resume_step=0)
    assert open_trackers(LoggingConfig(), tmp_path, name="train-x", resume_step=0) == []
