"""Diffusion purifiers (docs/algorithms.md §5): the heterogeneous-noise purifier, the
DiffPure-style uniform baseline, and a classifier behind either.

A purifier maps images in [0, 1] to images in [0, 1]: it scales them to the model's
[-1, 1], noises them, runs the reverse process with DDIM steps (deterministic at the
default eta = 0; eta = 1 is DDPM-like; the x0 prediction clipped to [-1, 1]) and scales
back. Every update outside the model is a
sampler op (miga_fast.ops.sampler: fused, differentiable, on every backend).

The model: the project's DiffusionUNet, or a diffusers UNet2DModel with its scheduler as
it is (`schedule` then a diffusers scheduler: its alphas_cumprod and prediction_type
"epsilon", "v_prediction" or "sample" are used), or anything called as `unet(x_t, t)`
returning the prediction (or an object with `.sample`).

Gradients (`gradient=`): "full" differentiates through every step (memory grows with the
steps); "checkpoint" gives the same gradient, recomputing each model call in the backward
(memory near one model call); "bpda" purifies without a graph and passes the gradient
straight through (the identity); "surrogate" returns the real purification with the
gradient of a two-model-call stand-in (the method's forward noise, then two long DDIM
steps: what the method's authors attacked, for memory's sake); "none" gives no
gradient. Randomness comes from
`generator` (a torch.Generator or an int seed): the same seed gives the same purified image.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .. import ops
from .._validation import check_batch, check_choice, check_int, check_scalar, check_tensor, check_unit_range
from ..ops.projection import _as_generator
from .mask import AttentionMask
from .schedules import LinearSchedule

GRADIENTS = ("full", "checkpoint", "bpda", "surrogate", "none")
PRECISIONS = ("float32", "bfloat16")
RESAMPLING = ("single", "multi", "none")


def _alphas(schedule) -> tuple[torch.Tensor, str]:
    """(alphas_cumprod as float64 on the CPU, prediction type) of our schedule or a diffusers scheduler."""
    if schedule is None:
        schedule = LinearSchedule()
    abar = getattr(schedule, "alphas_cumprod", None)
    if not isinstance(abar, torch.Tensor) or abar.dim() != 1 or abar.numel() < 2:
        raise TypeError(
            "`schedule` must have `alphas_cumprod`, a 1-D tensor (miga_fast.purify.LinearSchedule or a diffusers "
            f"scheduler), got {type(schedule).__name__}"
        )
    config = getattr(schedule, "config", None)
    kind = getattr(config, "prediction_type", "epsilon") if config is not None else "epsilon"
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"the scheduler's prediction_type {kind!r} is not one of epsilon, v_prediction, sample")
    return abar.detach().double().cpu(), kind


def _in_channels(unet: nn.Module):
    config = getattr(unet, "config", None)
    if config is not None and getattr(config, "in_channels", None) is not None:
        return int(config.in_channels)
    for m in unet.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return None


def _grid(start: int, stop: int, stride: int) -> list[int]:
    """start, start - stride, ..., down to and including stop."""
    out = list(range(start, stop, -stride))
    return out + [stop]


class _DiffusionPurifier(nn.Module):
    def __init__(self, unet, schedule, stride, clip, gradient, precision, eta=0.0):
        super().__init__()
        if not callable(unet):
            raise TypeError(f"`unet` must be a callable model, got {type(unet).__name__}")
        self.unet = unet
        self.abar, self.prediction = _alphas(schedule)
        self.T = self.abar.numel()
        self.stride = check_int(stride, "stride", 1)
        self.clip = None if clip is None else check_scalar(clip, "clip")
        self.gradient = check_choice(gradient, "gradient", GRADIENTS)
        self.precision = check_choice(precision, "precision", PRECISIONS)
        self.eta = check_scalar(eta, "eta")
        if self.eta > 1:
            raise ValueError(f"`eta` must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {eta}")
        self.model_calls = 0  # model calls of the last purification (per batch)

    def a(self, t: int) -> float:
        """alpha-bar at step t (1.0 for t < 0: the clean image)."""
        return 1.0 if t < 0 else float(self.abar[t])

    # --- the model ------------------------------------------------------------------------

    def _predict_eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        autocast = (
            torch.autocast(x.device.type, dtype=torch.bfloat16)
            if self.precision == "bfloat16"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.unet(x, tt)
        out = out.sample if hasattr(out, "sample") else (out[0] if isinstance(out, tuple) else out)
        out = out.to(x.dtype)
        if self.prediction == "epsilon":
            return out
        a = self.a(t)
        if self.prediction == "v_prediction":
            return a**0.5 * out + (1 - a) ** 0.5 * x
        return (x - a**0.5 * out) / (1 - a) ** 0.5  # "sample": the model predicts x0

    def _caller(self, checkpointed: bool):
        def call(x, t):
            self.model_calls += 1
            if checkpointed and torch.is_grad_enabled():
                return _checkpoint(self._predict_eps, x, t, use_reentrant=False)
            return self._predict_eps(x, t)

        return call

    def _ddim(self, x, eps, t_from: int, t_to: int, gen, **fused):
        """One reverse step (eta > 0: stochastic, its noise drawn from gen) and the fused stages."""
        return ops.sampler_step(
            x, mode="ddim", eps=eps, a_from=self.a(t_from), a_to=self.a(t_to), eta=self.eta, clip=self.clip,
            generator=gen, **fused,
        )  # fmt: skip

    def _reverse(self, x, call, start: int, stride: int, gen) -> torch.Tensor:
        """Plain reverse steps from step `start` to the clean image."""
        grid = _grid(start, 0, stride)
        for i, t in enumerate(grid):
            t_next = grid[i + 1] if i + 1 < len(grid) else -1
            x = self._ddim(x, call(x, t), t, t_next, gen)
        return x

    # --- the call -------------------------------------------------------------------------

    def _check(self, x):
        check_tensor(x, "x")
        check_batch(x, "x")
        if x.dim() != 4:
            raise ValueError(f"`x` must be images [B, C, H, W], got shape {tuple(x.shape)}")
        channels = _in_channels(self.unet) if isinstance(self.unet, nn.Module) else None
        if channels is not None and channels != x.shape[1]:
            raise ValueError(f"`unet` takes {channels}-channel images, `x` has {x.shape[1]} channels")
        check_unit_range(x, "x")

    def forward(self, x: torch.Tensor, generator=None, gradient: str | None = None, **kwargs) -> torch.Tensor:
        """Purify images x [B, C, H, W] in [0, 1]; returns images in [0, 1]."""
        self._check(x)
        mode = self.gradient if gradient is None else check_choice(gradient, "gradient", GRADIENTS)
        gen = _as_generator(generator, x.device)
        if gen is None:  # a fresh draw from torch's global generator, then one stream for the call
            gen = torch.Generator(device=x.device)
            gen.manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        prepared = self._prepare(x, **kwargs)
        self.model_calls = 0
        if mode in ("bpda", "none", "surrogate"):
            state = gen.get_state()
            with torch.no_grad():
                y = self._purify(x, gen, self._caller(False), prepared)
            if mode == "none" or not torch.is_grad_enabled():
                return y
            if mode == "bpda":
                return x + (y - x).detach()
            gen.set_state(state)  # the stand-in sees the same forward noise
            stand_in = self._surrogate(x, gen, self._caller(False), prepared)
            return y + (stand_in - stand_in.detach())
        return self._purify(x, gen, self._caller(mode == "checkpoint"), prepared)

    def _prepare(self, x, **kwargs):
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        return None

    def _purify(self, x, gen, call, prepared) -> torch.Tensor:
        y = self._run(2 * x - 1, gen, call, prepared)
        return ((y + 1) / 2).clamp(0, 1)

    def _surrogate(self, x, gen, call, prepared) -> torch.Tensor:
        y = self._stand_in(2 * x - 1, gen, call, prepared)
        return ((y + 1) / 2).clamp(0, 1)


class UniformPurifier(_DiffusionPurifier):
    """The DiffPure-style baseline: the whole image noised to step `t_star` (0.1 T by
    default), then deterministic DDIM back to the clean image on a grid of `stride` steps.

        purifier = UniformPurifier(unet, schedule, t_star=100)
        clean = purifier(x_adv, generator=0)
    """

    def __init__(
        self, unet, schedule=None, t_star: int = 100, stride: int = 2, clip: float | None = 1.0,
        gradient: str = "full", precision: str = "float32", eta: float = 0.0,
    ):  # fmt: skip
        super().__init__(unet, schedule, stride, clip, gradient, precision, eta)
        self.t_star = check_int(t_star, "t_star", 1, self.T - 1)

    def _run(self, x0, gen, call, prepared):
        x = ops.resample_forward(x0, 1.0, self.a(self.t_star), generator=gen)  # q(x_t* | x0)
        return self._reverse(x, call, self.t_star, self.stride, gen)

    def _stand_in(self, x0, gen, call, prepared):
        """Two DDIM steps: t* -> t*/2 -> the clean image."""
        x = ops.resample_forward(x0, 1.0, self.a(self.t_star), generator=gen)
        half = self.t_star // 2
        x = self._ddim(x, call(x, self.t_star), self.t_star, half, gen)
        return self._ddim(x, call(x, half), half, -1, gen)

    def extra_repr(self) -> str:
        return f"t_star={self.t_star}, stride={self.stride}, gradient={self.gradient!r}"


class HeterogeneousPurifier(_DiffusionPurifier):
    """Heterogeneous-noise purification: strong noise (step t_l) where the classifier
    looks, weak noise (t_s) elsewhere, then two stages back to the clean image.

    Stage 1 (t_s < t <= t_l), inpainting: the pixels outside the mask are the input noised
    afresh to each step's level, those inside come from the model's reverse step, combined
    by the mask. Resampling at each stage-1 step:
      "single" (the method's): jump from the new level t' to t' + U in one Gaussian step and
               take one DDIM step back to t': one extra model call per step, U in timesteps
               (10: the paper's);
      "multi"  (RePaint's): U passes over each step, re-noising back to t between them: U
               model calls per step;
      "none"   (the ablation): one reverse step.
    Stage 2 (t <= t_s): plain DDIM to the clean image, on a grid of `stride_2` steps.

    classifier: the model whose attention picks the mask (an nn.Module on images in [0, 1]),
        or pass `mask=` to each call; `mask_options` go to AttentionMask (layers, p,
        normalize, tau, top).

        purifier = HeterogeneousPurifier(unet, schedule, classifier, t_l=200, t_s=100, U=10)
        clean = purifier(x_adv, generator=0)
    """

    def __init__(
        self,
        unet,
        schedule=None,
        classifier=None,
        t_l: int = 200,
        t_s: int = 100,
        U: int = 10,
        resampling: str = "single",
        stride: int = 2,
        stride_2: int | None = None,
        clip: float | None = 1.0,
        gradient: str = "full",
        precision: str = "float32",
        mask_options: dict | None = None,
        eta: float = 0.0,
    ):
        super().__init__(unet, schedule, stride, clip, gradient, precision, eta)
        self.t_l = check_int(t_l, "t_l", 2, self.T - 1)
        self.t_s = check_int(t_s, "t_s", 1)
        if self.t_s >= self.t_l:
            raise ValueError(
                f"`t_s` ({t_s}) must be below `t_l` ({t_l}): the masked pixels get the stronger noise; "
                "equal levels would make the purification uniform"
            )
        self.resampling = check_choice(resampling, "resampling", RESAMPLING)
        self.U = check_int(U, "U", 1)
        if self.resampling == "single" and self.t_l - min(self.stride, self.t_l - self.t_s) + self.U > self.T - 1:
            raise ValueError(f"`U` = {U} jumps past the schedule's last step {self.T - 1} from t_l = {t_l}")
        self.stride_2 = self.stride if stride_2 is None else check_int(stride_2, "stride_2", 1)
        self.masker = None if classifier is None else AttentionMask(classifier, **(mask_options or {}))

    def _prepare(self, x, mask=None):
        if mask is None:
            if self.masker is None:
                raise ValueError("no `classifier` to build the mask from: pass one to the purifier, or `mask=`")
            mask = self.masker(x)
        return mask.detach()

    def _run(self, x0, gen, call, mask):
        x = ops.heterogeneous_noise(x0, mask, self.a(self.t_l), self.a(self.t_s), generator=gen)
        grid = _grid(self.t_l, self.t_s, self.stride)
        for t, t_next in zip(grid[:-1], grid[1:]):
            known = dict(mask=mask, known=x0)
            if self.resampling == "single":
                nk = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
                t_up = t_next + self.U
                # combine at t_next and jump to t_next + U, one fused pass
                x = self._ddim(x, call(x, t), t, t_next, gen, noise_known=nk, a_jump=self.a(t_up), **known)
                x = self._ddim(x, call(x, t_up), t_up, t_next, gen, noise_known=nk, **known)
            elif self.resampling == "multi":
                eps = call(x, t)
                for u in range(self.U):
                    x_next = self._ddim(x, eps, t, t_next, gen, **known)
                    if u + 1 < self.U:
                        x = ops.resample_forward(x_next, self.a(t_next), self.a(t), generator=gen)
                        eps = call(x, t)
                x = x_next
            else:
                x = self._ddim(x, call(x, t), t, t_next, gen, **known)
        return self._reverse(x, call, self.t_s, self.stride_2, gen)

    def _stand_in(self, x0, gen, call, mask):
        """Two DDIM steps: t_l -> t_s with the known pixels combined, then t_s -> the clean image."""
        x = ops.heterogeneous_noise(x0, mask, self.a(self.t_l), self.a(self.t_s), generator=gen)
        x = self._ddim(x, call(x, self.t_l), self.t_l, self.t_s, gen, mask=mask, known=x0)
        return self._ddim(x, call(x, self.t_s), self.t_s, -1, gen)

    def extra_repr(self) -> str:
        return (
            f"t_l={self.t_l}, t_s={self.t_s}, U={self.U}, resampling={self.resampling!r}, stride={self.stride}, "
            f"stride_2={self.stride_2}, gradient={self.gradient!r}"
        )


class PurifiedClassifier(nn.Module):
    """classifier(purifier(x)) as one nn.Module that any attack can target.

    Under attack (gradient enabled) each call is one stochastic purification: the attack
    sees the randomness, as expectation over transformation expects. At evaluation
    (gradient disabled, or mode="vote") it purifies `votes` times and returns per class
    the number of votes plus the mean probability (in [0, 1): it only breaks ties), so the
    argmax is the majority vote. mode="single" always returns one draw's logits.
    seed: the generator the purifications draw from (advanced by every call: repeatable
    from the seed); None draws from torch's global generator.
    """

    def __init__(self, purifier: nn.Module, classifier: nn.Module, votes: int = 20, seed: int | None = None,
                 mode: str = "auto"):  # fmt: skip
        super().__init__()
        self.purifier, self.classifier = purifier, classifier
        self.votes = check_int(votes, "votes", 1)
        self.mode = check_choice(mode, "mode", ("auto", "vote", "single"))
        self.seed = seed
        self._gen = {}

    def _generator(self, device):
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._gen:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._gen[key] = g
        return self._gen[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gen = self._generator(x.device)
        vote = self.mode == "vote" or (self.mode == "auto" and not torch.is_grad_enabled())
        if not vote:
            return self.classifier(self.purifier(x, generator=gen))
        counts, probs = None, None
        with torch.no_grad():
            for _ in range(self.votes):
                logits = self.classifier(self.purifier(x, generator=gen, gradient="none"))
                one_hot = torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)
                p = logits.softmax(1)
                counts = one_hot if counts is None else counts + one_hot
                probs = p if probs is None else probs + p
        return counts + probs / (self.votes + 1)
