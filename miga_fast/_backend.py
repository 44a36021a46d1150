"""Which backend runs an op: `set_backend`, `get_backend`, `backends()`, and the per-op
dispatch tables (`Op`).

Each op (one `Op` per torch.ops.miga_fast kernel) answers, for each backend,
`not_supported_reasons(backend, device, dtype, **facts)`: why that backend cannot run the
op on these inputs (not built, another device, a dtype its kernel does not take, an
argument past its limits), an empty list when it can. `auto` takes the first backend in
AUTO_ORDER with no reasons: the CUDA kernels, the C++ kernels, Triton, then the reference,
which runs everything. A backend asked for by name that cannot run raises
`BackendUnavailableError`, listing every backend and why each was passed over: never a
silent fallback. `backends()["ops"]` and `miga-fast backends` print the tables.
"""

from __future__ import annotations

import contextvars
import importlib.util
import os

import torch

from . import _extension
from ._context import ContextSetting

NAMES = ("auto", "cuda", "triton", "cpu", "reference")
AUTO_ORDER = ("cuda", "cpu", "triton", "reference")  # auto takes the first that can run
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


def _cuda_build_note() -> str:
    """How the CUDA kernels were built, or why they were not."""
    info = _extension.build_info() or {}
    if _cuda_built():
        return f"built for sm {info.get('CUDA_ARCH_LIST')} with CUDA {info.get('TORCH_CUDA_VERSION')}"
    ext_error = _extension.load_error()
    if ext_error:
        return f"extension not loaded: {ext_error}"
    return f"not built: {info.get('CUDA_REASON', 'unknown')}"


def backends() -> dict:
    """What was built and what can run here, one entry per backend, plus versions."""
    cuda_visible = torch.cuda.is_available()
    info = _extension.build_info() or {}
    ext_error = _extension.load_error()
    cpu = _cpu_built()
    cuda = _cuda_built()
    triton_err = _triton_error()
    cuda_note = _cuda_build_note()
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
            or (
                "interpreter on CPU tensors (TRITON_INTERPRET=1)"
                if triton_interpret()
                else ("CUDA tensors" if cuda_visible else "needs a GPU or TRITON_INTERPRET=1")
            ),
        },
        "cpu": {
            "built": cpu,
            "runs_here": cpu,
            "note": f"{torch.get_num_threads()} threads" if cpu else f"not loaded: {ext_error}",
        },
        "reference": {"built": True, "runs_here": True, "note": "plain PyTorch"},
        "ops": {name: {"public": op.public, **op.table()} for name, op in sorted(OPS.items())},
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
            f"backend 'cpu' is not available: miga_fast._C did not load ({_extension.load_error()})"
        )
    if name == "cuda" and not _cuda_built():
        raise BackendUnavailableError("backend 'cuda' is not available: " + _cuda_build_note())
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


# --- per-op dispatch tables -------------------------------------------------------------

FLOAT = (torch.float32, torch.float64)
ANY_FLOAT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_names(dtypes) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)


class Limit:
    """A condition one or more backends' kernels put on an op's arguments: `holds(facts)`
    says whether it is met (a fact not given takes the op's default: `facts.get(name,
    default)`); `text` says what the kernel needs and becomes the reason when it is not."""

    __slots__ = ("backends", "text", "holds")

    def __init__(self, backends, text: str, holds):
        self.backends, self.text, self.holds = tuple(backends), text, holds


# A constant to torch.compile: the first call of an op may come inside a compiled function
# (fullgraph too), and the probe's dispatcher query would otherwise break the graph.
@torch.compiler.assume_constant_result
def _probe_build(kernel: str, kernels: tuple, backend: str) -> tuple[str, ...]:
    """Why `backend` has no runnable kernel `kernel` in this process (() when it has; the
    reference runs every op)."""
    if backend == "reference":
        return ()
    if backend not in kernels:
        return (f"no {backend} kernel for this op yet",)
    if backend == "cpu":
        if not _cpu_built():
            return (f"miga_fast._C did not load ({_extension.load_error()})",)
        if not _extension.has_kernel(kernel, "CPU"):
            return (f"the built extension has no CPU kernel for {kernel} (rebuild it)",)
    elif backend == "cuda":
        if not _cuda_built():
            return (_cuda_build_note(),)
        if not _extension.has_kernel(kernel, "CUDA"):
            return (f"the built extension has no CUDA kernel for {kernel} (rebuild it)",)
    elif backend == "triton":
        err = _triton_error()
        if err is not None:
            return (err,)
    return ()


