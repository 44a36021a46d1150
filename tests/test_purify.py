"""miga_fast.purify: the attention mask, the heterogeneous and uniform purifiers, their
gradient modes, a diffusers model as it is, and the purified classifier."""

import pytest
import torch
import torch.nn as nn

from miga_fast import data
from miga_fast.models import registry
from miga_fast.models.diffusion import DiffusionUNet
from miga_fast.purify import (
    AttentionMask,
    HeterogeneousPurifier,
    LinearSchedule,
    PurifiedClassifier,
    UniformPurifier,
    attention_mask,
)


@pytest.fixture(scope="module")
def digits():
    x, y = data.load_digits("test")
    return x[:24], y[:24]


@pytest.fixture(scope="module")
def classifier():
    return registry.load("cnn_digits")


def _no_hooks(model):
    return all(not m._forward_hooks for m in model.modules())


# --- the mask -----------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["minmax", "softmax"])
@pytest.mark.parametrize("top", [0.1, 0.3])
def test_the_mask_has_the_requested_coverage(digits, classifier, normalize, top):
    x, _ = digits
    m = attention_mask(classifier, x, normalize=normalize, top=top)
    assert m.shape == (x.shape[0], 1, *x.shape[2:])
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    coverage = m.flatten(1).mean(1)
    assert (coverage >= top - 1e-6).all() and (coverage <= top + 0.05).all()  # ties at the threshold kept
    assert _no_hooks(classifier)


def test_the_mask_follows_the_classifier_and_carries_no_gradient(digits, classifier):
    """The masked pixels are where the classifier's features are strong: on digits, the
    strokes (bright pixels) far more than the background."""
    x, _ = digits
    xg = x.clone().requires_grad_(True)
    masker = AttentionMask(classifier, top=0.2)
    m = masker(xg)
    assert not m.requires_grad and m.grad_fn is None
    assert masker.layers and all(isinstance(n, str) for n in masker.layers)
    assert float(x[m.expand_as(x) > 0].mean()) > 2 * float(x[m.expand_as(x) == 0].mean())
    assert _no_hooks(classifier)
    named = AttentionMask(classifier, layers=masker.layers, top=0.2)(x)
    torch.testing.assert_close(named, m)


def test_the_hooks_go_even_when_the_classifier_fails(classifier):
    masker = AttentionMask(classifier, top=0.2)
    with pytest.raises(RuntimeError):
        masker(torch.rand(2, 3, 32, 32))  # 3 channels into a 1-channel classifier
    assert _no_hooks(classifier)


def test_mask_bad_input(classifier, digits):
    x, _ = digits
    with pytest.raises(ValueError, match="not both"):
        AttentionMask(classifier, tau=0.5, top=0.1)
    with pytest.raises(ValueError, match="`top` must be a fraction"):
        AttentionMask(classifier, top=1.5)
    with pytest.raises(ValueError, match="no module 'nope'"):
        AttentionMask(classifier, layers=["nope"])
    with pytest.raises(ValueError, match="`normalize`"):
        AttentionMask(classifier, normalize="l1")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        attention_mask(classifier, x * 2, top=0.1)


# --- the purifiers ------------------------------------------------------------------------


class Spy(nn.Module):
    """A UNet stand-in recording (t, input) of every call; predicts zero noise."""

    def __init__(self, channels=1):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.calls = []

    def forward(self, x, t):
        self.calls.append((int(t[0]), x.detach().clone()))
        return torch.zeros_like(x)


def test_the_heterogeneous_stage_really_runs(digits):
    """The model's first input is the heterogeneous image: inside the mask the noise of
    t_l, outside that of t_s (a purifier whose two levels collapsed fails here), and stage
    1 makes model calls between t_s and t_l, two per step with single-step resampling."""
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(8, 1, 32, 32)
    mask[..., :16] = 1
    spy = Spy()
    p = HeterogeneousPurifier(spy, t_l=200, t_s=100, U=10, stride=20)
    p(x, generator=0, mask=mask)
    abar = LinearSchedule().alphas_cumprod
    t0, first = spy.calls[0]
    assert t0 == 200
    x0 = 2 * x - 1
    inside = (first - abar[200].sqrt() * x0)[..., :16]
    outside = (first - abar[100].sqrt() * x0)[..., 16:]
    assert abs(float(inside.var()) - float(1 - abar[200])) < 0.02
    assert abs(float(outside.var()) - float(1 - abar[100])) < 0.01
    times = [t for t, _ in spy.calls]
    # stage 1 on the grid 200, 180, ..., 100: the model at t, then at t_next + U after the jump
    assert times[:10] == [200, 190, 180, 170, 160, 150, 140, 130, 120, 110]
    assert times[10:] == [100, 80, 60, 40, 20, 0]  # stage 2
    assert len(spy.calls) == p.model_calls == 2 * 5 + 6  # 5 stage-1 steps x 2 calls, 6 stage-2 calls (100..0)


