"""The shared machinery of the attacks on a denoiser (docs/algorithms.md §4): MIGA
(miga.py) and the two baselines it is compared with (baselines.py).

Every attack here descends, per sample,

    lambda_rec * mean((D(x_n + delta) - x_ref)^2) + lambda_mi * L_MI

with signed-gradient (l-inf) or normalised-gradient (l2) steps through the fused
projection ops (on the selected backend), or sign steps followed by the SSIM-ball
projection (norm="ssim"), and keeps x_n + delta in [0, 1].

The threat model (docs/attacks.md): the attacker adds delta to the noisy observation x_n,
so every ball (l-inf, l2, and the SSIM ball SSIM(x_n, x_n + delta) >= tau) is centred on
x_n; fidelity and PSNR/SSIM compare the pipeline's image D(x_n + delta).clamp(0, 1)
(pipeline_image: one rule everywhere) with the clean image when it is given. A subclass says what its
terms are (`_terms`) and what it needs per batch (`_prepare`, `_before_step`). Calling
an attack on a batch returns an AttackResult (result.py); `run` attacks a dataset into a
run folder (run_folder.py).
"""

from __future__ import annotations

import contextlib
import time

import torch

from .. import metrics, ops
from .._validation import (
    check_batch,
    check_choice,
    check_deferred,
    check_int,
    check_labels,
    check_scalar,
    check_tensor,
    check_unit_range,
    sync_checks,
    value_checks,
)
from ..compile import compile_denoiser
from ..nvtx import nvtx_range
from . import run_folder
from ._common import (
    DEFAULT_EPS,
    check_model_mode,
    check_radius,
    fmt_radius,
    frozen_weights,
    model_device,
    model_mode,
    on_device,
)
from .result import AttackResult

NORMS = ("linf", "l2", "ssim")
# the arithmetic of the models' forward and backward inside the attack's loss
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


