"""Benchmark of the projection family: one attack step (l-inf PGD, l2 PGD, MI-FGSM) on [64, 3, H, W].

Compared in one run: the plain-PyTorch reference (eager and torch.compile'd), torchattacks'
update (PGD / PGDL2 / MIFGSM, the same math as their attack loops), and every miga_fast
backend that runs here (C++ on CPU; CUDA and Triton on a GPU). The implementations are
timed in interleaved rounds (so a noisy machine slows them alike; round 0 warms up and
compiles, untimed) under two cache conditions:

  warm: the same buffers every call (what a loop over one batch sees when the tensors
        fit in the last-level cache);
  cold: calls rotate over enough copies of the buffers to exceed twice the last-level
        cache (L3 on a CPU, L2 on a GPU), so every call reads from memory.

miga_fast runs as the attacks run it (value checks off: the inputs are checked once,
outside the loop), and once more, cache-warm, with the value checks on (a user calling
the op directly). Prints a table and writes JSON: per row the median time per step,
achieved GB/s over the fewest bytes the step must move, the device's measured copy
bandwidth, and the speed-ups over the eager reference and over the strongest peer (the
fastest non-miga_fast implementation under the same condition). Each timed region sits
in an NVTX range named impl/norm/shape/cache, for Nsight (see benchmarks/README.md).

    python benchmarks/bench_projection.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_projection.py --quick    # a short run (two sizes, l-inf, no compile)
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

import torch

from miga_fast import ops
from miga_fast.reference import projection as ref

from _common import (
    bench_parser,
    call_context,
    compiled_backends,
    finish,
    interleaved_times,
    parse_sizes,
    result_record,
    strongest_peer,
    time_call,
)

SIZES = [(64, 3, 32, 32), (64, 3, 64, 64), (64, 3, 128, 128), (64, 3, 224, 224)]
QUICK_SIZES = [(64, 3, 32, 32), (64, 3, 224, 224)]
NORMS = ("linf", "l2", "mifgsm")
OP = {"linf": "pgd_step_linf_", "l2": "pgd_step_l2_", "mifgsm": "mi_fgsm_step_"}
# the fewest bytes per element: l-inf reads delta, grad, x and writes delta; l2 reads delta
# and grad twice (sums, then update); MI-FGSM reads grad twice, momentum, delta, x and
# writes momentum and delta
TRAFFIC = {"linf": 4, "l2": 6, "mifgsm": 7}


def torchattacks_linf(s, eps, alpha):
    """torchattacks.PGD's update, as in its attack loop (it keeps adv, not delta)."""
    adv = s["adv"] + alpha * s["grad"].sign()
    delta = torch.clamp(adv - s["x"], min=-eps, max=eps)
    s["adv"] = torch.clamp(s["x"] + delta, min=0, max=1)


def torchattacks_l2(s, eps, alpha):
    """torchattacks.PGDL2's update."""
    grad, b = s["grad"], s["grad"].shape[0]
    grad_norms = torch.norm(grad.view(b, -1), p=2, dim=1) + 1e-10
    grad = grad / grad_norms.view(b, 1, 1, 1)
    adv = s["adv"] + alpha * grad
    delta = adv - s["x"]
    delta_norms = torch.norm(delta.view(b, -1), p=2, dim=1)
    factor = torch.min(eps / delta_norms, torch.ones_like(delta_norms))
    delta = delta * factor.view(-1, 1, 1, 1)
    s["adv"] = torch.clamp(s["x"] + delta, min=0, max=1)


def torchattacks_mifgsm(s, eps, alpha, decay=1.0):
    """torchattacks.MIFGSM's update."""
    grad = s["grad"] / torch.mean(torch.abs(s["grad"]), dim=(1, 2, 3), keepdim=True)
    grad = grad + s["ta_momentum"] * decay
    s["ta_momentum"] = grad
    adv = s["adv"] + alpha * grad.sign()
    delta = torch.clamp(adv - s["x"], min=-eps, max=eps)
    s["adv"] = torch.clamp(s["x"] + delta, min=0, max=1)


def mi_fgsm_functional(delta, momentum, grad, x, eps, alpha, mu=1.0):
    """The reference MI-FGSM step (reference/projection.py) written functionally."""
    m = mu * momentum + ref._unit(grad, 1)
    d = ref._linf_ball(delta + alpha * torch.sign(m), eps)
    return ref._box(d, x), m


def copy_bandwidth(device, nbytes: int) -> float:
    """Achieved bytes/s of a large device copy, counting bytes read plus written."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    t = time_call(lambda: dst.copy_(src), device, warmup=3, reps=5, min_time=0.05)
    return 2 * nbytes / t


def last_level_cache_bytes(device) -> int:
    """L2 on a GPU; on a CPU the largest cache sysfs lists (32 MiB when it lists none)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * mult)
        except ValueError:
            pass
    return max(sizes, default=32 << 20)


