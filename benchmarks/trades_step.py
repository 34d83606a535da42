"""Images/s of one TRADES-10 training step: robustgen against a plain eager reference, same run.

The reference is written the way the public PyTorch ports do it: float32, model.eval() for the
attack and model.train() for the update, sign steps of 2/255 from x + 0.001 N(0, 1), a per-step
`.item()` host sync, and parameters that keep requiring grad during the attack. Two flavours:
``backward`` takes the input gradient with ``loss.backward()`` and reads ``x_adv.grad`` (weight
gradients are computed and thrown away, as in the PGD-AT ports derived from Rice et al.);
``autograd`` uses ``torch.autograd.grad(loss, [x_adv])`` as Zhang et al.'s trades.py, which lets
autograd skip the weight gradients. robustgen's step freezes parameters during the attack, uses
the authors' BN convention and, by default, their Adam inner loop (``sign`` variants use the
reference's sign steps, so the algorithm is the same), and optionally bf16 autocast (``bf16``),
channels_last (``cl``), torch.compile (``compile``) and BatchNorm per group of --bn-group-size
images (``groups``, the authors' 32 images per core). Every variant runs the same model, batch
and number of attack steps, from the same initial weights; ratios are against the first row.

    python benchmarks/trades_step.py --arch small-cnn --image 8 --channels 1 --batch 128
    python benchmarks/trades_step.py --arch preact-resnet-18 --image 32 --channels 3 --batch 32 --repeats 3
    python benchmarks/trades_step.py --arch wrn-28-10 --image 32 --channels 3 --batch 256 --device cuda \\
        --variants adam,adam+bf16+cl,adam+bf16+cl+compile

On CUDA it also prints the achieved TFLOP/s (model FLOPs: the forward pass counted by
torch.utils.flop_counter, times 2k + 7 forward-equivalents per TRADES-k step) and the share of
the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from robustgen.models import create_model
from robustgen.models.ghost_batchnorm import use_bn_groups
from robustgen.train.steps import TrainingAttack, trades_step_loss

# Dense bf16 tensor-core peaks from the vendor data sheets (SXM parts), TFLOP/s.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def reference_step(model, x, y, optimizer, *, eps, step_size, steps, beta, grad_mode):
    """A TRADES step as the public ports write it."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    p_clean = F.softmax(model(x), dim=1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss_kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        if grad_mode == "backward":  # parameters still require grad: weight gradients computed too
            loss_kl.backward()
            grad = x_adv.grad
        else:
            grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    optimizer.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y) + beta * F.kl_div(F.log_softmax(model(x_adv), dim=1),
                                                        F.softmax(logits, dim=1), reduction="batchmean")
    loss.backward()
    optimizer.step()
    return loss.item()  # per-step host sync, as the ports log


def timed_interleaved(fns: list, warmup: int, repeats: int, sync) -> list[list[float]]:
    """Seconds per call of each function, measured in rounds (one call of each per round), so a
    drift in machine speed (shared CPUs, clocks) hits every variant alike."""
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


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--image", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="attack steps")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--references", default="backward,autograd", help="reference flavours to time, in order")
    p.add_argument("--variants", default="adam,sign",
                   help="robustgen variants: inner rule (adam|sign) joined by + with options bf16, cl, compile")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--micro-batches", type=int, default=1,
                   help="robustgen variants accumulate gradients over this many chunks of the batch")
    p.add_argument("--bn-group-size", type=int, default=32, help="images per BatchNorm group for the 'groups' option")
    a = p.parse_args()
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    eps = 8 / 255
    torch.manual_seed(0)
    x = torch.rand(a.batch, a.channels, a.image, a.image, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    targets = F.one_hot(y, 10).float()
    base = create_model(a.arch, num_classes=10, in_channels=a.channels).to(device)
    # Model FLOPs of a TRADES-k step: 3 + k forward passes (p_clean, k attack steps, clean and
    # adversarial logits), k input-gradient backward passes (~1 forward each) and the training
    # backward through 2 passes (~2 forwards each): 2k + 7 forward-equivalents, 27 for k = 10.
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base.eval()(x)
    base.train()
    step_flops = counter.get_total_flops() * (2 * a.steps + 7) if device.type == "cuda" else None

    entries = []  # (name, step function, FLOPs per step or None)
    for flavour in [f for f in a.references.split(",") if f]:
        if flavour not in ("backward", "autograd"):
            raise SystemExit(f"bad reference flavour {flavour!r}")
        ref_model = copy.deepcopy(base)
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)

        def reference(model=ref_model, opt=ref_opt, flavour=flavour):
            reference_step(model, x, y, opt, eps=eps, step_size=2 / 255, steps=a.steps, beta=6.0, grad_mode=flavour)

        entries.append((f"reference [{flavour}]", reference, None))

    for variant in [v for v in a.variants.split(",") if v]:
        rule, *options = variant.split("+")
        if rule not in ("adam", "sign") or set(options) - {"bf16", "cl", "compile", "groups"}:
            raise SystemExit(f"bad variant {variant!r}")
        model = use_bn_groups(copy.deepcopy(base), a.bn_group_size if "groups" in options else None)
        memory_format = torch.channels_last if "cl" in options else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        xs = x.contiguous(memory_format=memory_format)
        forward = torch.compile(model) if "compile" in options else model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        attack = TrainingAttack(norm="linf", eps=eps, steps=a.steps, step_rule=rule,
                                sign_step_size=2 / 255 if rule == "sign" else None)
        step_loss = trades_step_loss(attack, beta=6.0, bf16="bf16" in options)
        gen = torch.Generator(device=device).manual_seed(0)
        model.train()

        def ours(fwd=forward, opt=opt, step_loss=step_loss, xs=xs, gen=gen):
            opt.zero_grad(set_to_none=True)
            for xc, tc in zip(xs.chunk(a.micro_batches), targets.chunk(a.micro_batches)):
                (step_loss(fwd, fwd, xc, tc, gen) / a.micro_batches).backward()
            opt.step()

        entries.append((f"robustgen [{variant}]", ours, step_flops))

    timings = timed_interleaved([fn for _, fn, _ in entries], a.warmup, a.repeats, sync)
    rows = [(name, times, flops) for (name, _, flops), times in zip(entries, timings)]
    peaks = {}
    if device.type == "cuda":  # peak memory of one more step of each, measured alone
        for name, fn, _ in entries:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            sync()
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.machine()}, {torch.get_num_threads()} threads")
    micro = f" in {a.micro_batches} micro-batches (robustgen)" if a.micro_batches > 1 else ""
    print(f"{a.arch}, batch {a.batch}{micro}, {a.image}x{a.image}x{a.channels}, TRADES-{a.steps}, {device} ({where}), "
          f"median of {a.repeats} interleaved rounds after {a.warmup} warm-up steps, torch {torch.__version__}")
    baseline = statistics.median(rows[0][1])
    peak = a.peak_tflops or device_peak_tflops(device)
    for name, times, flops in rows:
        med = statistics.median(times)
        line = (f"  {name:<34} {a.batch / med:9.1f} img/s  step {1000 * med:8.1f} ms  "
                f"spread {1000 * (max(times) - min(times)):6.1f} ms  x{baseline / med:.2f}")
        if name in peaks:
            line += f"  peak {peaks[name]:.1f} GiB"
        if flops:
            tflops = flops / med / 1e12
            line += f"  {tflops:6.1f} TFLOP/s" + (f" ({100 * tflops / peak:.1f}% of bf16 peak {peak:g})" if peak else "")
        print(line)
    print(f"  (x: speed relative to {rows[0][0]})")


if __name__ == "__main__":
    main()
