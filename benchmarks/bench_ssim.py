"""Benchmark of SSIM: forward, and forward + backward (the gradient in x), per sample.

Compared in one run: the plain-PyTorch reference, pytorch-msssim (the common peer), and
every miga_fast backend with an SSIM kernel that runs here (C++ on CPU; CUDA and Triton
as they land, and fused-ssim on a GPU when it is installed). The implementations are
timed in interleaved rounds, so a noisy machine slows them alike; the table reports the
median of each and the speed-up over pytorch-msssim. NVTX ranges name impl/pass/shape.

    python benchmarks/bench_ssim.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_ssim.py --quick    # one size
"""
from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import sys

import torch
from _common import device_name, time_call, write_json

import miga_fast
from miga_fast import ops
from miga_fast.nvtx import nvtx_range

SIZES = [(64, 3, 32, 32), (16, 3, 128, 128), (8, 3, 256, 256), (8, 3, 512, 512)]
QUICK_SIZES = [(16, 3, 128, 128)]


def implementations(device):
    impls = {"reference (eager)": ("reference", ops.ssim)}
    try:
        import pytorch_msssim

        impls["pytorch-msssim"] = (None, lambda a, b: pytorch_msssim.ssim(a, b, data_range=1, size_average=False))
    except ImportError:
        pass
    family = importlib.import_module("miga_fast.ops.ssim")  # the module (ops.ssim is the function)
    for backend in family.KERNELS:
        wanted = "cpu" if backend == "cpu" else "cuda"
        if device.type == wanted and miga_fast.backends()[backend]["runs_here"]:
            impls[f"miga_fast {backend}"] = (backend, ops.ssim)
    return impls


def run(args) -> dict:
    device = torch.device(args.device)
    rows = []
    for shape in QUICK_SIZES if args.quick else SIZES:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(shape, generator=gen).to(device)
        y = (x + 0.1 * torch.randn(shape, generator=gen).to(device)).clamp(0, 1)
        impls = implementations(device)
        times = {(name, p): [] for name in impls for p in ("forward", "forward+backward")}
        for _ in range(args.rounds):
            for name, (backend, fn) in impls.items():
                def forward():
                    with torch.no_grad():
                        fn(x, y)

                def forward_backward():
                    xx = x.detach().requires_grad_(True)
                    fn(xx, y).sum().backward()

                for pass_name, f in (("forward", forward), ("forward+backward", forward_backward)):
                    with miga_fast.set_backend(backend or "auto"), miga_fast.value_checks(False), \
                            nvtx_range(f"{name}/{pass_name}/{'x'.join(map(str, shape))}"):
                        times[(name, pass_name)].append(time_call(f, device, 1, 1, args.min_time))
        # The SSIM ball: the largest step t back into SSIM(x, x + t delta) >= 0.95 (16 candidates, 5 rounds).
        # Up to 256 x 256: beyond, the reference's [B, 16, C, H, W] float64 maps take gigabytes.
        ball_impls = {"reference (eager)": "reference"} if shape[-1] <= 256 else {}
        family = importlib.import_module("miga_fast.ops.ssim")
        for backend in family.BALL_KERNELS if ball_impls else ():
            if device.type == ("cpu" if backend == "cpu" else "cuda") and miga_fast.backends()[backend]["runs_here"]:
                ball_impls[f"miga_fast {backend}"] = backend
        delta = y - x
        for name in ball_impls:
            times[(name, "ball_scale")] = []
        for _ in range(args.rounds):
            for name, backend in ball_impls.items():
                with miga_fast.set_backend(backend), miga_fast.value_checks(False), \
                        nvtx_range(f"{name}/ball_scale/{'x'.join(map(str, shape))}"):
                    times[(name, "ball_scale")].append(
                        time_call(lambda: ops.ssim_ball_scale(delta, x, 0.95), device, 1, 1, args.min_time))
        ref_ball = statistics.median(times[("reference (eager)", "ball_scale")]) if ball_impls else None
        for name in ball_impls:
            t = statistics.median(times[(name, "ball_scale")])
            rows.append({"shape": list(shape), "pass": "ball_scale", "impl": name, "ms": t * 1e3,
                         "images_per_s": shape[0] / t, "speedup_vs_pytorch_msssim": None,
                         "speedup_vs_reference": ref_ball / t})
        for pass_name in ("forward", "forward+backward"):
            peer = statistics.median(times[("pytorch-msssim", pass_name)]) if ("pytorch-msssim", pass_name) in times else None
            for name in impls:
                t = statistics.median(times[(name, pass_name)])
                rows.append({"shape": list(shape), "pass": pass_name, "impl": name, "ms": t * 1e3,
                             "images_per_s": shape[0] / t,
                             "speedup_vs_pytorch_msssim": (peer / t) if peer else None})
    return {"benchmark": "ssim", "device": device_name(device), "device_type": device.type,
            "torch": torch.__version__, "miga_fast": miga_fast.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "rounds": args.rounds, "quick": args.quick, "rows": rows}


def print_table(result: dict) -> None:
    print(f"SSIM (11x11 Gaussian, valid) on {result['device']}; torch {result['torch']}; "
          f"median of {result['rounds']} interleaved rounds")
    print(f"{'shape':<16} {'pass':<17} {'implementation':<20} {'ms':>9} {'img/s':>9} {'speed-up':>9}")
    for r in result["rows"]:
        sp = f"{r['speedup_vs_pytorch_msssim']:.2f}x" if r["speedup_vs_pytorch_msssim"] else "-"
        if r["pass"] == "ball_scale":
            sp = f"{r['speedup_vs_reference']:.1f}x ref"
        print(f"{'x'.join(map(str, r['shape'])):<16} {r['pass']:<17} {r['impl']:<20} {r['ms']:9.2f} "
              f"{r['images_per_s']:9.0f} {sp:>9}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (median reported)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    result = run(args)
    print_table(result)
    write_json(result, "ssim", args.out, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
