"""Benchmark of SSIM: forward, and forward + backward (the gradient in x), per sample.

Compared in one run: the plain-PyTorch reference and pytorch-msssim (the common peer),
each eager and under torch.compile (compiled before timing), and every miga_fast backend
with an SSIM kernel that runs here (C++ on CPU; CUDA and Triton on a GPU).
pytorch-msssim's semantics are 'valid' padding. When fused-ssim is installed (GPU only),
it is timed against every miga_fast GPU backend at its own semantics, 'same' (zero)
padding, rows marked "(same)". Their values are compared before timing, and the
largest difference is recorded. The implementations are timed in interleaved rounds, so
a noisy machine slows them alike. The table reports the median of each and the speed-up
over the strongest peer (the fastest non-miga_fast implementation of that pass and
shape), or over fused-ssim for the "(same)" rows; the JSON also keeps the speed-up over
eager pytorch-msssim. NVTX ranges name impl/pass/shape.

    python benchmarks/bench_ssim.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_ssim.py --quick    # one size
"""

from __future__ import annotations

import functools
import statistics
import sys

import torch

import miga_fast
from miga_fast import ops
from miga_fast.reference import ssim as ref_ssim

from _common import (
    bench_parser,
    call_context,
    compiled_backends,
    finish,
    interleaved_times,
    result_record,
    strongest_peer,
)

SIZES = [(64, 3, 32, 32), (16, 3, 128, 128), (8, 3, 256, 256), (8, 3, 512, 512)]
QUICK_SIZES = [(16, 3, 128, 128)]


def implementations(device):
    impls = {
        "reference (eager)": ("reference", ops.ssim),
        "reference (torch.compile)": (None, torch.compile(ref_ssim.ssim)),
    }
    try:
        import pytorch_msssim

        def msssim(a, b):
            return pytorch_msssim.ssim(a, b, data_range=1, size_average=False)

        impls["pytorch-msssim"] = (None, msssim)
        impls["pytorch-msssim (torch.compile)"] = (None, torch.compile(msssim))
    except ImportError:
        pass
    ours = compiled_backends("ssim", device)
    for backend in ours:
        impls[f"miga_fast {backend}"] = (backend, ops.ssim)
    fused = _fused_ssim() if device.type == "cuda" else None
    if fused is not None:
        # fused-ssim: 11x11 Gaussian (1.5), C1 = 0.01^2, C2 = 0.03^2, zero padding, the mean over the batch
        impls["fused-ssim (same)"] = (None, lambda a, b: fused(a, b, padding="same", train=torch.is_grad_enabled()))
        for backend in ours:
            impls[f"miga_fast {backend} (same)"] = (backend, lambda a, b: ops.ssim(a, b, padding="same"))
    return impls


def _fused_ssim():
    try:
        from fused_ssim import fused_ssim
    except ImportError:
        return None
    return fused_ssim


def same_semantics_gap(impls, x, y) -> float | None:
    """The largest |mean SSIM| difference between fused-ssim and the "(same)" rows."""
    if "fused-ssim (same)" not in impls:
        return None
    with torch.no_grad():
        peer = float(impls["fused-ssim (same)"][1](x, y))
        gaps = []
        for name, (backend, fn) in impls.items():
            if name.endswith("(same)") and backend is not None:
                with miga_fast.set_backend(backend):
                    gaps.append(abs(float(fn(x, y).mean()) - peer))
    return max(gaps) if gaps else None