@pytest.mark.parametrize("resampling,calls", [("single", 2 * 5 + 6), ("multi", 3 * 5 + 6), ("none", 5 + 6)])
def test_resampling_modes_cost_what_they_say(resampling, calls):
    spy = Spy()
    p = HeterogeneousPurifier(spy, t_l=200, t_s=100, U=3, stride=20, resampling=resampling)
    p(torch.rand(2, 1, 8, 8), generator=0, mask=torch.ones(2, 1, 8, 8))
    assert p.model_calls == len(spy.calls) == calls


def test_the_same_seed_gives_the_same_purified_image(digits, classifier):
    x, _ = digits
    unet = registry.load("ddpm_digits")
    for p in (HeterogeneousPurifier(unet, classifier=classifier, stride=25), UniformPurifier(unet, stride=25)):
        a, b, c = p(x[:6], generator=3), p(x[:6], generator=3), p(x[:6], generator=4)
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.shape == x[:6].shape and a.min() >= 0 and a.max() <= 1


def test_purification_keeps_clean_digits(digits, classifier):
    x, y = digits
    unet = registry.load("ddpm_digits")
    for p in (
        HeterogeneousPurifier(unet, classifier=classifier, stride=20, mask_options=dict(top=0.2)),
        UniformPurifier(unet, t_star=100, stride=20),
    ):
        with torch.no_grad():
            acc = float((classifier(p(x, generator=0)).argmax(1) == y).float().mean())
        assert acc >= 0.85, (p, acc)


def _tiny_unet():
    torch.manual_seed(0)
    return DiffusionUNet(channels=1, base=8, tdim=16).double()


@pytest.mark.parametrize("cls", [HeterogeneousPurifier, UniformPurifier])
def test_checkpointed_gradients_equal_plain_autograd(cls):
    unet = _tiny_unet()
    kw = dict(t_l=60, t_s=30, U=5, stride=15) if cls is HeterogeneousPurifier else dict(t_star=40, stride=15)
    p = cls(unet, **kw)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = {"mask": (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).double()}
    extra = mask if cls is HeterogeneousPurifier else {}
    up = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    grads = {}
    for mode in ("full", "checkpoint"):
        xx = x.clone().requires_grad_(True)
        out = p(xx, generator=0, gradient=mode, **extra)
        (grads[mode],) = torch.autograd.grad(out, xx, up)
    assert grads["full"].abs().sum() > 0
    torch.testing.assert_close(grads["checkpoint"], grads["full"], rtol=1e-10, atol=1e-12)


def test_bpda_and_none_gradients():
    p = UniformPurifier(_tiny_unet(), t_star=40, stride=20)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = p(x, generator=0, gradient="bpda")
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(g, torch.ones_like(x))  # straight through
    torch.testing.assert_close(out, p(x, generator=0, gradient="none"))
    assert p(x, generator=0, gradient="none").grad_fn is None
    # the surrogate: the real purification's values, a two-call stand-in's gradient
    sur = p(x, generator=0, gradient="surrogate")
    torch.testing.assert_close(sur, out)
    (gs,) = torch.autograd.grad(sur, x, torch.ones_like(sur))
    (gf,) = torch.autograd.grad(p(x, generator=0), x, torch.ones_like(sur))
    assert gs.abs().sum() > 0 and not torch.allclose(gs, gf) and not torch.allclose(gs, g)


def test_stochastic_reverse_steps(digits, classifier):
    """eta = 1: DDPM-like reverse steps, their noise from the same generator (same seed, same
    image), different from the deterministic purification and still keeping the digits."""
    x, y = digits
    unet = registry.load("ddpm_digits")
    p = HeterogeneousPurifier(unet, classifier=classifier, stride=25, eta=1.0, mask_options=dict(top=0.2))
    a, b = p(x, generator=1), p(x, generator=1)
    assert torch.equal(a, b)
    det = HeterogeneousPurifier(unet, classifier=classifier, stride=25, mask_options=dict(top=0.2))(x, generator=1)
    assert not torch.allclose(a, det)
    with torch.no_grad():
        assert float((classifier(a).argmax(1) == y).float().mean()) >= 0.85
    with pytest.raises(ValueError, match="`eta` must lie in"):
        UniformPurifier(unet, eta=2.0)


