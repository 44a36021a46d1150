"""Which backend runs an op: `set_backend`, `get_backend`, `backends()`.

`auto` picks, per call, from the device of the tensors:
  CUDA tensors -> the CUDA extension; Triton where the extension was built without CUDA;
                  the reference where neither exists.
  CPU tensors  -> the C++ kernels; the reference where the extension is missing.
A backend asked for by name that is missing, or that cannot run on the tensors' device,
is an error (`BackendUnavailableError`), never a silent fallback.
"""
from __future__ import annotations

import contextvars
import importlib.util
import os

import torch

from . import _extension
from ._context import ContextSetting

NAMES = ("auto", "cuda", "triton", "cpu", "reference")
_PROBE_OP = "project_linf_"  # any op of the library: tells whether a dispatch key has kernels
# Per thread and per asyncio task (contextvars), like value_checks: one thread's choice is
# not another's. torch.compile traces the read and guards on it.
_DEFAULT_BACKEND: str = os.environ.get("MIGA_FAST_BACKEND", "auto")
_BACKEND = contextvars.ContextVar("miga_fast_backend", default=_DEFAULT_BACKEND)


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name and is not built, or cannot run here."""


# What was built never changes within a process: probe once, at import (loading _C
# never raises), so that backend resolution is plain Python that torch.compile traces.
_BUILT = {"cpu": _extension.has_kernel(_PROBE_OP, "CPU"), "cuda": _extension.has_kernel(_PROBE_OP, "CUDA")}
_TRITON = {}


def _cpu_built() -> bool:
    return _BUILT["cpu"]


def _cuda_built() -> bool:
    return _BUILT["cuda"]


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _triton_error() -> str | None:
    """Why the Triton kernels cannot be imported (None: they can). Probed once, lazily:
    importing triton takes a while."""
    if "error" not in _TRITON:
        if importlib.util.find_spec("triton") is None:
            _TRITON["error"] = "the triton package is not installed"
        else:
            try:
                importlib.import_module("miga_fast.triton_kernels")
                _TRITON["error"] = None
            except Exception as exc:  # pragma: no cover - depends on the installed triton
                _TRITON["error"] = f"{type(exc).__name__}: {exc}"
    return _TRITON["error"]


def _triton_built() -> bool:
    return _triton_error() is None


def backends() -> dict:
    """What was built and what can run here, one entry per backend, plus versions."""
    cuda_visible = torch.cuda.is_available()
    info = _extension.build_info() or {}
    ext_error = _extension.load_error()
    cpu = _cpu_built()
    cuda = _cuda_built()
    triton_err = _triton_error()
    if cuda:
        cuda_note = f"built for sm {info.get('CUDA_ARCH_LIST')} with CUDA {info.get('TORCH_CUDA_VERSION')}"
    elif ext_error:
        cuda_note = f"extension not loaded: {ext_error}"
    else:
        cuda_note = f"not built: {info.get('CUDA_REASON', 'unknown')}"
    return {
        "selected": get_backend(),
        "cuda": {
            "built": cuda,
            "runs_here": cuda and cuda_visible,
            "note": cuda_note + ("" if cuda_visible else "; no GPU visible"),
        },
        "triton": {
            "built": triton_err is None,
            "runs_here": triton_err is None and (cuda_visible or triton_interpret()),
            "note": triton_err
            or ("interpreter on CPU tensors (TRITON_INTERPRET=1)" if triton_interpret() else
                ("CUDA tensors" if cuda_visible else "needs a GPU or TRITON_INTERPRET=1")),
        },
        "cpu": {
            "built": cpu,
            "runs_here": cpu,
            "note": f"{torch.get_num_threads()} threads" if cpu else f"not loaded: {ext_error}",
        },
        "reference": {"built": True, "runs_here": True, "note": "plain PyTorch"},
        "versions": {
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "built_for_torch": info.get("TORCH_VERSION"),
            "built_with_cuda": info.get("WITH_CUDA"),
            "gpu": torch.cuda.get_device_name() if cuda_visible else None,
            "version_note": _extension.version_note(),
        },
    }


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    if name == "cpu" and not _cpu_built():
        raise BackendUnavailableError(
            f"backend 'cpu' is not available: miga_fast._C did not load ({_extension.load_error()})")
    if name == "cuda" and not _cuda_built():
        raise BackendUnavailableError(
            "backend 'cuda' is not available: " + backends()["cuda"]["note"])
    if name == "triton" and not _triton_built():
        raise BackendUnavailableError(f"backend 'triton' is not available: {_triton_error()}")


class set_backend(ContextSetting):
    """Select the backend for every op in the current thread (or asyncio task): a function
    call, or a context manager that restores the previous choice on exit.

        miga_fast.set_backend("cpu")
        with miga_fast.set_backend("reference"):
            ...
    """

    var = _BACKEND

    def __init__(self, name: str):
        _check_name(name)
        self.name = name
        super().__init__(name)

    def __repr__(self):
        return f"set_backend({self.name!r})"


def get_backend() -> str:
    return _BACKEND.get()


def resolve(device: torch.device, dtype: torch.dtype, kernels=("cuda", "triton", "cpu")) -> str:
    """The concrete backend for a call on tensors of `device` and `dtype`, for an op with
    compiled `kernels` (an op family that has only its reference yet passes ())."""
    name = _BACKEND.get()
    kind = device.type
    half = dtype in (torch.float16, torch.bfloat16)
    if name == "auto":
        if kind == "cuda":
            if _cuda_built() and "cuda" in kernels:
                return "cuda"
            return "triton" if _triton_built() and "triton" in kernels else "reference"
        if kind == "cpu" and _cpu_built() and not half and "cpu" in kernels:
            return "cpu"
        return "reference"
    _check_name(name)
    if name != "reference" and name not in kernels:
        raise BackendUnavailableError(
            f"backend {name!r} has no kernel for this op yet (it has: {', '.join(kernels) or 'the reference only'}); "
            "use set_backend('auto') or 'reference'")
    if name == "cpu" and (kind != "cpu" or half):
        raise BackendUnavailableError(
            f"backend 'cpu' runs float32/float64 CPU tensors, got {dtype} on {device}")
    if name == "cuda" and kind != "cuda":
        raise BackendUnavailableError(f"backend 'cuda' runs CUDA tensors, got tensors on {device}")
    if name == "triton" and not (kind == "cuda" or (kind == "cpu" and triton_interpret())):
        raise BackendUnavailableError(
            f"backend 'triton' runs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), "
            f"got tensors on {device}")
    return name
