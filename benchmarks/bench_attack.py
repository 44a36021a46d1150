"""Benchmark of MIGA end to end: images per second of the known-task attack on the
shipped denoiser + classifier, three ways:

  eager            compile=False, backend "reference": plain PyTorch loss, backward and update
  compiled         compile=True,  backend "reference": torch.compile'd denoiser and loss
                   (forward and backward), the update in plain PyTorch
  compiled+fused   compile=True,  backend "auto": the same with the fused projection op

Compilation happens in a warm-up call and is reported apart (it is paid once per shape).
The paths are timed in interleaved rounds; NVTX ranges mark each path and, inside the
attack, the phases `miga.forward_backward` (denoiser and classifier forward, backward)
and `miga.update` (the projected step) for Nsight Systems.

    python benchmarks/bench_attack.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_attack.py --quick    # one configuration, fewer steps
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import miga_fast
from miga_fast.attacks import MIGA
from miga_fast.models import registry
from miga_fast.nvtx import nvtx_range

from _common import bench_parser, finish, result_record, sync

PATHS = {"eager": (False, "reference"), "compiled": (True, "reference"), "compiled+fused": (True, "auto")}
CPU_CONFIGS = [
    ("natural", "dncnn_natural", "resnet_natural", 3, 32, 64),
    ("digits", "dncnn_digits", "cnn_digits", 1, 32, 64),
]
GPU_CONFIGS = [
    ("natural", "dncnn_natural", "resnet_natural", 3, 32, 256),
    ("natural", "dncnn_natural", "resnet_natural", 3, 64, 256),
    ("digits", "dncnn_digits", "cnn_digits", 1, 32, 256),
]


def run(args) -> dict:
    device = torch.device(args.device)
    configs = (GPU_CONFIGS if device.type == "cuda" else CPU_CONFIGS)[: 1 if args.quick else None]
    rows = []
    for name, den, cls, channels, size, batch in configs:
        D, F = registry.load(den, device=device), registry.load(cls, device=device)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, channels, size, size, generator=gen).to(device)
        y = torch.randint(0, 8, (batch,), generator=gen).to(device)
        attacks, compile_s = {}, {}
        for path, (comp, backend) in PATHS.items():
            attacks[path] = MIGA(D, F, eps=8 / 255, steps=args.steps, compile=comp)
            start = time.perf_counter()
            with miga_fast.set_backend(backend):
                attacks[path](x, y)  # warm-up: compilation for the compiled paths
            sync(device)
            compile_s[path] = time.perf_counter() - start
        times = {p: [] for p in PATHS}
        for _ in range(args.rounds):
            for path, attack in attacks.items():
                with (
                    miga_fast.set_backend(PATHS[path][1]),
                    miga_fast.value_checks(False),
                    nvtx_range(f"{path}/{name}/{batch}x{channels}x{size}x{size}"),
                ):
                    sync(device)
                    start = time.perf_counter()
                    attack(x, y)
                    sync(device)
                    times[path].append(time.perf_counter() - start)
        eager = statistics.median(times["eager"])
        for path in PATHS:
            t = statistics.median(times[path])
            rows.append(
                {
                    "data": name,
                    "shape": [batch, channels, size, size],
                    "steps": args.steps,
                    "path": path,
                    "seconds": t,
                    "images_per_s": batch / t,
                    "speedup_vs_eager": eager / t,
                    "first_call_s": compile_s[path],
                    "compiled": bool(attacks[path].compile),
                }
            )
    return result_record("attack", device, args, rows, rounds=args.rounds)


def print_table(result: dict) -> None:
    print(
        f"MIGA known task ({result['rows'][0]['steps']} steps) on {result['device']}; torch {result['torch']}; "
        f"median of {result['rounds']} interleaved rounds"
    )
    print(f"{'data':<8} {'shape':<14} {'path':<15} {'s/batch':>8} {'img/s':>8} {'vs eager':>9} {'first call s':>13}")
    for r in result["rows"]:
        print(
            f"{r['data']:<8} {'x'.join(map(str, r['shape'])):<14} {r['path']:<15} {r['seconds']:8.3f} "
            f"{r['images_per_s']:8.1f} {r['speedup_vs_eager']:8.2f}x {r['first_call_s']:13.1f}"
            + ("" if r["compiled"] or r["path"] == "eager" else "  (fell back to eager)")
        )


def main(argv=None) -> int:
    p = bench_parser(__doc__, "the first configuration only, 5 steps")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    args.steps = args.steps or (5 if args.quick else 10)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return finish(run(args), "attack", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
