"""Explanation maps (docs/algorithms.md §2): where does a perceptual perturbation sit, and is that
where the classifier looks? Grad-CAM of the classifier against the SSIM map of
(x, x_adv)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._backend import set_backend
from .ops import ssim as _ssim


def _resolve_layer(model: nn.Module, layer) -> nn.Module:
    if isinstance(layer, nn.Module):
        return layer
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(
                f"`layer` {layer!r} is not a sub-module of the model; some are: {[n for n in modules if n][:8]}"
            )
        return modules[layer]
    raise TypeError(f"`layer` must be a module or its name, got {type(layer).__name__}")


def _activations_and_grads(model, x, layer, target):
    """The layer's activations [B, K, h, w] and the target logit's gradient with respect to them."""
    module = _resolve_layer(model, layer)
    store = {}
    handle = module.register_forward_hook(lambda m, i, o: store.__setitem__("act", o))
    try:
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)  # gradients reach the layer even for frozen models
            logits = model(xi)
            if "act" not in store:
                raise ValueError("`layer` did not run in the model's forward pass")
            act = store["act"]
            if target is None:
                target = logits.argmax(1)
            score = logits.gather(1, target.reshape(-1, 1).to(logits.device)).sum()
            (grad,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    return act.detach(), grad.detach()


def _to_image(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ReLU, bilinear upsampling to the image and min-max normalisation per image: [B, H, W]."""
    cam = F.relu(cam)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    lo = cam.flatten(1).min(1).values.reshape(-1, 1, 1)
    hi = cam.flatten(1).max(1).values.reshape(-1, 1, 1)
    return ((cam - lo) / (hi - lo).clamp_min(1e-12)).detach()


def grad_cam(model: nn.Module, x: torch.Tensor, layer, target: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM maps [B, H, W] in [0, 1]: ReLU of the layer's activations weighted by the
    spatial mean of the target logit's gradient, upsampled bilinearly to the image and
    min-max normalised per image. `target` defaults to the predicted class; `layer` is a
    sub-module or its name (e.g. "stages.2")."""
    act, grad = _activations_and_grads(model, x, layer, target)
    return _to_image((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True), x)


def grad_cam_plus_plus(model: nn.Module, x: torch.Tensor, layer, target: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM++ maps [B, H, W] in [0, 1] (the perceptual-SSIM paper's explanation): each
    channel weighted by sum_ij alpha_ij ReLU(g_ij), with g the gradient of the exponentiated
    target score and alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3) (0 where that
    vanishes), so that every location where the class evidence rises counts, not only the
    mean gradient. Same arguments and normalisation as grad_cam."""
    act, grad = _activations_and_grads(model, x, layer, target)
    g2, g3 = grad.pow(2), grad.pow(3)
    den = 2 * g2 + act.sum((2, 3), keepdim=True) * g3
    alpha = torch.where(den != 0, g2 / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
    weights = (alpha * F.relu(grad)).sum((2, 3), keepdim=True)
    return _to_image((weights * act).sum(1, keepdim=True), x)


def flatness(x: torch.Tensor, window: int = 7) -> torch.Tensor:
    """A control map [B, H, W] in [0, 1]: 1 - the local standard deviation of the channel-mean
    image over a `window` x `window` box (reflect padding), min-max normalised per image.
    High where the image is flat, where SSIM's variance terms are smallest and so any
    perturbation lowers SSIM most."""
    g = x.mean(1, keepdim=True)
    pad = window // 2
    gp = F.pad(g, (pad, pad, pad, pad), mode="reflect")
    m = F.avg_pool2d(gp, window, stride=1)
    v = (F.avg_pool2d(gp * gp, window, stride=1) - m * m).clamp_min(0).sqrt()[:, 0]
    lo = v.flatten(1).min(1).values.reshape(-1, 1, 1)
    hi = v.flatten(1).max(1).values.reshape(-1, 1, 1)
    return 1 - (v - lo) / (hi - lo).clamp_min(1e-12)


def _top_mask(m: torch.Tensor, fraction: float) -> torch.Tensor:
    """Exactly the top `fraction` of pixels per image (ties broken by topk, so a flat map
    does not select everything)."""
    flat = m.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(k, dim=1).indices, True)
    return mask.reshape(m.shape)


def ssim_vs_cam(x: torch.Tensor, x_adv: torch.Tensor, cam: torch.Tensor, top: float = 0.2, **ssim_kwargs) -> dict:
    """Per image: the Pearson correlation between the dissimilarity map 1 - SSIM(x, x_adv)
    (channel mean, "same" padding so it covers the image) and the CAM [B, H, W], and the
    IoU of their top-`top` fractions of pixels. Returns {"correlation": [B], "iou": [B],
    "dissimilarity": [B, H, W]}."""
    if not 0 < top <= 1:
        raise ValueError(f"`top` must lie in (0, 1], got {top}")
    if cam.shape != (x.shape[0],) + tuple(x.shape[-2:]):
        raise ValueError(f"`cam` must be [B, H, W] = {(x.shape[0],) + tuple(x.shape[-2:])}, got {tuple(cam.shape)}")
    return agreement(dissimilarity(x, x_adv, **ssim_kwargs).to(cam.dtype), cam, top)


def dissimilarity(x: torch.Tensor, x_adv: torch.Tensor, **ssim_kwargs) -> torch.Tensor:
    """1 - SSIM map of (x, x_adv), channel mean, "same" padding by default: [B, H, W]."""
    ssim_kwargs.setdefault("padding", "same")
    with torch.no_grad():
        with set_backend("reference"):  # only the reference returns the SSIM map
            _, smap = _ssim(x, x_adv, return_map=True, **ssim_kwargs)
    return 1 - smap.mean(1)


def agreement(d: torch.Tensor, cam: torch.Tensor, top: float = 0.2) -> dict:
    """ssim_vs_cam for a dissimilarity map d [B, H, W] already computed (one map against
    several CAMs or controls)."""
    if not 0 < top <= 1:
        raise ValueError(f"`top` must lie in (0, 1], got {top}")
    if cam.shape != d.shape:
        raise ValueError(f"`cam` must be [B, H, W] = {tuple(d.shape)}, got {tuple(cam.shape)}")
    a = d.flatten(1) - d.flatten(1).mean(1, keepdim=True)
    b = cam.flatten(1) - cam.flatten(1).mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    ma, mb = _top_mask(d, top), _top_mask(cam, top)
    iou = (ma & mb).flatten(1).sum(1) / (ma | mb).flatten(1).sum(1).clamp_min(1)
    return {"correlation": corr, "iou": iou.to(cam.dtype), "dissimilarity": d}
