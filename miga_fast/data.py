"""Real images that ship inside packages, users' image folders, and Gaussian noise.

Nothing here touches the network: scikit-learn's handwritten digits, scikit-image's
bundled photographs and its `lfw_subset.npy` are files inside those packages. Every
loader returns `(x, y)`: `x` float32 `[N, C, H, W]` in `[0, 1]`, `y` int64 labels, with a
fixed split: "train" (what the shipped models were trained on) and the held-out images
divided into "val" (where hyper-parameters are chosen) and "test" (where results are
reported). val and test never share an image, and neither was trained on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ._validation import check_int

SPLITS = ("train", "val", "test")
FACE_CLASSES = ("non-face", "face")
# scikit-image's colour photographs; a natural patch's label is the photo it was cut from.
NATURAL_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "retina.jpg",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
)
NATURAL_CLASSES = tuple(p.split(".")[0] for p in NATURAL_PHOTOS)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}")


def _check_size(size, name="size", choices=None) -> int:
    check_int(size, name, 1)
    if choices is not None and size not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {size}")
    return size


def _stratified_split(labels: np.ndarray, held_out_fraction: float, seed: int, split: str) -> np.ndarray:
    """Indices of `split`: per class, a seeded permutation; its first `held_out_fraction`
    is held out, the first half of that (rounded up) for test, the rest for val."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(len(idx) * held_out_fraction))
        n_test = (n_held + 1) // 2
        parts = {"test": idx[:n_test], "val": idx[n_test:n_held], "train": idx[n_held:]}
        picked.append(parts[split])
    return np.sort(np.concatenate(picked))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    antialias = size < x.shape[-1]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias).clamp_(0, 1)


def load_digits(split: str, size: int = 32, seed: int = 0):
    """scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), resized to
    `size`, one channel; a stratified split fixed by `seed`: 80% train, 10% val, 10% test."""
    _check_split(split)
    _check_size(size)
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    idx = _stratified_split(d.target, 0.2, seed, split)
    x = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0).unsqueeze(1)
    return _resize(x, size).contiguous(), torch.from_numpy(d.target[idx].astype(np.int64))


def _skimage_data_dir() -> Path:
    import skimage

    return Path(os.path.dirname(skimage.__file__)) / "data"


def _read_photo(name: str, target_area: int = 512 * 512) -> torch.Tensor:
    """A bundled photo as [3, H, W] float32, shrunk (antialiased) to about `target_area`
    pixels so that every photo gives a similar number of patches."""
    from skimage import io

    a = io.imread(_skimage_data_dir() / name)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    t = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float().div_(255)
    h, w = t.shape[1:]
    scale = (target_area / (h * w)) ** 0.5
    if scale < 1:
        size = (int(round(h * scale)), int(round(w * scale)))
        t = F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return t.clamp_(0, 1)


def _block_split(bi: int, bj: int) -> str:
    """One block in four, in diagonal stripes over the photo, is held out: those in odd
    block rows for val, the others for test."""
    if (bi + bj) % 4 != 0:
        return "train"
    return "val" if bi % 2 else "test"


def load_natural_patches(split: str, size: int = 32, channels: int = 3):
    """Patches of scikit-image's colour photographs, labelled by the photo they come from
    (classes `NATURAL_CLASSES`).

    Each photo is tiled into blocks of 2*size pixels; one block in four (diagonal stripes)
    is held out (half of those blocks val, half test), the rest the training region, and
    every patch lies inside one block, so no held-out pixel was ever trained on and val and
    test share none. Training patches overlap (stride size/2), held-out patches do not
    (stride size). channels=1 gives luminance.
    """
    _check_split(split)
    _check_size(size, choices=(32, 64))
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
    xs, ys = [], []
    for label, name in enumerate(NATURAL_PHOTOS):
        photo = _read_photo(name)
        boxes = natural_patch_boxes(photo.shape[1], photo.shape[2], split, size)
        xs.append(torch.stack([photo[:, top : top + size, left : left + size] for top, left in boxes]))
        ys.append(torch.full((len(boxes),), label, dtype=torch.int64))
    x = torch.cat(xs)
    if channels == 1:
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp_(0, 1)
    return x.contiguous(), torch.cat(ys)


