"""The baselines MIGA is compared with (docs/algorithms.md §4): the attack that only
degrades the denoiser's output, and PGD on the whole pipeline F o D."""

from __future__ import annotations

from ._common import masked_cross_entropy
from .base import DenoiserAttack


class DenoiserDegradation(DenoiserAttack):
    """The "traditional" attack on a denoiser: maximise |D(x_n + delta) - x|^2 (degrades
    the output; changes labels only as a side effect)."""

    name = "degradation"

    def __init__(self, denoiser, classifier=None, eps=None, norm="linf", steps=20, alpha=None, **kwargs):
        super().__init__(
            denoiser, classifier, eps=eps, norm=norm, steps=steps, alpha=alpha, lambda_rec=1.0, lambda_mi=0.0, **kwargs
        )

    def _terms(self, out, x_ref, labels, aux):
        return {"rec": -(out - x_ref).pow(2).flatten(1).mean(1)}


class EndToEndPGD(DenoiserAttack):
    """PGD on the pipeline F o D: maximise the classifier's cross-entropy of the denoised
    output (descend it toward targets with targeted=True), no fidelity term."""

    name = "e2e-pgd"

    def __init__(self, denoiser, classifier, eps=None, norm="linf", steps=20, alpha=None, targeted=False, **kwargs):
        if classifier is None:
            raise ValueError("EndToEndPGD needs a classifier")
        super().__init__(
            denoiser,
            classifier,
            eps=eps,
            norm=norm,
            steps=steps,
            alpha=alpha,
            lambda_rec=0.0,
            lambda_mi=1.0,
            targeted=targeted,
            **kwargs,
        )

    def _prepare(self, x_noisy, labels, x_ref):
        if labels is None:
            raise ValueError("EndToEndPGD needs `labels` (the targets when targeted=True)")
        return x_ref, labels, {}

    def _terms(self, out, x_ref, labels, aux):
        ce = masked_cross_entropy(self.classifier(out), labels)
        return {"mi": ce if self.targeted else -ce}