class DenoiserAttack:
    """The shared machinery of the attacks on a denoiser (MIGA and the baselines): checks,
    the compiled loss, the projected step, per-sample metrics and `run`."""

    name = "denoiser-attack"

    min_batch = 1  # the smallest batch the attack can run on

    def __init__(
        self,
        denoiser,
        classifier=None,
        eps=None,
        norm="linf",
        steps=20,
        alpha=None,
        tau=0.95,
        lambda_rec=10.0,
        lambda_mi=1.0,
        targeted=False,
        compile=True,
        random_start=False,
        generator=None,
        model_mode="eval",
        precision="float32",
    ):
        if not isinstance(denoiser, torch.nn.Module):
            raise TypeError(f"`denoiser` must be an nn.Module, got {type(denoiser).__name__}")
        if classifier is not None and not isinstance(classifier, torch.nn.Module):
            raise TypeError(f"`classifier` must be an nn.Module or None, got {type(classifier).__name__}")
        self.denoiser_eager = denoiser
        self.classifier = classifier
        self.norm = check_choice(norm, "norm", NORMS)
        if self.norm == "ssim":
            if eps is not None:
                raise ValueError(
                    "`eps` is not used with norm='ssim' (the SSIM ball is bounded by `tau`): leave it None"
                )
            eps = 1.0  # the l-inf ball of radius 1 is inactive: the sign step, the box, then the SSIM ball
        # a number, or a [B] tensor of one radius per image (attack.run: per image of the dataset
        # in order is not supported, the batches differ in size: pass numbers there)
        self.eps = check_radius(DEFAULT_EPS[self.norm] if eps is None else eps, "eps")
        if self.norm == "linf" and bool(torch.as_tensor(self.eps).max() > 1):
            raise ValueError(f"`eps` must lie in [0, 1] for norm='linf' (images live in [0, 1]), got {eps}")
        self.steps = check_int(steps, "steps", 0)
        if alpha is None:
            alpha = 2.5 * self.eps / max(self.steps, 1) if self.norm != "ssim" else 1 / 255
        self.alpha = check_radius(alpha, "alpha")
        self.tau = check_scalar(tau, "tau")
        if not 0 < self.tau <= 1:
            raise ValueError(f"`tau` must lie in (0, 1], got {tau}")
        self.lambda_rec = check_scalar(lambda_rec, "lambda_rec")
        self.lambda_mi = check_scalar(lambda_mi, "lambda_mi")
        self.targeted = bool(targeted)
        self.compile = bool(compile)
        self.random_start = bool(random_start)
        self.generator = generator
        self.model_mode = check_model_mode(model_mode)
        self.precision = check_choice(precision, "precision", tuple(PRECISIONS))
        self.denoiser = compile_denoiser(denoiser) if self.compile else denoiser
        self._compiled_loss = None

    # ------------------------------------------------------------------ the loss
    def _terms(self, x_adv, x_ref, labels, aux):
        """Per-sample loss terms {name: [B]} on the attacked input; their weighted sum is
        descended."""
        raise NotImplementedError

    @staticmethod
    def pipeline_image(out: torch.Tensor) -> torch.Tensor:
        """The one rule for what the pipeline's image is: the denoiser's output clamped into
        [0, 1]. The loss, the success judgement, PSNR/SSIM and the demo all see this image
        (the clamp passes the gradient wherever the output is inside [0, 1])."""
        return out.clamp(0, 1)

    def _loss(self, delta, x_noisy, x_ref, labels, aux):
        out = self.pipeline_image(self.denoiser(x_noisy + delta))
        terms = self._terms(out, x_ref, labels, aux)
        total = sum(terms.values())
        return total.sum(), {k: v.detach().mean() for k, v in terms.items()}, out

    def _loss_fn(self):
        if not self.compile:
            return self._loss
        if self._compiled_loss is None:
            self._compiled_loss = torch.compile(self._loss, dynamic=False)
        return self._compiled_loss

    def _autocast(self, device: torch.device):
        """precision="bfloat16": the models' convolutions and matrix products in bfloat16
        (torch.autocast; losses, reductions and delta stay float32): 2.1-2.65x eager
        float32 on a CPU with AVX-512 BF16, the same labels changed on the shipped models
        (docs/attacks.md, "Precision": check an attack against float32 before trusting it)."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def _grad(self, delta, x_noisy, x_ref, labels, aux):
        d = delta.detach().requires_grad_(True)
        with torch.enable_grad(), nvtx_range(f"{self.name}.forward_backward"):
            with self._autocast(d.device):
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
        """The projected descent step through miga_fast.ops, on the selected backend
        (set_backend("reference") for plain PyTorch)."""
        with torch.no_grad(), nvtx_range(f"{self.name}.update"):
            if self.norm == "ssim":
                alpha = on_device(self.alpha, x_noisy.device)
                ops.pgd_step_(delta, grad, x_noisy, 1.0, alpha, "linf", -1.0)  # step + box
                ops.ssim_ball_project_(delta, x_noisy, self.tau)
            else:
                eps, alpha = on_device(self.eps, x_noisy.device), on_device(self.alpha, x_noisy.device)
                ops.pgd_step_(delta, grad, x_noisy, eps, alpha, self.norm, -1.0)

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
        # the inputs checked at once, GPU or not (one wait per batch); the loop runs without checks
        with sync_checks():
            self._check_images(x_noisy, "x_noisy")
            if x_noisy.shape[0] < self.min_batch:
                raise ValueError(
                    f"{type(self).__name__} needs batches of at least {self.min_batch} images "
                    f"({self._min_batch_reason()}), got {x_noisy.shape[0]}"
                )
            device = model_device(self.denoiser_eager)
            if device is not None:
                x_noisy = x_noisy.to(device)
                x_clean = x_clean.to(device) if isinstance(x_clean, torch.Tensor) else x_clean
            models = [self.denoiser_eager, self.classifier]
            with model_mode(models, self.model_mode), frozen_weights(models):
                result = self._forward(x_noisy, labels, x_clean)
        check_deferred()  # anything an earlier call of this thread deferred: its verdict now
        return result

    def _min_batch_reason(self) -> str:
        return ""

    @property
    def carries_state(self) -> str:
        """Why results of one batch depend on the batches attacked before it ("" when they
        do not): a run split among processes refuses such an attack."""
        return ""

    def _forward(self, x_noisy, labels, x_clean) -> AttackResult:
        if x_clean is not None:
            self._check_images(x_clean, "x_clean")
            if x_clean.shape != x_noisy.shape:
                raise ValueError(
                    f"`x_clean` must have x_noisy's shape {tuple(x_noisy.shape)}, got {tuple(x_clean.shape)}"
                )
        if labels is not None:
            labels = self._check_labels(labels, x_noisy)
        x_noisy = x_noisy.detach()
        start = time.perf_counter()
        with torch.no_grad():
            denoised_clean = self.pipeline_image(self.denoiser_eager(x_noisy))
        x_ref = x_clean.detach() if x_clean is not None else denoised_clean
        x_ref, labels, aux = self._prepare(x_noisy, labels, x_ref)
        delta = torch.zeros_like(x_noisy)
        history: list[dict] = []
        with value_checks(False):
            if self.random_start and self.norm != "ssim":
                ops.random_init_(delta, x_noisy, on_device(self.eps, x_noisy.device), self.norm, self.generator)
            for k in range(self.steps):
                self._before_step(k, delta, x_noisy, x_ref, labels, aux)
                grad, terms, _ = self._grad(delta, x_noisy, x_ref, labels, aux)
                history.append(terms)
                self._step(delta, grad, x_noisy)
        with torch.no_grad():
            x_adv = (x_noisy + delta).detach()
            out = self.pipeline_image(self.denoiser_eager(x_adv))
        if x_noisy.device.type == "cuda":
            torch.cuda.synchronize(x_noisy.device)
        seconds = time.perf_counter() - start
        losses = {k: torch.stack([h[k] for h in history]).tolist() for k in (history[0] if history else {})}
        return self._result(x_noisy, x_adv, out, denoised_clean, delta, labels, x_clean, x_ref, aux, losses, seconds)

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
            adversarial=x_adv.cpu(),
            denoised=out.cpu(),
            denoised_clean=denoised_clean.cpu(),
            delta=delta.cpu(),
            success=success,
            correct_before=correct,
            psnr=metrics.psnr(out, target).cpu(),
            ssim=metrics.ssim(out, target).cpu(),
            psnr_vs_denoised=metrics.psnr(out, denoised_clean).cpu(),
            ssim_vs_denoised=metrics.ssim(out, denoised_clean).cpu(),
            linf=flat.abs().amax(1).cpu(),
            l2=flat.norm(dim=1).cpu(),
            losses=losses,
            seconds=seconds,
        )

    # ------------------------------------------------------------------ a dataset
    def run(
        self,
        data,
        out_dir,
        batch_size: int = 64,
        sigma: float = 25.0,
        seed: int = 0,
        progress: bool = True,
        overwrite: bool = False,
        num_workers: int | None = None,
    ) -> dict:
        """Attack a whole dataset and write the results as it goes, resumably.

        data: a DataLoader or Dataset of (clean image, label) (a label of -1 marks an
        image without one: it is attacked, and left out of the success rate), or a pair of
        tensors (images [N, C, H, W], labels [N]). The data is streamed: a Dataset is read
        by a DataLoader (batch_size, no shuffling) with num_workers worker processes
        (default: up to 4) and pinned memory when the models are on a GPU, loading only
        the batches this process still has to attack; a DataLoader is used as given (it
        must not shuffle). Each batch is noised with sigma (0-255
        scale; the noise of batch i is seeded by seed + i, so a resumed run sees the same
        inputs), attacked, and appended as one JSON line to out_dir/results.jsonl;
        out_dir/summary.json holds the totals.

        out_dir/config.json records the whole configuration: the attack and its
        parameters, the models (SHA-256 of their weights), the data (SHA-256 of every
        batch), batch_size, sigma, seed and the package version. A run that finds a
        folder of the same configuration resumes after its last complete batch; a folder
        of another configuration is an error (overwrite=True deletes its results and
        starts anew). The folder is locked while a run writes to it: a second run on it at
        the same time gets RunFolderBusyError. The data's fingerprint costs one extra
        loading pass, in one process. Under torchrun the batches are shared among the
        processes (docs/scaling.md), and the progress bar (rank 0's) counts every
        process's images. Returns the summary dict."""
        return run_folder.run_attack(self, data, out_dir, batch_size, sigma, seed, progress, overwrite, num_workers)

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
                params[key] = run_folder.tensor_id(value)
            elif isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
                params[key] = [run_folder.tensor_id(v) for v in value]
            elif isinstance(value, torch.Generator):
                params[key] = f"generator seeded {value.initial_seed()}"
            elif isinstance(value, torch.nn.Module):
                params[key] = run_folder.model_id(value)
            elif hasattr(value, "critic") and isinstance(value.critic, torch.nn.Module):  # a MINE estimator
                params[key] = run_folder.model_id(value.critic)
            else:
                params[key] = repr(value)
        return params

    def __repr__(self):
        return (
            f"{type(self).__name__}(eps={fmt_radius(self.eps)}, norm={self.norm!r}, steps={self.steps}, "
            f"alpha={fmt_radius(self.alpha)}, lambda_rec={self.lambda_rec:g}, lambda_mi={self.lambda_mi:g}, "
            f"targeted={self.targeted}, compile={self.compile}, precision={self.precision!r})"
        )
