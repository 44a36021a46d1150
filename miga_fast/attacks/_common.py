"""What every attack shares: per-norm defaults, the model's mode and device during an
attack, and the cross-entropy that skips unlabelled samples."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .._validation import check_choice, check_scalar

# torchattacks' defaults: PGD (l-inf) 8/255 and 2/255, PGDL2 1.0 and 0.2.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 1.0}
DEFAULT_ALPHA = {"linf": 2 / 255, "l2": 0.2}
MODEL_MODES = ("eval", "train", "keep")


def check_radius(value, name: str, maximum: float | None = None):
    """eps or alpha of an attack: a number, or a 1-D tensor of one value per image (the
    fused ops take either); >= 0, finite, at most `maximum`. A tensor is checked here,
    once, and kept as given (moved to the images' device when the attack runs)."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.numel() == 0 or not value.dtype.is_floating_point:
            raise ValueError(
                f"`{name}` must be a number or a 1-D floating tensor of one value per image, "
                f"got {value.dtype} of shape {tuple(value.shape)}"
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"`{name}` contains NaN or Inf")
        if bool((value < 0).any()):
            raise ValueError(f"`{name}` must be >= 0, got min {float(value.min()):.4g}")
        if maximum is not None and bool((value > maximum).any()):
            raise ValueError(f"`{name}` must be <= {maximum:g}, got max {float(value.max()):.4g}")
        return value.detach()
    value = check_scalar(value, name)
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}` must be <= {maximum:g}, got {value}")
    return value


def on_device(value, device):
    """A per-image radius on the images' device (a number as it is)."""
    return value.to(device) if isinstance(value, torch.Tensor) else value


def fmt_radius(value) -> str:
    """A radius for a repr: the number, or the range of the per-image values."""
    if isinstance(value, torch.Tensor):
        return f"[{float(value.min()):.4g}..{float(value.max()):.4g}] per image"
    return f"{value:.4g}"


def check_model_mode(mode) -> str:
    return check_choice(mode, "model_mode", MODEL_MODES)


@contextlib.contextmanager
def model_mode(models, mode: str = "eval"):
    """Run the attack with `models` in eval mode (mode="eval": BatchNorm uses its running
    statistics and leaves them alone, dropout is off), train mode, or as they are
    ("keep"); afterwards every submodule is back in the mode the caller left it in."""
    modules = [m for m in models if isinstance(m, torch.nn.Module)]
    saved = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        if mode != "keep":
            for m in modules:
                try:
                    m.train(mode == "train")
                except NotImplementedError:  # a torch.export module keeps the mode it was exported in
                    pass
        yield
    finally:
        for sub, training in saved:
            sub.training = training


@contextlib.contextmanager
def frozen_weights(models):
    """The models' parameters with requires_grad off while the attack runs (restored
    afterwards, each as it was). An attack needs gradients in the input only; with
    trainable weights, torch.compile's backward (AOTAutograd) computes and drops their
    gradients too: 1.9x the backward time, 1.46x the whole step, of the shipped models on
    a CPU (benchmarks/profile_attack.py)."""
    params = {id(p): p for m in models if isinstance(m, torch.nn.Module) for p in m.parameters()}
    saved = [(p, p.requires_grad) for p in params.values()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def model_device(model) -> torch.device | None:
    """The device of a model's first parameter or buffer (None for a model with neither)."""
    if not isinstance(model, torch.nn.Module):
        return None
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy; 0 (and no gradient) for samples labelled -1 (none)."""
    known = labels >= 0
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    return torch.where(known, ce, torch.zeros_like(ce))
