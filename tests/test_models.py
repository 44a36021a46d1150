"""The shipped checkpoints: they load, beat stated floors on held-out data, and bad
checkpoints or names give clear errors; users' own files load through the same API."""

import shutil
import warnings

import pytest
import torch

from miga_fast import data, models
from miga_fast.app import train
from miga_fast.metrics import accuracy, psnr
from miga_fast.models import registry

SHIPPED = models.available()


def test_every_zoo_model_is_shipped_with_its_quality():
    assert set(SHIPPED) == set(train.ZOO)
    for info in SHIPPED.values():
        assert info.description and info.quality and info.sha256 and info.bytes > 0
    assert sum(i.bytes for i in SHIPPED.values()) < 20 * 2**20


def _held_out(name, n=128):
    x, y = train.load_split(SHIPPED[name].data, "test")
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    return x[idx], y[idx]


@pytest.mark.parametrize("name", [n for n, i in SHIPPED.items() if i.kind == "denoiser"])
def test_denoisers_beat_the_noisy_input(name):
    model = models.load(name)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x, _ = _held_out(name)
    for sigma, floor_db in ((15, 4.0), (25, 6.0), (50, 7.0)):
        xn = data.add_gaussian_noise(x, sigma, generator=sigma)
        with torch.no_grad():
            gain = psnr(model(xn).clamp(0, 1), x).mean() - psnr(xn, x).mean()
        assert gain > floor_db, f"{name} at sigma {sigma}: only {gain:.2f} dB"


@pytest.mark.parametrize("name", [n for n, i in SHIPPED.items() if i.kind == "classifier"])
def test_classifiers_are_far_above_chance_clean_and_behind_their_denoiser(name):
    model = models.load(name)
    x, y = _held_out(name, 256)
    floor = 0.95 if SHIPPED[name].data == "digits" else 0.8
    assert accuracy(model, x, y) > floor
    den = models.load(SHIPPED[name].quality["denoiser"])
    with torch.no_grad():
        xd = den(data.add_gaussian_noise(x, 25, generator=0)).clamp(0, 1)
    assert accuracy(model, xd, y) > floor - 0.1


def test_diffusion_model_predicts_the_noise():
    model = models.load("ddpm_digits")
    x, _ = _held_out("ddpm_digits", 64)
    q = train.evaluate_diffusion(model, x)
    assert q["test_eps_mse"] < 0.25  # predicting zero scores 1.0
    out = model(torch.randn(2, 1, 32, 32), torch.tensor([10, 900]))
    assert out.sample.shape == (2, 1, 32, 32)  # diffusers' UNet2DModel convention


def test_unknown_name_and_corrupt_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'no_such_model'"):
        models.load("no_such_model")
    shutil.copytree(registry.CHECKPOINT_DIR, tmp_path / "ck")
    path = tmp_path / "ck" / SHIPPED["cnn_digits"].file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        models.load("cnn_digits", directory=tmp_path / "ck")
    path.unlink()
    with pytest.raises(FileNotFoundError):
        models.load("cnn_digits", directory=tmp_path / "ck")


def test_users_state_dict_and_torchscript_files(tmp_path):
    m = models.DnCNN(channels=1, depth=3, width=8)
    torch.save(m.state_dict(), tmp_path / "mine.pt")
    loaded = models.load(str(tmp_path / "mine.pt"), arch="dncnn", channels=1, depth=3, width=8)
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(loaded(x), m(x))
    with pytest.raises(ValueError, match="does not fit"):
        models.load(str(tmp_path / "mine.pt"), arch="dncnn", channels=1, depth=4, width=8)
    with pytest.raises(ValueError, match="refusing to load .* without arch="):
        models.load(str(tmp_path / "mine.pt"))
    with pytest.raises(ValueError, match="not a TorchScript file"):
        models.load(str(tmp_path / "mine.pt"), trust=True)
    with warnings.catch_warnings():  # TorchScript is deprecated from torch 2.14, still supported
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(m).save(str(tmp_path / "mine_ts.pt"))
        ts = models.load(str(tmp_path / "mine_ts.pt"), trust=True)
    assert torch.allclose(ts(x), m(x))
    torch.export.save(torch.export.export(m, (x,)), str(tmp_path / "mine.pt2"))
    exported = models.load(str(tmp_path / "mine.pt2"), trust=True)
    assert torch.allclose(exported(x), m(x))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        models.load(str(tmp_path / "junk.pt"), arch="dncnn")
    with pytest.raises(ValueError, match="unknown architecture"):
        models.build("transformer")


def test_cli_models_table():
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("miga-fast")
    out = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in SHIPPED:
        assert name in out.stdout
    assert "PSNR noisy -> denoised" in out.stdout and "accuracy clean" in out.stdout
