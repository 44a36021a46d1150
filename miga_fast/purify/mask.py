"""The classifier-attention mask of heterogeneous purification (docs/algorithms.md §5).

Per chosen block m of the classifier, A_m = sum_c |act_m|^p (p = 2), upsampled bilinearly
to the image's size and normalised per image; the blocks are combined by a pixel-wise
maximum (the union of their masks) and the result made binary by a threshold tau or by
keeping the top fraction of pixels. The mask carries no gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._validation import check_batch, check_choice, check_int, check_scalar, check_tensor, check_unit_range

NORMALIZE = ("minmax", "softmax")


def _check_images(x):
    check_tensor(x, "x")
    check_batch(x, "x")
    if x.dim() != 4:
        raise ValueError(f"`x` must be images [B, C, H, W], got shape {tuple(x.shape)}")
    check_unit_range(x, "x")


class AttentionMask:
    """A reusable attention-mask builder for one classifier.

    classifier: an nn.Module taking images in [0, 1] (its own normalisation inside it), or
        any input `preprocess(x)` gives it.
    layers: the blocks to read, as module names (`dict(classifier.named_modules())` keys)
        or modules; None picks them from one probe pass: per spatial resolution the module
        that finishes last at that resolution (a stage's output), the deepest `blocks`
        resolutions larger than 1 x 1 (four, as the method's ResNet stages).
    p: the exponent of sum_c |act|^p. normalize: "minmax" (per image to [0, 1]: the
        authors' code) or "softmax" (a spatial softmax of A / mean(A), rescaled so its
        maximum is 1: the paper's text, with a scale-free temperature).
    tau / top: binarise by A > tau (default 0.9), or keep the `top` fraction of pixels of
        each image (ties at the threshold kept too). Exactly one of them.

    Calling it returns the mask [B, 1, H, W] of 0s and 1s in x's dtype. Hooks are
    registered for the call and removed when it ends, error or not; the classifier runs
    under torch.no_grad() in whatever train/eval mode it is in.
    """

    def __init__(
        self,
        classifier: nn.Module,
        layers=None,
        p: float = 2.0,
        normalize: str = "minmax",
        tau: float | None = None,
        top: float | None = None,
        blocks: int = 4,
        preprocess=None,
    ):
        if not isinstance(classifier, nn.Module):
            raise TypeError(f"`classifier` must be an nn.Module, got {type(classifier).__name__}")
        self.classifier = classifier
        self.p = check_scalar(p, "p")
        if self.p <= 0:
            raise ValueError(f"`p` must be > 0, got {p}")
        self.normalize = check_choice(normalize, "normalize", NORMALIZE)
        if tau is not None and top is not None:
            raise ValueError("give `tau` (a threshold) or `top` (a fraction of pixels), not both")
        if top is not None:
            self.top = check_scalar(top, "top")
            if not 0 < self.top <= 1:
                raise ValueError(f"`top` must be a fraction in (0, 1], got {top}")
            self.tau = None
        else:
            self.tau = check_scalar(0.9 if tau is None else tau, "tau", minimum=None)
            self.top = None
        self.blocks = check_int(blocks, "blocks", 1)
        self.preprocess = preprocess
        self._modules = None if layers is None else self._resolve(layers)

    def _resolve(self, layers) -> list[nn.Module]:
        named = dict(self.classifier.named_modules())
        out = []
        for layer in layers:
            if isinstance(layer, str):
                if layer not in named:
                    raise ValueError(
                        f"`layers`: the classifier has no module {layer!r}; it has {sorted(named)[:12]}..."
                    )
                out.append(named[layer])
            elif isinstance(layer, nn.Module):
                out.append(layer)
            else:
                raise TypeError(f"`layers` must hold module names or modules, got {type(layer).__name__}")
        if not out:
            raise ValueError("`layers` is empty")
        return out

    @property
    def layers(self) -> list[str]:
        """The names of the blocks read (after the first call when they are picked)."""
        if self._modules is None:
            return []
        names = {id(m): n for n, m in self.classifier.named_modules()}
        return [names.get(id(m), "<external>") for m in self._modules]

    def _classify(self, x):
        return self.classifier(self.preprocess(x) if self.preprocess is not None else x)

    @torch.no_grad()
    def _pick(self, x) -> list[nn.Module]:
        order, handles = [], []
        for module in self.classifier.modules():
            if module is self.classifier:
                continue
            handles.append(module.register_forward_hook(lambda m, i, o: order.append((m, o))))
        try:
            self._classify(x[:1])
        finally:
            for h in handles:
                h.remove()
        last_at = {}  # (h, w) -> (position, module): the module that finished last there
        for pos, (module, out) in enumerate(order):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
                last_at[tuple(out.shape[2:])] = (pos, module)
        if not last_at:
            raise ValueError("the classifier has no module with a 4-D feature map output: pass `layers`")
        chosen = sorted(last_at.values(), key=lambda pm: pm[0])[-self.blocks :]
        return [m for _, m in chosen]

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """The union of the normalised attention maps, [B, 1, H, W] in [0, 1] (before binarising)."""
        _check_images(x)
        if self._modules is None:
            self._modules = self._pick(x)
        feats = [None] * len(self._modules)
        handles = []
        for k, module in enumerate(self._modules):

            def hook(m, i, o, k=k):
                if feats[k] is None:  # a module called twice (shared) counts once: its first output
                    feats[k] = o

            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self._classify(x)
        finally:
            for h in handles:
                h.remove()
        union = None
        for k, f in enumerate(feats):
            if not isinstance(f, torch.Tensor) or f.dim() != 4:
                raise ValueError(f"block {self.layers[k]!r} gave no 4-D feature map ({type(f).__name__})")
            a = f.detach().float().abs().pow(self.p).sum(1, keepdim=True)
            a = F.interpolate(a, size=x.shape[2:], mode="bilinear", align_corners=False)
            a = self._normalise(a)
            union = a if union is None else torch.maximum(union, a)
        return union.to(x.dtype)

    def _normalise(self, a: torch.Tensor) -> torch.Tensor:
        flat = a.flatten(1)
        if self.normalize == "minmax":
            lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
            span = hi - lo
            out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
        else:
            scale = flat.mean(1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
            z = flat / scale
            out = torch.exp(z - z.amax(1, keepdim=True))  # softmax / its maximum
        return out.reshape(a.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        u = self.maps(x)
        if self.top is None:
            return (u > self.tau).to(x.dtype)
        flat = u.flatten(1)
        k = max(1, math.ceil(self.top * flat.shape[1]))
        kth = flat.topk(k, dim=1).values[:, -1:]
        return (flat >= kth).reshape(u.shape).to(x.dtype)


def attention_mask(
    classifier, x, layers=None, p=2.0, normalize="minmax", tau=None, top=None, blocks=4, preprocess=None
):
    """The binary attention mask [B, 1, H, W] of `classifier` on images `x` in [0, 1]: see
    AttentionMask (keep one AttentionMask to reuse its choice of blocks across calls)."""
    return AttentionMask(classifier, layers, p, normalize, tau, top, blocks, preprocess)(x)
