"""Benchmark of the drop-ins (docs/integrations.md) against the libraries they replace,
timed in one run:

1. pytorch-msssim: `ssim` and `ms_ssim` with their defaults (data_range 255, 11-tap
   window, size_average), forward and forward + backward (the gradient in X, as a loss
   needs), pytorch-msssim eager and under torch.compile (compiled before timing) against
   miga_fast.integrations.pytorch_msssim on the backend that runs here.
2. torchattacks: PGD, MIFGSM and PGDL2 (10 steps, defaults) on the shipped natural-patch
   ResNet, torchattacks against miga_fast.integrations.torchattacks, a whole attack per
   call, and the fused update alone (ops.pgd_step_linf_image_, as the drop-ins call it)
   against torchattacks' update (the same elementwise ops in PyTorch: step, ball, box),
   since on a CPU the model dominates the attack. PGD's and MIFGSM's images, and the
   update's, must come out bit for bit (max diff 0).

Values are compared before timing (the largest difference is recorded). Interleaved
rounds, medians; the speed-up is over the strongest peer (the fastest implementation
not miga_fast's). Value checks on (the drop-ins' default).

    python benchmarks/bench_integrations.py            # full run, JSON in benchmarks/results/
    python benchmarks/bench_integrations.py --quick    # one size, fewer rounds
"""

from __future__ import annotations

import functools
import statistics
import sys

import torch

from miga_fast import data, ops
from miga_fast.models import registry

from _common import bench_parser, call_context, finish, interleaved_times, result_record, strongest_peer


def _rows(cases: dict, check, device, rounds: int, min_time: float, **label) -> list[dict]:
    outs = {k: fn() for k, (fn, _) in cases.items()}
    ref = outs[next(iter(outs))]
    diff = {k: check(v, ref) for k, v in outs.items()}
    times = interleaved_times(cases, device, rounds, min_time)
    med = {k: statistics.median(v) for k, v in times.items()}
    peer = strongest_peer(med)
    return [
        {**label, "impl": k, "seconds": med[k], "max_abs_diff": diff[k], "speedup_vs_strongest_peer": med[peer] / m}
        for k, m in med.items()
    ]


def ssim_rows(device, quick: bool, rounds: int, min_time: float) -> list[dict]:
    import pytorch_msssim

    from miga_fast.integrations import pytorch_msssim as fast

    sizes = [(8, 3, 256, 256)] if quick else [(32, 3, 64, 64), (8, 3, 256, 256), (2, 3, 512, 512)]
    rows = []
    for shape in sizes:
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(shape, generator=g) * 255).to(device)
        y = (x + 20 * torch.randn(shape, generator=g).to(device)).clamp(0, 255)
        for fn_name in ("ssim", "ms_ssim"):
            if fn_name == "ms_ssim" and min(shape[-2:]) <= 160:
                continue
            peer_fn, our_fn = getattr(pytorch_msssim, fn_name), getattr(fast, fn_name)
            compiled = torch.compile(peer_fn)
            for pass_ in ("forward", "forward+backward"):

                def call(fn, pass_=pass_):
                    if pass_ == "forward":
                        with torch.no_grad():
                            return fn(x, y)
                    a = x.clone().requires_grad_()
                    return torch.autograd.grad(fn(a, y), a)[0]

                impls = {
                    "pytorch-msssim": peer_fn,
                    "pytorch-msssim (torch.compile)": compiled,
                    "miga_fast drop-in": our_fn,
                }
                name = f"{fn_name}/{pass_}/{'x'.join(map(str, shape))}"
                cases = {
                    k: (functools.partial(call, f), functools.partial(call_context, None, True, f"{k}/{name}"))
                    for k, f in impls.items()
                }
                rows += _rows(
                    cases,
                    lambda a, b: float((a - b).abs().max()),
                    device,
                    rounds,
                    min_time,
                    op=fn_name,
                    pass_=pass_,
                    shape=list(shape),
                )
    return rows


