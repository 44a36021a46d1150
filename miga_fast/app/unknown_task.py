"""`miga-fast unknown-task`: does MIGA's unknown-task attack change semantics? (issue-level
question of docs/algorithms.md §4; results in benchmarks/results/unknown_task_cpu/).

On one data set, with the shipped denoiser, sigma = 25:
- the attacks: MIGA known task (it sees the pipeline's classifier: the upper bound), MIGA
  unknown task in its population form (a MINE critic pre-trained on the training split's
  clean pairs, replaying them beside every batch: mine.pretrain_critic), the unknown task
  with a fresh per-batch critic (the earlier default), the denoiser-degradation baseline,
  and the control: random signs of the same l-inf budget;
- the judges, none of which any attack saw: a second classifier of another architecture
  (labels changed against its label for the un-attacked output; the share of the images it
  got right whose label changed) and its penultimate features (cosine distance between the
  attacked and the un-attacked output); PSNR against the clean image;
- lambda_mi of the population attack chosen on the val split (the largest label change
  within 3 dB of the un-attacked output's PSNR), then every row on the test split, for each
  eps of the curve.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import data, metrics
from ..attacks import MIGA, DenoiserDegradation
from ..mine import pretrain_critic
from ..models import registry
from .setups import setup as get_setup

JUDGES = {"natural": "cnn_natural", "digits": "resnet_digits"}  # a classifier no attack optimises against
LAMBDAS = (0.01, 0.1, 1.0, 10.0)
EPS = {"natural": (4 / 255, 8 / 255, 16 / 255), "digits": (8 / 255, 16 / 255, 32 / 255)}
PSNR_BUDGET_DB = 3.0


def _penultimate(model, x) -> torch.Tensor:
    """The input of the classifier's last linear layer (its features)."""
    store = {}
    handle = model.head[-1].register_forward_pre_hook(lambda m, args: store.__setitem__("f", args[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["f"]


def _judge(judge, x, denoised_clean, denoised, seconds, reference=None) -> dict:
    with torch.no_grad():
        y = judge(x).argmax(1)  # the judge's label of the clean image
        before, after = judge(denoised_clean).argmax(1), judge(denoised).argmax(1)
    f_after, f_before = _penultimate(judge, denoised), _penultimate(judge, denoised_clean)
    shift = 1 - F.cosine_similarity(f_after, f_before, dim=1)
    toward = {}
    if reference is not None:  # the shift toward the reference image's content, as the judge sees it
        with torch.no_grad():
            r_label = judge(reference).argmax(1)
        f_ref = _penultimate(judge, reference)
        toward = {
            "reference_label_before": float((before == r_label).float().mean()),
            "reference_label_after": float((after == r_label).float().mean()),
            "reference_similarity_gain": float(
                (F.cosine_similarity(f_after, f_ref, dim=1) - F.cosine_similarity(f_before, f_ref, dim=1)).mean()
            ),
        }
    return {
        **toward,
        "labels_changed": float((after != before).float().mean()),
        "asr": metrics.attack_success_rate(after != y, before == y),
        "feature_shift": float(shift.mean()),
        "psnr": float(metrics.psnr(denoised, x).mean()),
        "psnr_clean": float(metrics.psnr(denoised_clean, x).mean()),
        "seconds": round(seconds, 2),
    }


def _population(denoiser, x_train, eps, lambda_mi, steps, pretrain_steps, seed=0):
    mine, pool = pretrain_critic(denoiser, x_train, steps=pretrain_steps, seed=seed)
    return MIGA(denoiser, None, eps=eps, steps=steps, lambda_rec=1.0, lambda_mi=lambda_mi, mine=mine,
                critic_pool=pool, compile=False)  # fmt: skip


def unknown_task_report(
    setup: str = "natural", n: int = 64, steps: int = 20, sigma: float = 25.0, pretrain_steps: int = 500, log=print
) -> dict:
    if setup not in JUDGES:
        raise ValueError(f"unknown data set {setup!r}; choose from {sorted(JUDGES)}")
    spec = get_setup(setup)
    denoiser, classifier = registry.load(spec.denoiser), registry.load(spec.classifier)
    judge = registry.load(JUDGES[setup])
    x_train, _ = spec.load("train")

    def split(name, seed):
        x, y = spec.load(name)
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
        return x, y, data.add_gaussian_noise(x, sigma, generator=seed)

    def attack_rows(x, y, xn, eps, lambdas):
        rows = {}
        for lam in lambdas:
            a = _population(denoiser, x_train, eps, lam, steps, pretrain_steps)
            t = time.perf_counter()
            res = a(xn, None, x_clean=x)
            rows[f"unknown (population), lambda_mi={lam:g}"] = _judge(
                judge, x, res.denoised_clean, res.denoised, time.perf_counter() - t
            )
        return rows

    # lambda_mi on val, at the middle eps of the curve
    xv, yv, xnv = split("val", 1)
    eps_mid = EPS[setup][1]
    val = attack_rows(xv, yv, xnv, eps_mid, LAMBDAS)
    ok = {k: r for k, r in val.items() if r["psnr"] >= r["psnr_clean"] - PSNR_BUDGET_DB} or val
    chosen_key = max(ok, key=lambda k: ok[k]["labels_changed"])
    lam = float(chosen_key.split("=")[1])
    changed = {k: round(r["labels_changed"], 3) for k, r in val.items()}
    log(f"  {setup}: lambda_mi = {lam:g} chosen on val ({changed})")

    x, y, xn = split("test", 0)
    curve = []
    for eps in EPS[setup]:
        rows = {}
        t = time.perf_counter()
        known = MIGA(denoiser, classifier, eps=eps, steps=steps, compile=False)(xn, y, x_clean=x)
        rows["known task (sees the pipeline's classifier)"] = _judge(
            judge, x, known.denoised_clean, known.denoised, time.perf_counter() - t
        )
        rows.update(attack_rows(x, y, xn, eps, (lam,)))
        t = time.perf_counter()
        fresh = MIGA(denoiser, None, eps=eps, steps=steps, lambda_rec=1.0, compile=False)(xn, None, x_clean=x)
        rows["unknown (fresh critic per batch)"] = _judge(
            judge, x, fresh.denoised_clean, fresh.denoised, time.perf_counter() - t
        )
        t = time.perf_counter()
        degr = DenoiserDegradation(denoiser, None, eps=eps, steps=steps, compile=False)(xn, None, x_clean=x)
        rows["denoiser degradation"] = _judge(judge, x, degr.denoised_clean, degr.denoised, time.perf_counter() - t)
        # the reference variant, its upper bound (the known task targeted at the reference's label)
        reference = x.roll(1, 0)
        mine, pool = pretrain_critic(denoiser, x_train, steps=pretrain_steps)
        t = time.perf_counter()
        ref_attack = MIGA(denoiser, None, eps=eps, steps=steps, lambda_rec=1.0, lambda_mi=lam, mine=mine,
                          critic_pool=pool, reference=reference, compile=False)  # fmt: skip
        res = ref_attack(xn, None, x_clean=x)
        rows["reference variant (population)"] = _judge(
            judge, x, res.denoised_clean, res.denoised, time.perf_counter() - t, reference
        )
        with torch.no_grad():
            target = classifier(reference).argmax(1)
        t = time.perf_counter()
        res = MIGA(denoiser, classifier, eps=eps, steps=steps, targeted=True, compile=False)(xn, target, x_clean=x)
        rows["known task targeted at the reference's label"] = _judge(
            judge, x, res.denoised_clean, res.denoised, time.perf_counter() - t, reference
        )
        signs = torch.randint(0, 2, xn.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1
        with torch.no_grad():
            clean_out = denoiser(xn).clamp(0, 1)
            random_out = denoiser((xn + signs * eps).clamp(0, 1)).clamp(0, 1)
        rows["control: random signs, same budget"] = _judge(judge, x, clean_out, random_out, 0.0, reference)
        for k, r in rows.items():
            log(f"  {setup} eps {eps * 255:.0f}/255 {k}: labels changed {r['labels_changed']:.1%}, "
                f"PSNR {r['psnr']:.2f} (un-attacked {r['psnr_clean']:.2f})")  # fmt: skip
        curve.append({"eps": eps, "rows": rows})
    return {
        "data": setup,
        "denoiser": spec.denoiser,
        "pipeline_classifier": spec.classifier,
        "judge": JUDGES[setup],
        "n": n,
        "steps": steps,
        "sigma": sigma,
        "pretrain_steps": pretrain_steps,
        "val": {"eps": eps_mid, "rows": val, "chosen_lambda_mi": lam},
        "curve": curve,
    }


def report_markdown(results: list[dict]) -> str:
    lines = [
        "# Does the unknown-task attack change semantics?",
        "",
        "Judged by a classifier of another architecture that no attack optimises against, and by its "
        "penultimate features (cosine distance to the un-attacked output's). lambda_mi of the population "
        "attack chosen on the val split; every number below on the test split (one seed; n images).",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['data']}: {r['denoiser']} + judge {r['judge']}, {r['n']} test images, {r['steps']} steps",
            "",
            f"lambda_mi = {r['val']['chosen_lambda_mi']:g} (val, eps {r['val']['eps'] * 255:.0f}/255: "
            + ", ".join(f"{k.split(', ')[1]} -> {v['labels_changed']:.1%}" for k, v in r["val"]["rows"].items())
            + ").",
            "",
            "| eps | attack | labels changed | ASR (judge) | feature shift | PSNR dB (un-attacked) |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for point in r["curve"]:
            for k, v in point["rows"].items():
                lines.append(
                    f"| {point['eps'] * 255:.0f}/255 | {k} | {v['labels_changed']:.1%} | {v['asr']:.1%} | "
                    f"{v['feature_shift']:.3f} | {v['psnr']:.2f} ({v['psnr_clean']:.2f}) |"
                )
        lines += [
            "",
            "Toward the reference (x_r: the next test image): the share of outputs the judge labels as it labels "
            "x_r, before / after, and the gain in cosine similarity to x_r's judge features.",
            "",
            "| eps | attack | judge gives x_r's label: before | after | similarity gain |",
            "|---:|---|---:|---:|---:|",
        ]
        for point in r["curve"]:
            for k, v in point["rows"].items():
                if "reference_label_after" in v:
                    lines.append(
                        f"| {point['eps'] * 255:.0f}/255 | {k} | {v['reference_label_before']:.1%} | "
                        f"{v['reference_label_after']:.1%} | {v['reference_similarity_gain']:+.3f} |"
                    )
        lines.append("")
    return "\n".join(lines) + "\n"


def run(
    out_dir, setups=("natural", "digits"), n: int = 64, steps: int = 20, pretrain_steps: int = 500, log=print
) -> list[dict]:
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = [unknown_task_report(s, n, steps, pretrain_steps=pretrain_steps, log=log) for s in setups]
    (out / "unknown_task.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(results))
    return results
