"""The real data shipped inside packages, users' image folders, and the noise model."""

import numpy as np
import pytest
import torch

from miga_fast import data


def _check(x, y, channels, size, classes):
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.dim() == 4 and x.shape[1:] == (channels, size, size) and len(y) == len(x)
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.05
    assert set(y.tolist()) == set(range(classes))


def test_digits_shapes_ranges_and_a_fixed_disjoint_split():
    xtr, ytr = data.load_digits("train")
    xte, yte = data.load_digits("test")
    _check(xtr, ytr, 1, 32, 10)
    _check(xte, yte, 1, 32, 10)
    assert len(xtr) + len(xte) == 1797 and abs(len(xte) / 1797 - 0.2) < 0.01
    again, _ = data.load_digits("test")
    assert torch.equal(again, xte)
    # no test image is also a training image
    a = xtr.flatten(1).numpy()
    b = xte.flatten(1).numpy()
    assert not (np.abs(a[None, :50] - b[:, None, :]).sum(-1) == 0).any()
    x8, _ = data.load_digits("train", size=8)
    assert x8.shape[-1] == 8


@pytest.mark.parametrize("size", [32, 64])
def test_natural_patches(size):
    x, y = data.load_natural_patches("train", size)
    _check(x, y, 3, size, len(data.NATURAL_CLASSES))
    xt, yt = data.load_natural_patches("test", size)
    _check(xt, yt, 3, size, len(data.NATURAL_CLASSES))
    assert len(xt) < len(x)
    grey, _ = data.load_natural_patches("test", size, channels=1)
    assert grey.shape[1] == 1


@pytest.mark.parametrize("size", [32, 64])
def test_natural_train_and_test_regions_never_overlap(size):
    h, w = 600, 700
    train = data.natural_patch_boxes(h, w, "train", size)
    test = data.natural_patch_boxes(h, w, "test", size)
    assert train and test
    mask = np.zeros((h, w), dtype=np.int8)
    for top, left in train:
        mask[top : top + size, left : left + size] |= 1
    for top, left in test:
        assert top + size <= h and left + size <= w
        assert not (mask[top : top + size, left : left + size] & 1).any()


def test_faces():
    x, y = data.load_faces("train")
    assert x.shape[1:] == (1, 25, 25) and y.bincount().tolist() == [75, 75]
    xt, yt = data.load_faces("test")
    assert len(xt) == 50 and yt.bincount().tolist() == [25, 25]


def test_bad_loader_arguments():
    with pytest.raises(ValueError, match="`split`"):
        data.load_digits("validation")
    with pytest.raises(ValueError, match="`size`"):
        data.load_natural_patches("train", size=48)
    with pytest.raises(ValueError, match="`channels`"):
        data.load_natural_patches("train", channels=2)


def _write_png(path, value, size=(10, 12), mode="RGB"):
    from PIL import Image

    a = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    Image.fromarray(a, "RGB").convert(mode).save(path)


def test_image_folder(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    _write_png(tmp_path / "cats" / "a.png", 10)
    _write_png(tmp_path / "cats" / "b.PNG", 20, mode="L")
    _write_png(tmp_path / "dogs" / "c.jpg", 250)
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    ds = data.ImageFolderDataset(tmp_path)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 3
    img, label = ds[2]
    assert img.shape == (3, 12, 10) and label == 1 and abs(float(img.mean()) - 250 / 255) < 0.02
    x, y = data.ImageFolderDataset(tmp_path, size=8, channels=1).tensors()
    assert x.shape == (3, 1, 8, 8) and y.tolist() == [0, 0, 1]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="no PNG/JPEG images"):
        data.ImageFolderDataset(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        data.ImageFolderDataset(tmp_path)[0]


def test_gaussian_noise_scale_seed_and_checks():
    x = torch.full((4, 1, 64, 64), 0.5)
    n = data.add_gaussian_noise(x, 25, generator=0, clip=False) - x
    assert abs(float(n.std()) - 25 / 255) < 0.003
    assert torch.equal(data.add_gaussian_noise(x, 25, generator=0), data.add_gaussian_noise(x, 25, generator=0))
    clipped = data.add_gaussian_noise(torch.zeros(2, 1, 8, 8), 50, generator=1)
    assert clipped.min() >= 0
    per = data.add_gaussian_noise(x, torch.tensor([0.0, 0.0, 50.0, 50.0]), generator=0, clip=False)
    assert torch.equal(per[:2], x[:2]) and (per[2:] != x[2:]).any()
    with pytest.raises(ValueError, match="`sigma`"):
        data.add_gaussian_noise(x, -1)
    with pytest.raises(ValueError, match="`sigma`"):
        data.add_gaussian_noise(x, torch.ones(3))
