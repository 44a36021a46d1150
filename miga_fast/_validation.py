"""Argument checks shared by every public op: clear errors that name the argument.

Cheap checks (types, shapes, dtypes, devices, Python scalars) always run. Value checks
(NaN/Inf, [0, 1] range, negative entries of a tensor) read the data and so synchronise
with a GPU: they run by default and can be switched off where a caller has already
checked its inputs once (the attacks do, before their loops):

    with miga_fast.value_checks(False):
        ...
They are skipped while torch.compile traces (they would break the graph).
"""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_state = {"values": True}


class value_checks:
    """Turn the data-reading checks on or off: a function call or a context manager."""

    def __init__(self, enabled: bool):
        self.previous = _state["values"]
        _state["values"] = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _state["values"] = self.previous
        return False


def values_checked() -> bool:
    return _state["values"] and not torch.compiler.is_compiling()


def check_tensor(t, name: str, *, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"`{name}` must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


def check_batch(t, name: str) -> None:
    if t.dim() < 1 or t.shape[0] == 0:
        raise ValueError(f"`{name}` must have a non-empty batch dimension, got shape {tuple(t.shape)}")


def check_like(ref, ref_name: str, t, name: str) -> None:
    """`t` must be a tensor of `ref`'s shape, dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != ref.shape:
        raise ValueError(f"`{name}` has shape {tuple(t.shape)}, expected {tuple(ref.shape)} "
                         f"(the shape of `{ref_name}`)")
    if t.device != ref.device:
        raise ValueError(f"`{name}` is on {t.device}, expected {ref.device} (the device of `{ref_name}`)")
    if t.dtype != ref.dtype:
        raise TypeError(f"`{name}` has dtype {t.dtype}, expected {ref.dtype} (the dtype of `{ref_name}`)")


def _min_max(t: torch.Tensor) -> tuple[float, float]:
    """Min and max in one pass over the data (NaN propagates into both), one host sync."""
    lo, hi = torch.aminmax(t.detach())
    both = torch.stack((lo, hi)).double().tolist()
    return both[0], both[1]


def check_finite(t, name: str) -> None:
    if values_checked() and t.numel():
        lo, hi = _min_max(t)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"`{name}` contains NaN or Inf")


def check_unit_range(t, name: str) -> None:
    """Images live in [0, 1]: out-of-range input is rejected, never clamped."""
    if not values_checked() or not t.numel():
        return
    lo, hi = _min_max(t)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"`{name}` contains NaN or Inf")
    if lo < 0 or hi > 1:
        raise ValueError(f"`{name}` must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


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
            raise ValueError(f"`{name}` must be a float or a tensor of shape [{batch}] (one value "
                             f"per sample), got shape {tuple(value.shape)}")
        if not (value.dtype.is_floating_point or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"`{name}` must be a real tensor, got dtype {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"`{name}` is on {value.device}, expected {like.device}")
        if values_checked():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"`{name}` contains NaN or Inf")
            if bool((value < minimum).any()):
                raise ValueError(f"`{name}` must be >= {minimum}, got min {float(value.min()):.4g}")
        return value.reshape(-1).to(dtype)
    return torch.full((1,), check_scalar(value, name, minimum=minimum), dtype=dtype, device=like.device)


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    return value


def check_direction(direction) -> float:
    d = check_scalar(direction, "direction", minimum=None)
    if d not in (1.0, -1.0):
        raise ValueError(f"`direction` must be +1.0 (ascend the loss) or -1.0 (descend), got {d}")
    return d
