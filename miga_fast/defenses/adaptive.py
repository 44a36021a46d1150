"""What an adaptive attack needs to go through a defense (docs/attacks.md, "Adaptive
evaluation"): BPDA for a defense whose gradient is zero or undefined (feature squeezing
rounds; the transforms here run without autograd), and EOT for a stochastic one (the
diffusion purifiers draw noise). Both are modules, so an attack takes
`nn.Sequential(BPDA(defense), classifier)` as its classifier and the defended pipeline is
attacked as a whole."""

from __future__ import annotations

import torch
from torch import nn

from .._validation import check_int


class BPDA(nn.Module):
    """Backward-pass differentiable approximation: the forward pass is `defense(x)` exactly;
    the backward pass is that of `approx(x)` (the identity by default, the usual choice for a
    defense that keeps images close to their input):

        out = approx(x) + (defense(x) - approx(x)).detach()
    """

    def __init__(self, defense, approx=None):
        super().__init__()
        if not callable(defense):
            raise TypeError(f"`defense` must be callable, got {type(defense).__name__}")
        if approx is not None and not callable(approx):
            raise TypeError(f"`approx` must be callable or None, got {type(approx).__name__}")
        self.defense = defense
        self.approx = approx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self.defense(x.detach())
        a = x if self.approx is None else self.approx(x)
        return a + (y - a).detach()

    def extra_repr(self) -> str:
        return f"defense={getattr(self.defense, 'name', type(self.defense).__name__)}"


class EOT(nn.Module):
    """Expectation over transformation: the mean of `samples` calls of a stochastic module,
    so its gradient is the mean of `samples` draws' gradients (Athalye et al.'s estimator)."""

    def __init__(self, module, samples: int = 4):
        super().__init__()
        if not callable(module):
            raise TypeError(f"`module` must be callable, got {type(module).__name__}")
        self.module = module
        self.samples = check_int(samples, "samples", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.module(x) for _ in range(self.samples)]).mean(0)
