"""The projection family (docs/algorithms.md §1): fused PGD steps on a perturbation.

Every op works in place on `delta` (the perturbation added to the image `x`), per
sample: `eps` and `alpha` are floats or tensors of shape [B]. The order is torchattacks':
step, ball projection, then the box `x + delta in [0, 1]`.

Backends (miga_fast.set_backend): the C++ kernels (CPU), the CUDA kernels, Triton, and
the plain-PyTorch reference. The l-inf results of every backend equal the reference
exactly in float32. These are optimiser steps, not differentiable functions: call them
on detached tensors (under torch.no_grad()).
"""

from __future__ import annotations

import torch

from .. import _backend, _extension
from .._validation import (
    check_batch,
    check_choice,
    check_direction,
    check_finite,
    check_like,
    check_no_overlap,
    check_scalar,
    check_tensor,
    check_unit_range,
    per_sample,
)
from ..reference import projection as ref
from ._namespaces import ops_for

NORMS = ("linf", "l2")
_OPS = ("pgd_step_linf_", "pgd_step_linf_image_", "pgd_step_l2_", "mi_fgsm_step_", "project_linf_", "project_l2_")
_PUBLIC = {
    "pgd_step_linf_": "ops.pgd_step_(norm='linf')",
    "pgd_step_linf_image_": "ops.pgd_step_linf_image_",
    "pgd_step_l2_": "ops.pgd_step_(norm='l2')",
    "mi_fgsm_step_": "ops.mi_fgsm_step_",
    "project_linf_": "ops.project_(norm='linf'), ops.random_init_",
    "project_l2_": "ops.project_(norm='l2'), ops.random_init_",
}
# the CUDA and Triton kernels read and write half precision (computing in float32); the C++ ones do not
TABLES = {
    name: _backend.register_op(_backend.Op(name, _PUBLIC[name], dtypes={"cuda": _backend.ANY_FLOAT})) for name in _OPS
}


def _register_cpp(namespace: str = "miga_fast") -> None:
    """Fake kernels of the compiled ops in `namespace` (torch.ops.miga_fast; the emulated-CUDA
    test build registers its miga_fast_emu too), for torch.compile: they mutate and return nothing."""
    for name in _OPS:
        torch.library.register_fake(f"{namespace}::{name}")(lambda *args, **kwargs: None)


if _extension.load() is not None:
    _register_cpp()


def _ops_for(backend: str):
    return ops_for(backend, "projection")


def _check_images(delta, x, outputs=("delta",), first="delta", **others):
    """Every check of the family, run before anything is written: layouts, in-place
    outputs that overlap themselves or another argument, the image range. `first`: the
    name of the tensor stepped in place (delta, or adv for the image-space step)."""
    check_tensor(delta, first)
    check_batch(delta, first)
    check_like(delta, first, x, "x")
    for name, t in others.items():
        check_like(delta, first, t, name)
    if delta.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"`{first}` requires grad: the projection ops are in-place optimiser "
            f"steps; call them under torch.no_grad() or pass {first}.detach()"
        )
    tensors = {first: delta, "x": x, **others}
    check_no_overlap({k: tensors[k] for k in outputs}, {k: v for k, v in tensors.items() if k not in outputs})
    check_unit_range(x, "x")


# Inside a graph torch.compile traces, with the backend left on "auto": whether each op
# runs our kernel (an opaque call: inductor cannot fuse it with the ops around it) or is
# traced as the plain-PyTorch reference (a decomposition inductor fuses with the gradient
# that feeds it and the ops that read delta after it). Measured on CPU in
# benchmarks/bench_projection.py ("inside a compiled graph"; docs/architecture.md, "Ops
# inside compiled graphs"): the l-inf step is element-wise, so fusion saves whole passes
# over memory and the traced reference wins; the l2 and MI-FGSM steps need a per-sample
# reduction first, where our kernel is faster than inductor's code, and torch 2.14.1's
# inductor fails to compile the traced l2 reference inside a larger graph and the in-place
# MI-FGSM reference on its own. GPU: the same rule until the GPU benchmark says
# otherwise. A backend named with set_backend() is always obeyed.
COMPILE_RULE = {
    "pgd_step_linf_": "decompose",
    "pgd_step_linf_image_": "decompose",
    "project_linf_": "decompose",
    "pgd_step_l2_": "kernel",
    "project_l2_": "kernel",
    "mi_fgsm_step_": "kernel",
}


def _dispatch(op: str, reference, delta: torch.Tensor, *args) -> None:
    """Run torch.ops.<namespace>.<op>(delta, *args) on the selected backend, or
    `reference(delta, *args)` on the reference backend (and, under torch.compile with
    backend "auto", where COMPILE_RULE says "decompose")."""
    backend = TABLES[op].select(delta.device, delta.dtype)
    if backend != "reference" and torch.compiler.is_compiling():
        if COMPILE_RULE[op] == "decompose" and _backend.get_backend() == "auto":
            backend = "reference"
    run = reference if backend == "reference" else getattr(_ops_for(backend), op)
    if not torch.is_grad_enabled():  # the attacks' loops: no context to enter
        run(delta, *args)
        return
    with torch.no_grad():
        run(delta, *args)


