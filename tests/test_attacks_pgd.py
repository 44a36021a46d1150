"""miga_fast.attacks.PGD: equal to torchattacks with the same settings, fused and
reference paths agree, works under torch.compile, rejects bad input."""

import pytest
import torch
import torch.nn as nn

import miga_fast
from miga_fast.attacks import PGD

from conftest import backend_params

torchattacks = pytest.importorskip("torchattacks")


def _model(dtype=torch.float32, seed=0, dropout=0.0):
    """A small classifier of 16 x 16 images (dropout > 0: a random model in training mode)."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    return m.to(dtype).eval()


def _data(rng, dtype=torch.float32, batch=8):
    x = torch.rand((batch, 3, 16, 16), generator=rng, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 10, (batch,), generator=rng)
    return x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_linf_equals_torchattacks(dtype, backend, rng):
    model = _model(dtype)
    x, y = _data(rng, dtype)
    theirs = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    with miga_fast.set_backend(backend):
        ours = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs.to(dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_l2_equals_torchattacks(backend, rng):
    model = _model(torch.float64)
    x, y = _data(rng, torch.float64)
    theirs = torchattacks.PGDL2(model, eps=0.5, alpha=0.1, steps=10, random_start=False)(x, y)
    with miga_fast.set_backend(backend):
        ours = PGD(model, eps=0.5, alpha=0.1, steps=10, norm="l2", random_start=False)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params() + [pytest.param("reference", "cpu", id="reference")])
def test_every_backend_gives_the_same_attack(backend, device, rng):
    model = _model().to(device)
    x, y = _data(rng)
    x, y = x.to(device), y.to(device)
    with miga_fast.set_backend("reference"):
        expected = PGD(model, steps=5, generator=7)(x, y)
    with miga_fast.set_backend(backend):
        got = PGD(model, steps=5, generator=7)(x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _linear_model(seed=0):
    """A random linear classifier: its logits depend on every pixel, so flips are possible."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    nn.init.normal_(m[1].weight, std=0.1)
    return m.eval()


def test_attack_raises_the_loss_and_stays_in_the_ball(rng):
    model = _linear_model()
    x, _ = _data(rng, batch=16)
    y = model(x).argmax(1)  # attack the model's own predictions
    adv = PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, generator=0)(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(adv), y) > ce(model(x), y) + 0.01
        assert (model(adv).argmax(1) != y).float().mean() > 0.5


def test_targeted_lowers_the_target_loss(rng):
    model = _model()
    x, _ = _data(rng, batch=16)
    target = (model(x).argmax(1) + 1) % 10
    adv = PGD(model, eps=16 / 255, alpha=2 / 255, steps=10, targeted=True, generator=0)(x, target)
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(adv), target) < ce(model(x), target) - 0.01


def test_random_start_is_seeded(rng):
    model = _model()
    x, y = _data(rng)
    a = PGD(model, steps=2, generator=3)(x, y)
    b = PGD(model, steps=2, generator=3)(x, y)
    c = PGD(model, steps=2, generator=4)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_attack_with_a_compiled_model(rng):
    model = _model()
    x, y = _data(rng)
    eager = PGD(model, steps=3, random_start=False)(x, y)
    torch._dynamo.reset()
    compiled = PGD(torch.compile(model), steps=3, random_start=False)(x, y)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_bad_input(rng):
    model = _model()
    x, y = _data(rng)
    with pytest.raises(ValueError, match="`eps`"):
        PGD(model, eps=-0.1)
    with pytest.raises(ValueError, match="`steps`"):
        PGD(model, steps=-1)
    with pytest.raises(ValueError, match="`norm`"):
        PGD(model, norm="l1")
    with pytest.raises(TypeError, match="`model`"):
        PGD("not a model")
    with pytest.raises(ValueError, match="`images`"):
        PGD(model)(x * 2, y)
    with pytest.raises(ValueError, match="`images`"):
        PGD(model)(x[:0], y[:0])
    with pytest.raises(ValueError, match="`labels`"):
        PGD(model)(x, y[:2])
    with pytest.raises(TypeError, match="`labels`"):
        PGD(model)(x, y.float())


def test_ssim_attack_fools_the_natural_patch_classifier_inside_the_ssim_ball():
    from miga_fast import data, models, ops
    from miga_fast.attacks import SSIMAttack
    from miga_fast.metrics import predict

    x, y = data.load_natural_patches("test", 32)
    x, y = x[::7][:48], y[::7][:48]
    model = models.load("resnet_natural")
    correct = predict(model, x) == y
    adv = SSIMAttack(model, tau=0.95, steps=10)(x, y)
    assert (ops.ssim(x.double(), adv.double()) >= 0.95 - 1e-6).all()  # float32 SSIM itself is off by ~1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    fooled = (predict(model, adv) != y)[correct].float().mean()
    assert fooled > 0.5, f"fooling rate {fooled:.2f}"


def test_ssim_attack_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="`tau`"):
        from miga_fast.attacks import SSIMAttack

        SSIMAttack(model, tau=1.5)
    with pytest.raises(ValueError, match="`solver`"):
        SSIMAttack(model, solver="cvxpy")