def natural_patch_boxes(height: int, width: int, split: str, size: int = 32) -> list[tuple[int, int]]:
    """(top, left) of every `split` patch of a photo of that size: blocks of 2*size pixels,
    one in four held out (val or test); training patches at stride size/2, held-out ones at
    stride size. Every patch lies inside one block, so the splits' pixels never meet."""
    _check_split(split)
    block = 2 * size
    stride = size // 2 if split == "train" else size
    boxes = []
    for bi in range(height // block):
        for bj in range(width // block):
            if _block_split(bi, bj) != split:
                continue
            for dy in range(0, block - size + 1, stride):
                for dx in range(0, block - size + 1, stride):
                    boxes.append((bi * block + dy, bj * block + dx))
    return boxes


def load_faces(split: str, seed: int = 0):
    """scikit-image's `lfw_subset.npy`: 100 faces and 100 non-faces, 25x25 grey; label 1 =
    face (classes `FACE_CLASSES`); a stratified split fixed by `seed`: 75% train, 12.5% val,
    12.5% test."""
    _check_split(split)
    a = np.load(_skimage_data_dir() / "lfw_subset.npy")
    labels = np.r_[np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)]
    idx = _stratified_split(labels, 0.25, seed, split)
    x = torch.from_numpy(a[idx].astype(np.float32)).unsqueeze(1).clamp_(0, 1)
    return x.contiguous(), torch.from_numpy(labels[idx])


MAX_IMAGE_PIXELS = 1 << 25  # ~33.5 M pixels (5792 x 5792): larger files are refused before decoding


class ImageFolderDataset(torch.utils.data.Dataset):
    """A user's folder of PNG/JPEG images: `root/<class>/<image>` (images directly in
    `root` form one class named after it).

    Labels (`class_map`):
      - None: the index of the sub-folder's name among the sorted names (`classes`);
      - "index": every folder's name is the class index itself ("0", "7", ...), as a
        classifier numbers its classes;
      - a list of class names (a classifier's names: the label is the name's position) or
        a dict {folder name: class index}.
      A folder whose name does not map is an error that lists it; nothing is guessed.
    Items are `(image [C, H, W] float32 in [0, 1], label)`; `size` resizes to size x size,
    `channels` is 3 (RGB) or 1 (luminance). `limit`: keep only the first `limit` images
    (in sorted order), so nothing past them is ever decoded. Symbolic links that lead out
    of `root` are skipped with a warning unless `follow_symlinks=True`. Files of more than
    `max_pixels` pixels are refused from their header, before any decoding (decompression
    bombs). `tensors()` stacks the whole folder.
    """

    def __init__(
        self,
        root,
        size: int | None = None,
        channels: int = 3,
        class_map=None,
        limit: int | None = None,
        follow_symlinks: bool = False,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ):
        import warnings

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        if size is not None:
            _check_size(size)
        if limit is not None:
            _check_size(limit, "limit")
        _check_size(max_pixels, "max_pixels")
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3, got {channels!r}")
        self.root, self.size, self.channels, self.max_pixels = root, size, channels, max_pixels
        real_root = root.resolve()
        skipped = []

        def inside(p: Path) -> bool:
            if follow_symlinks or p.resolve().is_relative_to(real_root):
                return True
            skipped.append(p)
            return False

        def images(folder: Path):
            return sorted(
                p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and inside(p) and p.is_file()
            )

        groups = [(p.name, images(p)) for p in sorted(root.iterdir()) if p.is_dir() and inside(p)]
        groups = [(name, files) for name, files in groups if files]
        direct = images(root)
        if direct:
            groups.append((root.name, direct))
        labels = self._labels([name for name, _ in groups], class_map)
        self.classes = [name for name, _ in groups]
        self.samples = [(f, label) for (_, files), label in zip(groups, labels) for f in files]
        if skipped:
            warnings.warn(
                f"skipped {len(skipped)} symbolic link(s) leading out of {root} (e.g. {skipped[0]}); "
                "pass follow_symlinks=True to read them",
                stacklevel=2,
            )
        if not self.samples:
            raise ValueError(f"no PNG/JPEG images in {root} or its sub-folders")
        if limit is not None:
            self.samples = self.samples[:limit]

    @staticmethod
    def _labels(names: list[str], class_map) -> list[int]:
        if class_map is None:
            return list(range(len(names)))
        if class_map == "index":
            bad = [n for n in names if not (n.isdigit() and n.isascii())]
            if bad:
                raise ValueError(
                    f"folder names must be class indices (0, 1, ...) with class_map='index'; these are not: {bad[:5]}"
                )
            return [int(n) for n in names]
        if isinstance(class_map, (list, tuple)):
            class_map = {str(name): i for i, name in enumerate(class_map)}
        if not isinstance(class_map, dict):
            raise TypeError("`class_map` must be None, 'index', a list of class names or a dict {folder: index}")
        bad = [n for n in names if n not in class_map]
        if bad:
            raise ValueError(f"folders {bad[:5]} are not in the class map (known: {sorted(class_map)[:10]})")
        out = [class_map[n] for n in names]
        for name, v in zip(names, out):
            check_int(v, f"class_map[{name!r}]", 0)
        return out

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import warnings

        from PIL import Image

        path, label = self.samples[i]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    w, h = im.size
                    if w * h > self.max_pixels:
                        raise ValueError(
                            f"image {path} has {w} x {h} pixels, more than max_pixels = "
                            f"{self.max_pixels}: refused before decoding"
                        )
                    im = im.convert("RGB" if self.channels == 3 else "L")
                    if self.size is not None:
                        im = im.resize((self.size, self.size), Image.BICUBIC)
                    a = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        t = torch.from_numpy(a.copy())
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        return t.contiguous(), label

    def tensors(self):
        """The whole folder as (x [N, C, H, W], y [N]); needs `size` or images of one size."""
        items = [self[i] for i in range(len(self))]
        shapes = {tuple(t.shape) for t, _ in items}
        if len(shapes) > 1:
            raise ValueError(f"images in {self.root} have different sizes {sorted(shapes)[:3]}...: pass `size`")
        return torch.stack([t for t, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def add_gaussian_noise(
    x: torch.Tensor, sigma, generator: torch.Generator | int | None = None, clip: bool = True
) -> torch.Tensor:
    """x + N(0, (sigma/255)^2): sigma on the 0-255 scale, as in the denoising literature
    (a float, or a [B] tensor of per-sample levels). clip=True keeps the noisy image in
    [0, 1] (an image as stored); clip=False returns the raw sum."""
    if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
        raise TypeError("`x` must be a floating tensor")
    if isinstance(sigma, torch.Tensor):
        if sigma.dim() != 1 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"`sigma` must be a float or a [{x.shape[0]}] tensor, got shape {tuple(sigma.shape)}")
        if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()):
            raise ValueError("`sigma` must be finite and >= 0")
        s = sigma.to(x).reshape(-1, *([1] * (x.dim() - 1))) / 255.0
    else:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not np.isfinite(sigma) or sigma < 0:
            raise ValueError(f"`sigma` must be a finite number >= 0 (0-255 scale), got {sigma!r}")
        s = float(sigma) / 255.0
    if isinstance(generator, int) and not isinstance(generator, bool):
        generator = torch.Generator(device=x.device).manual_seed(generator)
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = x + s * noise
    return y.clamp(0, 1) if clip else y
