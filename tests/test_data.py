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
    xva, yva = data.load_digits("val")
    xte, yte = data.load_digits("test")
    for x, y in ((xtr, ytr), (xva, yva), (xte, yte)):
        _check(x, y, 1, 32, 10)
    assert len(xtr) + len(xva) + len(xte) == 1797 and abs(len(xte) / 1797 - 0.1) < 0.01
    assert abs(len(xva) - len(xte)) <= 10
    again, _ = data.load_digits("test")
    assert torch.equal(again, xte)
    # the three splits are disjoint (scikit-learn's digits hold no duplicate scans)
    flat = torch.cat([xtr, xva, xte]).flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat)
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
    owner = np.zeros((h, w), dtype=np.int8)  # which split a pixel's patches belong to
    for k, split in enumerate(("train", "val", "test"), start=1):
        boxes = data.natural_patch_boxes(h, w, split, size)
        assert boxes
        for top, left in boxes:
            assert top + size <= h and left + size <= w
            region = owner[top : top + size, left : left + size]
            assert ((region == 0) | (region == k)).all()  # no pixel is in two splits
            region[:] = k


def test_faces():
    x, y = data.load_faces("train")
    assert x.shape[1:] == (1, 25, 25) and y.bincount().tolist() == [75, 75]
    xt, yt = data.load_faces("test")
    xv, yv = data.load_faces("val")
    assert len(xt) + len(xv) == 50 and yt.bincount().tolist() == [13, 13] and yv.bincount().tolist() == [12, 12]


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
