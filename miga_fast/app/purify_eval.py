"""`miga-fast purify-eval`: diffusion purifiers against adaptive attacks on the shipped
models (docs/algorithms.md §5).

Per data set and purifier (none; uniform; heterogeneous with single-step, multi-step and
no resampling): the standard accuracy (a majority vote over `votes` purifications) and
the robust accuracy (the same vote on the adversarial images) under
  - PGD-EOT with the full gradient through the real purifier (plain autograd, or
    checkpointed: as exact, memory near one model call), l-inf eps = 8/255, step 0.007,
    `eot` draws averaged per step;
  - PGD-EOT with BPDA (the purifier's backward replaced by the identity);
  - PGD-EOT with the surrogate gradient (a two-model-call stand-in for the purifier);
  - torchattacks' AutoAttack (version "rand": APGD-CE and APGD-DLR with EOT) against the
    PurifiedClassifier, an attack written by others, when torchattacks is installed and
    asked for (`autoattack=True`);
and the seconds and peak memory of one purification per image. Rows are appended to
results.json as they finish: a rerun skips those already there (resumable). report.md and
a PNG grid (inputs, masks, purified images) are written at the end.

Under torchrun (docs/scaling.md) the rows are shared out: row j (in the order above) goes
to rank j mod N, which appends it to results.rank<r>.json; every row draws from seeds of
its own, so the rows equal a one-process run's. Rank 0 merges the files into
results.json (rows in that order, whatever N) and writes the report and the grids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed, ops
from ..models import registry
from ..purify import AttentionMask, HeterogeneousPurifier, PurifiedClassifier, UniformPurifier
from .setups import SETUPS
from .viz import save_labelled_grid

EPS = 8 / 255
STEP = 0.007


def settings(quick: bool) -> dict:
    """The evaluation's settings: the paper's (votes 20, 200 PGD steps with EOT 20, DDIM
    stride 2, the attack's gradient checkpointed) or, with quick, ones that finish in
    minutes on a CPU (plain autograd: as exact, faster, and the memory is there)."""
    if quick:
        return dict(n=32, votes=3, pgd_steps=5, eot=2, stride=25, multi_u=4, autoattack=False, gradient="full")
    return dict(n=256, votes=20, pgd_steps=200, eot=20, stride=2, multi_u=20, autoattack=True, gradient="checkpoint")


def purifiers(setup, unet, classifier, s: dict) -> dict:
    """name -> purifier (None: the classifier alone). The method's defaults: t_l = 200,
    t_s = 100, U = 10; the mask keeps the top 15% of pixels (the method's ImageNet rule:
    the 0.9 threshold of its CIFAR setting leaves ~1% of a digit image masked)."""
    mask = dict(top=0.15)
    return {
        "none": None,
        "uniform t*=100": UniformPurifier(unet, t_star=100, stride=s["stride"], gradient="checkpoint"),
        "heterogeneous single U=10": HeterogeneousPurifier(
            unet, classifier=classifier, stride=s["stride"], U=10, gradient="checkpoint", mask_options=mask
        ),
        f"heterogeneous multi U={s['multi_u']}": HeterogeneousPurifier(
            unet,
            classifier=classifier,
            stride=s["stride"],
            U=s["multi_u"],
            resampling="multi",
            gradient="checkpoint",
            mask_options=mask,
        ),  # fmt: skip
        "heterogeneous none": HeterogeneousPurifier(
            unet,
            classifier=classifier,
            stride=s["stride"],
            resampling="none",
            gradient="checkpoint",
            mask_options=mask,
        ),  # fmt: skip
    }


class _Single(torch.nn.Module):
    """classifier(purifier(x)) with one stochastic draw per call and a chosen gradient."""

    def __init__(self, purifier, classifier, gradient, generator):
        super().__init__()
        self.purifier, self.classifier, self.gradient, self.generator = purifier, classifier, gradient, generator

    def forward(self, x):
        if self.purifier is None:
            return self.classifier(x)
        return self.classifier(self.purifier(x, generator=self.generator, gradient=self.gradient))


def pgd_eot(model, x, y, steps: int, eot: int, eps: float = EPS, step: float = STEP) -> torch.Tensor:
    """l-inf PGD from the clean image, the gradient averaged over `eot` draws of the model's
    randomness per step (expectation over transformation)."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        grad = torch.zeros_like(x)
        for _ in range(eot):
            xx = (x + delta).requires_grad_(True)
            loss = F.cross_entropy(model(xx), y)
            grad += torch.autograd.grad(loss, xx)[0]
        with torch.no_grad():
            ops.pgd_step_(delta, grad, x, eps, step)
    return (x + delta).detach()


def graph_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for the backward while fn() runs (the
    memory a full-gradient attack step holds beyond the model)."""
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[(t.device, storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _cuda_peak_bytes(fn, device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"rows": []}


def _save(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def evaluate(
    out: Path, datasets=("digits", "natural"), quick: bool = True, seed: int = 0, log=print, **overrides
) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = {**settings(quick), **{k: v for k, v in overrides.items() if v is not None}}
    rank, world = distributed.rank_world()
    path = out / "results.json"
    files = [path, *sorted(out.glob("results.rank*.json"))]
    error = None
    for f in files:
        written = _load(f).get("settings")
        if written not in (None, s):
            error = f"{f} was written with other settings ({written}); use another --out"
    error = distributed.agree(error)
    if error is not None:
        raise ValueError(error)
    results = _load(path)
    results["settings"] = s
    own_path = path if world == 1 else out / f"results.rank{rank}.json"
    own = results if world == 1 else {**_load(own_path), "settings": s}
    done = {_key(r) for f in files for r in _load(f)["rows"]}
    order = []  # every row's key, in the order of a whole run
    grids = []
    for name in datasets:
        setup = SETUPS[name]
        if setup.diffusion is None or setup.classifier is None:
            log(f"{name}: no shipped diffusion model or classifier; skipped")
            continue
        unet = registry.load(setup.diffusion).eval().requires_grad_(False)
        classifier = registry.load(setup.classifier).eval().requires_grad_(False)
        x, y = setup.load("test")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: s["n"]]
        x, y = x[idx], y[idx]
        for p_name, purifier in purifiers(setup, unet, classifier, s).items():
            attacks = ["clean", "pgd-eot full gradient"]
            if purifier is not None:
                attacks += ["pgd-eot bpda", "pgd-eot surrogate"]
            if s["autoattack"]:
                attacks.append("autoattack rand")
            for k, attack in enumerate(attacks):
                order.append((name, p_name, attack))
                if (len(order) - 1) % world != rank or (name, p_name, attack) in done:
                    continue
                # every row draws from its own seeds: a resumed run gives the rows a whole run gives
                voter = (
                    classifier
                    if purifier is None
                    else PurifiedClassifier(purifier, classifier, votes=s["votes"], seed=seed + 100 + k, mode="vote")
                )
                log(f"{name}: {p_name}: {attack} ...")
                t0 = time.time()
                row = {"data": name, "purifier": p_name, "attack": attack, "images": len(x)}
                if attack == "clean":
                    adv = x
                    if purifier is not None:
                        g = torch.Generator().manual_seed(seed + 2)
                        t1 = time.time()
                        with torch.no_grad():
                            purifier(x, generator=g, gradient="none")
                        row["purify_s_per_image"] = (time.time() - t1) / len(x)
                        row["model_calls"] = purifier.model_calls
                        peak = _cuda_peak_bytes(lambda: purifier(x, generator=g, gradient="none"), x.device)
                        row["purify_peak_mib_per_image"] = None if peak is None else peak / 2**20 / len(x)
                elif attack.startswith("pgd-eot"):
                    gradient = {"full gradient": s["gradient"], "bpda": "bpda", "surrogate": "surrogate"}[
                        attack.split(" ", 1)[1]
                    ]
                    g = torch.Generator().manual_seed(seed + 3)
                    model = _Single(purifier, classifier, gradient, g)
                    eot = 1 if purifier is None else s["eot"]
                    if attack == "pgd-eot full gradient":  # measured on draws of its own
                        probe = _Single(purifier, classifier, gradient, torch.Generator().manual_seed(seed + 4))
                        saved = graph_bytes(lambda: F.cross_entropy(probe(x.clone().requires_grad_(True)), y))
                        row["graph_mib_per_image"] = saved / 2**20 / len(x)
                    adv = pgd_eot(model, x, y, s["pgd_steps"], eot)
                else:
                    adv = _autoattack(purifier, classifier, x, y, s, seed, log)
                    if adv is None:
                        continue
                with torch.no_grad():
                    row["accuracy"] = float((voter(adv).argmax(1) == y).float().mean())
                row["seconds"] = round(time.time() - t0, 1)
                log(f"  accuracy {row['accuracy']:.3f} ({row['seconds']} s)")
                own["rows"].append(row)
                _save(own_path, own)
        if rank == 0:
            grids.append(_grid(name, setup, unet, classifier, x[:6], out, s))
    distributed.barrier()  # every rank's rows are on disk
    if rank == 0:
        rows = {}
        for f in [path, *sorted(out.glob("results.rank*.json"))]:
            for r in _load(f)["rows"]:
                rows.setdefault(_key(r), r)
        position = {key: i for i, key in enumerate(order)}
        results["rows"] = sorted(rows.values(), key=lambda r: position.get(_key(r), len(position)))
        results["grids"] = [str(g) for g in grids]
        if world > 1:
            results["processes"] = world
        _save(path, results)
        for f in out.glob("results.rank*.json"):  # merged: results.json holds every row
            f.unlink()
        (out / "report.md").write_text(report(results))
    distributed.barrier()  # results.json is whole before any rank returns
    return _load(path)


def _key(row: dict) -> tuple:
    return row["data"], row["purifier"], row["attack"]


def _autoattack(purifier, classifier, x, y, s, seed, log):
    try:
        import torchattacks
    except ImportError:
        log("  torchattacks is not installed: AutoAttack skipped")
        return None
    model = classifier if purifier is None else PurifiedClassifier(purifier, classifier, seed=seed + 5, mode="single")
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=EPS, version="rand", n_classes=int(y.max()) + 1, seed=seed)
    return attack(x, y).detach()


def _grid(name, setup, unet, classifier, x, out: Path, s: dict) -> Path:
    """Inputs, the attention mask, and the purified images of the uniform and the
    heterogeneous (single-step) purifiers."""
    masker = AttentionMask(classifier, top=0.15)
    with torch.no_grad():
        mask = masker(x).expand_as(x)
        uni = UniformPurifier(unet, t_star=100, stride=s["stride"])(x, generator=0, gradient="none")
        het = HeterogeneousPurifier(unet, classifier=classifier, stride=s["stride"], mask_options=dict(top=0.15))(
            x, generator=0, gradient="none"
        )
    rows = [x, mask, uni, het]
    titles = ["input", "attention mask (top 15%)", "uniform t*=100", "heterogeneous single U=10"]
    return save_labelled_grid(rows, titles, out / f"purify_{name}.png")


def report(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Diffusion purification against adaptive attacks",
        "",
        f"Shipped models, {s['n']} test images per data set (a seeded draw), l-inf eps = 8/255, PGD step 0.007, "
        f"{s['pgd_steps']} PGD steps with {s['eot']} EOT draws per step; accuracy is a majority vote over "
        f"{s['votes']} purifications; DDIM stride {s['stride']}; the full gradient by {s['gradient']} autograd; "
        "heterogeneous: t_l = 200, t_s = 100, the mask "
        "the top 15% of the classifier's attention. One seed: with this many images a difference of a few "
        "points is within the noise (one image is 1/n).",
        "",
        "Columns: model calls and seconds per image of one purification (the clean row; wall time of this run,",
        "benchmarks/bench_purify.py times them properly); the MiB per image",
        "autograd keeps for the backward of one full-gradient attack step (its row); on a GPU also the",
        "allocator's peak per image of one purification.",
        "",
        "| data | purifier | attack | accuracy | model calls | s / image | graph MiB / image | peak MiB / image |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def num(value, fmt):
        return format(value, fmt) if isinstance(value, (int, float)) else ""

    for r in results["rows"]:
        lines.append(
            f"| {r['data']} | {r['purifier']} | {r['attack']} | {r['accuracy']:.3f} | {num(r.get('model_calls'), 'd')} "
            f"| {num(r.get('purify_s_per_image'), '.3f')} | {num(r.get('graph_mib_per_image'), '.2f')} "
            f"| {num(r.get('purify_peak_mib_per_image'), '.2f')} |"
        )
    lines += ["", *(f"![{Path(g).stem}]({Path(g).name})" for g in results.get("grids", []))]
    return "\n".join(lines) + "\n"
