"""Loads the compiled kernels (miga_fast._C) lazily, so a missing or broken build never
breaks `import miga_fast`: the reference backend still runs, and `backends()` says why
the compiled ones do not."""

from __future__ import annotations

import importlib
import warnings

import torch

_state = {"tried": False, "module": None, "error": None}


def build_info() -> dict | None:
    """What the extension was built against (written by setup.py), or None."""
    try:
        info = importlib.import_module("miga_fast._build_info")
    except ImportError:
        return None
    return {k: getattr(info, k) for k in dir(info) if k.isupper()}


def _short(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def version_note() -> str | None:
    """'built for torch X, running torch Y' when they differ in major.minor."""
    info = build_info()
    if info is None:
        return None
    if _short(info["TORCH_VERSION"]) != _short(torch.__version__):
        return (
            f"miga_fast._C was built for torch {info['TORCH_VERSION']} and is running on "
            f"torch {torch.__version__}: rebuild with `pip install --no-build-isolation .`"
        )
    return None


def load():
    """The imported miga_fast._C module, or None when it cannot be loaded."""
    if not _state["tried"]:
        _state["tried"] = True
        note = version_note()
        try:
            _state["module"] = importlib.import_module("miga_fast._C")
        except Exception as exc:  # a missing, stale or ABI-broken build
            _state["error"] = f"{type(exc).__name__}: {exc}"
            if note:
                _state["error"] += f" ({note})"
            warnings.warn(
                f"miga_fast: compiled kernels unavailable ({_state['error']}); "
                "the reference backend will be used. Build them with "
                "`pip install --no-build-isolation .`",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            if note:
                warnings.warn(note, RuntimeWarning, stacklevel=2)
    return _state["module"]


def load_error() -> str | None:
    load()
    return _state["error"]


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether torch.ops.miga_fast.<op> has a kernel for `dispatch_key` ("CPU", "CUDA")."""
    if load() is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"miga_fast::{op}", dispatch_key)