def test_bfloat16_model_runs_close_to_float32(digits):
    x, _ = digits
    unet = registry.load("ddpm_digits")
    a = UniformPurifier(unet, stride=25)(x[:4], generator=0)
    b = UniformPurifier(unet, stride=25, precision="bfloat16")(x[:4], generator=0)
    assert (a - b).abs().mean() < 0.05


def test_purifier_bad_input(classifier):
    unet = registry.load("ddpm_digits")
    with pytest.raises(ValueError, match="`t_s` .* must be below `t_l`"):
        HeterogeneousPurifier(unet, t_l=100, t_s=100)
    with pytest.raises(ValueError, match="`t_l` must be an int in"):
        HeterogeneousPurifier(unet, t_l=1000)
    with pytest.raises(ValueError, match="`U` must be an int >= 1"):
        HeterogeneousPurifier(unet, U=0)
    with pytest.raises(ValueError, match="jumps past the schedule"):
        HeterogeneousPurifier(unet, t_l=995, t_s=100, U=10)
    with pytest.raises(ValueError, match="`resampling`"):
        HeterogeneousPurifier(unet, resampling="double")
    with pytest.raises(ValueError, match="takes 1-channel images, `x` has 3"):
        UniformPurifier(unet)(torch.rand(2, 3, 32, 32))
    p = HeterogeneousPurifier(unet, stride=50)
    x = torch.rand(2, 1, 32, 32)
    with pytest.raises(ValueError, match="no `classifier`"):
        p(x)
    with pytest.raises(ValueError, match="`mask` must have shape"):
        p(x, mask=torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="only 0s and 1s"):
        p(x, mask=torch.full((2, 1, 32, 32), 0.5))
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        p(x - 1, mask=torch.ones(2, 1, 32, 32))


def test_a_diffusers_model_and_scheduler_as_they_are():
    """A tiny randomly initialised diffusers UNet2DModel with its DDIMScheduler: the uniform
    purifier equals diffusers' own DDIM loop from the same noised image."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()  # fmt: skip
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                                    set_alpha_to_one=True)  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    p = UniformPurifier(unet, sched, t_star=100, stride=20)
    with torch.no_grad():
        got = p(x, generator=5)
        a = sched.alphas_cumprod[100]
        g = torch.Generator().manual_seed(5)
        xt = a.sqrt() * (2 * x - 1) + (1 - a).sqrt() * torch.randn(x.shape, generator=g)
        sched.set_timesteps(50)  # a step of 20
        for t in range(100, -1, -20):
            xt = sched.step(unet(xt, t).sample, t, xt, eta=0.0).prev_sample
        want = ((xt + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    v = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    assert HeterogeneousPurifier(unet, v, stride=50)(x, generator=0, mask=torch.ones(2, 1, 8, 8)).shape == x.shape


# --- the purified classifier ----------------------------------------------------------------


def test_purified_classifier_votes_at_evaluation_and_draws_once_under_attack(digits, classifier):
    x, y = digits
    unet = registry.load("ddpm_digits")
    model = PurifiedClassifier(UniformPurifier(unet, stride=50), classifier, votes=3, seed=0)
    with torch.no_grad():
        scores = model(x[:8])
    assert scores.shape == (8, 10)
    counts = scores.floor()
    assert torch.equal(counts.sum(1), torch.full((8,), 3.0))  # three votes each
    assert torch.equal(scores.argmax(1), counts.argmax(1))
    xg = x[:4].clone().requires_grad_(True)
    logits = model(xg)
    (g,) = torch.autograd.grad(logits.gather(1, y[:4, None]).sum(), xg)
    assert g.abs().sum() > 0  # the gradient goes through the purifier


def test_torchattacks_targets_a_purified_classifier(digits, classifier):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = digits
    model = PurifiedClassifier(UniformPurifier(registry.load("ddpm_digits"), stride=50), classifier, votes=2, seed=0)
    atk = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=2)
    adv = atk(x[:4], y[:4])
    assert adv.shape == x[:4].shape and (adv - x[:4]).abs().max() <= 8 / 255 + 1e-6
