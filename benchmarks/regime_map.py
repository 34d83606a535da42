"""Regime map: where does extra data improve robustness? (paper Sec. 4; Schmidt et al. 2018)

A small grid on the digits demo, one factor at a time around a centre point (150 real training
images, small CNN of width 32, 469 TRADES steps of batch 128, Linf eps 0.2, f_NR pseudo-labels);
the other points change the labels of the oracle's images (true labels), the steps (938), the
width (64; 16 with 938 steps), eps (0.1) or the real-set size (400, 75, 50). For every point and
seed it trains, at the same number of steps, the arms of --arms:

    baseline            real images only (alpha = 1)
    heldout (oracle)    + the real training images withheld by data.train_size, pseudo-labelled by
                        f_NR like generated data (the perfect-generator reference), alpha 0.3
    gaussian            + 5000 samples of the class-conditional Gaussian (App. D), alpha 0.8
    ddpm                + 5000 samples of a class-conditional DDPM fitted on the real images, alpha 0.3
                        (generator.ddpm's defaults: 0.9M-parameter UNet, 3000 steps, DPM-Solver++ 20 steps)

and the generator study's DDPM variants (ARMS, e.g. ddpm-steps1000; NAME@ALPHA for another alpha;
docs/generator_study.md). A seed is train.seed: f_NR, the samples and their labels are shared by
the seeds of a point, so the standard errors measure training noise only.

The map is a thin call of ``robustgen.sweep``: every (point, seed) is a run of the same config
with the point's settings, sharing one stage cache (a rerun resumes; what points share runs once),
aggregated in OUT/sweep.md (mean ± SE, seed-paired gains over the baseline) and OUT/sweep.png:

    python benchmarks/regime_map.py --out runs/regime-map --dry-run        # the grid and its cost
    python benchmarks/regime_map.py --out runs/regime-map                  # every point, 3 seeds
    python benchmarks/regime_map.py --points eps-0.1 --arms baseline,ddpm-steps1000,heldout

The last is the default demo's point (configs/digits_generator.yaml): its seed-0 run is that
preset, stage for stage. The published map (docs/figures/regime_map.md) was measured by this
script's job-list form (git revision 5387ade), which ran the same configs.
"""


from __future__ import annotations

import argparse
import sys
from pathlib import Path

CENTRE = {"data.train_size": 150, "train.arch": "small-cnn", "train.epoch_size": 1200, "train.epochs": 50,
          "threat.eps": 0.2}
POINTS = {"centre": {}, "true-labels": {"label.mode": "condition"}, "steps-938": {"train.epochs": 100},
          "width-16-steps-938": {"train.arch": "small-cnn-16", "train.epochs": 100},
          "real-75": {"data.train_size": 75}, "real-50": {"data.train_size": 50},
          "real-400": {"data.train_size": 400}, "eps-0.1": {"threat.eps": 0.1},
          # the study's check of model selection: PGD-40 on the validation split every 5 epochs (10
          # checkpoints) instead of 25, every arm retrained (issue 23 item 4)
          "eps-0.1-select5": {"threat.eps": 0.1, "train.eval_every_epochs": 5},
          "width-64": {"train.arch": "small-cnn-64"}}

# Generator arms: name -> (generator, alpha, config changes). The variants change the DDPM's fit
# (issue 23; docs/generator_study.md): a job trains at most one arm with changes (the run's
# configured generator). "NAME@A" is arm NAME at alpha A.
ARMS = {"heldout": ("heldout", 0.3, ()), "gaussian": ("gaussian", 0.8, ()), "ddpm": ("ddpm", 0.3, ()),
        "ddpm-dropout0.1": ("ddpm", 0.3, ("generator.ddpm.dropout=0.1",)),
        "ddpm-dropout0.3": ("ddpm", 0.3, ("generator.ddpm.dropout=0.3",)),
        "ddpm-steps1000": ("ddpm", 0.3, ("generator.ddpm.train_steps=1000",)),
        "ddpm-uncond": ("ddpm", 0.3, ("generator.ddpm.class_conditional=false",)),
        "ddpm-augment": ("ddpm", 0.3, ("generator.ddpm.augment_shift=1", "generator.ddpm.augment_p=0.5")),
        # added after phase A's choice (issue 23 item 2): Karras et al.'s objective; classifier-free guidance
        "ddpm-edm": ("ddpm", 0.3, ("generator.ddpm.objective=edm",)),
        "ddpm-cfg": ("ddpm", 0.3, ("generator.ddpm.label_dropout=0.1", "generator.ddpm.guidance=0.5"))}