def implementations(norm: str, quick: bool):
    """name -> (backend or None, step, value checks) where step(state) runs one update."""
    eps, alpha = (0.5, 0.1) if norm == "l2" else (8 / 255, 2 / 255)

    if norm == "mifgsm":

        def ref_fn(s, f=ref.mi_fgsm_step_):
            f(s["delta"], s["momentum"], s["grad"], s["x"], eps, alpha, 1.0, 1.0)

        def fused(s):
            ops.mi_fgsm_step_(s["delta"], s["momentum"], s["grad"], s["x"], eps, alpha, 1.0, 1.0)

        # torch 2.14.1's inductor fails on the in-place reference (two mutated inputs, one
        # read after its copy_: "KeyError: 'buf12'"), so the compiled peer is the
        # functional form, returning the new delta and momentum
        compiled_fn = torch.compile(mi_fgsm_functional, fullgraph=True, dynamic=False)

        def comp(s):
            s["delta"], s["momentum"] = compiled_fn(s["delta"], s["momentum"], s["grad"], s["x"], eps, alpha)

        ta = torchattacks_mifgsm
    else:

        def ref_fn(s):
            ref.pgd_step_(s["delta"], s["grad"], s["x"], eps, alpha, norm, 1.0)

        def fused(s):
            ops.pgd_step_(s["delta"], s["grad"], s["x"], eps, alpha, norm, 1.0)

        compiled_fn = torch.compile(ref.pgd_step_, fullgraph=True, dynamic=False)

        def comp(s):
            compiled_fn(s["delta"], s["grad"], s["x"], eps, alpha, norm, 1.0)

        ta = torchattacks_linf if norm == "linf" else torchattacks_l2

    impls = {"reference (eager)": (None, ref_fn, False)}
    if not quick:
        impls["reference (torch.compile)"] = (None, comp, False)
    impls["torchattacks step"] = (None, lambda s: ta(s, eps, alpha), False)
    return impls, fused


def make_state(shape, device, seed: int) -> dict:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.rand(shape, generator=gen)
    grad = torch.randn(shape, generator=gen)
    delta = (torch.rand(shape, generator=gen) - 0.5) * 0.05
    s = {"x": x, "grad": grad, "delta": delta, "momentum": torch.zeros(shape), "adv": (x + delta).clamp(0, 1)}
    s["ta_momentum"] = torch.zeros(shape)
    return {k: v.to(device) for k, v in s.items()}


