"""Images/s of one TRADES-10 training step: robustgen against the public ports' TRADES, same run.

References (float32, eager, written the way the public PyTorch code does it; sign steps of
2/255, autograd.grad for the input gradient, a per-step `.item()` host sync):

- ``port``: the TRADES loss of the public PyTorch port of Gowal et al. (imrahulr/
  adversarial_robustness_pytorch, gowal21uncovering/utils/trades.py): the attack in train mode
  with BN running-stat updates off (the authors' convention, as robustgen), a uniform start,
  the clean target computed once; the update's clean and adversarial passes in train mode.
- ``zhang``: Zhang et al.'s trades.py formulation: the attack in ``model.eval()`` (BN with running
  statistics, cheaper than batch statistics), a start at x + 0.001 N(0, 1); the clean target is
  computed once here (trades.py recomputes it at every attack step, which would cost 10 more
  forward passes), so this is the stricter reference.
- ``backward``: as ``zhang`` with ``loss.backward()`` in the attack (weight gradients computed and
  thrown away, as in PGD-AT ports derived from Rice et al.).

robustgen variants: an inner rule (``adam``, the authors' 10-step Adam, or ``sign``, the ports'
steps) joined by ``+`` with options ``bf16`` (autocast), ``cl`` (channels_last), ``compile``
(torch.compile), ``twopass`` (the clean logits computed twice, as before they were shared) and
``groups`` (BatchNorm per group of --bn-group-size images, the authors' 32 images per core);
``default`` is the default training configuration: fp32, with the memory layout chosen by the
same start-up measurement training uses (robustgen.train.speed). Every entry runs the same
model, batch and number of attack steps from the same initial weights, in interleaved rounds
(one step of each per round), so a change of machine load hits all of them alike. Ratios are
computed per round (reference time / entry time in that round) and summarised by their median
and range over the rounds, against the first reference and against robustgen's plain fp32 step.

    python benchmarks/trades_step.py                       # WRN-16-4, batch 32, 32x32x3, CPU
    python benchmarks/trades_step.py --variants adam,default,adam+cl,adam+bf16,adam+bf16+cl --repeats 10
    python benchmarks/trades_step.py --arch wrn-28-10 --batch 256 --device cuda \\
        --variants adam,adam+bf16+cl+twopass,adam+bf16+cl,adam+bf16+cl+compile

On CUDA it also prints the achieved TFLOP/s (model FLOPs: the forward pass counted by
torch.utils.flop_counter, times the step's forward-equivalents: 2k + 6 for TRADES-k with a
shared clean pass, 2k + 7 with two) and the share of the device's dense bf16 peak.
``--profile`` prints the operators that take the time in one step of each entry.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from robustgen.cost import measured_row, record_rates
from robustgen.models import create_model
from robustgen.models.ghost_batchnorm import use_bn_groups
from robustgen.train.speed import choose_step_options, hardware_name
from robustgen.train.steps import TrainingAttack, trades_step_loss

# Dense bf16 tensor-core peaks from the vendor data sheets (SXM parts), TFLOP/s.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
REFERENCES = ("port", "zhang", "backward")
OPTIONS = {"bf16", "cl", "compile", "twopass", "groups"}


def track_running_stats(model, flag: bool) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = flag


def reference_step(model, x, y, optimizer, *, eps, step_size, steps, beta, flavour):
    """A TRADES step as the public code writes it (see the module docstring)."""
    kl_sum = torch.nn.KLDivLoss(reduction="sum")
    if flavour == "port":
        model.train()
        track_running_stats(model, False)
        x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    else:
        model.eval()
        x_adv = x.detach() + 0.001 * torch.randn_like(x)
    p_clean = F.softmax(model(x), dim=1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss_kl = kl_sum(F.log_softmax(model(x_adv), dim=1), p_clean)
        if flavour == "backward":  # parameters still require grad: weight gradients computed too
            loss_kl.backward()
            grad = x_adv.grad
        else:
            grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    track_running_stats(model, True)
    optimizer.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y) + beta * kl_sum(F.log_softmax(model(x_adv), dim=1),
                                                      F.softmax(logits, dim=1)) / len(x)
    loss.backward()
    optimizer.step()
    return loss.item()  # per-step host sync, as the ports log


def timed_interleaved(fns: list, warmup: int, repeats: int, sync) -> list[list[float]]:
    """Seconds per call of each function, measured in rounds (one call of each per round)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
    return times