def test_ssim_attack_convex_solver_keeps_every_window_in_its_ball():
    from miga_fast import data, models
    from miga_fast.attacks import SSIMAttack
    from miga_fast.metrics import predict
    from miga_fast.reference.ssim import structural_ssim_windows

    x, y = data.load_natural_patches("test", 32)
    x, y = x[::7][:48], y[::7][:48]
    model = models.load("resnet_natural")
    correct = predict(model, x) == y
    adv = SSIMAttack(model, tau=0.9, steps=10, solver="convex")(x, y)
    assert adv.min() >= 0 and adv.max() <= 1
    assert structural_ssim_windows(x.double(), (adv - x).double()).min() >= 0.9 - 1e-4
    fooled = (predict(model, adv) != y)[correct].float().mean()
    assert fooled > 0.25, f"fooling rate {fooled:.2f}"


def test_ssim_attack_l2_step_puts_the_budget_where_the_gradient_is():
    """step="sign" then the radial rescaling leaves |delta| nearly uniform over an image; the
    normalised-gradient step concentrates it (a far larger spread of |delta| per image)
    and fools at least as often inside the same ball."""
    from miga_fast import data, models
    from miga_fast.attacks import SSIMAttack
    from miga_fast.metrics import predict

    x, y = data.load_natural_patches("test", 32)
    x, y = x[::13][:24], y[::13][:24]
    model = models.load("resnet_natural")
    correct = predict(model, x) == y
    spread, fooled = {}, {}
    for step in ("sign", "l2"):
        adv = SSIMAttack(model, tau=0.95, steps=10, step=step)(x, y)
        mag = (adv - x).abs().flatten(1)
        spread[step] = (mag.std(1) / mag.mean(1).clamp_min(1e-12)).median().item()
        fooled[step] = (predict(model, adv) != y)[correct].float().mean().item()
    assert spread["l2"] > 2 * spread["sign"], spread
    assert fooled["l2"] >= fooled["sign"] - 0.1, fooled


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_mifgsm_equals_torchattacks(backend, rng):
    from miga_fast.attacks import MIFGSM

    model = _model()
    x, y = _data(rng)
    theirs = torchattacks.MIFGSM(model, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)(x, y)
    with miga_fast.set_backend(backend):
        ours = MIFGSM(model, eps=8 / 255, alpha=2 / 255, steps=10, decay=1.0)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    targeted = MIFGSM(model, steps=5, targeted=True)(x, (y + 1) % 10)
    assert (targeted - x).abs().max() <= 8 / 255 + 1e-6 and "MIFGSM(eps=0.03137" in repr(MIFGSM(model))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_per_image_eps_equals_attacking_each_image_alone(norm, rng):
    """eps (and alpha) as [B] tensors: each image in its own ball, with the result of
    attacking it alone with its own numbers; a zero radius leaves its image untouched."""
    from miga_fast.attacks import MIFGSM

    model = _model()
    x, y = _data(rng, batch=4)
    eps = torch.tensor([0.0, 2.0, 8.0, 16.0]) / 255 * (30 if norm == "l2" else 1)
    alpha = eps / 4
    makers = [lambda e, a: PGD(model, e, a, steps=4, norm=norm, random_start=False)]
    if norm == "linf":
        makers.append(lambda e, a: MIFGSM(model, e, a, steps=4))
    for make in makers:
        adv = make(eps, alpha)(x, y)
        dist = (adv - x).flatten(1).norm(p=float("inf") if norm == "linf" else 2, dim=1)
        assert (dist <= eps + 1e-6).all() and dist[0] == 0 and dist[-1] > 0
        for i in range(4):
            alone = make(float(eps[i]), float(alpha[i]))(x[i : i + 1], y[i : i + 1])
            torch.testing.assert_close(adv[i : i + 1], alone, rtol=0, atol=1e-6)
    assert "per image" in repr(PGD(model, eps, alpha))
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        PGD(model, eps=torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="`eps` must be a number or a 1-D"):
        PGD(model, eps=torch.ones(2, 2))
    with pytest.raises(ValueError, match="`eps`"):  # a batch of another size
        PGD(model, eps=torch.ones(3) / 255)(x, y)


def test_denoiser_attacks_take_per_image_eps(rng):
    from miga_fast.attacks import MIGA
    from miga_fast.models.classifiers import SmallCNN
    from miga_fast.models.denoisers import DnCNN

    torch.manual_seed(0)
    D, F = DnCNN(1, 3, 8).eval(), SmallCNN(1, 10, 8).eval()
    x = torch.rand(3, 1, 16, 16, generator=rng)
    y = torch.randint(0, 10, (3,), generator=rng)
    eps = torch.tensor([0.0, 4 / 255, 16 / 255])
    res = MIGA(D, F, eps=eps, steps=3, compile=False)(x, y)
    assert (res.linf <= eps + 1e-6).all() and res.linf[0] == 0 and res.linf[2] > 4 / 255
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\] for norm='linf'"):
        MIGA(D, F, eps=torch.tensor([0.1, 1.5]))
