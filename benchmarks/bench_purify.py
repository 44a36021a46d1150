"""Benchmark of diffusion purification (docs/algorithms.md §5), in three tables:

1. One stage-1 sampler step outside the model (the DDIM update, the mask combine with the
   re-noised known pixels and the resampling jump), forward and forward + backward:
   the plain-PyTorch reference eager and under torch.compile against the fused
   `ops.sampler_step` on every backend that runs here; beside it, one call of the model
   (a DiffusionUNet of the shipped width) at the same size: the step's share of it.
2. End to end on the shipped digits model and classifier, per purifier (uniform; heterogeneous
   with single-step, multi-step and no resampling): seconds and peak memory per purified
   image, model calls, and the quality of what comes out (PSNR to the clean image, the
   classifier's accuracy on it), so that costs compare at a stated quality.
3. The full-gradient attack step through each purifier (forward + backward to the input):
   plain autograd against checkpointing, seconds and peak memory per image.

Interleaved rounds, medians, NVTX ranges per implementation and size; peak memory is the
extra each call needs on a GPU (the allocator's peak); on a CPU, where the allocator keeps
no peak, the attack step reports the bytes autograd saves for its backward (the memory that
checkpointing and fewer model calls save).

    python benchmarks/bench_purify.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_purify.py --quick    # one size, fewer images
"""

from __future__ import annotations

import functools
import statistics
import sys
import time

import torch

import miga_fast
from miga_fast import data, metrics, ops
from miga_fast.app.purify_eval import graph_bytes
from miga_fast.models import registry
from miga_fast.models.diffusion import DiffusionUNet
from miga_fast.nvtx import nvtx_range
from miga_fast.purify import HeterogeneousPurifier, UniformPurifier
from miga_fast.reference import sampler as ref_sampler

from _common import (
    bench_parser,
    call_context,
    compiled_backends,
    finish,
    interleaved_times,
    peak_extra_bytes,
    result_record,
    strongest_peer,
    sync,
)

CPU_SIZES = [(64, 3, 32, 32), (8, 3, 128, 128)]
GPU_SIZES = [(64, 3, 32, 32), (32, 3, 256, 256), (8, 3, 512, 512)]


# --- 1. the sampler step outside the model ----------------------------------------------------


def step_table(args, device) -> list[dict]:
    rows = []
    sizes = [CPU_SIZES[0]] if args.quick else (GPU_SIZES if device.type == "cuda" else CPU_SIZES)
    for shape in sizes:
        gen = torch.Generator().manual_seed(0)
        x, eps, known, n_k, n_j = (torch.randn(shape, generator=gen).to(device) for _ in range(5))
        mask = (torch.rand((shape[0], 1, *shape[2:]), generator=gen) > 0.7).float().to(device)
        a_t, a_prev, a_jump = 0.80, 0.82, 0.78
        abar = {k: torch.tensor([v], device=device) for k, v in (("t", a_t), ("p", a_prev), ("j", a_jump))}
        leaves = [t.clone().requires_grad_(True) for t in (x, eps, known)]

        def reference_step(x, eps, known):
            return ref_sampler.step(x, eps, known, mask, None, n_k, n_j, abar["t"], abar["p"], abar["p"], abar["j"], 2)

        compiled = torch.compile(reference_step)

        def fused(x, eps, known):
            return ops.sampler_step(
                x, mode="ddim", eps=eps, a_from=a_t, a_to=a_prev, clip=None, mask=mask, known=known,
                noise_known=n_k, a_jump=a_jump, noise_jump=n_j,
            )  # fmt: skip

        impls = {"reference (eager)": (reference_step, "reference"), "reference (torch.compile)": (compiled, None)}
        for backend in compiled_backends("sampler_step", device):
            impls[f"miga_fast {backend}"] = (fused, backend)

        def passes(fn):
            def forward():
                with torch.no_grad():
                    fn(x, eps, known)

            def forward_backward():
                torch.autograd.grad(fn(*leaves), leaves, x)

            return (("forward", forward), ("forward+backward", forward_backward))

        cases = {
            (name, pn): (f, functools.partial(call_context, backend, False, f"{name}/{pn}/{'x'.join(map(str, shape))}"))
            for name, (fn, backend) in impls.items()
            for pn, f in passes(fn)
        }
        unet = DiffusionUNet(channels=shape[1], base=32).to(device).eval()
        tt = torch.full((shape[0],), 150, device=device)

        def unet_call():
            with torch.no_grad():
                unet(x, tt)

        cases[("model call", "forward")] = (unet_call, functools.partial(call_context, None, False, "unet"))
        times = interleaved_times(cases, device, args.rounds, args.min_time)
        unet_ms = statistics.median(times[("model call", "forward")]) * 1e3
        for pn in ("forward", "forward+backward"):
            medians = {n: statistics.median(times[(n, pn)]) for n in impls}
            strongest = strongest_peer(medians)
            for name in impls:
                t = medians[name]
                rows.append(
                    {
                        "table": "step",
                        "shape": list(shape),
                        "pass": pn,
                        "impl": name,
                        "ms": t * 1e3,
                        "share_of_model_call": t * 1e3 / unet_ms,
                        "model_call_ms": unet_ms,
                        "strongest_peer": strongest,
                        "speedup_vs_strongest_peer": medians[strongest] / t if strongest else None,
                    }
                )
    return rows