def pgd_step_(delta, grad, x, eps, alpha, norm="linf", direction=1.0):
    """One PGD step in place: `delta <- box(ball_eps(delta + direction * alpha * dir(grad)))`,
    dir = sign(grad) (l-inf) or grad / |grad|_2 (l2; a zero gradient leaves delta as is).

    delta, grad, x: tensors [B, ...] of one shape, dtype and device; x in [0, 1].
    eps, alpha: floats or [B] tensors, >= 0. direction: +1 ascends the loss, -1 descends.
    Returns delta.
    """
    check_choice(norm, "norm", NORMS)
    direction = check_direction(direction)
    _check_images(delta, x, grad=grad)
    check_finite(grad, "grad")
    check_finite(delta, "delta")
    e = per_sample(eps, "eps", delta)
    a = per_sample(alpha, "alpha", delta)
    op = "pgd_step_linf_" if norm == "linf" else "pgd_step_l2_"
    _dispatch(op, lambda *args: ref.pgd_step_(*args[:5], norm, args[5]), delta, grad, x, e, a, direction)
    return delta


def pgd_step_linf_image_(adv, grad, x, eps, alpha, direction=1.0):
    """The l-inf PGD step on the adversarial image itself, in place:
    `adv <- clamp(x + clamp(adv + direction * alpha * sign(grad) - x, -eps, eps), 0, 1)`.

    The same step as `pgd_step_(delta, ..., "linf")` with adv = x + delta, in
    torchattacks' arithmetic, operation for operation: in float32 and float64 its results
    equal torchattacks' PGD update bit for bit (the delta form rounds x + delta once more,
    so it agrees with torchattacks only to rounding). For callers that keep the adversarial
    image, as torchattacks does (miga_fast.integrations.torchattacks).

    adv, grad, x: tensors [B, ...] of one shape, dtype and device; x in [0, 1].
    eps, alpha: floats or [B] tensors, >= 0. direction: +1 ascends the loss, -1 descends.
    Returns adv.
    """
    direction = check_direction(direction)
    _check_images(adv, x, outputs=("adv",), first="adv", grad=grad)
    check_finite(grad, "grad")
    check_finite(adv, "adv")
    e = per_sample(eps, "eps", adv)
    a = per_sample(alpha, "alpha", adv)
    _dispatch("pgd_step_linf_image_", ref.pgd_step_linf_image_, adv, grad, x, e, a, direction)
    return adv


def mi_fgsm_step_(delta, momentum, grad, x, eps, alpha, mu=1.0, direction=1.0):
    """One MI-FGSM step in place: `momentum <- mu * momentum + grad / |grad|_1`, then the
    l-inf step on the momentum (`delta` and `momentum` are both updated). Returns delta."""
    direction = check_direction(direction)
    mu = check_scalar(mu, "mu")
    _check_images(delta, x, outputs=("delta", "momentum"), grad=grad, momentum=momentum)
    check_finite(grad, "grad")
    check_finite(momentum, "momentum")
    check_finite(delta, "delta")
    e = per_sample(eps, "eps", delta)
    a = per_sample(alpha, "alpha", delta)
    _dispatch("mi_fgsm_step_", ref.mi_fgsm_step_, delta, momentum, grad, x, e, a, mu, direction)
    return delta


def project_(delta, x, eps, norm="linf"):
    """Ball then box, in place: delta into the eps-ball, then x + delta into [0, 1]."""
    check_choice(norm, "norm", NORMS)
    _check_images(delta, x)
    check_finite(delta, "delta")
    e = per_sample(eps, "eps", delta)
    op = "project_linf_" if norm == "linf" else "project_l2_"
    _dispatch(op, lambda d, xx, ee: ref.project_(d, xx, ee, norm), delta, x, e)
    return delta


def _as_generator(generator, device: torch.device):
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        g = torch.Generator(device=device)
        g.manual_seed(generator)
        return g
    raise TypeError(f"`generator` must be a torch.Generator, an int seed or None, got {type(generator).__name__}")


def random_init_(delta, x, eps, norm="linf", generator=None):
    """A uniform random start in the eps-ball (then the box), in place.

    generator: a torch.Generator or an int seed; the same seed gives the same start on
    every backend (the samples come from torch's generator, the projection from the
    backend). Returns delta.
    """
    check_choice(norm, "norm", NORMS)
    _check_images(delta, x)
    gen = _as_generator(generator, delta.device)
    e = per_sample(eps, "eps", delta)
    TABLES[f"project_{norm}_"].select(delta.device, delta.dtype)  # a backend that cannot run raises first
    sample = ref.sample_ball(delta, e, norm, gen)
    with torch.no_grad():
        delta.copy_(sample)
    return project_(delta, x, e, norm)
