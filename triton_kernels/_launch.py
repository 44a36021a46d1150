"""What every Triton launcher shares: the ops' device types, output poisoning for tests,
the grid limits, and launching on the tensors' device.

Conventions every kernel follows (tests/test_triton_kernels.py checks them):
  - a scalar argument (not a pointer `*_ptr`, not a tl.constexpr) carries a type
    annotation. Unannotated, Triton passes a Python float as float32 on a GPU (0.9 arrives
    as 0.89999998) while the interpreter keeps a double: float scalars are annotated
    tl.float64 and cast to the compute dtype inside the kernel; sizes tl.int32 (the
    launchers check that they fit) and offsets into whole tensors tl.int64.
  - offsets into a tensor that may hold 2**31 elements or more are computed in int64
    (a plane or sample index times its size), never in int32.
  - grid axes 1 and 2 hold at most 65535 programs: launchers split larger counts into
    chunks (`chunks`) and pass the chunk's first index to the kernel.
  - every custom op runs its launches on the tensors' device (`on_tensor_device`): Triton
    launches on the current device, which need not be the tensors'.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch

POISON = os.environ.get("MIGA_FAST_POISON", "") == "1"
DEVICE_TYPES = ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET", "") == "1" else ("cuda",)
MAX_GRID_Y = 65535  # CUDA's limit for grid axes 1 and 2
INT32_MAX = 2**31 - 1


def chunks(total: int, limit: int | None = None):
    """[lo, hi) ranges of at most `limit` (MAX_GRID_Y) covering range(total)."""
    limit = MAX_GRID_Y if limit is None else limit
    for lo in range(0, total, limit):
        yield lo, min(total, lo + limit)


def check_int32(name: str, value: int) -> int:
    """A size passed to a tl.int32 kernel argument (or an int32 offset within one plane)."""
    if value > INT32_MAX:
        raise ValueError(f"miga_fast_triton: {name} = {value} does not fit the kernels' int32 index math")
    return value


def device_guard(t: torch.Tensor):
    """The context in which to launch kernels on `t`: its CUDA device (not merely the
    current one), or nothing for CPU tensors (the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def on_tensor_device(fn):
    """Decorates a custom op's implementation: its launches run on the device of its first
    tensor argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        with device_guard(first):
            return fn(*args, **kwargs)

    # the signature with its annotations evaluated in fn's module, for torch.library's schema inference
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)
    return wrapper
