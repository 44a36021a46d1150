"""What every attack shares: per-norm defaults, the model's mode and device during an
attack, and the cross-entropy that skips unlabelled samples."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .._validation import check_choice

# torchattacks' defaults: PGD (l-inf) 8/255 and 2/255, PGDL2 1.0 and 0.2.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 1.0}
DEFAULT_ALPHA = {"linf": 2 / 255, "l2": 0.2}
MODEL_MODES = ("eval", "train", "keep")


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
