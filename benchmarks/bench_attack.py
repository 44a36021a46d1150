"""Benchmark of MIGA end to end: images per second of the known-task attack on the
shipped denoiser + classifier, on real held-out images (the test split, noised with
sigma = 25), four ways:

  eager                 compile=False, backend "reference": plain PyTorch loss, backward and update
  compiled              compile=True,  backend "reference": torch.compile'd denoiser and loss
                        (forward and backward), the update in plain PyTorch
  compiled+fused        compile=True,  backend "auto": the same with the fused projection op
  compiled+fused bf16   the same with precision="bfloat16" (autocast: the models' convolutions
                        in bfloat16)

Compilation happens in a warm-up call and is reported apart (it is paid once per shape).
The paths are timed in interleaved rounds, each round on a fresh noise draw (seed =
round), and every path's attack quality is recorded per round beside its speed: the
share of correctly classified images whose label the attack changes, and the PSNR of the
attacked output against the clean image, so a faster arithmetic is judged by what it
does to the attack (mean and spread over the rounds). NVTX ranges mark each path and,
inside the attack, the phases `miga.forward_backward` and `miga.update` for Nsight.

    python benchmarks/bench_attack.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_attack.py --quick    # one configuration, fewer steps
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import miga_fast
from miga_fast import data
from miga_fast.attacks import MIGA
from miga_fast.models import registry
from miga_fast.nvtx import nvtx_range

from _common import bench_parser, finish, result_record, sync

# path -> (compile, backend, precision)
PATHS = {
    "eager": (False, "reference", "float32"),
    "compiled": (True, "reference", "float32"),
    "compiled+fused": (True, "auto", "float32"),
    "compiled+fused bf16": (True, "auto", "bfloat16"),
}
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
        x, y = data.load_natural_patches("test", size) if name == "natural" else data.load_digits("test")
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[:batch]  # the split is by class
        x, y = x[idx].to(device), y[idx].to(device)
        batch = x.shape[0]  # the split may hold fewer
        attacks, compile_s = {}, {}
        for path, (comp, backend, precision) in PATHS.items():
            attacks[path] = MIGA(D, F, eps=8 / 255, steps=args.steps, compile=comp, precision=precision)
            start = time.perf_counter()
            with miga_fast.set_backend(backend):
                attacks[path](data.add_gaussian_noise(x, 25, generator=0), y, x_clean=x)  # warm-up: compiles
            sync(device)
            compile_s[path] = time.perf_counter() - start
        times = {p: [] for p in PATHS}
        quality = {p: {"changed": [], "psnr": []} for p in PATHS}
        for rnd in range(args.rounds):
            xn = data.add_gaussian_noise(x, 25, generator=1 + rnd)
            for path, attack in attacks.items():
                with (
                    miga_fast.set_backend(PATHS[path][1]),
                    miga_fast.value_checks(False),
                    nvtx_range(f"{path}/{name}/{batch}x{channels}x{size}x{size}"),
                ):
                    sync(device)
                    start = time.perf_counter()
                    res = attack(xn, y, x_clean=x)
                    sync(device)
                    times[path].append(time.perf_counter() - start)
                correct = res.correct_before
                quality[path]["changed"].append(float(res.success[correct].float().mean()) if correct.any() else 0.0)
                quality[path]["psnr"].append(float(res.psnr.mean()))
        eager = statistics.median(times["eager"])
        for path in PATHS:
            t = statistics.median(times[path])
            q = quality[path]
            rows.append(
                {
                    "data": name,
                    "shape": [batch, channels, size, size],
                    "steps": args.steps,
                    "path": path,
                    "precision": PATHS[path][2],
                    "seconds": t,
                    "images_per_s": batch / t,
                    "speedup_vs_eager": eager / t,
                    "first_call_s": compile_s[path],
                    "compiled": bool(attacks[path].compile),
                    "labels_changed": q["changed"],
                    "labels_changed_mean": statistics.mean(q["changed"]),
                    "labels_changed_sd": statistics.pstdev(q["changed"]),
                    "psnr_db": q["psnr"],
                    "psnr_db_mean": statistics.mean(q["psnr"]),
                    "psnr_db_sd": statistics.pstdev(q["psnr"]),
                }
            )
    return result_record("attack", device, args, rows, rounds=args.rounds)


def print_table(result: dict) -> None:
    print(
        f"MIGA known task ({result['rows'][0]['steps']} steps) on {result['device']}; torch {result['torch']}; "
        f"median of {result['rounds']} interleaved rounds; quality: mean +- sd over the rounds' noise draws"
    )
    print(
        f"{'data':<8} {'shape':<14} {'path':<20} {'s/batch':>8} {'img/s':>8} {'vs eager':>9} "
        f"{'first call s':>13} {'labels changed':>16} {'PSNR dB':>13}"
    )
    for r in result["rows"]:
        print(
            f"{r['data']:<8} {'x'.join(map(str, r['shape'])):<14} {r['path']:<20} {r['seconds']:8.3f} "
            f"{r['images_per_s']:8.1f} {r['speedup_vs_eager']:8.2f}x {r['first_call_s']:13.1f} "
            f"{100 * r['labels_changed_mean']:9.1f}+-{100 * r['labels_changed_sd']:4.1f}% "
            f"{r['psnr_db_mean']:7.2f}+-{r['psnr_db_sd']:4.2f}"
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
