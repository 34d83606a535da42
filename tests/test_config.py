"""Config loading: presets, overrides, fractions, and one-line errors for bad keys and values."""

import pytest

from robustgen.config import parse_number
from robustgen.presets import list_presets, load_config
from robustgen.runtime.errors import RobustgenError


def test_default_is_the_generator_demo_and_presets_validate():
    # robustgen run: baseline, a DDPM fitted on the kept images only and the held-out oracle arm at
    # equal steps, AutoAttack's APGD stages on the test split (docs/generator_study.md)
    cfg = load_config()
    assert cfg.data.dataset == "digits" and cfg.train.alpha < 1 and cfg.baseline
    assert cfg.generator.name == "ddpm" and cfg.generator.ddpm.pretrained is None
    assert [a.generator for a in cfg.arms] == ["heldout"]
    assert cfg.data.train_size is not None and cfg.eval.attack == "apgd-ce+apgd-t" and cfg.label.mode == "argmax"
    for name in list_presets():
        load_config(name)


def test_paper_preset_matches_the_authors_recipe():
    cfg = load_config("cifar10_linf_wrn-28-10")
    t = cfg.train
    assert (t.arch, t.loss, t.beta, t.alpha, t.batch_size, t.epochs, t.epoch_size) == (
        "wrn-28-10", "trades", 6.0, 0.3, 1024, 400.0, 50000)
    assert (t.inner.steps, t.inner.step_rule, t.inner.adam_lr, t.inner.adam_lr_boundaries) == (10, "adam", [0.1, 0.01], [5])
    assert t.ema_decay == 0.995 and t.label_smoothing_generated == 0.1 and t.weight_decay == 5e-4
    assert cfg.threat.eps == 8 / 255 and cfg.label.per_class == 100_000 and cfg.generator.num_samples > 1_000_000
    assert load_config("cifar10_l2_wrn-70-16").threat.eps == 128 / 255


def test_overrides_and_fractions():
    cfg = load_config(None, ["train.alpha=0.7", "threat.eps=4/255", "threat.norm=l2", "eval.n=10"])
    assert cfg.train.alpha == 0.7 and cfg.threat.eps == 4 / 255 and cfg.threat.norm == "l2" and cfg.eval.n == 10
    assert parse_number("8/255", key="k", source="s") == 8 / 255


@pytest.mark.parametrize("override,message", [
    ("train.alpah=0.3", "unknown config key 'train.alpah'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.alpha=1.5", "train.alpha must be in [0, 1]"),
    ("train.alpha=-0.1", "train.alpha must be in [0, 1]"),
    ("threat.eps=-0.1", "threat.eps must be >= 0"),
    ("threat.eps=abc", "threat.eps must be a number"),
    ("threat.norm=l3", "threat.norm must be one of"),
    ("train.batch_size=0.5", "train.batch_size must be an integer"),
    ("train.nesterov=3", "train.nesterov must be true or false"),
    ("train.arch=resnet-1000", "unknown architecture"),
    ("data.dataset=imagenet22k", "unknown dataset"),
    ("eval.attack=nope", "unknown attack"),
    ("train", "expected key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(RobustgenError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    # the error names what the user typed, never the installed preset file they did not name
    assert ".yaml" not in str(err.value) and ("--set" in str(err.value) or "expected key=value" in str(err.value))


def test_errors_blame_the_command_line_option_or_the_preset_file(tmp_path):
    with pytest.raises(RobustgenError, match=r"^--set train.alpha=2: train.alpha must be in \[0, 1\]"):
        load_config("digits_demo", ["threat.eps=0.1", "train.alpha=2"])
    with pytest.raises(RobustgenError, match=r"^eval.attack=fgsm \(command-line option\): eval.attack: unknown"):
        load_config(None, changes={"eval.attack": "fgsm"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {alpha: 3}\n")
    with pytest.raises(RobustgenError, match=f"^{bad}: train.alpha must be"):  # the file's own error
        load_config(str(bad), ["threat.eps=0.1"])


def test_bad_files(tmp_path):
    with pytest.raises(RobustgenError, match="config not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(RobustgenError, match="bad.yaml: invalid YAML"):
        load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  alpah: 0.3\n")
    with pytest.raises(RobustgenError, match=r"typo.yaml: unknown config key 'train.alpah'"):
        load_config(str(typo))


def test_replace_round_trip_keeps_values_and_types():
    from robustgen.config import config_to_dict, replace
    from robustgen.presets import load_config

    cfg = load_config("digits_demo", ["data.sources=[{path: train, weight: 1}, {path: x.npz, weight: 0, classes: [1, 2]}]",
                             "train.alpha=1"])
    again = replace(cfg, **{"train.alpha": 1.0})
    assert again == cfg and config_to_dict(again) == config_to_dict(cfg)
    assert cfg.train.inner.adam_lr_boundaries == [5] and cfg.data.sources[1].classes == [1, 2]
    assert all(type(v) is int for v in again.train.inner.adam_lr_boundaries)


def test_alpha_is_stated_once_data_sources_alone_gives_the_real_share():
    from robustgen.config import DEFAULT_ALPHA, RunConfig

    mix = "data.sources=[{path: train, weight: 0.4}, {path: generated, weight: 0.6}]"
    assert load_config("digits_demo", [mix, "train.alpha=null"]).train.alpha == pytest.approx(0.4)
    assert load_config("digits_demo", [mix, "train.alpha=0.4"]).train.alpha == pytest.approx(0.4)
    with pytest.raises(RobustgenError, match=r"set train.alpha=0.4 \(or null"):  # a second, different statement
        load_config("digits_demo", [mix])
    assert RunConfig().train.alpha == DEFAULT_ALPHA  # neither says: the authors' default
