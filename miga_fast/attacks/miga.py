"""MIGA (docs/algorithms.md §4): a small perturbation delta of a noisy image x_n such
that the denoiser's output D(x_n + delta) still looks clean but carries other semantics.

    attack = MIGA(denoiser, classifier, eps=8/255)
    result = attack(x_noisy, labels, x_clean=x)        # an AttackResult
    attack.run(dataset, "out/", batch_size=64)          # a whole dataset, resumable

Known task: L_MI = -CE(F(D(.)), y) (untargeted) or +CE(F(D(.)), target). Unknown task:
L_MI is a MINE bound on I(x; D(x_n + delta)) (minimised), with the critic trained by
`critic_steps` ascent steps before every delta step; with `reference` images x_r the
fidelity term targets x_r instead of x (the paper's Figure 2: the output moves toward the
reference's content while the information about x is removed). The loss and the step are
DenoiserAttack's (base.py).
"""

from __future__ import annotations

import torch

from .._validation import check_choice, check_int, check_tensor, check_unit_range
from ..nvtx import nvtx_range
from ._common import masked_cross_entropy
from .base import DenoiserAttack

TASKS = ("known", "unknown")


class MIGA(DenoiserAttack):
    """The MIGA attack. task="known" needs the classifier F and labels (the targets when
    targeted=True); task="unknown" (the default without a classifier) uses a MINE critic
    (`mine`: a miga_fast.mine.MINE; by default a fresh critic with small CNN encoders,
    trained in the loop) and, with `reference` (images [B or 1, C, H, W] of other
    semantics), pulls the outputs toward them. The population form of the paper's
    Algorithm 1: `mine, pool = mine.pretrain_critic(denoiser, train_images)` and
    MIGA(..., mine=mine, critic_pool=pool): the critic starts trained on clean pairs of a
    training split, persists across the batches of a run, and every critic step replays as
    many population pairs as the attacked batch holds. lambda_rec weighs the fidelity term
    against the task term (10 by default: see docs/algorithms.md §4, "Balancing the terms")."""

    name = "miga"

    def __init__(
        self,
        denoiser,
        classifier=None,
        eps=None,
        norm="linf",
        steps=20,
        alpha=None,
        lambda_rec=10.0,
        lambda_mi=1.0,
        task=None,
        targeted=False,
        mine=None,
        reference=None,
        critic_steps=5,
        critic_pool=None,
        compile=True,
        tau=0.95,
        random_start=False,
        generator=None,
        model_mode="eval",
        precision="float32",
    ):
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
        if critic_pool is not None:
            if (
                not isinstance(critic_pool, (tuple, list))
                or len(critic_pool) != 2
                or not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in critic_pool)
                or critic_pool[0].shape != critic_pool[1].shape
            ):
                raise ValueError("`critic_pool` must be a pair of image tensors (x, D(x_n)) of one shape [N, C, H, W]")
            if self.task == "known":
                raise ValueError("`critic_pool` pairs x with D(x_n): it serves the unknown task")
        self.critic_pool = critic_pool
        self._pool_generator = torch.Generator().manual_seed(0)
        super().__init__(
            denoiser,
            classifier,
            eps=eps,
            norm=norm,
            steps=steps,
            alpha=alpha,
            tau=tau,
            lambda_rec=lambda_rec,
            lambda_mi=lambda_mi,
            targeted=targeted,
            compile=compile,
            random_start=random_start,
            generator=generator,
            model_mode=model_mode,
            precision=precision,
        )
        # the unknown task's MI bound pairs samples within the batch: it needs two
        self.min_batch = 2 if self.task == "unknown" else 1

    def _min_batch_reason(self) -> str:
        return "the unknown task's MI bound contrasts pairs within a batch"

    @property
    def carries_state(self) -> str:
        if self.task == "unknown" and (self.mine is not None or self.critic_pool is not None):
            return "a MINE critic trained on every batch it attacks"
        return ""

    def _loss_fn(self):
        # the critic changes every step: the unknown task's loss stays eager
        return self._loss if self.task == "unknown" else super()._loss_fn()

    def _prepare(self, x_noisy, labels, x_ref):
        if self.task == "known":
            if labels is None:
                raise ValueError("the known task needs `labels` (the targets when targeted=True)")
            return x_ref, labels, {}
        from ..mine import MINE, MINECritic

        anchor = x_ref  # I(x; D(x_n + delta)) is minimised in both forms
        if self.reference is not None:
            if self.reference.shape[1:] != x_noisy.shape[1:] or self.reference.shape[0] not in (1, x_noisy.shape[0]):
                dims = ", ".join(map(str, x_noisy.shape[1:]))
                raise ValueError(
                    f"`reference` must be [1 or {x_noisy.shape[0]}, {dims}], got {tuple(self.reference.shape)}"
                )
            x_ref = self.reference.to(x_noisy).expand_as(x_noisy)  # the fidelity term's target
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
        aux = {"anchor": anchor, "mine": mine}
        if labels is not None:
            aux["true_labels"] = labels
        return x_ref, labels, aux

    def _before_step(self, k, delta, x_noisy, x_ref, labels, aux):
        if self.task != "unknown" or self.critic_steps == 0:
            return
        with torch.no_grad():
            out = self.pipeline_image(self.denoiser_eager(x_noisy + delta))
        with nvtx_range("miga.critic"):
            for _ in range(self.critic_steps if k else 4 * self.critic_steps):
                anchor, seen = aux["anchor"], out
                if self.critic_pool is not None:  # replay as many population pairs as the batch holds
                    px, py = self.critic_pool
                    idx = torch.randint(px.shape[0], (out.shape[0],), generator=self._pool_generator)
                    anchor = torch.cat([anchor, px[idx].to(out)])
                    seen = torch.cat([out, py[idx].to(out)])
                aux["mine"].step(anchor, seen)

    def _terms(self, out, x_ref, labels, aux):
        rec = self.lambda_rec * (out - x_ref).pow(2).flatten(1).mean(1)
        if self.task == "known":
            ce = masked_cross_entropy(self.classifier(out), labels)
            return {"rec": rec, "mi": self.lambda_mi * (ce if self.targeted else -ce)}
        critic = aux["mine"].critic
        # One number for the batch; each sample's share of its gradient is O(1 / B), so the
        # term counts once per sample (sum = B * bound) to weigh like the per-sample terms.
        bound = critic.bound(aux["anchor"], out)
        return {"rec": rec, "mi": self.lambda_mi * bound.expand(out.shape[0])}
