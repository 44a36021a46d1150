"""MIGA (docs/algorithms.md §4): a small perturbation delta of a noisy image
x_n such that the denoiser's output D(x_n + delta) still looks clean but carries other
semantics, and the two baselines it is compared with.

    attack = MIGA(denoiser, classifier, eps=8/255)
    result = attack(x_noisy, labels, x_clean=x)        # an AttackResult
    attack.run(dataset, "out/", batch_size=64)          # a whole dataset, resumable

Every attack here descends, per sample,

    lambda_rec * mean((D(x_n + delta) - x_ref)^2) + lambda_mi * L_MI

with signed-gradient (l-inf) or normalised-gradient (l2) steps through the fused
projection ops, or sign steps followed by the SSIM-ball projection (norm="ssim"), and
keeps x_n + delta in [0, 1]. Known task: L_MI = -CE(F(D(.)), y) (untargeted) or
+CE(F(D(.)), target). Unknown task: L_MI is a MINE bound on I(x; D(x_n + delta))
(minimised), or with `reference` on I(x_r; D(x_n + delta)) (maximised), with the
critic trained by `critic_steps` ascent steps before every delta step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch

from .. import metrics, ops
from .._validation import (
    check_batch,
    check_choice,
    check_int,
    check_labels,
    check_scalar,
    check_tensor,
    check_unit_range,
    value_checks,
)
from ..compile import compile_denoiser
from ..nvtx import nvtx_range
from ..reference import projection as ref_projection
from ._common import DEFAULT_EPS, check_model_mode, masked_cross_entropy, model_device, model_mode

NORMS = ("linf", "l2", "ssim")
TASKS = ("known", "unknown")


@dataclasses.dataclass
class AttackResult:
    """What an attack on a batch returns. Per-sample tensors are [B] on the CPU."""

    adversarial: torch.Tensor          # x_n + delta
    denoised: torch.Tensor             # D(x_n + delta)
    denoised_clean: torch.Tensor       # D(x_n): the un-attacked pipeline's output
    delta: torch.Tensor
    success: torch.Tensor | None       # known task: the label changed (hit the target); else None
    correct_before: torch.Tensor | None  # the pipeline classified x_n correctly before the attack
    psnr: torch.Tensor                 # of D(x_n + delta) against the clean image (x_ref without one)
    ssim: torch.Tensor
    psnr_vs_denoised: torch.Tensor     # of D(x_n + delta) against D(x_n)
    ssim_vs_denoised: torch.Tensor
    linf: torch.Tensor
    l2: torch.Tensor
    losses: dict[str, list[float]]     # the mean of each loss term at every step
    seconds: float

    def attack_success_rate(self) -> float | None:
        """Success over the samples the pipeline got right before the attack."""
        if self.success is None or self.correct_before is None:
            return None
        return metrics.attack_success_rate(self.success, self.correct_before)

    def summary(self) -> dict:
        return {"n": int(self.delta.shape[0]), "asr": self.attack_success_rate(),
                "psnr": float(self.psnr.mean()), "ssim": float(self.ssim.mean()),
                "ssim_vs_denoised": float(self.ssim_vs_denoised.mean()),
                "psnr_vs_denoised": float(self.psnr_vs_denoised[torch.isfinite(self.psnr_vs_denoised)].mean())
                if torch.isfinite(self.psnr_vs_denoised).any() else float("inf"),
                "linf": float(self.linf.max()), "l2": float(self.l2.mean()),
                "images_per_s": self.delta.shape[0] / self.seconds if self.seconds > 0 else float("inf")}




class DenoiserAttack:
    """The shared machinery of the attacks on a denoiser (MIGA and the baselines): checks,
    the compiled loss, the projected step, per-sample metrics and `run`."""

    name = "denoiser-attack"

    min_batch = 1  # the smallest batch the attack can run on

    def __init__(self, denoiser, classifier=None, eps=None, norm="linf", steps=20, alpha=None, tau=0.95,
                 lambda_rec=10.0, lambda_mi=1.0, targeted=False, compile=True, fused=True, random_start=False,
                 generator=None, model_mode="eval"):
        if not isinstance(denoiser, torch.nn.Module):
            raise TypeError(f"`denoiser` must be an nn.Module, got {type(denoiser).__name__}")
        if classifier is not None and not isinstance(classifier, torch.nn.Module):
            raise TypeError(f"`classifier` must be an nn.Module or None, got {type(classifier).__name__}")
        self.denoiser_eager = denoiser
        self.classifier = classifier
        self.norm = check_choice(norm, "norm", NORMS)
        if self.norm == "ssim":
            if eps is not None:
                raise ValueError("`eps` is not used with norm='ssim' (the SSIM ball is bounded by `tau`): "
                                 "leave it None")
            eps = 1.0  # the l-inf ball of radius 1 is inactive: the sign step, the box, then the SSIM ball
        self.eps = check_scalar(DEFAULT_EPS[self.norm] if eps is None else eps, "eps")
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"`eps` must lie in [0, 1] for norm='linf' (images live in [0, 1]), got {eps}")
        self.steps = check_int(steps, "steps", 0)
        if alpha is None:
            alpha = 2.5 * self.eps / max(self.steps, 1) if self.norm != "ssim" else 1 / 255
        self.alpha = check_scalar(alpha, "alpha")
        self.tau = check_scalar(tau, "tau")
        if not 0 < self.tau <= 1:
            raise ValueError(f"`tau` must lie in (0, 1], got {tau}")
        self.lambda_rec = check_scalar(lambda_rec, "lambda_rec")
        self.lambda_mi = check_scalar(lambda_mi, "lambda_mi")
        self.targeted = bool(targeted)
        self.compile = bool(compile)
        self.fused = bool(fused)
        self.random_start = bool(random_start)
        self.generator = generator
        self.model_mode = check_model_mode(model_mode)
        self.denoiser = compile_denoiser(denoiser) if self.compile else denoiser
        self._compiled_loss = None

    # ------------------------------------------------------------------ the loss
    def _terms(self, x_adv, x_ref, labels, aux):
        """Per-sample loss terms {name: [B]} on the attacked input; their weighted sum is
        descended."""
        raise NotImplementedError

    def _loss(self, delta, x_noisy, x_ref, labels, aux):
        out = self.denoiser(x_noisy + delta)
        terms = self._terms(out, x_ref, labels, aux)
        total = sum(terms.values())
        return total.sum(), {k: v.detach().mean() for k, v in terms.items()}, out

    def _loss_fn(self):
        if not self.compile:
            return self._loss
        if self._compiled_loss is None:
            self._compiled_loss = torch.compile(self._loss, dynamic=False)
        return self._compiled_loss

    def _grad(self, delta, x_noisy, x_ref, labels, aux):
        d = delta.detach().requires_grad_(True)
        with torch.enable_grad(), nvtx_range(f"{self.name}.forward_backward"):
            try:
                total, terms, out = self._loss_fn()(d, x_noisy, x_ref, labels, aux)
            except Exception:  # noqa: BLE001 - a compile failure: the eager loss, for good
                if not self.compile:
                    raise
                self.compile, self._compiled_loss = False, None
                total, terms, out = self._loss(d, x_noisy, x_ref, labels, aux)
            (grad,) = torch.autograd.grad(total, d)
        return grad, terms, out.detach()

    # ------------------------------------------------------------------ the step
    def _step(self, delta, grad, x_noisy):
        with torch.no_grad(), nvtx_range(f"{self.name}.update"):
            if self.norm == "ssim":
                step = ops if self.fused else ref_projection
                step.pgd_step_(delta, grad, x_noisy, 1.0, self.alpha, "linf", -1.0)  # step + box
                ops.ssim_ball_project_(delta, x_noisy, self.tau)
            elif self.fused:
                ops.pgd_step_(delta, grad, x_noisy, self.eps, self.alpha, self.norm, -1.0)
            else:
                ref_projection.pgd_step_(delta, grad, x_noisy, self.eps, self.alpha, self.norm, -1.0)

    # ------------------------------------------------------------------ checks
    def _check_images(self, t, name):
        check_tensor(t, name)
        check_batch(t, name)
        if t.dim() != 4:
            raise ValueError(f"`{name}` must be [B, C, H, W], got shape {tuple(t.shape)}")
        check_unit_range(t, name)

    def _check_labels(self, labels, x, name="labels"):
        """Class indices, or -1 for a sample without a label (it is attacked for fidelity
        only and left out of the success rate)."""
        return check_labels(labels, x, name, unlabelled_ok=True)

    def _prepare(self, x_noisy, labels, x_clean):
        """(x_ref, labels, aux) for the loss; subclasses add what they need to aux."""
        return x_clean, labels, {}

    # ------------------------------------------------------------------ the attack
    def __call__(self, x_noisy, labels=None, x_clean=None) -> AttackResult:
        return self.forward(x_noisy, labels, x_clean)

    def forward(self, x_noisy, labels=None, x_clean=None) -> AttackResult:
        """Attack one batch. Inputs are moved to the denoiser's device; the models run in
        `model_mode` (eval by default) and are left in the caller's mode afterwards."""
        self._check_images(x_noisy, "x_noisy")
        if x_noisy.shape[0] < self.min_batch:
            raise ValueError(f"{type(self).__name__} needs batches of at least {self.min_batch} images "
                             f"({self._min_batch_reason()}), got {x_noisy.shape[0]}")
        device = model_device(self.denoiser_eager)
        if device is not None:
            x_noisy = x_noisy.to(device)
            x_clean = x_clean.to(device) if isinstance(x_clean, torch.Tensor) else x_clean
        with model_mode([self.denoiser_eager, self.classifier], self.model_mode):
            return self._forward(x_noisy, labels, x_clean)

    def _min_batch_reason(self) -> str:
        return ""

    def _forward(self, x_noisy, labels, x_clean) -> AttackResult:
        if x_clean is not None:
            self._check_images(x_clean, "x_clean")
            if x_clean.shape != x_noisy.shape:
                raise ValueError(f"`x_clean` must have x_noisy's shape {tuple(x_noisy.shape)}, "
                                 f"got {tuple(x_clean.shape)}")
        if labels is not None:
            labels = self._check_labels(labels, x_noisy)
        x_noisy = x_noisy.detach()
        start = time.perf_counter()
        with torch.no_grad():
            denoised_clean = self.denoiser_eager(x_noisy)
        x_ref = x_clean.detach() if x_clean is not None else denoised_clean
        x_ref, labels, aux = self._prepare(x_noisy, labels, x_ref)
        delta = torch.zeros_like(x_noisy)
        history: list[dict] = []
        with value_checks(False):
            if self.random_start and self.norm != "ssim":
                ops.random_init_(delta, x_noisy, self.eps, self.norm, self.generator)
            for k in range(self.steps):
                self._before_step(k, delta, x_noisy, x_ref, labels, aux)
                grad, terms, _ = self._grad(delta, x_noisy, x_ref, labels, aux)
                history.append(terms)
                self._step(delta, grad, x_noisy)
        with torch.no_grad():
            x_adv = (x_noisy + delta).detach()
            out = self.denoiser_eager(x_adv)
        if x_noisy.device.type == "cuda":
            torch.cuda.synchronize(x_noisy.device)
        seconds = time.perf_counter() - start
        losses = {k: torch.stack([h[k] for h in history]).tolist() for k in (history[0] if history else {})}
        return self._result(x_noisy, x_adv, out, denoised_clean, delta, labels, x_clean, x_ref, aux, losses,
                            seconds)

    def _before_step(self, k, delta, x_noisy, x_ref, labels, aux):
        """Hook run before every delta step (the unknown task trains its critic here)."""

    @torch.no_grad()
    def _result(self, x_noisy, x_adv, out, denoised_clean, delta, labels, x_clean, x_ref, aux, losses, seconds):
        target = x_clean if x_clean is not None else denoised_clean
        success = correct = None
        if self.classifier is not None and labels is not None:
            before = self.classifier(denoised_clean).argmax(1)
            after = self.classifier(out).argmax(1)
            if self.targeted:  # labels are the targets: count the samples not already there
                correct, success = (before != labels) & (labels >= 0), after == labels
            else:
                true = aux.get("true_labels", labels)
                correct, success = (before == true) & (true >= 0), after != true
            correct, success = correct.cpu(), success.cpu()  # unlabelled samples (-1) count as not correct
        flat = delta.flatten(1)
        return AttackResult(
            adversarial=x_adv.cpu(), denoised=out.cpu(), denoised_clean=denoised_clean.cpu(), delta=delta.cpu(),
            success=success, correct_before=correct,
            psnr=metrics.psnr(out.clamp(0, 1), target).cpu(), ssim=metrics.ssim(out, target).cpu(),
            psnr_vs_denoised=metrics.psnr(out, denoised_clean).cpu(),
            ssim_vs_denoised=metrics.ssim(out, denoised_clean.clamp(0, 1)).cpu(),
            linf=flat.abs().amax(1).cpu(), l2=flat.norm(dim=1).cpu(), losses=losses, seconds=seconds)

    # ------------------------------------------------------------------ a dataset
    def run(self, data, out_dir, batch_size: int = 64, sigma: float = 25.0, seed: int = 0, progress: bool = True,
            overwrite: bool = False):
        """Attack a whole dataset and write the results as it goes, resumably.

        data: a DataLoader or Dataset of (clean image, label) (a label of -1 marks an
        image without one: it is attacked, and left out of the success rate), or a pair of
        tensors (images [N, C, H, W], labels [N]). Each batch is noised with sigma (0-255
        scale; the noise of batch i is seeded by seed + i, so a resumed run sees the same
        inputs), attacked, and appended as one JSON line to out_dir/results.jsonl;
        out_dir/summary.json holds the totals.

        out_dir/config.json records the whole configuration: the attack and its
        parameters, the models (SHA-256 of their weights), the data (SHA-256 of every
        batch), batch_size, sigma, seed and the package version. A run that finds a
        folder of the same configuration resumes after its last complete batch; a folder
        of another configuration is an error (overwrite=True deletes its results and
        starts anew). The folder is locked while a run writes to it: a second run on it at
        the same time gets RunFolderBusyError. Returns the summary dict."""
        from .. import __version__
        from ..data import add_gaussian_noise

        check_int(batch_size, "batch_size", 1)
        sigma = check_scalar(sigma, "sigma")
        check_int(seed, "seed")
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"`out_dir` {out} exists and is not a folder")
        batches = _merge_short_tail(list(_batches(data, batch_size)), self.min_batch)
        if not batches:
            raise ValueError("the dataset is empty")
        if batches[-1][0].shape[0] < self.min_batch:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_batch} images "
                             f"({self._min_batch_reason()}); the dataset holds {batches[-1][0].shape[0]}")
        config = {"miga_fast": __version__, "attack": type(self).__name__, "parameters": self._parameters(),
                  "models": {"denoiser": _model_id(self.denoiser_eager), "classifier": _model_id(self.classifier)},
                  "data": _data_id(batches), "images": sum(int(x.shape[0]) for x, _ in batches),
                  "batch_size": batch_size, "sigma": sigma, "seed": seed}
        out.mkdir(parents=True, exist_ok=True)
        log = out / "results.jsonl"
        with _RunLock(out):
            _claim_folder(out, config, overwrite)
            done = _read_log(log)
            device = model_device(self.denoiser_eager) or torch.device("cpu")
            with log.open("a") as f:
                for i, (x, y) in enumerate(batches):
                    if i in done:
                        continue
                    x = x.to(device)
                    gen = torch.Generator(device=x.device).manual_seed(seed + i)
                    x_noisy = add_gaussian_noise(x, sigma, generator=gen)
                    labels = y.to(device) if y is not None else None
                    res = self.forward(x_noisy, labels if self.classifier is not None else None, x_clean=x)
                    rec = {"batch": i, "n": int(x.shape[0]), **_per_sample(res)}
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    done[i] = rec
                    if progress:
                        _progress(len(done), len(batches), self.name)
            if progress:
                print()
            summary = _summarise([done[i] for i in sorted(done)])
            summary["attack"] = repr(self)
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _parameters(self) -> dict:
        """Every setting that changes what the attack computes, as JSON values (tensors and
        models by SHA-256), for the run folder's config.json."""
        params = {}
        for key, value in sorted(vars(self).items()):
            if key in ("denoiser", "denoiser_eager", "classifier", "_compiled_loss", "compile") or callable(value):
                continue
            if value is None or isinstance(value, (bool, int, float, str)):
                params[key] = value
            elif isinstance(value, torch.Tensor):
                params[key] = _tensor_id(value)
            elif isinstance(value, torch.Generator):
                params[key] = f"generator seeded {value.initial_seed()}"
            elif isinstance(value, torch.nn.Module):
                params[key] = _model_id(value)
            elif hasattr(value, "critic") and isinstance(value.critic, torch.nn.Module):  # a MINE estimator
                params[key] = _model_id(value.critic)
            else:
                params[key] = repr(value)
        return params

    def __repr__(self):
        return (f"{type(self).__name__}(eps={self.eps:.4g}, norm={self.norm!r}, steps={self.steps}, "
                f"alpha={self.alpha:.4g}, lambda_rec={self.lambda_rec:g}, lambda_mi={self.lambda_mi:g}, "
                f"targeted={self.targeted}, compile={self.compile}, fused={self.fused})")


