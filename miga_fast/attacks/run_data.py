"""The data of a dataset run (DenoiserAttack.run; docs/scaling.md): its batches planned
once, then streamed one at a time to the process that attacks them.

The plan: the batches' sizes (a short last batch merged into the one before it when the
attack needs larger ones) and, on the rank that checks the run folder, the data's
fingerprint for config.json (the SHA-256 of every batch, in order), which is what makes
resuming safe. Then each rank loads only what it attacks:
- a pair of tensors (images, labels): slices, nothing copied;
- a map-style Dataset: a DataLoader over exactly the batches this rank still needs, with
  worker processes and, when the attack runs on a GPU, pinned memory;
- any other iterable (a DataLoader of the caller's, an IterableDataset): one pass, the
  other ranks' batches skipped.
Nothing holds the whole dataset: at most a few batches are in memory at once. The
fingerprint costs one extra loading pass, on one rank, with the same workers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator

import torch

from .._validation import check_int


def tensor_id(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and values."""
    h = hashlib.sha256()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _as_pair(item):
    """A loaded batch as (images, labels or None)."""
    if isinstance(item, (tuple, list)):
        return item[0], torch.as_tensor(item[1])
    return item, None


def _size(batch) -> int:
    return int(batch[0].shape[0])


def _cat(a, b):
    (xa, ya), (xb, yb) = a, b
    y = torch.cat([ya, yb]) if ya is not None and yb is not None else None
    return torch.cat([xa, xb]), y


def merged_tail(stream, min_batch: int) -> Iterator:
    """The batches of `stream`, a last batch smaller than `min_batch` joined to the one
    before it (the unknown task's bound needs two images: a dataset of 2k + 1 images at
    batch size 2 ends on 3). Holds at most three batches."""
    held = []
    for batch in stream:
        held.append(batch)
        if len(held) == 3:
            yield held.pop(0)
    if len(held) == 2 and min_batch > 1 and _size(held[1]) < min_batch:
        held = [_cat(*held)]
    yield from held


def _ranges(n: int, batch_size: int, min_batch: int) -> list[tuple[int, int]]:
    """[start, stop) of every batch of n items, with merged_tail's rule."""
    out = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if min_batch > 1 and len(out) > 1 and out[-1][1] - out[-1][0] < min_batch:
        out[-2:] = [(out[-2][0], out[-1][1])]
    return out


def _is_map_dataset(data) -> bool:
    return (
        isinstance(data, torch.utils.data.Dataset)
        and not isinstance(data, torch.utils.data.IterableDataset)
        and hasattr(data, "__len__")
    )


def _readable(exc: Exception) -> Exception:
    """A loading error as the caller should see it: a worker's error carries the worker's
    whole traceback in its message (its last line is the error), and images of different
    sizes in one batch fail in collation with messages that do not say what to do."""
    text = str(exc)
    if "in DataLoader worker process" in text:
        last = text.strip().splitlines()[-1]
        prefix = f"{type(exc).__name__}: "
        text = last[len(prefix) :] if last.startswith(prefix) else last
    # (collated in a worker, the batch's shared memory is sized by its first image)
    if "stack expects each tensor to be equal size" in text or "resize storage that is not resizable" in text:
        return ValueError(
            f"the images of a batch differ in size ({text}): resize them to one size "
            "(ImageFolderDataset(size=...), the CLI's --size)"
        )
    try:
        return type(exc)(text)
    except Exception:  # noqa: BLE001 - an exception type that takes other arguments
        return RuntimeError(text)


def _pairs(loader) -> Iterator:
    """The loader's batches as (images, labels or None), its errors made readable."""
    try:
        for item in loader:
            yield _as_pair(item)
    except Exception as exc:  # noqa: BLE001 - re-raised, made readable
        raise _readable(exc) from None


class RunData:
    """The batches of one run. `sizes`: every batch's size, known up front for tensors and
    map-style Datasets, after `plan()` for other iterables (None before). `fingerprint`:
    after `plan()`."""

    def __init__(self, data, batch_size: int, min_batch: int = 1, num_workers=None, pin_memory: bool = False):
        check_int(batch_size, "batch_size", 1)
        self.min_batch, self.pin_memory = min_batch, pin_memory
        self.fingerprint: str | None = None
        self.sizes: list[int] | None = None
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            x, y = data
            if y is not None and (not isinstance(y, torch.Tensor) or y.shape[:1] != x.shape[:1]):
                raise ValueError(f"the labels must be a tensor of {x.shape[0]} values, one per image")
            self.kind, self.data = "tensors", (x, y)
            self.ranges = _ranges(int(x.shape[0]), batch_size, min_batch)
        elif _is_map_dataset(data):
            self.kind, self.data = "dataset", data
            self.ranges = _ranges(len(data), batch_size, min_batch)
        elif isinstance(data, torch.utils.data.IterableDataset):
            loader = torch.utils.data.DataLoader(data, batch_size=batch_size)
            self.kind, self.data, self.ranges = "iterable", loader, None
        elif hasattr(data, "__iter__"):
            if isinstance(getattr(data, "sampler", None), torch.utils.data.RandomSampler):
                raise ValueError(
                    "`data` is a DataLoader that shuffles: a run needs the same batches in the same order on "
                    "every pass and every rank (to resume and to shard); pass shuffle=False"
                )
            self.kind, self.data, self.ranges = "iterable", data, None
        else:
            raise TypeError(
                "`data` must be a pair of tensors (images, labels), a Dataset or a DataLoader, "
                f"got {type(data).__name__}"
            )
        if self.ranges is not None:
            self.sizes = [b - a for a, b in self.ranges]
        if num_workers is None:  # a few per process; none for tensors already in memory
            num_workers = 0 if self.kind != "dataset" else min(4, max(1, (os.cpu_count() or 1) // 2))
        self.num_workers = check_int(num_workers, "num_workers", 0)

    def _loader(self, ranges) -> Iterator:
        """A map-style Dataset's batches of these index ranges, in order."""
        loader = torch.utils.data.DataLoader(
            self.data,
            batch_sampler=[list(range(a, b)) for a, b in ranges],
            num_workers=self.num_workers if len(ranges) > 1 else 0,
            pin_memory=self.pin_memory,
        )
        yield from _pairs(loader)

    def plan(self) -> None:
        """One pass over the data: the fingerprint, and the sizes of an iterable's batches."""
        h = hashlib.sha256()
        for _, x, y in self.batches(lambda _: True):
            h.update(tensor_id(x).encode())
            h.update(tensor_id(y).encode() if y is not None else b"-")
        self.fingerprint = h.hexdigest()

    def batches(self, wanted: Callable[[int], bool]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """(index, images, labels) of the batches for which wanted(index) holds, in order,
        loaded one at a time. For an iterable, `sizes` is set once the pass ends."""
        if self.kind == "tensors":
            x, y = self.data
            for i, (a, b) in enumerate(self.ranges):
                if wanted(i):
                    yield i, x[a:b], (y[a:b] if y is not None else None)
        elif self.kind == "dataset":
            picked = [i for i in range(len(self.ranges)) if wanted(i)]
            for i, (x, y) in zip(picked, self._loader([self.ranges[i] for i in picked])):
                yield i, x, y
        else:
            sizes = []
            for i, (x, y) in enumerate(merged_tail(_pairs(self.data), self.min_batch)):
                sizes.append(int(x.shape[0]))
                if wanted(i):
                    yield i, x, y
            self.sizes = sizes