def run(args) -> dict:
    device = torch.device(args.device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    norms = args.norms.split(",") if args.norms else (["linf"] if args.quick else list(NORMS))
    bw = copy_bandwidth(device, (256 << 20) if device.type == "cuda" else (64 << 20))
    llc = last_level_cache_bytes(device)
    rows = []
    for norm in norms:
        impls, fused = implementations(norm, args.quick)
        for backend in compiled_backends(OP[norm], device):
            impls[f"miga_fast {backend}"] = (backend, fused, False)
            impls[f"miga_fast {backend} (checks on)"] = (backend, fused, True)
        for shape in sizes:
            numel = torch.Size(shape).numel()
            nbytes = TRAFFIC[norm] * numel * 4
            set_bytes = 6 * numel * 4  # the tensors of one state a step may touch
            # cold: enough states that the rotation exceeds twice the last-level cache
            n_cold = max(2, -(-2 * llc // set_bytes) + 1)
            warm = [make_state(shape, device, 0)]
            cold = warm + [make_state(shape, device, i) for i in range(1, n_cold)]
            conditions = {"warm": warm, "cold": cold}
            cases = {}
            for cache, states in conditions.items():
                for name, (backend, step, checks) in impls.items():
                    if checks and cache == "cold":
                        continue

                    def call(states=states, step=step, cursor=[0]):  # noqa: B006 - the rotation's position
                        step(states[cursor[0] % len(states)])
                        cursor[0] += 1

                    where = f"{name}/{norm}/{'x'.join(map(str, shape))}/{cache}"
                    cases[(name, cache)] = (call, functools.partial(call_context, backend, checks, where))
            times = interleaved_times(cases, device, args.rounds, args.min_time)
            for cache in conditions:
                med = {n: statistics.median(v) for (n, c), v in times.items() if c == cache}
                strongest = strongest_peer(med)
                for name, t in med.items():
                    rows.append(
                        {
                            "norm": norm,
                            "shape": list(shape),
                            "cache": cache,
                            "value_checks": impls[name][2],
                            "impl": name,
                            "ms": t * 1e3,
                            "GB/s": nbytes / t / 1e9,
                            "fraction_of_copy_bw": nbytes / t / bw,
                            "speedup_vs_reference_eager": med["reference (eager)"] / t,
                            "strongest_peer": strongest,
                            "speedup_vs_strongest_peer": med[strongest] / t,
                        }
                    )
            del warm, cold, conditions
    in_graph = [] if args.quick or args.no_in_graph else in_graph_rows(device, sizes, norms, args)
    return result_record(
        "projection",
        device,
        args,
        rows,
        copy_bandwidth_GBps=bw / 1e9,
        last_level_cache_MiB=llc / 2**20,
        rounds=args.rounds,
        in_graph=in_graph,
        compile_rule=dict(ops.projection.COMPILE_RULE),
    )


def in_graph_rows(device, sizes, norms, args) -> list:
    """The step inside a torch.compile'd function, between the op that produces the
    gradient (here grad * mask) and one that reads delta after it (the next input, x +
    delta clamped): our kernel (an opaque call) against the step traced as the reference
    (a decomposition inductor fuses with both). Warm cache, value checks off. A
    decomposition inductor fails to compile is recorded with its error."""
    rows = []
    kernel = [b for b in compiled_backends(OP[norms[0]], device) if b != "triton"][:1]
    if not kernel:
        return rows
    for norm in norms:
        eps, alpha = (0.5, 0.1) if norm == "l2" else (8 / 255, 2 / 255)

        def f(d, m, graw, mask, x, norm=norm, eps=eps, alpha=alpha):
            g = graw * mask
            if norm == "mifgsm":
                ops.mi_fgsm_step_(d, m, g, x, eps, alpha)
            else:
                ops.pgd_step_(d, g, x, eps, alpha, norm)
            return (x + d).clamp(0, 1)

        for shape in sizes:
            s = make_state(shape, device, 0)
            mask = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.1).float().to(device)
            # one compiled function: its graphs guard on the selected backend, so both live in its cache
            fn = torch.compile(f, fullgraph=True, dynamic=False)
            cases, errors = {}, {}
            for name, backend in (("kernel", kernel[0]), ("decomposition", "reference")):
                d, m = s["delta"].clone(), s["momentum"].clone()
                context = functools.partial(call_context, backend, False, f"in graph {name}/{norm}/{shape}")
                try:
                    with context():
                        fn(d.clone(), m.clone(), s["grad"], mask, s["x"])  # compiles
                    cases[name] = (lambda d=d, m=m: fn(d, m, s["grad"], mask, s["x"]), context)
                except Exception as exc:  # noqa: BLE001 - an inductor failure is a result
                    errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            times = interleaved_times(cases, device, args.rounds, args.min_time)
            for name in ("kernel", "decomposition"):
                row = {"norm": norm, "shape": list(shape), "in_graph": name}
                if name in times:
                    row["ms"] = statistics.median(times[name]) * 1e3
                else:
                    row["error"] = errors[name]
                rows.append(row)
    return rows


def print_table(result: dict) -> None:
    print(
        f"projection step on {result['device']}; torch {result['torch']}; copy bandwidth "
        f"{result['copy_bandwidth_GBps']:.1f} GB/s; last-level cache {result['last_level_cache_MiB']:.0f} MiB; "
        f"median of {result['rounds']} interleaved rounds"
    )
    print(
        f"{'norm':<6} {'shape':<14} {'cache':<5} {'implementation':<28} {'ms':>9} {'GB/s':>7} "
        f"{'% copy':>6} {'vs eager':>8} {'vs best peer':>12}"
    )
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['norm']:<6} {shape:<14} {r['cache']:<5} {r['impl']:<28} {r['ms']:9.3f} {r['GB/s']:7.1f} "
            f"{100 * r['fraction_of_copy_bw']:5.0f}% {r['speedup_vs_reference_eager']:7.2f}x "
            f"{r['speedup_vs_strongest_peer']:11.2f}x"
        )


def print_in_graph(result: dict) -> None:
    if not result.get("in_graph"):
        return
    print("\ninside a compiled graph (grad * mask -> step -> clamp(x + delta)), warm cache, ms")
    print(f"{'norm':<6} {'shape':<14} {'kernel':>10} {'decomposition':>14}   rule")
    by = {}
    for r in result["in_graph"]:
        by.setdefault((r["norm"], tuple(r["shape"])), {})[r["in_graph"]] = r
    for (norm, shape), rs in by.items():
        cells = [f"{rs[k]['ms']:.3f}" if "ms" in rs[k] else "fails" for k in ("kernel", "decomposition")]
        rule = result["compile_rule"][OP[norm] if norm != "linf" else "pgd_step_linf_"]
        print(f"{norm:<6} {'x'.join(map(str, shape)):<14} {cells[0]:>10} {cells[1]:>14}   {rule}")


def main(argv=None) -> int:
    p = bench_parser(__doc__, "l-inf only, two sizes, no torch.compile")
    p.add_argument("--sizes", default=None, help='shapes to time, e.g. "64x3x224x224,64x3x32x32"')
    p.add_argument("--norms", default=None, help='any of "linf", "l2", "mifgsm", comma-separated')
    p.add_argument("--rounds", "--reps", type=int, default=None, help="interleaved timing rounds (median reported)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample")
    p.add_argument("--no-in-graph", action="store_true", help="skip the step inside a compiled graph")
    args = p.parse_args(argv)
    args.sizes = parse_sizes(args.sizes, 4)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.min_time = args.min_time or (0.02 if args.quick else 0.1)
    return finish(run(args), "projection", args, lambda r: (print_table(r), print_in_graph(r)))


if __name__ == "__main__":
    sys.exit(main())
