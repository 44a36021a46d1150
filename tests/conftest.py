"""Test setup: scratch buffers poisoned with NaN; Triton kernels run through the interpreter
on CPU tensors when no GPU is visible (TRITON_INTERPRET must be set before triton is imported); CUDA tests skip
without a GPU and run whenever one is visible."""

import os
import sys

import torch

# Kernels' scratch buffers are filled with NaN before use, so unwritten partials show.
os.environ.setdefault("MIGA_FAST_POISON", "1")

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import miga_fast  # noqa: E402

GPU = torch.cuda.is_available()


def backend_params():
    """(backend, device) pairs for every compiled backend: those that cannot run here
    are listed and skipped, so a run shows what it did not cover."""
    info = miga_fast.backends()
    params = [
        pytest.param(
            "cpu", "cpu", id="cpu", marks=pytest.mark.skipif(not info["cpu"]["built"], reason="C++ kernels not built")
        )
    ]
    triton_dev = "cuda" if GPU else "cpu"
    params.append(
        pytest.param(
            "triton",
            triton_dev,
            id="triton",
            marks=pytest.mark.skipif(not info["triton"]["runs_here"], reason="Triton cannot run here"),
        )
    )
    params.append(
        pytest.param(
            "cuda",
            "cuda",
            id="cuda",
            marks=pytest.mark.skipif(not info["cuda"]["runs_here"], reason="needs a GPU and the CUDA build"),
        )
    )
    return params


@pytest.fixture
def rng():
    """A fresh generator per test, seeded from the test's name: random but repeatable."""
    import zlib

    seed = zlib.crc32(os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].encode())
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def replay_in_cuda_graph(fn):
    """fn() warmed up on a side stream, captured in a CUDA graph and replayed: its output
    (a capture fails on any host synchronisation in fn)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return out
