"""Argument checks shared by every public op: clear errors that name the argument.

Cheap checks (types, shapes, dtypes, devices, Python scalars) always run. Value checks
(NaN/Inf, the [0, 1] range of images, negative entries of a per-sample tensor) read the
data. On a CPU they run at once. On a GPU, reading the data would stall the pipeline
once per op call (a device-to-host copy that waits for every kernel queued before it),
so by default they are *deferred*: the statistics they need are computed on the device
and copied into pinned host memory without waiting; the verdict is given by a later
miga_fast call once the copy has landed (never waiting for it), by
`miga_fast.check_deferred()` (which waits), and at the end of every attack. A deferred
failure is raised as the same ValueError, naming the argument, by that later call; the
op that received the bad input has run on it.

    miga_fast.value_checks(True)        # the default: at once on CPU, deferred on CUDA
    miga_fast.value_checks("sync")      # at once everywhere (errors before anything is written)
    miga_fast.value_checks("deferred")  # deferred everywhere (CPU too: how the tests see it)
    miga_fast.value_checks(False)       # off, for callers that checked their inputs once

All four are per thread (or asyncio task), as functions or context managers. The checks
are skipped while torch.compile traces (they would break the graph).
"""

from __future__ import annotations

import contextvars
import math
import numbers
import threading

import torch
from torch._subclasses.fake_tensor import is_fake

from ._context import ContextSetting

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Per thread and per asyncio task (contextvars): switching checks off while one attack runs
# leaves every other thread's checks on.
_VALUE_CHECKS = contextvars.ContextVar("miga_fast_value_checks", default=True)


class value_checks(ContextSetting):
    """The data-reading checks in the current thread (or asyncio task): True (the default:
    at once on CPU tensors, deferred on CUDA tensors), "sync" (at once everywhere),
    "deferred" (deferred everywhere) or False (off). A function call, or a context manager
    that restores the previous setting on exit. Other threads keep their own setting."""

    var = _VALUE_CHECKS

    def __init__(self, mode=True):
        if isinstance(mode, str) and mode not in ("sync", "deferred"):
            raise ValueError(f"`value_checks` takes True, False, 'sync' or 'deferred', got {mode!r}")
        super().__init__(mode if isinstance(mode, str) else bool(mode))


def values_checked() -> bool:
    return _VALUE_CHECKS.get() is not False and not torch.compiler.is_compiling()


class DeferredCheckError(ValueError):
    """A deferred value check failed: raised by a later call than the one that got the input."""


# Deferred checks of this thread: (event or None, host statistics, verdict).
_local = threading.local()


def _pending() -> list:
    if not hasattr(_local, "pending"):
        _local.pending = []
    return _local.pending


def _deferring(device: torch.device) -> bool:
    mode = _VALUE_CHECKS.get()
    return mode == "deferred" or (mode is True and device.type == "cuda")


def judge(stats: torch.Tensor, verdict) -> None:
    """Give `verdict(values)` (an error message, or None) on the statistics `stats` (a small
    tensor computed on the data's device): at once, or deferred (see the module's doc)."""
    if not _deferring(stats.device):
        message = verdict(stats.double().tolist())
        if message:
            raise ValueError(message)
        return
    cuda = stats.device.type == "cuda"
    host = torch.empty(stats.shape, dtype=torch.float64, pin_memory=cuda)
    host.copy_(stats.detach().double(), non_blocking=cuda)
    event = None
    if cuda:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(stats.device))
    _pending().append((event, host, verdict))


def poll_deferred(wait: bool = False) -> None:
    """Give the verdicts of this thread's deferred checks whose statistics have landed
    (every one with wait=True); raise DeferredCheckError for the first failures."""
    if torch.compiler.is_compiling():
        return
    pending = _pending()
    if not pending:
        return
    errors, keep = [], []
    for event, host, verdict in pending:
        if event is not None and not event.query():
            if not wait:
                keep.append((event, host, verdict))
                continue
            event.synchronize()
        message = verdict(host.tolist())
        if message:
            errors.append(message)
    pending[:] = keep
    if errors:
        raise DeferredCheckError(
            "; ".join(errors) + " (a deferred value check of an earlier miga_fast call on a GPU: that call "
            "ran on the input; use miga_fast.value_checks('sync') to stop before anything is written)"
        )


def sync_checks():
    """value_checks("sync") unless checks are off: for an attack's one check of its
    inputs, where a single wait is cheap and a clear error before the loop is worth it."""
    return value_checks("sync") if _VALUE_CHECKS.get() is not False else value_checks(False)