class Op:
    """The dispatch table of one op: which backends have a kernel for it (the CPU and CUDA
    kernels are probed in the built extension as torch.ops.miga_fast.<kernel>), the dtypes
    each takes, and the limits on its arguments."""

    def __init__(
        self,
        name: str,
        public: str,
        kernel: str | None = None,
        dtypes=None,
        limits=(),
        kernels=("cuda", "triton", "cpu"),
    ):
        self.name, self.public, self.kernel = name, public, kernel or name
        self.kernels = tuple(kernels)
        self.dtypes = {"cuda": FLOAT, "triton": ANY_FLOAT, "cpu": FLOAT, **(dtypes or {})}
        self.limits = tuple(limits)
        self._built: dict = {}
        # (selected name, device, dtype, interpreter on, build table) -> backend, for calls
        # with no facts: the answer depends on nothing else
        self._chosen: dict = {}

    def build_reasons(self, backend: str) -> tuple[str, ...]:
        """Why `backend` cannot run this op whatever the inputs (not built): () when it can
        run on some input. Probed once per process (what was built never changes). While
        torch.compile traces, the answer is a compile-time constant read around the cache:
        a graph that read or filled it would guard on its contents and recompile later."""
        if torch.compiler.is_compiling():
            return _probe_build(self.kernel, self.kernels, backend)
        if backend not in self._built:
            self._built[backend] = _probe_build(self.kernel, self.kernels, backend)
        return self._built[backend]

    def not_supported_reasons(
        self, backend: str, device: torch.device, dtype: torch.dtype, auto: bool = False, **facts
    ) -> list[str]:
        """Why `backend` cannot run this op on tensors of `device` and `dtype` with the
        arguments `facts` (those the op's limits read); [] when it can. auto=True: whether
        "auto" may take it (the Triton interpreter on CPU tensors is a debugging aid that
        runs only when named)."""
        reasons = list(self.build_reasons(backend))
        if backend == "reference" or reasons:
            return reasons
        kind = device.type
        if backend == "cuda" and kind != "cuda":
            reasons.append(f"runs CUDA tensors, got tensors on {kind}")
        elif backend == "cpu" and kind != "cpu":
            reasons.append(f"runs CPU tensors, got tensors on {kind}")
        elif backend == "triton" and kind != "cuda":
            if not (kind == "cpu" and triton_interpret()):
                reasons.append(f"runs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), got tensors on {kind}")
            elif auto:
                reasons.append("the interpreter on CPU tensors runs only when named (set_backend('triton'))")
        if dtype not in self.dtypes[backend]:
            reasons.append(f"takes {_dtype_names(self.dtypes[backend])}, got {str(dtype).replace('torch.', '')}")
        for limit in self.limits:
            if backend in limit.backends and not limit.holds(facts):
                reasons.append(limit.text)
        return reasons

    def runnable(self, device: torch.device, dtype: torch.dtype = torch.float32, **facts) -> list[str]:
        """The backends that can run this op on such inputs, in auto's order."""
        return [b for b in AUTO_ORDER if not self.not_supported_reasons(b, device, dtype, **facts)]

    def select(self, device: torch.device, dtype: torch.dtype, **facts) -> str:
        """The backend that runs a call: the selected one, or under "auto" the first in
        AUTO_ORDER that can. Raises BackendUnavailableError when the selected one cannot."""
        name = _BACKEND.get()
        # No cache while torch.compile traces: reading it would make the compiled graph guard
        # on the cache's contents, so any later call that fills an entry would recompile it.
        cache = not facts and not torch.compiler.is_compiling()
        key = (name, device, dtype, triton_interpret(), id(self._built)) if cache else None
        chosen = self._chosen.get(key) if key is not None else None
        if chosen is not None:
            return chosen
        auto = name == "auto"
        chosen = self._select(name, auto, device, dtype, **facts)
        if chosen is not None:
            if key is not None:
                self._chosen[key] = chosen
            return chosen
        # only "auto" with every backend refused (cannot happen: the reference runs all) or a named one
        lines = []
        for backend in AUTO_ORDER:
            why = self.not_supported_reasons(backend, device, dtype, auto, **facts)
            lines.append(f"  {backend}: " + ("can run" if not why else "; ".join(why)))
        raise BackendUnavailableError(
            f"backend {name!r} cannot run {self.name} ({self.public}) on {str(dtype).replace('torch.', '')} "
            f"tensors on {device}:\n"
            + "\n".join(lines)
            + "\nuse set_backend('auto') to take the first backend that can, or name one that can run"
        )

    def _select(self, name: str, auto: bool, device, dtype, **facts) -> str | None:
        if auto:
            for backend in AUTO_ORDER:
                if not self.not_supported_reasons(backend, device, dtype, True, **facts):
                    return backend
        elif not self.not_supported_reasons(name, device, dtype, **facts):
            return name
        return None

    def table(self) -> dict:
        """Per backend: built (the build reasons, empty when built) and the conditions its
        kernel puts on inputs."""
        out = {}
        for backend in AUTO_ORDER:
            if backend == "reference":
                out[backend] = {"built": True, "reasons": [], "needs": ["any float dtype, any device"]}
                continue
            dev = (
                "CUDA tensors"
                if backend == "cuda"
                else ("CPU tensors" if backend == "cpu" else "CUDA tensors (CPU tensors with TRITON_INTERPRET=1)")
            )
            needs = [dev, _dtype_names(self.dtypes[backend])]
            needs += [lim.text for lim in self.limits if backend in lim.backends]
            why = list(self.build_reasons(backend))
            out[backend] = {"built": not why, "reasons": why, "needs": needs}
        return out


OPS: dict[str, Op] = {}


def register_op(op: Op) -> Op:
    """Add an op's dispatch table (each op family's module registers its ops at import)."""
    OPS[op.name] = op
    return op