def arm_spec(arm: str) -> tuple[str, float, tuple]:
    """(generator, alpha, config changes) of an arm name."""
    name, _, alpha = arm.partition("@")
    generator, default_alpha, changes = ARMS[name]
    return generator, float(alpha) if alpha else default_alpha, changes

DEFAULT_ARMS = ("baseline", "heldout", "gaussian", "ddpm")


def point_overrides(changes: dict, arms) -> dict:
    """The sweep point (config key -> value) of a map point with these arms."""
    settings = {**CENTRE, **changes}
    # the arm that changes the generator's settings is the run's generator; the others are ``arms``,
    # which read the run's generator settings: none of them may change settings or share its generator
    generated = sorted((a for a in arms if a != "baseline"), key=lambda a: not arm_spec(a)[2])
    (main, alpha, main_changes), others = arm_spec(generated[0]), [arm_spec(a) for a in generated[1:]]
    if any(c for _, _, c in others) or (main_changes and any(g == main for g, _, _ in others)):
        raise ValueError(f"one arm per run may change the generator's settings, and no other arm may use "
                         f"that generator: {arms}")
    arm_list = "[" + ", ".join(f"{{generator: {g}, alpha: {a}}}" for g, a, _ in others) + "]"
    return {**settings,
            # f_NR: ~250 steps of batch 128 whatever the real-set size (30 passes over 150 images leave it at 25%)
            "classifier.epochs": round(32000 / settings["data.train_size"]),
            "generator.name": main, "train.alpha": alpha, "arms": arm_list, "baseline": "baseline" in arms,
            **dict(c.split("=", 1) for c in main_changes)}


def map_config(attack: str):
    """The settings every point shares (model selection every 25 epochs unless a point says otherwise)."""
    from robustgen.presets import load_config

    return load_config("digits_demo", ["train.eval_every_epochs=25", "generator.num_samples=5000",
                                       f"eval.attack={attack}", "eval.batch_size=540"])


def map_points(names, arms, extra=()) -> dict:
    """The sweep's points: each map point with these arms, then the ``extra`` KEY=VALUE overrides."""
    forced = dict(item.split("=", 1) for item in extra)
    return {name: {**point_overrides(POINTS[name], arms), **forced} for name in names}


def point_config(changes: dict, arms, seed: int, attack: str, extra=()):
    """(config, settings) of one map point and seed, as the sweep runs it."""
    from robustgen.sweep import point_configs

    overrides = {**point_overrides(changes, arms), **dict(item.split("=", 1) for item in extra)}
    (_, _, cfg), = point_configs(map_config(attack), {"point": overrides}, [seed])
    return cfg, {**CENTRE, **changes}


def main(argv=None) -> int:
    from robustgen.sweep import dry_run_sweep, run_sweep

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/regime-map"))
    parser.add_argument("--points", default=",".join(POINTS), help="comma-separated points (default: all)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated arms of {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--attack", default="autoattack")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE applied to every point (smoke tests, e.g. train.epochs=1)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid and its cost only")
    args = parser.parse_args(argv)
    names, arms = args.points.split(","), tuple(args.arms.split(","))
    unknown = [n for n in names if n not in POINTS] + [a for a in arms if a != "baseline" and a.split("@")[0] not in ARMS]
    if unknown:
        raise SystemExit(f"unknown point or arm: {', '.join(unknown)}")
    points = map_points(names, arms, args.overrides)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = map_config(args.attack)
    if args.dry_run:
        lines, problems = dry_run_sweep(cfg, args.out, points=points, seeds=seeds)
        print("\n".join(lines + problems))
        return 2 if problems else 0
    import torch

    torch.set_num_threads(1)  # two map processes on two cores, one thread each
    run_sweep(cfg, args.out, points=points, seeds=seeds, progress=False)
    print((args.out / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
