import signal

import numpy as np
import pytest
import torch

from robustgen.runtime import preempt

torch.set_num_threads(2)


@pytest.fixture
def tiny_images():
    """A seeded uint8 NHWC batch and labels: 64 RGB images of 8x8, 4 classes."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 64).astype(np.int64)


@pytest.fixture(autouse=True, scope="session")
def _private_speed_cache(tmp_path_factory):
    """Start-up speed measurements (robustgen.train.speed) are cached in a folder of this session,
    not in the user's ~/.cache."""
    import os

    old = os.environ.get("ROBUSTGEN_CACHE")
    os.environ["ROBUSTGEN_CACHE"] = str(tmp_path_factory.mktemp("robustgen-cache"))
    yield
    if old is None:
        os.environ.pop("ROBUSTGEN_CACHE", None)
    else:
        os.environ["ROBUSTGEN_CACHE"] = old


@pytest.fixture
def preemption_handlers_restored():
    """The preemption handlers a test installs are removed after it, and no stop request outlives it."""
    saved = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    preempt.reset()
    yield
    preempt.reset()
    for s, h in saved.items():
        signal.signal(s, h)
