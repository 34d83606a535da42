"""The authors' released PyTorch architectures (deepmind-research adversarial_robustness/pytorch/
model_zoo.py): state dicts in their key layout load into wrn-* and preact-resnet-18, and the
networks compute what theirs compute (SAME padding, the PreAct 3x3 shortcut on the raw input)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustgen.checkpoint import load_external_model
from robustgen.cli import main
from robustgen.models import CIFAR10_MEAN_STD, CIFAR100_MEAN_STD, create_model


def _bn(prefix, c, g):
    return {f"{prefix}.weight": torch.rand(c, generator=g) + 0.5, f"{prefix}.bias": torch.randn(c, generator=g) * 0.1,
            f"{prefix}.running_mean": torch.randn(c, generator=g) * 0.1,
            f"{prefix}.running_var": torch.rand(c, generator=g) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _conv(cin, cout, k, g):
    return torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5


def authors_wrn_state(depth, width, classes, seed=0):
    """Keys and shapes as the authors' WideResNet(depth, width) names them."""
    g = torch.Generator().manual_seed(seed)
    ch = [16, 16 * width, 32 * width, 64 * width]
    n = (depth - 4) // 6
    s = {"init_conv.weight": _conv(3, 16, 3, g)}
    for gi in range(3):
        for i in range(n):
            cin, cout = (ch[gi] if i == 0 else ch[gi + 1]), ch[gi + 1]
            p = f"layer.{gi}.block.{i}"
            s |= _bn(f"{p}.batchnorm_0", cin, g) | {f"{p}.conv_0.weight": _conv(cin, cout, 3, g)}
            s |= _bn(f"{p}.batchnorm_1", cout, g) | {f"{p}.conv_1.weight": _conv(cout, cout, 3, g)}
            if cin != cout:
                s[f"{p}.shortcut.weight"] = _conv(cin, cout, 1, g)
    s |= _bn("batchnorm", ch[3], g)
    s |= {"logits.weight": torch.randn(classes, ch[3], generator=g) * 0.1, "logits.bias": torch.randn(classes, generator=g)}
    return s


