import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def tiny_images():
    """A seeded uint8 NHWC batch and labels: 64 RGB images of 8x8, 4 classes."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 64).astype(np.int64)
