"""Experiments behind the `miga-fast` commands, on the shipped data and models.

`ssim_attack_report`: the perceptual-SSIM paper's comparison (docs/algorithms.md §2), on the
test split. SSIMAttack (the global SSIM ball with the normalised-gradient and the sign step;
the convex window-ball set) against l-inf and l2 PGD whose radius is chosen on the val
split (bisection) so that their mean SSIM there matches the SSIMAttack's; per attack the
fooling rate, mean SSIM, l-inf / l2 size, and the agreement of the SSIM dissimilarity map
with the classifier's Grad-CAM and Grad-CAM++ beside three controls: a random perturbation
scaled into the same SSIM ball (each image at the attack's SSIM; 5 seeds), another image's
CAM, and the image's flatness map. An image grid.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import explain, metrics, models, ops
from ..attacks import PGD, SSIMAttack
from ..metrics import predict
from .setups import setup as get_setup
from .setups import with_models
from .viz import save_labelled_grid

SETUPS = with_models("cam_classifier")  # the data sets the experiment runs on
CONTROL_SEEDS = 5


def _mean_ssim(x, adv) -> float:
    return float(ops.ssim(x.double(), adv.double()).mean())


def _tune_pgd(model, x, y, norm, target_ssim, steps, hi, iters=8):
    """The PGD radius whose adversarial images of (x, y) have mean SSIM closest to
    target_ssim (SSIM falls as the radius grows): bisection on [0, hi]."""
    lo = 0.0
    best = None
    for _ in range(iters):
        eps = (lo + hi) / 2
        s = _mean_ssim(x, _pgd(model, x, y, norm, eps, steps))
        if best is None or abs(s - target_ssim) < abs(best[1] - target_ssim):
            best = (eps, s)
        if s > target_ssim:
            lo = eps
        else:
            hi = eps
    return best[0]


def _pgd(model, x, y, norm, eps, steps):
    return PGD(model, eps=eps, alpha=eps / 4, steps=steps, norm=norm, random_start=False)(x, y)


def random_in_ball(x: torch.Tensor, adv: torch.Tensor, seed: int, magnitude: float = 64 / 255) -> torch.Tensor:
    """The control perturbation: random signs of `magnitude` (the box applied), scaled back
    along itself into the SSIM ball of each image's own SSIM(x, adv), so it spends the same
    SSIM budget with no knowledge of the classifier."""
    g = torch.Generator().manual_seed(seed)
    delta = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x.dtype) * magnitude
    delta = (x + delta).clamp(0, 1) - x
    tau = ops.ssim(x.double(), adv.double()).clamp(max=1.0).to(x.dtype)
    ops.ssim_ball_project_(delta, x, tau)
    return x + delta


def _stats(v: torch.Tensor) -> dict:
    """Mean and standard error over images."""
    v = v.double()
    return {"mean": float(v.mean()), "se": float(v.std() / len(v) ** 0.5) if len(v) > 1 else 0.0}


def _agreement(x, adv, cams: dict, flat) -> dict:
    """The dissimilarity map 1 - SSIM(x, adv) against each CAM, another image's CAM (the
    next image's) and the flatness map: per measure, mean and standard error over images."""
    d = explain.dissimilarity(x, adv)  # one SSIM map against every CAM and control
    out = {}
    for name, cam in cams.items():
        own, other = explain.agreement(d, cam), explain.agreement(d, cam.roll(1, 0))
        out[name] = {
            "correlation": _stats(own["correlation"]),
            "iou": _stats(own["iou"]),
            "other_image_correlation": _stats(other["correlation"]),
            "other_image_iou": _stats(other["iou"]),
        }
    out["flatness_correlation"] = _stats(explain.agreement(d, flat)["correlation"])
    return out


def _row(name, model, x, y, adv, correct, cams, flat, seconds):
    d = (adv - x).flatten(1)
    fooled = metrics.attack_success_rate(predict(model, adv) != y, correct)
    agree = _agreement(x, adv, cams, flat)
    # the control: random perturbations in the same ball, one agreement per seed
    control = {name: {"correlation": [], "iou": []} for name in cams}
    for seed in range(CONTROL_SEEDS):
        d = explain.dissimilarity(x, random_in_ball(x, adv, seed))
        for cam_name, cam in cams.items():
            r = explain.agreement(d, cam)
            control[cam_name]["correlation"].append(float(r["correlation"].mean()))
            control[cam_name]["iou"].append(float(r["iou"].mean()))
    for cam_name, c in control.items():
        for k, vals in c.items():
            t = torch.tensor(vals, dtype=torch.float64)
            agree[cam_name][f"random_in_ball_{k}"] = {"mean": float(t.mean()), "sd_over_seeds": float(t.std())}
    return {
        "attack": name,
        "fooling_rate": fooled,
        "mean_ssim": _mean_ssim(x, adv),
        "linf": float(d.abs().amax(1).mean()),
        "l2": float(d.norm(dim=1).mean()),
        "agreement": agree,
        "seconds": round(seconds, 2),
    }


