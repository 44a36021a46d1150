"""miga_fast.integrations.torchattacks against torchattacks itself: the same adversarial
images for the same seed, bit for bit for the l-inf attacks (random starts, targeted
modes, normalisation, a random model for EOT), its Attack interface (modes, save,
device, training mode), patch/unpatch, per-image eps, bad input, and a real classifier
on real photos against a random-sign control."""

import pytest
import torch

from miga_fast import data
from miga_fast.models import registry

torchattacks = pytest.importorskip("torchattacks")
from miga_fast.integrations import torchattacks as fast  # noqa: E402

from test_attacks_pgd import _data, _model  # noqa: E402  (the same small classifier and data)

NAMES = ["PGD", "PGDL2", "MIFGSM", "EOTPGD"]  # APGD: its own tests below


def _both(name, model, x, y, seed=0, setup=None, **kw):
    out = []
    for module in (torchattacks, fast):
        atk = getattr(module, name)(model, **kw)
        if setup is not None:
            setup(atk)
        torch.manual_seed(seed)
        out.append(atk(x, y))
    return out


BITWISE = ("PGD", "MIFGSM", "EOTPGD")  # torchattacks' images bit for bit


def _assert_agree(theirs, ours, name):
    if name in BITWISE:
        assert torch.equal(ours, theirs), f"{name}: {(ours != theirs).sum()} pixels differ"
        return
    # l2: the norms are summed in another order, so the images agree to rounding
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert (ours == theirs).float().mean() > 0.5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_images_as_torchattacks_for_the_same_seed(name, dtype, rng):
    model = _model().to(dtype)
    x, y = _data(rng)
    x = x.to(dtype)
    theirs, ours = _both(name, model, x, y, steps=4)
    _assert_agree(theirs, ours, name)
    assert not torch.equal(ours, x) and ours.dtype == dtype


def test_mifgsm_zero_gradient_takes_no_step_as_in_torchattacks(rng):
    """An all-zero gradient (here a model blind to its input) makes the momentum 0 / 0 =
    NaN in both; its sign is 0 (torch.sign's and the kernels'), so no image moves."""

    class Blind(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10] * 0.0

    x, y = _data(rng, batch=3)
    theirs, ours = _both("MIFGSM", Blind(), x, y, steps=2)
    assert torch.equal(ours, x) and torch.equal(theirs, x)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "mode",
    [
        "set_mode_targeted_random",
        "set_mode_targeted_least_likely",
        "by_function",
        "normalization",
    ],
)
def test_modes_and_normalisation_as_torchattacks(name, mode, rng):
    model = _model(seed=1)
    x, y = _data(rng)

    def setup(atk):
        if mode == "by_function":
            atk.set_mode_targeted_by_function(lambda images, labels: (labels + 1) % 10, quiet=True)
        elif mode == "normalization":
            atk.set_normalization_used(mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3])
        else:
            getattr(atk, mode)(quiet=True)

    theirs, ours = _both(name, model, x, y, seed=3, setup=setup, steps=3)
    _assert_agree(theirs, ours, name)


def test_eot_over_a_random_model_consumes_the_same_random_numbers(rng):
    """EOTPGD averages gradients of a stochastic model (dropout in training mode): both
    draw the dropout masks from the global generator in the same order."""
    model = _model(seed=2, dropout=0.3)
    x, y = _data(rng)

    def setup(atk):
        atk.set_model_training_mode(model_training=True)

    theirs, ours = _both("EOTPGD", model, x, y, seed=5, setup=setup, steps=3, eot_iter=3)
    _assert_agree(theirs, ours, "EOTPGD")


def test_the_attack_interface_is_torchattacks(rng, tmp_path):
    model = _model()
    x, y = _data(rng, batch=12)
    atk = fast.PGD(model, eps=4 / 255, steps=2)
    assert isinstance(atk, torchattacks.PGD) and isinstance(atk, torchattacks.attack.Attack)
    assert atk.supported_mode == ["default", "targeted"] and atk.attack == "PGD"
    assert "eps=" in repr(atk) and atk.get_mode() == "default"
    atk.set_device("cpu")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    for module, path in ((fast, tmp_path / "ours.pt"), (torchattacks, tmp_path / "theirs.pt")):
        a = module.PGD(model, eps=4 / 255, steps=2)
        torch.manual_seed(0)
        a.save(loader, save_path=str(path), verbose=False)
    saved_ours, saved_theirs = torch.load(tmp_path / "ours.pt"), torch.load(tmp_path / "theirs.pt")
    assert torch.equal(saved_ours["adv_inputs"], saved_theirs["adv_inputs"])
    assert torch.equal(saved_ours["labels"], saved_theirs["labels"])


