"""Pseudo-labelling with f_NR, per-class top-k filtering (paper App. D) and sample grids (Fig. 12)."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from robustgen.label import predict_probabilities, pseudo_label, top_k_per_class
from robustgen.report.grid import save_sample_grid
from robustgen.runtime.errors import RobustgenError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _linear_model(in_features=4 * 4 * 3, num_classes=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(in_features, num_classes))
    with torch.no_grad():
        model[1].weight.mul_(10.0)
    return model


def test_predict_probabilities_matches_direct_softmax():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 4, 4, 3), dtype=np.uint8)
    model = _linear_model()
    model.train()
    probs = predict_probabilities(model, images, batch_size=8, progress=True)
    assert probs.dtype == np.float32 and probs.shape == (37, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert model.training  # mode restored
    # NCHW in [0, 1]: flattening NCHW differs from NHWC, so this pins the layout
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        expected = model.eval()(x).softmax(-1).numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    # batch size does not change the result
    np.testing.assert_allclose(predict_probabilities(model, images, batch_size=512), probs, atol=1e-6)


def test_predict_probabilities_runs_in_eval_mode_and_rejects_bad_input():
    class ModeProbe(nn.Module):
        def forward(self, x):
            assert not self.training and x.dtype == torch.float32 and x.max() <= 1.0
            return torch.zeros(len(x), 3)

    probs = predict_probabilities(ModeProbe(), np.full((4, 2, 2, 1), 255, np.uint8))
    np.testing.assert_allclose(probs, 1 / 3, atol=1e-7)
    with pytest.raises(RobustgenError, match="uint8"):
        predict_probabilities(ModeProbe(), np.zeros((4, 2, 2, 1), np.float32))
    with pytest.raises(RobustgenError, match="no images"):
        predict_probabilities(ModeProbe(), np.zeros((0, 2, 2, 1), np.uint8))


def test_pseudo_label():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]], np.float32)
    labels, conf = pseudo_label(probs)
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 2]
    assert conf.dtype == np.float32
    np.testing.assert_allclose(conf, [0.7, 0.5, 0.6])


def test_top_k_per_class_hand_case():
    #                  0    1    2    3    4    5    6    7    8
    labels = np.array([0, 1, 0, 0, 2, 0, 1, 0, 0])
    conf = np.array([0.5, 0.9, 0.8, 0.5, 0.3, 0.9, 0.4, 0.1, 0.8], np.float32)
    kept = top_k_per_class(labels, conf, k=3, num_classes=4)
    # class 0: 0.9 (5), then the 0.8 tie -> 2 and 8; class 1: both; class 2: one; class 3: none
    assert kept.dtype == np.int64
    assert kept.tolist() == [1, 2, 4, 5, 6, 8]
    # tie at the cut broken by the lower index
    assert top_k_per_class(labels, conf, k=2, num_classes=4).tolist() == [1, 2, 4, 5, 6]
    assert top_k_per_class(labels, conf, k=4, num_classes=4).tolist() == [0, 1, 2, 4, 5, 6, 8]
    assert top_k_per_class(labels, conf, k=0, num_classes=4).tolist() == []
    with pytest.raises(RobustgenError, match="labels"):
        top_k_per_class(labels, conf, k=1, num_classes=2)


def test_top_k_per_class_matches_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 2000)
    labels[labels == 6] = 5  # class 6 empty
    conf = np.round(rng.random(2000), 2).astype(np.float32)  # many ties
    kept = top_k_per_class(labels, conf, k=40, num_classes=7)
    expected = []
    for c in range(7):
        members = sorted(np.flatnonzero(labels == c), key=lambda i: (-conf[i], i))
        expected.extend(members[:40])
    assert kept.tolist() == sorted(expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_sample_grid_writes_png(tmp_path, channels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (25, 8, 8, channels), dtype=np.uint8)
    labels = np.array([0] * 20 + [1] * 5)  # class 1 short, class 2 empty: blank cells
    path = tmp_path / "grid.png"
    save_sample_grid(path, images, labels, class_names=["zero", "one", "two"], per_class=10, title="samples")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert os.listdir(tmp_path) == ["grid.png"]  # no temp file left behind
    # seeded: same bytes again
    save_sample_grid(str(path), images, labels, class_names=["zero", "one", "two"], per_class=10, title="samples")
    assert path.read_bytes() == data


def test_predict_probabilities_batches_and_speed_options():
    from robustgen.models.inference import InferenceOptions, prepare_for_inference

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Flatten(), nn.Linear(64, 5))
    whole = predict_probabilities(conv, images, batch_size=8)
    # given batches of rows: their rows, in that order, each computed as in the whole run
    part = predict_probabilities(conv, images, batch_size=8, batches=[(16, 24), (0, 8)])
    np.testing.assert_array_equal(part, np.concatenate([whole[16:24], whole[0:8]]))
    # channels_last: the same probabilities up to float rounding; bf16 asks for CUDA and is off on a CPU
    options = InferenceOptions(bf16=True, channels_last=True)
    nhwc = predict_probabilities(prepare_for_inference(conv, options), images, batch_size=8, options=options)
    np.testing.assert_allclose(nhwc, whole, atol=1e-6)
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