def check_deferred() -> None:
    """Wait for this thread's deferred value checks and raise the first failures (a
    DeferredCheckError, a ValueError naming the argument). The attacks call it at their end."""
    poll_deferred(wait=True)


def check_tensor(t, name: str, *, dtypes=FLOAT_DTYPES) -> None:
    poll_deferred()  # every op checks a tensor first: earlier deferred verdicts surface here
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"`{name}` must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if t.device.type == "meta" and not torch.compiler.is_compiling():
        raise ValueError(
            f"`{name}` is a meta tensor (no data): the ops need real CPU or CUDA tensors; "
            "for shapes only, trace them with torch.compile or FakeTensorMode"
        )


def check_no_overlap(outputs: dict, inputs: dict) -> None:
    """In-place outputs must not overlap themselves (an expanded, stride-0 tensor), each
    other, or any input: the result would depend on the order of the writes. Memory
    ranges are compared, so two interleaved views of one buffer count as overlapping.
    Skipped while torch.compile traces (it reads data pointers; the traced graph works on
    functionalised tensors)."""
    if torch.compiler.is_compiling():
        return
    for name, t in outputs.items():
        if torch._debug_has_internal_overlap(t) == 1:
            raise ValueError(
                f"`{name}` overlaps itself (an expanded or stride-0 tensor): it is written in place; "
                f"pass `{name}.clone()` or a tensor of its own"
            )
    items = [(k, v) for k, v in list(outputs.items()) + list(inputs.items()) if v is not None]
    # one storage address per tensor, read once; only tensors of one storage can overlap
    storages = [_storage_ptr(t) for _, t in items]
    for i in range(len(outputs)):
        name, t = items[i]
        for j in range(i + 1, len(items)):
            if storages[i] is not None and storages[i] == storages[j] and _spans_overlap(t, items[j][1]):
                other = items[j][0]
                raise ValueError(
                    f"`{name}` and `{other}` share memory: `{name}` is written in place, so "
                    f"`{other}` would change under the op; pass separate tensors"
                )


def _storage_ptr(t: torch.Tensor):
    """(device, address of t's storage), or None for a tensor with no memory of its own
    (empty, meta, fake: their data pointers are all 0); None never counts as shared."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    # an exact torch.Tensor cannot be fake: skip is_fake's subclass walk (most of the cost)
    if type(t) is not torch.Tensor and is_fake(t):
        return None
    return (t.device, t.untyped_storage().data_ptr())


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The byte range [lo, hi) a tensor's elements occupy."""
    lo = t.data_ptr()
    extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if stride > 0)
    low = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if stride < 0)
    return (lo + low * t.element_size(), lo + (extent + 1) * t.element_size())


def _spans_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two non-empty tensors of one storage may touch the same bytes."""
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def check_batch(t, name: str) -> None:
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"`{name}` must have a non-empty batch dimension, got shape {tuple(t.shape)}")


def check_like(ref, ref_name: str, t, name: str) -> None:
    """`t` must be a tensor of `ref`'s shape, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != ref.shape:
        raise ValueError(
            f"`{name}` has shape {tuple(t.shape)}, expected {tuple(ref.shape)} (the shape of `{ref_name}`)"
        )
    if t.device != ref.device:
        raise ValueError(f"`{name}` is on {t.device}, expected {ref.device} (the device of `{ref_name}`)")
    if t.dtype != ref.dtype:
        raise TypeError(f"`{name}` has dtype {t.dtype}, expected {ref.dtype} (the dtype of `{ref_name}`)")


def _min_max(t: torch.Tensor) -> torch.Tensor:
    """[min, max] of t, on its device (NaN when it holds one; +-Inf propagate)."""
    lo, hi = torch.aminmax(t.detach())
    return torch.stack((lo, hi))


def _finite_verdict(name: str):
    def verdict(v):
        return None if math.isfinite(v[0]) and math.isfinite(v[1]) else f"`{name}` contains NaN or Inf"

    return verdict


def check_finite(t, name: str) -> None:
    if values_checked() and t.numel():
        judge(_min_max(t), _finite_verdict(name))


