"""Benchmark of the projection family: one PGD step (l-inf and l2) on [64, 3, H, W].

Compared in one run: the plain-PyTorch reference (eager and torch.compile'd),
torchattacks' update (PGD / PGDL2, the same math as their attack loops), and every
miga_fast backend that runs here (C++ on CPU; CUDA and Triton on a GPU). Prints a table
and writes JSON (device, versions, time per step, achieved GB/s, speed-up over the
eager reference, and the device's measured copy bandwidth). Each timed region sits in
an NVTX range named impl/norm/shape, for Nsight (see benchmarks/README.md).

    python benchmarks/bench_projection.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_projection.py --quick    # a short run (the README's main job)
"""

from __future__ import annotations

import sys

import torch

import miga_fast
from miga_fast import ops
from miga_fast.nvtx import nvtx_range
from miga_fast.reference import projection as ref

from _common import bench_parser, compiled_backends, finish, parse_sizes, result_record, time_call

SIZES = [(64, 3, 32, 32), (64, 3, 64, 64), (64, 3, 128, 128), (64, 3, 224, 224)]
QUICK_SIZES = [(64, 3, 32, 32), (64, 3, 224, 224)]


def torchattacks_linf(adv, grad, x, eps, alpha):
    """torchattacks.PGD's update, as in its attack loop (it keeps adv, not delta)."""
    adv = adv + alpha * grad.sign()
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1)


def torchattacks_l2(adv, grad, x, eps, alpha):
    """torchattacks.PGDL2's update."""
    b = grad.shape[0]
    grad_norms = torch.norm(grad.view(b, -1), p=2, dim=1) + 1e-10
    grad = grad / grad_norms.view(b, 1, 1, 1)
    adv = adv + alpha * grad
    delta = adv - x
    delta_norms = torch.norm(delta.view(b, -1), p=2, dim=1)
    factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
    delta = delta * factor.view(-1, 1, 1, 1)
    return torch.clamp(x + delta, min=0, max=1)


def copy_bandwidth(device, nbytes: int) -> float:
    """Achieved bytes/s of a large device copy, counting bytes read plus written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, warmup=3, reps=5, min_time=0.05)
    return 2 * nbytes / t


def implementations(norm: str, device, quick: bool):
    """name -> (backend or None, step) where step(state) runs one update."""
    eps, alpha = (8 / 255, 2 / 255) if norm == "linf" else (0.5, 0.1)
    ta = torchattacks_linf if norm == "linf" else torchattacks_l2

    def ref_step(s):
        ref.pgd_step_(s["delta"], s["grad"], s["x"], eps, alpha, norm, 1.0)

    impls = {"reference (eager)": (None, ref_step)}
    if not quick:
        compiled = torch.compile(ref.pgd_step_, fullgraph=True, dynamic=False)
        impls["reference (torch.compile)"] = (
            None,
            lambda s: compiled(s["delta"], s["grad"], s["x"], eps, alpha, norm, 1.0),
        )

    def ta_step(s):
        s["adv"] = ta(s["adv"], s["grad"], s["x"], eps, alpha)

    impls["torchattacks step"] = (None, ta_step)
    for backend in compiled_backends(f"pgd_step_{norm}_", device):

        def fused(s):
            ops.pgd_step_(s["delta"], s["grad"], s["x"], eps, alpha, norm, 1.0)

        impls[f"miga_fast {backend}"] = (backend, fused)
    return impls


def run(args) -> dict:
    device = torch.device(args.device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    norms = args.norms.split(",") if args.norms else (["linf"] if args.quick else ["linf", "l2"])
    bw = copy_bandwidth(device, (256 << 20) if device.type == "cuda" else (64 << 20))
    rows = []
    for norm in norms:
        impls = implementations(norm, device, args.quick)
        for shape in sizes:
            gen = torch.Generator(device="cpu").manual_seed(0)
            x = torch.rand(shape, generator=gen).to(device)
            grad = torch.randn(shape, generator=gen).to(device)
            delta = ((torch.rand(shape, generator=gen) - 0.5) * 0.05).to(device)
            numel = x.numel()
            # fewest bytes: read delta, grad, x and write delta; l2 reads delta and grad twice
            nbytes = (4 if norm == "linf" else 6) * numel * x.element_size()
            base = None
            for name, (backend, step) in impls.items():
                state = {"x": x, "grad": grad, "delta": delta.clone(), "adv": (x + delta).clamp(0, 1)}
                # As the attacks run it: the backend chosen and the inputs checked once, outside the loop.
                with (
                    miga_fast.set_backend(backend or "auto"),
                    miga_fast.value_checks(False),
                    nvtx_range(f"{name}/{norm}/{'x'.join(map(str, shape))}"),
                ):
                    t = time_call(lambda: step(state), device, args.warmup, args.reps, args.min_time)
                base = t if base is None else base
                rows.append(
                    {
                        "norm": norm,
                        "shape": list(shape),
                        "impl": name,
                        "ms": t * 1e3,
                        "GB/s": nbytes / t / 1e9,
                        "fraction_of_copy_bw": nbytes / t / bw,
                        "speedup_vs_reference_eager": base / t,
                    }
                )
    return result_record("projection", device, args, rows, copy_bandwidth_GBps=bw / 1e9)


def print_table(result: dict) -> None:
    print(
        f"projection step on {result['device']}; torch {result['torch']}; "
        f"device copy bandwidth {result['copy_bandwidth_GBps']:.1f} GB/s"
    )
    print(f"{'norm':<5} {'shape':<16} {'implementation':<27} {'ms':>9} {'GB/s':>8} {'% copy bw':>9} {'vs ref':>7}")
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['norm']:<5} {shape:<16} {r['impl']:<27} {r['ms']:9.3f} {r['GB/s']:8.1f} "
            f"{100 * r['fraction_of_copy_bw']:8.0f}% {r['speedup_vs_reference_eager']:6.2f}x"
        )


def main(argv=None) -> int:
    p = bench_parser(__doc__, "l-inf only, two sizes, no torch.compile")
    p.add_argument("--sizes", default=None, help='shapes to time, e.g. "64x3x224x224,64x3x32x32"')
    p.add_argument("--norms", default=None, help='"linf", "l2" or "linf,l2"')
    p.add_argument("--reps", type=int, default=None, help="timed samples per case (median reported)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample")
    args = p.parse_args(argv)
    args.sizes = parse_sizes(args.sizes, 4)
    args.reps = args.reps or (3 if args.quick else 7)
    args.min_time = args.min_time or (0.02 if args.quick else 0.1)
    return finish(run(args), "projection", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
