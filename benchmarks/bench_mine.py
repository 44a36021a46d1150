"""Benchmark of the MINE bound (DV, all i != j pairs, ReLU critic head): forward, and
forward + backward (gradients in u, v, b1, w2, b2), with peak memory.

Compared in one run: the plain-PyTorch reference (it materialises the B x B x H hidden
tensor, so large B does not fit), eager and under torch.compile (compiled before timing),
and every miga_fast backend with a mine kernel
that runs here (C++ on CPU; CUDA and Triton on a GPU). Interleaved rounds, medians,
NVTX ranges per impl/pass/size; the peak memory each call adds (CUDA: the allocator's
peak; CPU: the process's peak RSS, reset before each measurement).

    python benchmarks/bench_mine.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_mine.py --quick    # B = 1024, H = 128 only
"""

from __future__ import annotations

import functools
import math
import statistics
import sys

import torch

import miga_fast
from miga_fast import ops
from miga_fast.reference import mine as ref_mine

from _common import (
    bench_parser,
    call_context,
    compiled_backends,
    finish,
    interleaved_times,
    parse_sizes,
    peak_extra_bytes,
    result_record,
    strongest_peer,
)

CPU_SIZES = [(256, 64), (1024, 128), (4096, 128), (4096, 256)]
GPU_SIZES = [(256, 64), (1024, 128), (4096, 256), (16384, 256), (16384, 512)]
QUICK_SIZES = [(1024, 128)]


def implementations(device):
    impls = {"reference (eager)": "reference", "reference (torch.compile)": "compiled"}
    for backend in compiled_backends("mine_row_lse", device):
        impls[f"miga_fast {backend}"] = backend
    return impls


def reference_fits(b, h, device) -> bool:
    """The eager reference keeps about three B x B x H float32 tensors alive (the sum, the
    activation and, with autograd, its mask)."""
    need = 3 * b * b * h * 4
    if device.type == "cuda":
        return need < 0.8 * torch.cuda.mem_get_info(device)[0]
    return need < 6 * 2**30


def run(args) -> dict:
    device = torch.device(args.device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else (GPU_SIZES if device.type == "cuda" else CPU_SIZES))
    rows = []
    for b, h in sizes:
        gen = torch.Generator().manual_seed(0)
        params = [
            torch.randn(b, h, generator=gen),
            torch.randn(b, h, generator=gen),
            0.1 * torch.randn(h, generator=gen),
            torch.randn(h, generator=gen) / math.sqrt(h),
            torch.zeros(()),
        ]
        params = [p.to(device).requires_grad_() for p in params]
        impls = {
            k: v
            for k, v in implementations(device).items()
            if v not in ("reference", "compiled") or reference_fits(b, h, device)
        }
        skipped = [k for k in implementations(device) if k not in impls]
        memory = {}

        compiled_bound = torch.compile(ref_mine.bound)

        def calls(backend):
            def bound():
                if backend == "compiled":
                    return compiled_bound(*params)
                with miga_fast.set_backend(backend):
                    return ops.mine_bound(*params)

            def forward():
                with torch.no_grad():
                    bound()

            def forward_backward():
                torch.autograd.grad(bound(), params)

            return (("forward", forward), ("forward+backward", forward_backward))

        # bound() selects each call's backend itself ("compiled" is no miga_fast backend)
        cases = {
            (name, pass_name): (f, functools.partial(call_context, None, False, f"{name}/{pass_name}/B{b}xH{h}"))
            for name, backend in impls.items()
            for pass_name, f in calls(backend)
        }
        times = interleaved_times(cases, device, args.rounds, args.min_time)
        for name, backend in impls.items():
            for pass_name, f in calls(backend):
                with miga_fast.value_checks(False):
                    memory[(name, pass_name)] = peak_extra_bytes(f, device)
        for pass_name in ("forward", "forward+backward"):
            eager = (
                statistics.median(times[("reference (eager)", pass_name)])
                if ("reference (eager)", pass_name) in times
                else None
            )
            medians = {n: statistics.median(times[(n, pass_name)]) for n in impls}
            strongest = strongest_peer(medians)
            for name in impls:
                t = statistics.median(times[(name, pass_name)])
                mem = memory[(name, pass_name)]
                rows.append(
                    {
                        "B": b,
                        "H": h,
                        "pass": pass_name,
                        "impl": name,
                        "ms": t * 1e3,
                        "peak_extra_mib": None if mem is None else mem / 2**20,
                        "speedup_vs_eager": (eager / t) if eager else None,
                        "strongest_peer": strongest,
                        "speedup_vs_strongest_peer": (medians[strongest] / t) if strongest else None,
                    }
                )
            for name in skipped:
                rows.append(
                    {
                        "B": b,
                        "H": h,
                        "pass": pass_name,
                        "impl": name,
                        "ms": None,
                        "peak_extra_mib": 3 * b * b * h * 4 / 2**20,
                        "speedup_vs_eager": None,
                        "speedup_vs_strongest_peer": None,
                        "note": "does not fit (estimated memory shown)",
                    }
                )
    return result_record("mine", device, args, rows, rounds=args.rounds)


def print_table(result: dict) -> None:
    print(
        f"MINE DV bound, all pairs, ReLU head, on {result['device']}; torch {result['torch']}; "
        f"median of {result['rounds']} interleaved rounds"
    )
    print(
        f"{'B':>6} {'H':>4} {'pass':<17} {'implementation':<26} {'ms':>10} {'peak MiB':>10} {'vs eager':>9} "
        f"{'vs best peer':>12}"
    )
    for r in result["rows"]:
        ms = f"{r['ms']:10.2f}" if r["ms"] is not None else f"{'-':>10}"
        mem = f"{r['peak_extra_mib']:10.1f}" if r["peak_extra_mib"] is not None else f"{'?':>10}"
        sp = f"{r['speedup_vs_eager']:.1f}x" if r["speedup_vs_eager"] else ("no fit" if r.get("note") else "-")
        best = f"{r['speedup_vs_strongest_peer']:.1f}x" if r.get("speedup_vs_strongest_peer") else "-"
        print(f"{r['B']:>6} {r['H']:>4} {r['pass']:<17} {r['impl']:<26} {ms} {mem} {sp:>9} {best:>12}")


def main(argv=None) -> int:
    p = bench_parser(__doc__, "B = 1024, H = 128 only")
    p.add_argument("--sizes", default=None, help='(B, H) pairs to time, e.g. "4096x256,1024x128"')
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (median reported)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed sample")
    args = p.parse_args(argv)
    args.sizes = parse_sizes(args.sizes, 2)
    args.rounds = args.rounds or (2 if args.quick else 3)
    return finish(run(args), "mine", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