def _spread(x, y, n):
    pick = torch.linspace(0, len(x) - 1, min(n, len(x))).long()  # spread over every class
    return x[pick], y[pick]


def ssim_attack_report(
    setup: str, n: int = 96, tau: float = 0.95, steps: int = 10, out_dir: Path | None = None, log=print
) -> dict:
    if setup not in SETUPS:
        raise ValueError(f"unknown data set {setup!r}; choose from {SETUPS}")
    spec = get_setup(setup)
    x, y = _spread(*spec.load("test"), n)
    xv, yv = _spread(*spec.load("val"), n)
    model = models.load(spec.cam_classifier)
    correct = predict(model, x) == y
    cams = {
        "grad_cam": explain.grad_cam(model, x, spec.cam_layer),
        "grad_cam_pp": explain.grad_cam_plus_plus(model, x, spec.cam_layer),
    }
    flat = explain.flatness(x)
    rows, advs = [], {}
    attacks = (
        ("SSIMAttack (pgd, l2 step)", dict(solver="pgd", step="l2")),
        ("SSIMAttack (pgd, sign step)", dict(solver="pgd", step="sign")),
        ("SSIMAttack (convex, l2 step)", dict(solver="convex", step="l2")),
    )
    for label, kw in attacks:
        t = time.time()
        adv = SSIMAttack(model, tau=tau, steps=steps, **kw)(x, y)
        advs[label] = adv
        rows.append(_row(f"{label}, tau={tau}", model, x, y, adv, correct, cams, flat, time.time() - t))
        log(f"  {rows[-1]['attack']}: fooled {rows[-1]['fooling_rate']:.0%}")
    # PGD's radius: matched on val to the mean SSIM the first SSIMAttack reaches on val
    target = _mean_ssim(xv, SSIMAttack(model, tau=tau, steps=steps)(xv, yv))
    for norm, hi in (("linf", 64 / 255), ("l2", 8.0)):
        t = time.time()
        eps = _tune_pgd(model, xv, yv, norm, target, steps, hi)
        adv = _pgd(model, x, y, norm, eps, steps)
        label = f"PGD {norm}, eps={eps * 255:.1f}/255" if norm == "linf" else f"PGD l2, eps={eps:.2f}"
        advs[f"PGD {norm}"] = adv
        rows.append(_row(label + " (SSIM-matched on val)", model, x, y, adv, correct, cams, flat, time.time() - t))
        log(f"  {rows[-1]['attack']}: fooled {rows[-1]['fooling_rate']:.0%}")
    result = {
        "data": setup,
        "classifier": spec.cam_classifier,
        "split": "test",
        "images": len(x),
        "val_images": len(xv),
        "val_target_ssim": target,
        "clean_accuracy": float(correct.float().mean()),
        "tau": tau,
        "steps": steps,
        "control_seeds": CONTROL_SEEDS,
        "rows": rows,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        k = min(8, len(x))
        adv = advs["SSIMAttack (pgd, l2 step)"][:k]
        delta = adv - x[:k]
        amp = (0.5 + delta / (2 * delta.abs().amax().clamp_min(1e-12))).clamp(0, 1)
        dis = explain.dissimilarity(x[:k], adv)
        dis = dis / dis.flatten(1).amax(1).clamp_min(1e-12).reshape(-1, 1, 1)
        c = x.shape[1]
        cam = cams["grad_cam"]
        tiles = [x[:k], adv, amp, dis[:, None].expand(-1, c, -1, -1), cam[:k, None].expand(-1, c, -1, -1)]
        titles = ["clean", "SSIMAttack (pgd, l2)", "perturbation (amplified)", "1 - SSIM map", "Grad-CAM"]
        with torch.no_grad():
            names = [[spec.class_name(int(i)) for i in predict(model, t)] for t in tiles[:2]]
        captions = names + [[""] * k] * 3
        path = save_labelled_grid(tiles, titles, out_dir / f"ssim_attack_{setup}.png", captions=captions)
        result["grid"] = str(path)
    return result
