"""The MINE estimator (miga_fast.mine) on data with a known answer: correlated Gaussians,
I = -(d/2) log(1 - rho^2), independent data (I = 0), and digit images; the critic's
shapes, the bias-corrected step, reproducibility, and bad input."""

import math

import pytest
import torch

from miga_fast import data
from miga_fast.mine import MINE, MINECritic, estimate_mi


def _gaussians(n, d, rho, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("d,rho", [(1, 0.9), (5, 0.5)])
def test_estimate_mi_approaches_the_gaussian_truth(d, rho):
    truth = -(d / 2) * math.log(1 - rho**2)
    x, y = _gaussians(3000, d, rho, seed=d)
    est = estimate_mi(x, y, steps=600, hidden=64)
    # A lower bound from a finite critic: below the truth, within 20% of it.
    assert 0.8 * truth < est < truth + 0.05, (est, truth)


def test_estimate_mi_is_near_zero_for_independent_data():
    x, _ = _gaussians(3000, 3, 0.0, seed=7)
    _, y = _gaussians(3000, 3, 0.0, seed=8)
    est = estimate_mi(x, y, steps=400, hidden=64)
    assert abs(est) < 0.05, est


@pytest.mark.parametrize("bound", ["nwj", "infonce"])
def test_other_bounds_estimate_too(bound):
    d, rho = 2, 0.8
    truth = -(d / 2) * math.log(1 - rho**2)
    x, y = _gaussians(3000, d, rho, seed=3)
    est = estimate_mi(x, y, steps=500, hidden=64, bound=bound)
    assert 0.7 * truth < est < truth + 0.05, (bound, est, truth)


def test_images_through_the_cnn_encoder():
    """Digits and their noisy copies share information; digits and other digits' noisy
    copies much less."""
    x, _ = data.load_digits("train")
    x = x[:1200]
    y = data.add_gaussian_noise(x, 50, generator=0)
    paired = estimate_mi(x, y, steps=300, batch_size=128, hidden=64)
    shuffled = estimate_mi(
        x,
        y[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))],
        steps=300,
        batch_size=128,
        hidden=64,
    )
    assert paired > 1.0, paired
    assert shuffled < 0.2, shuffled


def test_estimate_is_reproducible():
    x, y = _gaussians(600, 2, 0.5, seed=1)
    a = estimate_mi(x, y, steps=50, hidden=16, seed=3)
    b = estimate_mi(x, y, steps=50, hidden=16, seed=3)
    assert a == b


def test_step_keeps_the_moving_average_on_the_device_and_improves_the_bound():
    x, y = _gaussians(2000, 2, 0.8, seed=2)
    torch.manual_seed(0)
    mine = MINE(MINECritic(2, 2, hidden=32), ema=0.01, lr=3e-3)
    before = mine.estimate(x, y)
    for i in range(150):
        value = mine.step(x[(i * 128) % 1872 :][:128], y[(i * 128) % 1872 :][:128])
        assert isinstance(value, torch.Tensor) and value.dim() == 0
    assert isinstance(mine.log_ma, torch.Tensor) and torch.isfinite(mine.log_ma)
    assert mine.estimate(x, y) > before + 0.3


def test_bias_corrected_gradient_matches_its_definition():
    """With the moving average equal to E_Q[e^T] itself, the corrected gradient is the DV
    gradient; with another value, the denominator's gradient is scaled by E_Q[e^T]/ma."""
    torch.manual_seed(0)
    critic = MINECritic(3, 3, hidden=8)
    x, y = _gaussians(64, 3, 0.5, seed=0)
    mine = MINE(critic, ema=0.5)
    joint, lme = critic.terms(x, y)
    mine.log_ma = lme.detach() + math.log(2.0)  # ma twice the batch value, before this step's update
    loss, _ = mine.loss(x, y)
    grads = torch.autograd.grad(loss, [critic.w2])[0]
    joint, lme = critic.terms(x, y)
    # the update: ma' = 0.5 * 2 E + 0.5 E = 1.5 E, so the scale is 1 / 1.5
    want = torch.autograd.grad(-(joint - lme / 1.5), [critic.w2])[0]
    torch.testing.assert_close(grads, want)


def test_critic_shapes_and_joint_scores():
    critic = MINECritic((1, 8, 8), 5, hidden=16)
    x, y = torch.rand(7, 1, 8, 8), torch.randn(7, 5)
    u, v = critic.features(x, y)
    assert u.shape == v.shape == (7, 16)
    from miga_fast import ops

    scores = ops.mine_pair_scores(u, v, critic.b1, critic.w2, critic.b2)
    torch.testing.assert_close(critic(x, y), scores.diagonal())
    deep = MINECritic(4, 4, hidden=8, depth=3)
    assert deep.bound(torch.randn(10, 4), torch.randn(10, 4)).dim() == 0


def test_bad_input():
    with pytest.raises(ValueError, match="`x` must be"):
        MINECritic(3, 3).bound(torch.randn(5, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="pair up"):
        MINECritic(3, 3).bound(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="`depth`"):
        MINECritic(3, 3, depth=0)
    with pytest.raises(ValueError, match="`bound` must be one of"):
        MINE(MINECritic(3, 3), bound="kl")
    with pytest.raises(ValueError, match="pair up"):
        estimate_mi(torch.randn(10, 2), torch.randn(11, 2))
    with pytest.raises(ValueError, match="NaN"):
        estimate_mi(torch.full((10, 2), float("nan")), torch.randn(10, 2))
    with pytest.raises(ValueError, match="`steps`"):
        estimate_mi(torch.randn(10, 2), torch.randn(10, 2), steps=0)
