"""The cost model prices each stage from the table of measured rates and says how well the row
fits: measured, extrapolated (naming what differs) or proxy; benchmarks add rows with --record."""

import json

import pytest
import torch

from robustgen.cost import RATE_TABLE, find_rate, measured_row, rate_table, record_rates


def _row(workload, network, *, solver=None, precision="bf16", channels_last=False, tflops=100.0, gflop=10.0,
         shape=(32, 32, 3)):
    row = measured_row(workload, network, shape, solver=solver, precision=precision, channels_last=channels_last,
                       compile=False, batch=256, detail="test", gflop=gflop, images_per_s=1.0, tflops=tflops,
                       device=torch.device("cpu"), source="tests")
    return {**row, "gpu": "NVIDIA H200"}


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "rates.json"
    record_rates(path, [
        _row("trades-step", "wrn-28-10", precision="fp32", tflops=120.0),
        _row("sampling", "ho-cifar10", solver="ddpm", tflops=88.0, gflop=12.4),
        _row("sampling", "ho-cifar10", solver="dpm-solver++", tflops=109.0, gflop=12.4),
        _row("sampling", "ho-cifar10", solver="dpm-solver++", precision="fp32", tflops=84.0, gflop=12.4),
        _row("sampling", "guided-diffusion-imagenet64", solver="ddpm", tflops=162.0, gflop=219.0, shape=(64, 64, 3)),
        {**_row("sampling", "cifar-small", solver="ddpm", tflops=1.0, gflop=3.2), "gpu": "CPU"},  # not the GPU priced
    ])
    return str(path)


def test_a_stage_with_its_own_row_is_measured(table):
    rate = find_rate("sampling", "ho-cifar10", (32, 32, 3), 12.4, precision="bf16", solver="ddpm", table=table)
    assert (rate.tflops, rate.kind) == (88.0, "measured")
    assert "sampling ho-cifar10 32x32x3 bf16 batch 256" in rate.describe()


def test_the_nearest_row_prices_what_was_not_measured_and_says_what_differs(table):
    other_solver = find_rate("sampling", "ho-cifar10", (32, 32, 3), 12.4, precision="bf16", solver="ddim", table=table)
    assert other_solver.kind == "extrapolated" and "(other sampler)" in other_solver.source
    # precision matters most: the fp32 DPM-Solver++ row, not the bf16 one, prices fp32 DDIM
    fp32 = find_rate("sampling", "ho-cifar10", (32, 32, 3), 12.4, precision="fp32", solver="ddim", table=table)
    assert fp32.tflops == 84.0
    # a network without a row: the one of the nearest FLOPs (not the CPU row of the same network)
    small = find_rate("sampling", "cifar-small", (32, 32, 3), 3.2, precision="bf16", solver="ddpm", table=table)
    assert small.tflops == 88.0 and "(other network)" in small.source
    big = find_rate("sampling", "guided-diffusion-imagenet256", (256, 256, 3), 2239.0, precision="bf16",
                    solver="ddpm", table=table)
    assert big.tflops == 162.0 and big.kind == "extrapolated"


def test_a_workload_without_rows_uses_the_trades_step_and_says_proxy(table):
    rate = find_rate("attack", "wrn-28-10", (32, 32, 3), 10.5, precision="fp32", table=table)
    assert (rate.tflops, rate.kind) == (120.0, "proxy") and rate.describe().startswith("120 TFLOP/s (proxy: trades-step")


def test_record_replaces_the_same_measurement_and_keeps_the_rest(table):
    before = rate_table(table)
    record_rates(table, [_row("sampling", "ho-cifar10", solver="ddpm", tflops=90.0, gflop=12.4)])
    after = rate_table(table)
    assert len(after) == len(before)
    assert find_rate("sampling", "ho-cifar10", (32, 32, 3), 12.4, precision="bf16", solver="ddpm",
                     table=table).tflops == 90.0
    lines = open(table).read().splitlines()
    assert sum('"workload"' in line for line in lines) == len(after)  # one row per line: diffs stay readable
    json.loads(open(table).read())


def test_the_package_table_has_gpu_rows_for_the_presets_workloads():
    rows = rate_table()
    assert json.loads(RATE_TABLE.read_text())["rows"] == list(rows)
    have = {(r["workload"], r["network"]) for r in rows if "H200" in r["gpu"]}
    for need in [("trades-step", "wrn-28-10"), ("trades-step", "wrn-70-16"), ("sampling", "ho-cifar10"),
                 ("sampling", "guided-diffusion-imagenet64"), ("sampling", "guided-diffusion-imagenet256"),
                 ("labelling", "wrn-28-10")]:
        assert need in have, need
    for r in rows:  # every rate is the benchmark's images/s times its FLOPs
        calls = int(r["detail"].split(" = ")[1].split()[0]) if r["workload"] == "sampling" else 1
        per_image = 26 if r["workload"] == "trades-step" else calls
        assert r["tflops"] == pytest.approx(r["images_per_s"] * per_image * r["gflop"] / 1e3, rel=0.01), r


def test_the_paper_preset_prices_sampling_and_labelling_with_their_own_rates():
    from robustgen.presets import load_config
    from robustgen.cost import estimate_cost

    est = estimate_cost(load_config("cifar10_linf_wrn-28-10"), n_train=50000, n_test=10000, image_shape=(32, 32, 3),
                        num_classes=10)
    stages = {s.stage: s for s in est.stages}
    sampling, labelling = stages["sampling"], stages["labelling"]
    assert sampling.rate.kind == "measured" and "sampling ho-cifar10" in sampling.rate.source
    assert labelling.rate.kind == "measured" and "labelling wrn-28-10" in labelling.rate.source
    # 1000 DDPM steps per image at the measured per-call rate: the row's images/s over 10 (it ran 100 steps)
    row = next(r for r in rate_table() if r["workload"] == "sampling" and r["network"] == "ho-cifar10"
               and r["solver"] == "ddpm" and r["precision"] == "bf16" and not r["channels_last"])
    assert sampling.gpu_hours == pytest.approx(1_300_000 / (row["images_per_s"] / 10) / 3600, rel=0.01)
    assert stages["eval[baseline]"].rate.kind == "proxy"


def test_imported_sources_cost_no_sampling():
    from robustgen.presets import load_config
    from robustgen.cost import estimate_cost

    est = estimate_cost(load_config("cifar10_linf_wrn-28-10_wang2023"), n_train=50000, n_test=10000,
                        image_shape=(32, 32, 3), num_classes=10)
    sampling = next(s for s in est.stages if s.stage == "sampling")
    assert sampling.gpu_hours == 0 and "edm_data/cifar10/1m as stored" in sampling.line()
