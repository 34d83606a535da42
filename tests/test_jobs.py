"""The resumable job loop every long job shares (``runtime.jobs``), on one process: rounds run in
order, a stop signal stops after the round it arrived in (saving first), the last round is not
followed by a check unless asked, and a dealt job records every rank's result in rank order."""

import signal

import pytest

from robustgen.runtime import preempt
from robustgen.runtime.distributed import DistContext
from robustgen.runtime.jobs import JobPlan, run_dealt_job, run_rounds


@pytest.fixture(autouse=True)
def _installed(preemption_handlers_restored):
    preempt.install()


def test_a_stop_signal_stops_after_its_round_and_saves_first():
    done, saved = [], []

    def do_round(r, item):
        done.append(item)
        if item == "b":
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(preempt.Preempted, match="after b"):
        run_rounds(DistContext(), ["a", "b", "c"], do_round, where=lambda r, item: f"after {item}",
                   save=lambda r, item: saved.append((r, item)))
    assert done == ["a", "b"] and saved == [(1, "b")]


def test_the_last_round_is_checked_only_when_asked():
    def stop_in_last(r, item):
        if r == 1:
            signal.raise_signal(signal.SIGUSR1)

    run_rounds(DistContext(), [0, 1], stop_in_last, where=lambda r, item: "end")  # finishes: nothing left to stop
    with pytest.raises(preempt.Preempted, match="SIGUSR1"):
        run_rounds(DistContext(), [0, 1], stop_in_last, where=lambda r, item: "end", stop_after_last=True)


def test_without_where_the_loop_runs_every_round_and_has_no_stop_check():
    done = []
    run_rounds(DistContext(), range(3), lambda r, item: done.append(item), where=None)
    assert done == [0, 1, 2]


def test_a_dealt_job_records_each_rounds_results_and_counts_progress():
    recorded = []
    plan = JobPlan(rounds=[[1, 2], [3]], total=10, done=4)

    def record(item, results):
        recorded.append((item, results))
        return len(item)

    run_dealt_job(DistContext(), plan, share=lambda item: item[0], work=lambda part: part * 10, record=record,
                  where=lambda r, item: "", desc="test", progress=False)
    assert recorded == [([1, 2], [10]), ([3], [30])]