def run(args) -> dict:
    device = torch.device(args.device)
    rows = []
    for shape in QUICK_SIZES if args.quick else SIZES:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(shape, generator=gen).to(device)
        y = (x + 0.1 * torch.randn(shape, generator=gen).to(device)).clamp(0, 1)
        impls = implementations(device)
        gap = same_semantics_gap(impls, x, y)
        cases = {}
        for name, (backend, fn) in impls.items():

            def forward(fn=fn):
                with torch.no_grad():
                    fn(x, y)

            def forward_backward(fn=fn):
                xx = x.detach().requires_grad_(True)
                fn(xx, y).sum().backward()

            for pass_name, f in (("forward", forward), ("forward+backward", forward_backward)):
                where = f"{name}/{pass_name}/{'x'.join(map(str, shape))}"
                cases[(name, pass_name)] = (f, functools.partial(call_context, backend, False, where))
        times = interleaved_times(cases, device, args.rounds, args.min_time)
        # The SSIM ball: the largest step t back into SSIM(x, x + t delta) >= 0.95 (16 candidates, 5 rounds).
        # Up to 256 x 256: beyond, the reference's [B, 16, C, H, W] float64 maps take gigabytes.
        ball_impls = {"reference (eager)": "reference"} if shape[-1] <= 256 else {}
        for backend in compiled_backends("ssim_ball_scale", device) if ball_impls else ():
            ball_impls[f"miga_fast {backend}"] = backend
        delta = y - x
        ball_cases = {
            (name, "ball_scale"): (
                lambda: ops.ssim_ball_scale(delta, x, 0.95),
                functools.partial(call_context, backend, False, f"{name}/ball_scale/{'x'.join(map(str, shape))}"),
            )
            for name, backend in ball_impls.items()
        }
        times.update(interleaved_times(ball_cases, device, args.rounds, args.min_time))
        ref_ball = statistics.median(times[("reference (eager)", "ball_scale")]) if ball_impls else None
        for name in ball_impls:
            t = statistics.median(times[(name, "ball_scale")])
            rows.append(
                {
                    "shape": list(shape),
                    "pass": "ball_scale",
                    "impl": name,
                    "ms": t * 1e3,
                    "images_per_s": shape[0] / t,
                    "speedup_vs_pytorch_msssim": None,
                    "speedup_vs_reference": ref_ball / t,
                }
            )
        for pass_name in ("forward", "forward+backward"):
            key = ("pytorch-msssim", pass_name)
            peer = statistics.median(times[key]) if key in times else None
            fused = (
                statistics.median(times[("fused-ssim (same)", pass_name)])
                if ("fused-ssim (same)", pass_name) in times
                else None
            )
            medians = {n: statistics.median(times[(n, pass_name)]) for n in impls if not n.endswith("(same)")}
            strongest = strongest_peer(medians)
            for name in impls:
                t = statistics.median(times[(name, pass_name)])
                same = name.endswith("(same)")
                rows.append(
                    {
                        "shape": list(shape),
                        "pass": pass_name,
                        "impl": name,
                        "ms": t * 1e3,
                        "images_per_s": shape[0] / t,
                        "speedup_vs_pytorch_msssim": (peer / t) if peer and not same else None,
                        "strongest_peer": None if same else strongest,
                        "speedup_vs_strongest_peer": None if same else medians[strongest] / t,
                        "speedup_vs_fused_ssim": (fused / t) if fused and same else None,
                        "max_abs_diff_vs_fused_ssim": gap if same else None,
                    }
                )
    return result_record("ssim", device, args, rows, rounds=args.rounds)


def print_table(result: dict) -> None:
    print(
        f"SSIM (11x11 Gaussian; valid, or same where marked) on {result['device']}; torch {result['torch']}; "
        f"median of {result['rounds']} interleaved rounds; speed-up over the strongest peer"
    )
    print(f"{'shape':<16} {'pass':<17} {'implementation':<32} {'ms':>9} {'img/s':>9} {'speed-up':>12}")
    for r in result["rows"]:
        sp = f"{r['speedup_vs_strongest_peer']:.2f}x" if r.get("speedup_vs_strongest_peer") else "-"
        if r.get("speedup_vs_fused_ssim"):
            sp = f"{r['speedup_vs_fused_ssim']:.2f}x fused"
        if r["pass"] == "ball_scale":
            sp = f"{r['speedup_vs_reference']:.1f}x ref"
        print(
            f"{'x'.join(map(str, r['shape'])):<16} {r['pass']:<17} {r['impl']:<32} {r['ms']:9.2f} "
            f"{r['images_per_s']:9.0f} {sp:>12}"
        )


def main(argv=None) -> int:
    p = bench_parser(__doc__, "one size, [16, 3, 128, 128]")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (median reported)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timed sample")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 7)
    return finish(run(args), "ssim", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
