"""Grad-CAM and the agreement between SSIM dissimilarity maps and CAMs."""

import pytest
import torch
import torch.nn as nn

from miga_fast import data, explain, models


class _Probe(nn.Module):
    """features = x (a 1x1 identity conv); logit 0 = mean of the features: the Grad-CAM of
    class 0 is then the min-max normalised image itself."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.features.weight)

    def forward(self, x):
        f = self.features(x)
        m = f.mean((1, 2, 3))
        return torch.stack([m, -m], 1)


def test_grad_cam_on_a_model_with_a_known_answer(rng):
    x = torch.rand((3, 1, 12, 10), generator=rng)
    cam = explain.grad_cam(_Probe(), x, "features", target=torch.zeros(3, dtype=torch.long))
    lo = x.flatten(1).min(1).values.reshape(-1, 1, 1)
    hi = x.flatten(1).max(1).values.reshape(-1, 1, 1)
    torch.testing.assert_close(cam, (x[:, 0] - lo) / (hi - lo))


def test_grad_cam_plus_plus_known_answers(rng):
    """With the probe every location's gradient is the same positive number, so Grad-CAM++'s
    weights are uniform and its map is the normalised image, as Grad-CAM's. With a score
    whose gradient is negative on one channel, that channel drops out of Grad-CAM++ (ReLU
    of the gradient) while Grad-CAM subtracts it."""
    x = torch.rand((3, 1, 12, 10), generator=rng)
    target = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(
        explain.grad_cam_plus_plus(_Probe(), x, "features", target), explain.grad_cam(_Probe(), x, "features", target)
    )

    class TwoChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()

        def forward(self, x):  # channel 0 raises the score, channel 1 lowers it (by less)
            f = self.features(x)
            m = f[:, 0].mean((1, 2)) - 0.5 * f[:, 1].mean((1, 2))
            return torch.stack([m, -m], 1)

    x2 = torch.rand((2, 2, 8, 8), generator=rng)
    pp = explain.grad_cam_plus_plus(TwoChannels(), x2, "features", target[:2])
    c0 = x2[:, 0]
    lo, hi = c0.flatten(1).min(1).values.reshape(-1, 1, 1), c0.flatten(1).max(1).values.reshape(-1, 1, 1)
    torch.testing.assert_close(pp, (c0 - lo) / (hi - lo))
    assert not torch.allclose(explain.grad_cam(TwoChannels(), x2, "features", target[:2]), pp)


def test_flatness_is_high_on_flat_regions(rng):
    x = torch.full((1, 3, 24, 24), 0.5)
    x[..., :, 12:] = torch.rand((1, 3, 24, 12), generator=rng)
    f = explain.flatness(x)
    assert f.shape == (1, 24, 24) and f.min() >= 0 and f.max() <= 1
    assert f[0, :, :6].mean() > 0.9 and f[0, :, 16:].mean() < 0.5


def test_grad_cam_on_the_shipped_classifier():
    x, _ = data.load_natural_patches("test", 32)
    model = models.load("resnet_natural")
    for fn in (explain.grad_cam, explain.grad_cam_plus_plus):
        cam = fn(model, x[:8], "stages.2")
        assert cam.shape == (8, 32, 32) and cam.min() >= 0 and cam.max() <= 1
        assert (cam.flatten(1).max(1).values == 1).all()


def test_ssim_vs_cam_agrees_where_the_perturbation_is(rng):
    x = torch.rand((2, 3, 32, 32), generator=rng) * 0.5 + 0.25
    adv = x.clone()
    adv[:, :, 4:14, 4:14] += 0.2 * torch.randn((2, 3, 10, 10), generator=rng)
    adv = adv.clamp(0, 1)
    here = torch.zeros(2, 32, 32)
    here[:, 4:14, 4:14] = 1
    elsewhere = torch.zeros(2, 32, 32)
    elsewhere[:, 20:30, 20:30] = 1
    good = explain.ssim_vs_cam(x, adv, here, top=0.1)
    bad = explain.ssim_vs_cam(x, adv, elsewhere, top=0.1)
    assert (good["correlation"] > 0.5).all() and (good["iou"] > 0.4).all()
    assert (bad["correlation"] < 0).all() and (bad["iou"] < 0.05).all()
    assert good["dissimilarity"].shape == (2, 32, 32)


def test_bad_input(rng):
    x = torch.rand((2, 1, 12, 12), generator=rng)
    with pytest.raises(ValueError, match="`layer`"):
        explain.grad_cam(_Probe(), x, "no_such_layer")
    with pytest.raises(TypeError, match="`layer`"):
        explain.grad_cam(_Probe(), x, 3)
    with pytest.raises(ValueError, match="`top`"):
        explain.ssim_vs_cam(x, x, torch.zeros(2, 12, 12), top=0)
    with pytest.raises(ValueError, match="`cam`"):
        explain.ssim_vs_cam(x, x, torch.zeros(2, 10, 12))
