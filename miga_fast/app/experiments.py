"""Experiments behind the `miga-fast` commands, on the shipped data and models.

`ssim_attack_report`: the perceptual-SSIM paper's comparison (docs/algorithms.md §2).
SSIMAttack (both solvers) against l-inf and l2 PGD whose radius is tuned (bisection) so their
mean SSIM matches the pgd-solver SSIMAttack's; per attack the fooling rate, mean SSIM,
l-inf / l2 size and the agreement of the SSIM dissimilarity map with the classifier's
Grad-CAM, and an image grid.
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


def _mean_ssim(x, adv) -> float:
    return float(ops.ssim(x.double(), adv.double()).mean())


def _tune_pgd(model, x, y, norm, target_ssim, steps, hi, iters=8):
    """The PGD radius whose adversarial images have mean SSIM closest to target_ssim
    (SSIM falls as the radius grows): bisection on [0, hi]."""
    lo = 0.0
    best = None
    for _ in range(iters):
        eps = (lo + hi) / 2
        alpha = eps / 4
        adv = PGD(model, eps=eps, alpha=alpha, steps=steps, norm=norm, random_start=False)(x, y)
        s = _mean_ssim(x, adv)
        if best is None or abs(s - target_ssim) < abs(best[2] - target_ssim):
            best = (eps, adv, s)
        if s > target_ssim:
            lo = eps
        else:
            hi = eps
    return best


def _row(name, model, x, y, adv, correct, cam, seconds):
    d = (adv - x).flatten(1)
    agree = explain.ssim_vs_cam(x, adv, cam)
    fooled = metrics.attack_success_rate(predict(model, adv) != y, correct)
    return {
        "attack": name,
        "fooling_rate": fooled,
        "mean_ssim": _mean_ssim(x, adv),
        "linf": float(d.abs().amax(1).mean()),
        "l2": float(d.norm(dim=1).mean()),
        "ssim_cam_correlation": float(agree["correlation"].mean()),
        "ssim_cam_iou": float(agree["iou"].mean()),
        "seconds": round(seconds, 2),
    }


def ssim_attack_report(
    setup: str, n: int = 96, tau: float = 0.95, steps: int = 10, out_dir: Path | None = None, log=print
) -> dict:
    if setup not in SETUPS:
        raise ValueError(f"unknown data set {setup!r}; choose from {SETUPS}")
    spec = get_setup(setup)
    x, y = spec.load("test")
    pick = torch.linspace(0, len(x) - 1, min(n, len(x))).long()  # spread over every class
    x, y = x[pick], y[pick]
    model = models.load(spec.cam_classifier)
    correct = predict(model, x) == y
    cam = explain.grad_cam(model, x, spec.cam_layer)
    rows, advs = [], {}
    for solver in ("pgd", "convex"):
        t = time.time()
        adv = SSIMAttack(model, tau=tau, steps=steps, solver=solver)(x, y)
        advs[f"SSIMAttack ({solver})"] = adv
        rows.append(_row(f"SSIMAttack ({solver}), tau={tau}", model, x, y, adv, correct, cam, time.time() - t))
        log(f"  {rows[-1]['attack']}: fooled {rows[-1]['fooling_rate']:.0%}")
    target = rows[0]["mean_ssim"]
    for norm, hi in (("linf", 64 / 255), ("l2", 8.0)):
        t = time.time()
        eps, adv, _ = _tune_pgd(model, x, y, norm, target, steps, hi)
        label = f"PGD {norm}, eps={eps * 255:.1f}/255" if norm == "linf" else f"PGD l2, eps={eps:.2f}"
        advs[f"PGD {norm}"] = adv
        rows.append(_row(label + " (SSIM-matched)", model, x, y, adv, correct, cam, time.time() - t))
        log(f"  {rows[-1]['attack']}: fooled {rows[-1]['fooling_rate']:.0%}")
    result = {
        "data": setup,
        "classifier": spec.cam_classifier,
        "images": len(x),
        "clean_accuracy": float(correct.float().mean()),
        "tau": tau,
        "steps": steps,
        "rows": rows,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        k = min(8, len(x))
        adv = advs["SSIMAttack (pgd)"][:k]
        delta = adv - x[:k]
        amp = (0.5 + delta / (2 * delta.abs().amax().clamp_min(1e-12))).clamp(0, 1)
        dis = explain.ssim_vs_cam(x[:k], adv, cam[:k])["dissimilarity"]
        dis = dis / dis.flatten(1).amax(1).clamp_min(1e-12).reshape(-1, 1, 1)
        c = x.shape[1]
        tiles = [x[:k], adv, amp, dis[:, None].expand(-1, c, -1, -1), cam[:k, None].expand(-1, c, -1, -1)]
        titles = ["clean", "SSIMAttack (pgd)", "perturbation (amplified)", "1 - SSIM map", "Grad-CAM"]
        with torch.no_grad():
            names = [[spec.class_name(int(i)) for i in predict(model, t)] for t in tiles[:2]]
        captions = names + [[""] * k] * 3
        path = save_labelled_grid(tiles, titles, out_dir / f"ssim_attack_{setup}.png", captions=captions)
        result["grid"] = str(path)
    return result