# --- 2 and 3. end to end -----------------------------------------------------------------------


def purifiers(unet, classifier, stride, U_single, U_multi):
    return {
        "uniform t*=100": UniformPurifier(unet, t_star=100, stride=stride),
        f"heterogeneous single U={U_single}": HeterogeneousPurifier(
            unet, classifier=classifier, stride=stride, U=U_single, resampling="single"
        ),
        f"heterogeneous multi U={U_multi}": HeterogeneousPurifier(
            unet, classifier=classifier, stride=stride, U=U_multi, resampling="multi"
        ),
        "heterogeneous none": HeterogeneousPurifier(unet, classifier=classifier, stride=stride, resampling="none"),
    }


def end_to_end_tables(args, device) -> list[dict]:
    rows = []
    unet = registry.load("ddpm_digits").to(device).eval()
    classifier = registry.load("cnn_digits").to(device).eval()
    for m in (unet, classifier):
        m.requires_grad_(False)
    x, y = data.load_digits("test")
    n = 16 if args.quick else 64
    x, y = x[:n].to(device), y[:n].to(device)
    for name, p in purifiers(unet, classifier, args.stride, 10, args.multi_u).items():
        with nvtx_range(f"purify/{name}"), torch.no_grad():
            p(x[:2], generator=0)  # warm-up
            times = []
            for r in range(args.rounds):
                sync(device)
                t0 = time.perf_counter()
                out = p(x, generator=r)
                sync(device)
                times.append(time.perf_counter() - t0)
            mem = peak_extra_bytes(lambda p=p: p(x, generator=0), device) if device.type == "cuda" else None
            acc = float((classifier(out).argmax(1) == y).float().mean())
            psnr = float(metrics.psnr(out, x).mean())
        rows.append(
            {
                "table": "purify",
                "purifier": name,
                "images": n,
                "model_calls": p.model_calls,
                "s_per_image": statistics.median(times) / n,
                "peak_extra_mib_per_image": None if mem is None else mem / 2**20 / n,
                "psnr_to_clean": psnr,
                "accuracy_clean_purified": acc,
            }
        )
        # 3. the full-gradient attack step (forward + backward to the input)
        loss_fn = torch.nn.CrossEntropyLoss()
        xb = x[: args.grad_batch]
        yb = y[: args.grad_batch]
        for mode in ("full", "checkpoint"):

            def step(mode=mode, p=p):
                xx = xb.clone().requires_grad_(True)
                loss = loss_fn(classifier(p(xx, generator=0, gradient=mode)), yb)
                torch.autograd.grad(loss, xx)

            with nvtx_range(f"attack-step/{name}/{mode}"):
                step()
                times = []
                for _ in range(args.rounds):
                    sync(device)
                    t0 = time.perf_counter()
                    step()
                    sync(device)
                    times.append(time.perf_counter() - t0)
                mem = peak_extra_bytes(step, device) if device.type == "cuda" else None
                graph = graph_bytes(
                    lambda mode=mode, p=p: loss_fn(
                        classifier(p(xb.clone().requires_grad_(True), generator=0, gradient=mode)), yb
                    )
                )
            rows.append(
                {
                    "table": "attack_step",
                    "purifier": name,
                    "gradient": mode,
                    "images": len(xb),
                    "s_per_image": statistics.median(times) / len(xb),
                    "peak_extra_mib_per_image": None if mem is None else mem / 2**20 / len(xb),
                    "graph_mib_per_image": graph / 2**20 / len(xb),
                }
            )
    return rows