def attack_rows(device, quick: bool, rounds: int, min_time: float) -> list[dict]:
    import torchattacks

    from miga_fast.integrations import torchattacks as fast

    model = registry.load("resnet_natural").to(device)
    x, y = data.load_natural_patches("test", 32)
    n = 32 if quick else 128
    x, y = x[:n].to(device), y[:n].to(device)
    rows = []
    for name in ("PGD", "MIFGSM", "PGDL2"):
        peer, ours = getattr(torchattacks, name)(model), getattr(fast, name)(model)

        def run(atk):
            torch.manual_seed(0)
            return atk(x, y)

        cases = {
            f"torchattacks.{name}": (functools.partial(run, peer), functools.partial(call_context, None, True, name)),
            f"miga_fast drop-in {name}": (
                functools.partial(run, ours),
                functools.partial(call_context, None, True, f"fast.{name}"),
            ),
        }
        rows += _rows(
            cases,
            lambda a, b: float((a - b).abs().max()),
            device,
            max(1, rounds // 2),
            min_time,
            op=f"attack {name}",
            pass_="10 steps",
            shape=list(x.shape),
        )
    # the update alone, on a [64, 3, 224, 224] batch (where it is a larger share of a step)
    shape = (16, 3, 224, 224) if quick else (64, 3, 224, 224)
    g = torch.Generator().manual_seed(1)
    images = torch.rand(shape, generator=g).to(device)
    adv0 = (images + (torch.rand(shape, generator=g).to(device) - 0.5) * 0.03).clamp(0, 1)
    grad = torch.randn(shape, generator=g).to(device)
    eps, alpha = 8 / 255, 2 / 255

    def torchattacks_update():
        adv = adv0.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - images, min=-eps, max=eps)
        return torch.clamp(images + delta, min=0, max=1).detach()

    compiled_update = torch.compile(torchattacks_update)

    def fused_update(work):
        # in place on the attack's adversarial image, as in the drop-ins' loop (the first
        # call's result is the one compared; later calls step from where the last one left
        # the image: the same work). One buffer per case.
        def step():
            ops.pgd_step_linf_image_(work, grad, images, eps, alpha)
            return work

        return step

    cases = {
        "torchattacks update (eager)": (torchattacks_update, functools.partial(call_context, None, True, "ta.update")),
        "torchattacks update (torch.compile)": (
            compiled_update,
            functools.partial(call_context, None, True, "ta.update.compiled"),
        ),
        "miga_fast fused update, checks on": (
            fused_update(adv0.clone()),
            functools.partial(call_context, None, True, "fused.update"),
        ),
        "miga_fast fused update, checks off": (
            fused_update(adv0.clone()),
            functools.partial(call_context, None, False, "fused.update.nochecks"),
        ),
    }
    update_rows = _rows(
        cases,
        lambda a, b: float((a - b).abs().max()),
        device,
        rounds,
        min_time,
        op="l-inf update",
        pass_="one step",
        shape=list(shape),
    )
    return rows + update_rows


def run(args) -> dict:
    device = torch.device(args.device)
    rounds, min_time = (3, 0.05) if args.quick else (7, 0.2)
    rows = ssim_rows(device, args.quick, rounds, min_time) + attack_rows(device, args.quick, rounds, min_time)
    return result_record("integrations", device, args, rows, value_checks=True, cache="warm")


def print_table(result: dict) -> None:
    print(f"\nDrop-ins against the libraries they replace ({result['device']}, {result['threads']} threads)")
    print(f"{'op':<14} {'pass':<17} {'shape':<16} {'implementation':<38} {'ms':>9} {'vs peer':>8} {'max diff':>9}")
    for r in result["rows"]:
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{r['op']:<14} {r['pass_']:<17} {shape:<16} {r['impl']:<38} {1e3 * r['seconds']:>9.2f} "
            f"{r['speedup_vs_strongest_peer']:>7.2f}x {r['max_abs_diff']:>9.2g}"
        )


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    return finish(run(args), "integrations", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