class RunFolderBusyError(RuntimeError):
    """Another run is writing to the same output folder."""


class _RunLock:
    """An exclusive lock on a run folder (out_dir/.lock), held while a run writes to it;
    released when the run ends, or when its process dies."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise RunFolderBusyError(f"another run is writing to {self.path.parent} (it holds {self.path}); "
                                     "wait for it or choose another folder") from None
        except ImportError:  # no fcntl (Windows): no lock
            pass
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
        return False


def _claim_folder(out: Path, config: dict, overwrite: bool) -> None:
    """Resume only a folder written by the same configuration; overwrite=True starts anew."""
    cfg_path, log, summary = out / "config.json", out / "results.jsonl", out / "summary.json"
    if overwrite:
        for p in (log, summary, cfg_path):
            p.unlink(missing_ok=True)
    elif cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg_path} is unreadable ({exc}); pass overwrite=True to start anew") from exc
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            if "parameters" in diff:
                p_old, p_new = old.get("parameters", {}), config["parameters"]
                diff += [f"parameters.{k}" for k in sorted(set(p_old) | set(p_new)) if p_old.get(k) != p_new.get(k)]
            raise ValueError(f"{out} holds a run of another configuration (it differs in {', '.join(diff)}); "
                             "resume it with the same settings, choose another folder, or pass overwrite=True "
                             "(CLI: --overwrite) to delete its results")
    elif log.exists() and log.stat().st_size:
        raise ValueError(f"{out} holds results.jsonl without a config.json (a run of unknown configuration); "
                         "choose another folder or pass overwrite=True (CLI: --overwrite)")
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _tensor_id(t: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _model_id(model) -> dict | None:
    """A model's identity: its class and the SHA-256 of its state dict (names, dtypes,
    shapes and values)."""
    if model is None:
        return None
    h = hashlib.sha256()
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        h.update(name.encode())
        h.update(_tensor_id(state[name]).encode())
    return {"class": type(model).__name__, "sha256": h.hexdigest()}


def _data_id(batches) -> str:
    h = hashlib.sha256()
    for x, y in batches:
        h.update(_tensor_id(x).encode())
        h.update(_tensor_id(y).encode() if y is not None else b"-")
    return h.hexdigest()


def _merge_short_tail(batches: list, min_batch: int) -> list:
    """A last batch smaller than `min_batch` joins the one before it (the unknown task's
    bound needs two images: a dataset of 2k + 1 images at batch size 2 ends on 3)."""
    if min_batch > 1 and len(batches) > 1 and batches[-1][0].shape[0] < min_batch:
        (xa, ya), (xb, yb) = batches[-2], batches[-1]
        y = torch.cat([ya, yb]) if ya is not None and yb is not None else None
        batches = batches[:-2] + [(torch.cat([xa, xb]), y)]
    return batches


def _read_log(log: Path) -> dict:
    """The complete records of a previous run, by batch. A line cut by an interruption
    (or otherwise unreadable) is dropped from the file, so its batch is redone cleanly."""
    if not log.exists():
        return {}
    text = log.read_text()
    done, kept, dropped = {}, [], False
    for line in text.split("\n"):
        if not line:
            continue
        try:
            rec = json.loads(line)
            batch = rec["batch"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped = True
            continue
        if batch not in done:
            done[batch] = rec
            kept.append(line)
    if dropped or (text and not text.endswith("\n")):
        log.write_text("".join(line + "\n" for line in kept))
    return done


def _batches(data, batch_size):
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], (y[i:i + batch_size] if y is not None else None)
        return
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for item in data:
        if isinstance(item, (tuple, list)):
            yield item[0], torch.as_tensor(item[1])
        else:
            yield item, None


def _per_sample(res: AttackResult) -> dict:
    rec = {"psnr": res.psnr.tolist(), "ssim": res.ssim.tolist(), "ssim_vs_denoised": res.ssim_vs_denoised.tolist(),
           "linf": res.linf.tolist(), "l2": res.l2.tolist(),
           "psnr_vs_denoised": [x if math.isfinite(x) else None for x in res.psnr_vs_denoised.tolist()],
           "seconds": res.seconds}
    if res.success is not None:
        rec["success"] = res.success.tolist()
        rec["correct_before"] = res.correct_before.tolist()
    return rec


def _summarise(records: list[dict]) -> dict:
    def flat(key):
        return [v for r in records for v in r.get(key, []) if v is not None]

    n = sum(r["n"] for r in records)
    summary = {"n": n, "batches": len(records), "psnr": _mean(flat("psnr")), "ssim": _mean(flat("ssim")),
               "psnr_vs_denoised": _mean(flat("psnr_vs_denoised")), "ssim_vs_denoised": _mean(flat("ssim_vs_denoised")),
               "linf": max(flat("linf"), default=float("nan")), "l2": _mean(flat("l2")),
               "images_per_s": n / max(sum(r["seconds"] for r in records), 1e-9)}
    if all("success" in r for r in records):
        ok = [s for r in records for s, c in zip(r["success"], r["correct_before"]) if c]
        summary["asr"] = _mean([float(s) for s in ok])
        summary["correct_before"] = len(ok)
    return summary


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def _progress(done, total, name):
    width = 30
    filled = int(width * done / total)
    print(f"\r{name}: [{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches", end="", flush=True)


class MIGA(DenoiserAttack):
    """The MIGA attack. task="known" needs the classifier F and labels (the targets when
    targeted=True); task="unknown" (the default without a classifier) uses a MINE critic
    (`mine`: a miga_fast.mine.MINE; by default a fresh critic with small CNN encoders,
    trained in the loop) and, with `reference` (images [B or 1, C, H, W] of other
    semantics), pulls the outputs toward them. lambda_rec weighs the fidelity term
    against the task term (10 by default: see docs/algorithms.md §4, "Balancing the terms")."""

    name = "miga"

    def __init__(self, denoiser, classifier=None, eps=None, norm="linf", steps=20, alpha=None,
                 lambda_rec=10.0, lambda_mi=1.0, task=None, targeted=False, mine=None, reference=None,
                 critic_steps=5, compile=True, fused=True, tau=0.95, random_start=False, generator=None,
                 model_mode="eval"):
        task = task or ("known" if classifier is not None else "unknown")
        self.task = check_choice(task, "task", TASKS)
        if self.task == "known" and classifier is None:
            raise ValueError("task='known' needs a classifier (or use task='unknown')")
        if self.task == "unknown" and targeted:
            raise ValueError("targeted=True is for the known task; the unknown task takes `reference` images")
        if reference is not None:
            check_tensor(reference, "reference")
            if reference.dim() != 4:
                raise ValueError(f"`reference` must be [B or 1, C, H, W], got shape {tuple(reference.shape)}")
            check_unit_range(reference, "reference")
        self.reference = reference
        self.mine = mine
        self.critic_steps = check_int(critic_steps, "critic_steps", 0)
        super().__init__(denoiser, classifier, eps=eps, norm=norm, steps=steps, alpha=alpha, tau=tau,
                         lambda_rec=lambda_rec, lambda_mi=lambda_mi, targeted=targeted, compile=compile,
                         fused=fused, random_start=random_start, generator=generator, model_mode=model_mode)
        # the unknown task's MI bound pairs samples within the batch: it needs two
        self.min_batch = 2 if self.task == "unknown" else 1

    def _min_batch_reason(self) -> str:
        return "the unknown task's MI bound contrasts pairs within a batch"

    def _loss_fn(self):
        # the critic changes every step: the unknown task's loss stays eager
        return self._loss if self.task == "unknown" else super()._loss_fn()

    def _prepare(self, x_noisy, labels, x_ref):
        if self.task == "known":
            if labels is None:
                raise ValueError("the known task needs `labels` (the targets when targeted=True)")
            return x_ref, labels, {}
        from ..mine import MINE, MINECritic

        if self.reference is not None:
            if self.reference.shape[1:] != x_noisy.shape[1:] or self.reference.shape[0] not in (1, x_noisy.shape[0]):
                dims = ", ".join(map(str, x_noisy.shape[1:]))
                raise ValueError(f"`reference` must be [1 or {x_noisy.shape[0]}, {dims}], "
                                 f"got {tuple(self.reference.shape)}")
            anchor = self.reference.to(x_noisy).expand_as(x_noisy)
            sign = -1.0  # maximise I(x_r; D(x_n + delta))
        else:
            anchor = x_ref
            sign = 1.0  # minimise I(x; D(x_n + delta))
        mine = self.mine
        if mine is None:
            # A fresh critic with the same starting weights every batch: built on the CPU
            # from the CPU generator, seeded inside fork_rng so the caller's CPU random state
            # comes back untouched, and no CUDA generator is touched at all.
            shape = tuple(x_noisy.shape[1:])
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(0)
                critic = MINECritic(shape, shape, hidden=64)
            mine = MINE(critic.to(x_noisy.device, x_noisy.dtype), lr=1e-3)
        aux = {"anchor": anchor, "sign": sign, "mine": mine}
        if labels is not None:
            aux["true_labels"] = labels
        return x_ref, labels, aux

    def _before_step(self, k, delta, x_noisy, x_ref, labels, aux):
        if self.task != "unknown" or self.critic_steps == 0:
            return
        with torch.no_grad():
            out = self.denoiser_eager(x_noisy + delta)
        with nvtx_range("miga.critic"):
            for _ in range(self.critic_steps if k else 4 * self.critic_steps):
                aux["mine"].step(aux["anchor"], out)

    def _terms(self, out, x_ref, labels, aux):
        rec = self.lambda_rec * (out - x_ref).pow(2).flatten(1).mean(1)
        if self.task == "known":
            ce = masked_cross_entropy(self.classifier(out), labels)
            return {"rec": rec, "mi": self.lambda_mi * (ce if self.targeted else -ce)}
        critic = aux["mine"].critic
        # One number for the batch; each sample's share of its gradient is O(1 / B), so the
        # term counts once per sample (sum = B * bound) to weigh like the per-sample terms.
        bound = critic.bound(aux["anchor"], out)
        return {"rec": rec, "mi": self.lambda_mi * aux["sign"] * bound.expand(out.shape[0])}


class DenoiserDegradation(DenoiserAttack):
    """The "traditional" attack on a denoiser: maximise |D(x_n + delta) - x|^2 (degrades
    the output; changes labels only as a side effect)."""

    name = "degradation"

    def __init__(self, denoiser, classifier=None, eps=None, norm="linf", steps=20, alpha=None, **kwargs):
        super().__init__(denoiser, classifier, eps=eps, norm=norm, steps=steps, alpha=alpha, lambda_rec=1.0,
                         lambda_mi=0.0, **kwargs)

    def _terms(self, out, x_ref, labels, aux):
        return {"rec": -(out - x_ref).pow(2).flatten(1).mean(1)}


class EndToEndPGD(DenoiserAttack):
    """PGD on the pipeline F o D: maximise the classifier's cross-entropy of the denoised
    output (descend it toward targets with targeted=True), no fidelity term."""

    name = "e2e-pgd"

    def __init__(self, denoiser, classifier, eps=None, norm="linf", steps=20, alpha=None, targeted=False,
                 **kwargs):
        if classifier is None:
            raise ValueError("EndToEndPGD needs a classifier")
        super().__init__(denoiser, classifier, eps=eps, norm=norm, steps=steps, alpha=alpha, lambda_rec=0.0,
                         lambda_mi=1.0, targeted=targeted, **kwargs)

    def _prepare(self, x_noisy, labels, x_ref):
        if labels is None:
            raise ValueError("EndToEndPGD needs `labels` (the targets when targeted=True)")
        return x_ref, labels, {}

    def _terms(self, out, x_ref, labels, aux):
        ce = masked_cross_entropy(self.classifier(out), labels)
        return {"mi": ce if self.targeted else -ce}