def run(args) -> dict:
    device = torch.device(args.device)
    with miga_fast.value_checks(False):
        rows = step_table(args, device) + end_to_end_tables(args, device)
    return result_record(
        "purify", device, args, rows, rounds=args.rounds, stride=args.stride, multi_u=args.multi_u,
        model="ddpm_digits", classifier="cnn_digits",
    )  # fmt: skip


def print_table(result: dict) -> None:
    rows = result["rows"]
    print(f"Diffusion purification on {result['device']}; torch {result['torch']}; median of {result['rounds']} rounds")
    print("\n1. One stage-1 sampler step outside the model (DDIM + mask combine + resampling jump)")
    print(f"{'shape':<16} {'pass':<17} {'implementation':<26} {'ms':>9} {'of a model call':>16} {'vs best peer':>12}")
    for r in (r for r in rows if r["table"] == "step"):
        best = f"{r['speedup_vs_strongest_peer']:.2f}x" if r["speedup_vs_strongest_peer"] else "-"
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{shape:<16} {r['pass']:<17} {r['impl']:<26} {r['ms']:9.3f} {100 * r['share_of_model_call']:15.1f}% "
            f"{best:>12}"
        )
    print(f"\n2. End to end, ddpm_digits + cnn_digits, DDIM stride {result['stride']} (t_l=200, t_s=100)")
    print(f"{'purifier':<34} {'calls':>5} {'ms/image':>9} {'MiB/image':>10} {'PSNR dB':>8} {'accuracy':>9}")
    for r in (r for r in rows if r["table"] == "purify"):
        mem = f"{r['peak_extra_mib_per_image']:10.2f}" if r["peak_extra_mib_per_image"] is not None else f"{'-':>10}"
        print(
            f"{r['purifier']:<34} {r['model_calls']:>5} {1e3 * r['s_per_image']:9.1f} {mem} {r['psnr_to_clean']:8.2f} "
            f"{r['accuracy_clean_purified']:9.3f}"
        )
    print("\n3. Full-gradient attack step (forward + backward to the input); graph: what autograd keeps")
    print(f"{'purifier':<34} {'gradient':<11} {'ms/image':>9} {'graph MiB/image':>16} {'peak MiB/image':>15}")
    for r in (r for r in rows if r["table"] == "attack_step"):
        mem = f"{r['peak_extra_mib_per_image']:15.2f}" if r["peak_extra_mib_per_image"] is not None else f"{'-':>15}"
        print(
            f"{r['purifier']:<34} {r['gradient']:<11} {1e3 * r['s_per_image']:9.1f} {r['graph_mib_per_image']:16.2f} "
            f"{mem}"
        )


def main(argv=None) -> int:
    p = bench_parser(__doc__, "one step size, 16 images")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.1, help="seconds per timed sample of a step")
    p.add_argument("--stride", type=int, default=10, help="the purifiers' DDIM step (the method's: 2)")
    p.add_argument(
        "--multi-u", type=int, default=20, help="RePaint passes per step of the multi-step loop (20: the paper's)"
    )
    p.add_argument("--grad-batch", type=int, default=8, help="images per attack step")
    args = p.parse_args(argv)
    return finish(run(args), "purify", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
