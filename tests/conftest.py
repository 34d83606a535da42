import numpy as np
import pytest
import torch

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
