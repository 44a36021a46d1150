"""Regression tests of the hardening issue: every defect found when the package was
probed as a careless or hostile user would, one test (or a few) per item, named after it.
Each failed before its fix."""
import pytest
import torch
from conftest import backend_params

import miga_fast
from miga_fast import ops
from miga_fast.reference import projection as ref

BACKENDS = backend_params() + [pytest.param("reference", "cpu", id="reference")]

# --------------------------------------------------------------- 1. the l2 step overflows

MAGNITUDES = {torch.float32: [0.0, 1e-44, 1e-30, 1.0, 1e30],
              torch.float64: [0.0, 1e-310, 1e-44, 1e-30, 1.0, 1e30, 1e300]}


def extreme_gradients(dtype, rng, n=37):
    """One sample per magnitude, then one sample whose entries mix every magnitude."""
    mags = MAGNITUDES[dtype]
    rows = [torch.randn(n, generator=rng, dtype=torch.float64) * m for m in mags]
    mixed = torch.randn(n, generator=rng, dtype=torch.float64)
    mixed *= torch.tensor(mags, dtype=torch.float64)[torch.arange(n) % len(mags)]
    rows.append(mixed)
    g = torch.stack(rows).to(dtype)
    if dtype == torch.float32:  # the scaled values must survive the cast
        assert torch.isfinite(g).all()
    return g


def _ball_inputs(g, rng):
    b, n = g.shape
    x = torch.full((b, n), 0.5, dtype=g.dtype)
    d0 = ((torch.rand(b, n, generator=rng, dtype=torch.float64) - 0.5) * 0.01).to(g.dtype)
    return x, d0


def check_extreme_l2(step, g, rng, eps=0.3, alpha=0.05):
    """step(delta, grad, x, eps, alpha) runs one l2 step; the result is finite, inside the
    ball and the box; a non-zero gradient of any magnitude moves delta by a full step
    before the projection (here the ball does not bind); a zero gradient takes none."""
    x, d0 = _ball_inputs(g, rng)
    out = d0.clone()
    step(out, g, x, eps, alpha)
    assert torch.isfinite(out).all()
    norms = out.double().norm(dim=1)
    assert (norms <= eps * (1 + 1e-6)).all(), norms
    assert ((x + out) >= 0).all() and ((x + out) <= 1).all()
    moved = (out - d0).double().norm(dim=1)
    zero = (g == 0).all(dim=1)
    torch.testing.assert_close(out[zero], d0[zero], rtol=0, atol=1e-7)  # no step; only the box rounds
    tol = 1e-4 if g.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(moved[~zero], torch.full_like(moved[~zero], alpha), rtol=tol, atol=tol)
    return out


def check_extreme_mi_fgsm(step, g, rng):
    x, d0 = _ball_inputs(g, rng)
    out, mom = d0.clone(), torch.zeros_like(d0)
    step(out, mom, g, x, 8 / 255, 2 / 255)
    assert torch.isfinite(out).all() and torch.isfinite(mom).all()
    l1 = mom.double().abs().sum(1)
    zero = (g == 0).all(dim=1)
    assert (l1[zero] == 0).all()
    torch.testing.assert_close(l1[~zero], torch.ones_like(l1[~zero]), rtol=1e-5, atol=1e-5)
    assert (out.abs() <= 8 / 255 + 1e-7).all()
    return out, mom


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never(backend, device, dtype, rng):
    g = extreme_gradients(dtype, rng)
    rng.manual_seed(1)
    expected = check_extreme_l2(lambda d, gg, x, e, a: ref.pgd_step_(d, gg, x, e, a, "l2"), g, rng)

    def step(d, gg, x, e, a):
        with miga_fast.set_backend(backend):
            ops.pgd_step_(d, gg.to(device), x.to(device), e, a, "l2")

    rng.manual_seed(1)
    out = check_extreme_l2(step, g, rng)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never_in_mi_fgsm_l1(backend, device, dtype, rng):
    g = extreme_gradients(dtype, rng)
    rng.manual_seed(2)
    exp_d, exp_m = check_extreme_mi_fgsm(lambda *a: ref.mi_fgsm_step_(*a), g, rng)

    def step(d, m, gg, x, e, a):
        with miga_fast.set_backend(backend):
            ops.mi_fgsm_step_(d, m, gg, x, e, a)

    rng.manual_seed(2)
    out, mom = check_extreme_mi_fgsm(step, g, rng)
    torch.testing.assert_close(out, exp_d)
    torch.testing.assert_close(mom, exp_m, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never_in_project(backend, device, dtype, rng):
    """An l2 projection of a delta of any finite magnitude lands on the ball's surface
    in delta's direction (the norm of 1e30 in float32 overflowed to inf: delta became 0)."""
    big = 1e30 if dtype == torch.float32 else 1e300
    d = torch.randn(4, 50, generator=rng, dtype=torch.float64).to(dtype)
    d[1] *= big
    d[2] *= 1e-30
    d[3] = 0
    x = torch.full_like(d, 0.5)
    with miga_fast.set_backend(backend):
        out = ops.project_(d.clone(), x, 0.2, "l2")
    assert torch.isfinite(out).all()
    n = out.double().norm(dim=1)
    torch.testing.assert_close(n[:2], torch.full((2,), 0.2, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    cos = torch.nn.functional.cosine_similarity(out[1].double(), (d[1] / big).double(), dim=0)
    assert cos > 1 - 1e-6
    torch.testing.assert_close(out[2:], d[2:], rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l2_step_overflows_never_in_random_init(dtype, rng):
    d = torch.empty(3, 0, dtype=dtype)
    ops.random_init_(d, torch.empty_like(d), 0.5, "l2", generator=0)  # raised ZeroDivisionError
    d = torch.zeros(3, 1, 4, 4, dtype=dtype)
    ops.random_init_(d, torch.full_like(d, 0.5), 0.4, "l2", generator=0)
    assert torch.isfinite(d).all() and (d.flatten(1).norm(dim=1) <= 0.4 * (1 + 1e-6)).all()


def test_l2_step_overflows_never_in_pgd_on_a_confident_model():
    """The probe's case: PGD-l2 (eps 0.5) on a linear model with a huge logit margin gives
    gradients near 1e-40; the result stayed far outside the ball (norms 3.7-4.2)."""
    from miga_fast.attacks import PGD

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    with torch.no_grad():
        model[1].weight.mul_(300.0)
    x = torch.rand(16, 3, 8, 8)
    y = model(x).argmax(1)
    for backend in ("cpu", "reference"):
        with miga_fast.set_backend(backend):
            adv = PGD(model, eps=0.5, alpha=0.2, steps=5, norm="l2", generator=0)(x, y)
        n = (adv - x).flatten(1).norm(dim=1)
        assert torch.isfinite(adv).all() and (n <= 0.5 + 1e-5).all(), n