def ratio_summary(base: list[float], times: list[float]) -> str:
    """Speed relative to ``base`` per round: median [min-max] over the rounds."""
    r = [b / t for b, t in zip(base, times)]
    return f"x{statistics.median(r):.2f} [{min(r):.2f}-{max(r):.2f}]"


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def load_average() -> str:
    try:
        return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="wrn-16-4")
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="attack steps")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--references", default="port,zhang", help=f"reference flavours, in order ({', '.join(REFERENCES)})")
    p.add_argument("--variants", default="adam,default,adam+twopass,sign,adam+cl,adam+bf16+cl",
                   help="robustgen variants: adam|sign joined by + with options bf16, cl, compile, twopass; or default")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="robustgen variants accumulate gradients over this many chunks of the batch")
    p.add_argument("--profile", action="store_true", help="print each entry's top operators over one step")
    p.add_argument("--bn-group-size", type=int, default=32, help="images per BatchNorm group for the 'groups' option")
    p.add_argument("--record", default=None, metavar="TABLE",
                   help="add the robustgen [adam...] rows to this measured-rates table (robustgen.cost; "
                        "twopass / groups / default variants are not recorded)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    eps = 8 / 255
    load_before = load_average()
    torch.manual_seed(0)
    x = torch.rand(a.batch, a.channels, a.image, a.image, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    targets = F.one_hot(y, 10).float()
    base = create_model(a.arch, num_classes=10, in_channels=a.channels).to(device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base.eval()(x)
    base.train()
    forward_flops = counter.get_total_flops() if device.type == "cuda" or a.record else None

    entries = []  # (name, step function, FLOPs per step or None)
    for flavour in [f for f in a.references.split(",") if f]:
        if flavour not in REFERENCES:
            raise SystemExit(f"bad reference flavour {flavour!r} (choose from {', '.join(REFERENCES)})")
        ref_model = copy.deepcopy(base)
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)

        def reference(model=ref_model, opt=ref_opt, flavour=flavour):
            reference_step(model, x, y, opt, eps=eps, step_size=2 / 255, steps=a.steps, beta=6.0, flavour=flavour)

        entries.append((f"reference [{flavour}]", reference, forward_flops and forward_flops * (2 * a.steps + 7)))

    chunk = (a.batch // a.micro_batches, a.channels, a.image, a.image)
    for variant in [v for v in a.variants.split(",") if v]:
        if variant == "default":
            with tempfile.TemporaryDirectory() as cache:  # a fresh measurement, as a first run would make
                os.environ["ROBUSTGEN_CACHE"] = cache
                attack = TrainingAttack(norm="linf", eps=eps, steps=a.steps)
                chosen = choose_step_options(
                    base, lambda bf16: trades_step_loss(attack, beta=6.0, bf16=bf16), precision="fp32",
                    channels_last=None, batch_shape=chunk, num_classes=10, device=device,
                    what=f"{a.arch} trades-{a.steps}", log=lambda line: print("  default: " + line))
            rule, options = "adam", (["cl"] if chosen.channels_last else []) + (["bf16"] if chosen.bf16 else [])
        else:
            rule, *options = variant.split("+")
            if rule not in ("adam", "sign") or set(options) - OPTIONS:
                raise SystemExit(f"bad variant {variant!r}")
        model = use_bn_groups(copy.deepcopy(base), a.bn_group_size if "groups" in options else None)
        memory_format = torch.channels_last if "cl" in options else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        xs = x.contiguous(memory_format=memory_format)
        forward = torch.compile(model) if "compile" in options else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        attack = TrainingAttack(norm="linf", eps=eps, steps=a.steps, step_rule=rule,
                                sign_step_size=2 / 255 if rule == "sign" else None)
        two = "twopass" in options
        step_loss = trades_step_loss(attack, beta=6.0, bf16="bf16" in options, share_clean_pass=not two)
        gen = torch.Generator(device=device).manual_seed(0)
        model.train()

        def ours(fwd=forward, opt=opt, step_loss=step_loss, xs=xs, gen=gen):
            opt.zero_grad(set_to_none=True)
            for xc, tc in zip(xs.chunk(a.micro_batches), targets.chunk(a.micro_batches)):
                (step_loss(fwd, fwd, xc, tc, gen) / a.micro_batches).backward()
            opt.step()

        label = variant if variant != "default" else "default = " + "+".join([rule, *options])
        entries.append((f"robustgen [{label}]", ours, forward_flops and forward_flops * (2 * a.steps + 6 + two)))

    timings = timed_interleaved([fn for _, fn, _ in entries], a.warmup, a.repeats, sync)
    peaks = {}
    if device.type == "cuda":  # peak memory of one more step of each, measured alone
        for name, fn, _ in entries:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            sync()
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
    micro = f" in {a.micro_batches} micro-batches (robustgen)" if a.micro_batches > 1 else ""
    print(f"{a.arch}, batch {a.batch}{micro}, {a.image}x{a.image}x{a.channels}, TRADES-{a.steps}, {device} "
          f"({hardware_name(device)}), {a.repeats} interleaved rounds after {a.warmup} warm-up step(s) each, "
          f"torch {torch.__version__}, {platform.node() or 'host'}: {load_before} before, {load_average()} after")
    names = [name for name, _, _ in entries]
    own = next((i for i, n in enumerate(names) if n == "robustgen [adam]"), None)
    peak = a.peak_tflops or device_peak_tflops(device)
    header = f"  {'step':<40} {'img/s':>8} {'ms/step':>9}  vs {names[0]} (median [range] per round)"
    print(header + ("  vs robustgen [adam]" if own is not None else ""))
    for (name, _, flops), times in zip(entries, timings):
        med = statistics.median(times)
        line = (f"  {name:<40} {a.batch / med:8.1f} {1000 * med:9.1f}  {ratio_summary(timings[0], times):<20}")
        if own is not None:
            line += f"  {ratio_summary(timings[own], times)}"
        if name in peaks:
            line += f"  peak {peaks[name]:.1f} GiB"
        if flops:
            tflops = flops / med / 1e12
            line += f"  {tflops:6.1f} TFLOP/s" + (f" ({100 * tflops / peak:.1f}% of bf16 peak {peak:g})" if peak else "")
        print(line)
    if a.record:
        rows = []
        for (name, _, flops), times in zip(entries, timings):
            variant = name.removeprefix("robustgen [").removesuffix("]")
            rule, *options = variant.split("+")
            if not name.startswith("robustgen [") or rule != "adam" or {"twopass", "groups"} & set(options):
                continue
            med = statistics.median(times)
            micro = f" in {a.micro_batches} micro-batches" if a.micro_batches > 1 else ""
            rows.append(measured_row(
                "trades-step", a.arch, (a.image, a.image, a.channels), precision="bf16" if "bf16" in options else "fp32",
                channels_last="cl" in options, compile="compile" in options, batch=a.batch,
                detail=f"TRADES-{a.steps} step{micro}, median of {a.repeats}", gflop=forward_flops / a.batch / 1e9,
                images_per_s=a.batch / med, tflops=flops / med / 1e12, device=device, source="benchmarks/trades_step.py"))
        record_rates(a.record, rows)
        print(f"recorded {len(rows)} row(s) in {a.record}")
    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        for name, fn, _ in entries:
            with profile(activities=activities) as prof:
                fn()
                sync()
            print(f"\n{name}: one step\n" + prof.key_averages().table(sort_by=sort, row_limit=12))


if __name__ == "__main__":
    main()
