"""Images/s of one TRADES-10 training step: robustgen against a plain eager reference, same run.

The reference is written the way the public PyTorch ports do it: float32, the model in eval()
/ train() toggles, parameters keep requiring grad during the attack (weight gradients are
computed and thrown away), sign steps of 2/255, and a per-step `.item()` host sync. robustgen's
step freezes parameters during the attack (input gradients only), uses the authors' Adam inner
loop and BN convention, and optionally bf16 autocast, channels_last and torch.compile.
Both run the same model, batch and number of attack steps; the ratio is what to read.

    python benchmarks/trades_step.py --arch small-cnn --image 8 --channels 1 --batch 128
    python benchmarks/trades_step.py --arch wrn-28-10 --batch 512 --device cuda --bf16 --channels-last --compile
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from robustgen.models import create_model
from robustgen.train.steps import TrainingAttack, trades_step_loss


def reference_step(model, x, y, optimizer, *, eps, step_size, steps, beta):
    """A TRADES step as the public ports write it (Zhang et al.'s reference code)."""
    model.eval()
    x_adv = x.detach() + 0.001 * torch.randn_like(x)
    p_clean = F.softmax(model(x), dim=1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss_kl = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]  # parameters still require grad
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    optimizer.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y) + beta * F.kl_div(F.log_softmax(model(x_adv), dim=1),
                                                        F.softmax(logits, dim=1), reduction="batchmean")
    loss.backward()
    optimizer.step()
    return loss.item()  # per-step host sync, as the ports log


def timed(fn, warmup: int, repeats: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


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
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    a = p.parse_args()
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    eps = 8 / 255
    torch.manual_seed(0)
    x = torch.rand(a.batch, a.channels, a.image, a.image, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    targets = F.one_hot(y, 10).float()

    ref_model = create_model(a.arch, num_classes=10, in_channels=a.channels).to(device)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)
    ref = timed(lambda: reference_step(ref_model, x, y, ref_opt, eps=eps, step_size=2 / 255, steps=a.steps, beta=6.0),
                a.warmup, a.repeats, sync)

    model = create_model(a.arch, num_classes=10, in_channels=a.channels).to(device)
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    xs = x.contiguous(memory_format=memory_format)
    forward = torch.compile(model) if a.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    step_loss = trades_step_loss(TrainingAttack(norm="linf", eps=eps, steps=a.steps), beta=6.0, bf16=a.bf16)
    gen = torch.Generator(device=device).manual_seed(0)
    model.train()

    def ours():
        opt.zero_grad(set_to_none=True)
        step_loss(forward, forward, xs, targets, gen).backward()
        opt.step()

    new = timed(ours, a.warmup, a.repeats, sync)
    r, o = statistics.median(ref), statistics.median(new)
    options = ", ".join(k for k, v in (("bf16", a.bf16), ("channels_last", a.channels_last), ("compile", a.compile)) if v)
    print(f"{a.arch}, batch {a.batch}, {a.image}x{a.image}x{a.channels}, TRADES-{a.steps}, {device} "
          f"({platform.machine()}, {torch.get_num_threads()} threads), median of {a.repeats} steps after {a.warmup} warm-up")
    print(f"  plain reference: {a.batch / r:9.1f} img/s  (step {1000 * r:.1f} ms, spread {1000 * (max(ref) - min(ref)):.1f} ms)")
    print(f"  robustgen{' [' + options + ']' if options else '':<10}: {a.batch / o:9.1f} img/s  (step {1000 * o:.1f} ms, "
          f"spread {1000 * (max(new) - min(new)):.1f} ms)")
    print(f"  ratio robustgen / reference: {r / o:.2f}x")


if __name__ == "__main__":
    main()