def authors_preact_state(classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = {"conv_2d.weight": _conv(3, 64, 3, g)}
    cin = 64
    for li, w in enumerate((64, 128, 256, 512)):
        for i in range(2):
            stride = (1 if li == 0 else 2) if i == 0 else 1
            c0 = cin if i == 0 else w
            p = f"layer_{li}.{i}"
            s |= _bn(f"{p}.batchnorm_0", c0, g) | {f"{p}.conv_2d_1.weight": _conv(c0, w, 3, g)}
            s |= _bn(f"{p}.batchnorm_1", w, g) | {f"{p}.conv_2d_2.weight": _conv(w, w, 3, g)}
            if stride != 1 or c0 != w:
                s[f"{p}.shortcut.weight"] = _conv(c0, w, 3, g)
        cin = w
    s |= _bn("batchnorm", 512, g)
    s |= {"logits.weight": torch.randn(classes, 512, generator=g) * 0.1, "logits.bias": torch.randn(classes, generator=g)}
    return s


# Their forward passes, written out functionally (eval-mode BN, Swish), independent of robustgen's modules.
def _pad(x, stride):
    return F.pad(x, (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1))


def _bn_act(s, p, x):
    y = F.batch_norm(x, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"], False, 0.0, 1e-5)
    return y * torch.sigmoid(y)


def authors_wrn_forward(s, x, depth, mean_std):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    out = F.conv2d((x - mean) / std, s["init_conv.weight"], padding=1)
    for gi in range(3):
        for i in range((depth - 4) // 6):
            p = f"layer.{gi}.block.{i}"
            stride = (1 if gi == 0 else 2) if i == 0 else 1
            has_shortcut = f"{p}.shortcut.weight" in s
            act = _bn_act(s, f"{p}.batchnorm_0", out)
            y = F.conv2d(_pad(act, stride), s[f"{p}.conv_0.weight"], stride=stride)
            y = F.conv2d(_bn_act(s, f"{p}.batchnorm_1", y), s[f"{p}.conv_1.weight"], padding=1)
            out = (F.conv2d(act, s[f"{p}.shortcut.weight"], stride=stride) if has_shortcut else out) + y
    out = F.avg_pool2d(_bn_act(s, "batchnorm", out), 8).flatten(1)
    return F.linear(out, s["logits.weight"], s["logits.bias"])


def authors_preact_forward(s, x, mean_std):
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    out = F.conv2d((x - mean) / std, s["conv_2d.weight"], padding=1)
    for li in range(4):
        for i in range(2):
            p = f"layer_{li}.{i}"
            stride = (1 if li == 0 else 2) if i == 0 else 1
            act = _bn_act(s, f"{p}.batchnorm_0", out)
            shortcut = (F.conv2d(_pad(out, stride), s[f"{p}.shortcut.weight"], stride=stride)
                        if f"{p}.shortcut.weight" in s else out)
            y = F.conv2d(_pad(act, stride), s[f"{p}.conv_2d_1.weight"], stride=stride)
            y = F.conv2d(_bn_act(s, f"{p}.batchnorm_1", y), s[f"{p}.conv_2d_2.weight"], padding=1)
            out = y + shortcut
    out = F.avg_pool2d(_bn_act(s, "batchnorm", out), 4).flatten(1)
    return F.linear(out, s["logits.weight"], s["logits.bias"])


@pytest.mark.parametrize("depth,width,classes", [(16, 2, 10), (10, 1, 100)])
def test_authors_wrn_checkpoint_loads_and_computes_their_function(tmp_path, depth, width, classes):
    state = authors_wrn_state(depth, width, classes)
    assert set(state) == set(create_model(f"wrn-{depth}-{width}", num_classes=classes).state_dict()) - {"mean", "std"}
    path = tmp_path / "their.pt"
    torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DataParallel prefix, as many releases
    model = load_external_model(path, arch=f"wrn-{depth}-{width}", num_classes=classes)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = authors_wrn_forward(state, x, depth, CIFAR100_MEAN_STD if classes == 100 else CIFAR10_MEAN_STD)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)


def test_authors_preact_resnet_checkpoint_loads_and_computes_their_function(tmp_path):
    state = authors_preact_state(10)
    assert set(state) == set(create_model("preact-resnet-18", num_classes=10).state_dict()) - {"mean", "std"}
    assert state["layer_1.0.shortcut.weight"].shape == (128, 64, 3, 3)  # 3x3 projection shortcut
    path = tmp_path / "their.pt"
    torch.save(state, path)
    model = load_external_model(path, arch="preact-resnet-18", num_classes=10)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model(x), authors_preact_forward(state, x, CIFAR10_MEAN_STD), rtol=1e-4, atol=1e-4)


def test_eval_cli_evaluates_an_authors_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 20), ("test", 6)):
        np.savez(data / f"{split}.npz", image=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                 label=np.arange(n) % 10)
    state = authors_wrn_state(10, 1, 10)
    torch.save(state, tmp_path / "their.pt")
    out = tmp_path / "eval.json"
    main(["eval", "--checkpoint", str(tmp_path / "their.pt"), "--arch", "wrn-10-1", "--attack", "pgd40",
          "--set", f"data.dataset=npz:{data}", "--set", "device=cpu", "--out", str(out), "--quiet"])
    result = json.loads(out.read_text())
    x = torch.from_numpy(np.load(data / "test.npz")["image"]).permute(0, 3, 1, 2).float() / 255
    expected = (authors_wrn_forward(state, x, 10, CIFAR10_MEAN_STD).argmax(1).numpy() == np.arange(6) % 10).mean()
    assert result["clean_accuracy"] == pytest.approx(expected)