def check_unit_range(t, name: str) -> None:
    """Images live in [0, 1]: out-of-range input is rejected, never clamped."""
    if not values_checked() or not t.numel():
        return

    def verdict(v):
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return f"`{name}` contains NaN or Inf"
        if lo < 0 or hi > 1:
            return f"`{name}` must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
        return None

    judge(_min_max(t), verdict)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float64 for float64 data, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_scalar(value, name: str, *, minimum: float | None = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def per_sample(value, name: str, like: torch.Tensor, *, minimum: float = 0.0) -> torch.Tensor:
    """A float or a [B] tensor -> a 1-D tensor of 1 or B values in the compute dtype on
    `like`'s device (no host transfer: a float becomes a device-side fill)."""
    batch = like.shape[0]
    dtype = compute_dtype(like.dtype)
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, batch)):
            raise ValueError(
                f"`{name}` must be a float or a tensor of shape [{batch}] (one value "
                f"per sample), got shape {tuple(value.shape)}"
            )
        if not (value.dtype.is_floating_point or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"`{name}` must be a real tensor, got dtype {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"`{name}` is on {value.device}, expected {like.device}")
        converted = value.reshape(-1).to(dtype)
        if values_checked() and value.numel():

            def verdict(v):
                finite, in_range, low = v
                if not finite:
                    return f"`{name}` contains NaN or Inf"
                if not in_range:
                    return (
                        f"`{name}` holds values beyond {dtype}'s range (max "
                        f"{torch.finfo(dtype).max:.4g}), the dtype the kernels compute in"
                    )
                return f"`{name}` must be >= {minimum}, got min {low:.4g}" if low < minimum else None

            stats = torch.stack(
                (
                    torch.isfinite(value).all().double(),
                    torch.isfinite(converted).all().double(),
                    value.detach().min().double(),
                )
            )
            judge(stats, verdict)
        return converted
    v = check_scalar(value, name, minimum=minimum)
    if abs(v) > torch.finfo(dtype).max:
        raise ValueError(
            f"`{name}` = {v:.4g} is beyond {dtype}'s range (max {torch.finfo(dtype).max:.4g}), "
            "the dtype the kernels compute in"
        )
    if torch.compiler.is_compiling():
        return torch.full((1,), v, dtype=dtype, device=like.device)
    return _constant(v, dtype, like.device)


# One read-only [1] tensor per (value, dtype, device, CUDA stream): a float eps or alpha
# would otherwise cost a fill per op call (a kernel launch on a GPU). The kernels never
# write them. Per stream, because the fill is queued on the stream that first asked (a
# read from another stream could overtake it); never cached during CUDA-graph capture
# (the fill would run only when the graph replays).
_CONSTANTS: dict = {}
_CONSTANTS_MAX = 256


def _constant(v: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    stream = None
    if device.type == "cuda":
        if torch.cuda.is_current_stream_capturing():
            return torch.full((1,), v, dtype=dtype, device=device)
        stream = torch.cuda.current_stream(device).cuda_stream
    key = (v, dtype, device, stream)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) >= _CONSTANTS_MAX:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.full((1,), v, dtype=dtype, device=device)
    return t


def check_int(value, name: str, minimum: int | None = None, maximum: int | None = None, *, odd: bool = False) -> int:
    """An int (not a bool) in [minimum, maximum] (either bound optional), odd if asked."""
    if minimum is not None and maximum is not None:
        want = f"an int in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an int >= {minimum}"
    elif maximum is not None:
        want = f"an int <= {maximum}"
    else:
        want = "an int"
    if odd:
        want = want.replace("an int", "an odd int")
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
        or (odd and value % 2 == 0)
    ):
        raise ValueError(f"`{name}` must be {want}, got {value!r}")
    return int(value)


def check_labels(labels, like: torch.Tensor, name: str = "labels", *, unlabelled_ok: bool = False) -> torch.Tensor:
    """Class indices for the batch of `like`: an int32/int64 tensor of shape [B]; values
    >= 0 (>= -1 with unlabelled_ok: -1 marks a sample without a label). Returns them as
    int64 on `like`'s device."""
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"`{name}` must be an integer tensor of class indices")
    if labels.shape != like.shape[:1]:
        raise ValueError(f"`{name}` must have shape [{like.shape[0]}], got {tuple(labels.shape)}")
    lowest = -1 if unlabelled_ok else 0
    if values_checked() and labels.numel():

        def verdict(v):
            if v[0] >= lowest:
                return None
            return (
                f"`{name}` must hold class indices >= 0{' (or -1 for none)' if unlabelled_ok else ''}, got {int(v[0])}"
            )

        judge(labels.min().reshape(1), verdict)
    return labels.to(like.device).long()


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    return value


def check_direction(direction) -> float:
    d = check_scalar(direction, "direction", minimum=None)
    if d not in (1.0, -1.0):
        raise ValueError(f"`direction` must be +1.0 (ascend the loss) or -1.0 (descend), got {d}")
    return d