def test_patch_and_unpatch():
    original = torchattacks.PGD
    fast.patch()
    fast.patch()  # idempotent
    try:
        assert torchattacks.PGD is fast.PGD and torchattacks.MIFGSM is fast.MIFGSM
    finally:
        fast.unpatch()
    assert torchattacks.PGD is original and torchattacks.EOTPGD is not fast.EOTPGD


@pytest.mark.parametrize("name", NAMES)
def test_per_image_eps(name, rng):
    """eps as a [N] tensor: each image in its own ball, and the same images as attacking
    each one alone with its radius (no random start: nothing else differs)."""
    model = _model()
    x, y = _data(rng, batch=4)
    eps = torch.tensor([0.0, 2 / 255, 8 / 255, 16 / 255]) * (50 if name == "PGDL2" else 1)
    kw = {"steps": 3} | ({} if name == "MIFGSM" else {"random_start": False})
    adv = getattr(fast, name)(model, eps=eps, **kw)(x, y)
    norm = (adv - x).flatten(1).norm(p=2 if name == "PGDL2" else float("inf"), dim=1)
    assert (norm <= eps + 1e-6).all() and norm[0] == 0 and norm[-1] > 0
    for i in range(4):
        alone = getattr(fast, name)(model, eps=float(eps[i]), **kw)(x[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(adv[i : i + 1], alone, rtol=0, atol=1e-6)
    torch.manual_seed(1)  # with a random start, each image's start lies in its own ball
    if name != "MIFGSM":
        adv = getattr(fast, name)(model, eps=eps, steps=0)(x, y)
        norm = (adv - x).flatten(1).norm(p=2 if name == "PGDL2" else float("inf"), dim=1)
        assert (norm <= eps + 1e-6).all() and norm[0] == 0


def test_bad_input_is_a_clear_error(rng):
    model = _model()
    x, y = _data(rng, batch=2)
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        fast.PGD(model, eps=-0.1)(x, y)
    with pytest.raises(ValueError, match="`images`"):
        fast.PGD(model)(x * 2, y)
    with pytest.raises(ValueError, match="non-empty"):
        fast.PGD(model)(x[:0], y[:0])
    with pytest.raises(ValueError, match="`eps` must be a float or a tensor of shape"):
        fast.PGD(model, eps=torch.ones(3) / 255)(x, y)


def test_real_classifier_on_real_photos_against_a_random_control():
    """The natural-patch classifier on held-out photo patches: each fused attack lowers its
    accuracy as torchattacks' does, far below random signs of the same l-inf budget."""
    model = registry.load("resnet_natural")
    x, y = data.load_natural_patches("test", 32)
    x, y = x[:48], y[:48]

    def acc(images):
        with torch.no_grad():
            return (model(images).argmax(1) == y).float().mean().item()

    gen = torch.Generator().manual_seed(0)
    control = (x + 8 / 255 * torch.randint(0, 2, x.shape, generator=gen).mul(2).sub(1)).clamp(0, 1)
    assert acc(x) > 0.9 and acc(control) > 0.8
    for name in NAMES:
        theirs, ours = _both(name, model, x, y)
        assert abs(acc(ours) - acc(theirs)) <= 1 / 48 and acc(ours) < 0.3
        if name in BITWISE:  # 10 steps of a ResNet: still bit for bit
            assert torch.equal(ours, theirs), name
        else:  # rounding drifts at most a little
            assert (ours - theirs).abs().max() < 2e-2


@pytest.mark.parametrize("norm,loss", [("Linf", "ce"), ("Linf", "dlr"), ("L2", "ce")])
def test_apgd_equals_torchattacks(norm, loss, rng):
    """APGD with its checkpoints, step-size halving and momentum: the same images as
    torchattacks' for its seed (restarts included), and the same robust accuracy."""
    model = _model(seed=3)
    x, y = _data(rng, batch=12)
    eps = 8 / 255 if norm == "Linf" else 0.5
    kw = dict(norm=norm, eps=eps, steps=12, n_restarts=2, loss=loss, seed=4)
    theirs, ours = _both("APGD", model, x, y, **kw)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert (ours == theirs).float().mean() > (0.5 if norm == "L2" else 0.9)
    with torch.no_grad():
        assert torch.equal(model(ours).argmax(1), model(theirs).argmax(1))
    dist = (ours - x).flatten(1).norm(p=float("inf") if norm == "Linf" else 2, dim=1)
    assert (dist <= eps + 1e-5).all()


def test_apgd_bad_input(rng):
    model = _model()
    x, y = _data(rng, batch=2)
    with pytest.raises(ValueError, match="`eps` must be >= 0"):
        fast.APGD(model, eps=-1.0)(x, y)
    with pytest.raises(ValueError, match="`images`"):
        fast.APGD(model)(x + 1, y)
    with pytest.raises(ValueError, match="must be a number"):
        fast.APGD(model, eps=torch.full((2,), 0.03))(x, y)
