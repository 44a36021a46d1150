"""Wrapping denoisers (any nn.Module) in torch.compile for attack loops.

`compile_denoiser(model)` returns a module that runs the compiled forward (and, through
AOTAutograd, the compiled backward). Where compilation is unavailable or fails (no C++
compiler, an unsupported Python or platform, an op the compiler cannot handle), it warns
once and runs the eager model: an attack never dies because of the compiler.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompiledModel(nn.Module):
    """`model` behind torch.compile, with a clean fallback to eager. `.eager` is the
    original module; `.fallback_reason` says why compilation was abandoned (None if not)."""

    def __init__(self, model: nn.Module, **compile_kwargs):
        super().__init__()
        self.eager = model
        self.compile_kwargs = compile_kwargs
        self.fallback_reason = None
        try:
            self._compiled = torch.compile(model, **compile_kwargs)
        except Exception as exc:  # torch.compile itself unavailable here
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        self._compiled = None
        self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        warnings.warn(
            f"miga_fast: torch.compile is unavailable for {type(self.eager).__name__} "
            f"({self.fallback_reason}); running it eagerly",
            RuntimeWarning,
            stacklevel=3,
        )

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, *args, **kwargs):
        if self._compiled is None:
            return self.eager(*args, **kwargs)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as exc:
            out = self.eager(*args, **kwargs)  # an error of the model itself raises here
            self._fallback(exc)
            return out


def compile_denoiser(
    model: nn.Module,
    mode: str = "default",
    dynamic: bool | None = False,
    fullgraph: bool = False,
    backend: str = "inductor",
) -> CompiledModel:
    """Compile a denoiser (or any image-to-image module) for throughput-oriented attack
    loops: forward and backward. mode="reduce-overhead" adds CUDA graphs on a GPU (fixed
    shapes: keep the batch size constant). dynamic=False specialises on the input shape."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    return CompiledModel(model, mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
