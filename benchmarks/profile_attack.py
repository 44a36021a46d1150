"""Where a MIGA step's time goes: the known-task step split into its phases, eager and
compiled, on the shipped natural-patch models (batch 64 by default).

One step of the attack is: the denoiser's forward on x_n + delta, the classifier's
forward and the loss, the backward through the classifier (to the denoiser's output),
the backward through the denoiser (to delta), and the projected update. This script
times each phase on its own (the same tensors, median of many steps, each phase
synchronised), and the whole step as the attack runs it (MIGA with 2 * steps and with
`steps` steps; the difference divided by `steps`, so the attack's fixed per-batch work
cancels). "Python and glue" is the step minus the phases.

Paths:
  eager            plain PyTorch: eager models, autograd, the reference update
  compiled         torch.compile'd denoiser and classifier+loss (forward and backward),
                   the update through the fused op (miga_fast's default)
  compiled, ...    the same with one change each: the weights' requires_grad left on
                   (as a model loaded for training has it), or channels_last memory

    python benchmarks/profile_attack.py           # JSON in benchmarks/results/
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as tf

import miga_fast
from miga_fast import ops
from miga_fast.attacks import MIGA
from miga_fast.models import registry

from _common import bench_parser, finish, result_record, sync

PHASES = ("denoiser forward", "classifier forward + loss", "classifier backward", "denoiser backward", "update")


def _timed(fn, device, reps: int) -> float:
    samples = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def phase_times(D, F, x, y, eps, alpha, device, reps: int, compiled: bool, channels_last: bool) -> dict:
    """Median seconds of each phase of one known-task step (untargeted, lambda_rec = 10)."""
    mf = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=mf)
    x_ref = x.clone()

    def loss_fn(out, x_ref, y):
        rec = 10.0 * (out - x_ref).pow(2).flatten(1).mean(1)
        return (rec - tf.cross_entropy(F(out), y, reduction="none")).sum()

    den = torch.compile(D, dynamic=False) if compiled else D
    lossf = torch.compile(loss_fn, dynamic=False) if compiled else loss_fn
    delta = torch.zeros_like(x)
    state = {}

    def fwd_d():
        d = delta.detach().requires_grad_(True)
        state["d"] = d
        state["out"] = den(x + d)

    def fwd_f():
        out = state["out"].detach().requires_grad_(True)
        state["out_leaf"] = out
        state["loss"] = lossf(out, x_ref, y)

    def bwd_f():
        (state["g_out"],) = torch.autograd.grad(state["loss"], state["out_leaf"])

    def bwd_d():
        (state["g"],) = torch.autograd.grad(state["out"], state["d"], state["g_out"])

    def update():
        with torch.no_grad():
            ops.pgd_step_(delta, state["g"], x, eps, alpha, "linf", -1.0)

    times = {p: [] for p in PHASES}
    steps = [fwd_d, fwd_f, bwd_f, bwd_d, update]
    with miga_fast.value_checks(False):
        for _ in range(3):  # warm-up (compiles)
            for f in steps:
                f()
        for _ in range(reps):
            for name, f in zip(PHASES, steps):
                times[name].append(_timed(f, device, 1))
    return {p: statistics.median(v) for p, v in times.items()}


def attack_step_time(D, F, x, y, eps, steps: int, rounds: int, compile: bool, backend: str) -> float:
    """Seconds per step of the real attack: (time of 2*steps - time of steps) / steps."""
    atk = {n: MIGA(D, F, eps=eps, steps=n, compile=compile) for n in (steps, 2 * steps)}
    t = {n: [] for n in atk}
    with miga_fast.set_backend(backend):
        for a in atk.values():
            a(x, y)  # warm-up (compiles)
        for _ in range(rounds):
            for n, a in atk.items():
                with miga_fast.value_checks(False):
                    start = time.perf_counter()
                    a(x, y)
                    sync(x.device)
                    t[n].append(time.perf_counter() - start)
    return (statistics.median(t[2 * steps]) - statistics.median(t[steps])) / steps


def run(args) -> dict:
    device = torch.device(args.device)
    D = registry.load("dncnn_natural", device=device)
    F = registry.load("resnet_natural", device=device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 8, (args.batch,), generator=gen).to(device)
    eps = 8 / 255
    alpha = 2.5 * eps / args.steps
    paths = {
        "eager": dict(compiled=False, channels_last=False, grad_weights=False),
        "compiled": dict(compiled=True, channels_last=False, grad_weights=False),
        "compiled, weights requires_grad": dict(compiled=True, channels_last=False, grad_weights=True),
        "compiled, channels_last": dict(compiled=True, channels_last=True, grad_weights=False),
    }
    rows = []
    for path, cfg in paths.items():
        torch._dynamo.reset()
        for p in list(D.parameters()) + list(F.parameters()):
            p.requires_grad_(cfg["grad_weights"])
        mf = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
        D.to(memory_format=mf)
        F.to(memory_format=mf)
        with miga_fast.set_backend("auto" if cfg["compiled"] else "reference"):
            ph = phase_times(D, F, x, y, eps, alpha, device, args.reps, cfg["compiled"], cfg["channels_last"])
        row = {"path": path, **cfg, "phases_ms": {k: v * 1e3 for k, v in ph.items()}}
        if path in ("eager", "compiled"):
            backend = "reference" if path == "eager" else "auto"
            step = attack_step_time(D, F, x, y, eps, args.steps, args.rounds, cfg["compiled"], backend)
            row["attack_step_ms"] = step * 1e3
            row["python_and_glue_ms"] = (step - sum(ph.values())) * 1e3
            row["images_per_s"] = args.batch / step
        rows.append(row)
        print(f"{path}: " + ", ".join(f"{k} {v:.1f}" for k, v in row["phases_ms"].items()), flush=True)
    for p in list(D.parameters()) + list(F.parameters()):
        p.requires_grad_(False)
    return result_record(
        "attack_profile", device, args, rows, batch=args.batch, steps=args.steps, rounds=args.rounds, reps=args.reps
    )


def print_table(result: dict) -> None:
    rows = result["rows"]
    print(
        f"MIGA known-task step, natural patches {result['batch']}x3x32x32, on {result['device']}; "
        f"torch {result['torch']}; ms per step (median)"
    )
    names = [r["path"] for r in rows]
    print(f"{'phase':<28}" + "".join(f"{n:>34}" for n in names))
    for p in PHASES:
        print(f"{p:<28}" + "".join(f"{r['phases_ms'][p]:34.2f}" for r in rows))
    print(f"{'sum of phases':<28}" + "".join(f"{sum(r['phases_ms'].values()):34.2f}" for r in rows))
    for key, label in (("attack_step_ms", "attack step"), ("python_and_glue_ms", "Python and glue")):
        print(f"{label:<28}" + "".join(f"{r[key]:34.2f}" if key in r else f"{'-':>34}" for r in rows))


def main(argv=None) -> int:
    p = bench_parser(__doc__, "fewer repetitions")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="attack steps per timed call")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of each phase")
    p.add_argument("--rounds", type=int, default=None, help="timed attack calls per length")
    args = p.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 20)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return finish(run(args), "attack_profile", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
