"""The conventions every Triton kernel follows (triton_kernels/_launch.py), checked where
a GPU is not needed: typed scalar arguments, launches split at the 65535 limit of grid
axis 1 without changing a bit of the result, launches on the tensors' device, and every
kernel compiled ahead of time for the default CUDA arch (sm_90) by Triton's own compiler
and ptxas, with no stack frame or local memory."""

import ast
import importlib
import inspect
import subprocess
from pathlib import Path

import pytest
import torch

import miga_fast

triton = pytest.importorskip("triton")  # noqa: F841 - the whole file is about Triton

kernels = importlib.import_module("miga_fast.triton_kernels")
launch = importlib.import_module("miga_fast.triton_kernels._launch")
FAMILIES = ("projection", "ssim", "mine", "sampler")


def _jit_kernels():
    """(family, name, JITFunction) of every kernel a launcher starts (name ends in _kernel)."""
    out = []
    for family in FAMILIES:
        module = getattr(kernels, family)
        for name, obj in vars(module).items():
            # a JITFunction, or under TRITON_INTERPRET=1 an InterpretedFunction: both hold .fn
            if name.endswith("_kernel") and inspect.isfunction(getattr(obj, "fn", None)):
                out.append((family, name, obj))
    return out


def test_every_scalar_kernel_argument_is_typed():
    """Unannotated, a Python float reaches a GPU kernel as float32 (0.9 -> 0.89999998)
    while the interpreter keeps a double: every scalar argument carries its type."""
    found = _jit_kernels()
    assert len(found) >= 11
    untyped = []
    for family, name, fn in found:
        for param in inspect.signature(fn.fn).parameters.values():
            typed = param.annotation is not inspect.Parameter.empty
            if not param.name.endswith("_ptr") and not typed:
                untyped.append(f"{family}.{name}({param.name})")
    assert not untyped, f"scalar kernel arguments without a type annotation: {untyped}"


def test_every_custom_op_launches_on_its_tensors_device():
    """Triton launches on the current CUDA device: each op enters its tensors' device."""
    root = Path(kernels.__file__).parent
    missing = []
    for family in FAMILIES:
        tree = ast.parse((root / f"{family}.py").read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef):
                continue
            names = [ast.unparse(d) for d in node.decorator_list]
            if any(n.startswith("torch.library.custom_op") for n in names) and "on_tensor_device" not in names:
                missing.append(f"{family}.{node.name}")
    assert not missing, missing
    guard = launch.device_guard(torch.empty(0, device="meta").new_empty(0))
    assert guard.__class__.__name__ == "nullcontext"  # not a CUDA tensor: nothing to enter

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    guard = launch.device_guard(OnSecondGpu())
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1


def test_grid_chunks_cover_every_index_once():
    assert list(launch.chunks(5, 2)) == [(0, 2), (2, 4), (4, 5)]
    assert list(launch.chunks(65535)) == [(0, 65535)]
    assert list(launch.chunks(65536)) == [(0, 65535), (65535, 65536)]
    with pytest.raises(ValueError, match="int32"):
        launch.check_int32("pixels per plane", 2**31)


@pytest.mark.skipif(not miga_fast.backends()["triton"]["runs_here"], reason="Triton cannot run here")
def test_chunked_launches_give_the_same_bits(monkeypatch, rng):
    """Launches split at grid axis 1 (here at 4 planes or samples instead of 65535) give the
    results of one launch, bit for bit, for every op family."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(3, 2, 12, 12, generator=rng, dtype=torch.float64).to(dev)
    y = (x + 0.1 * torch.randn(3, 2, 12, 12, generator=rng, dtype=torch.float64).to(dev)).clamp(0, 1)
    g = torch.randn(3, 2, 12, 12, generator=rng, dtype=torch.float64).to(dev)
    u, v = torch.randn(2, 8, 4, generator=rng, dtype=torch.float64).to(dev)

    def run_all():
        with miga_fast.set_backend("triton"):
            xx = x.clone().requires_grad_(True)
            value = miga_fast.ops.ssim(xx, y)
            (gx,) = torch.autograd.grad(value.sum(), xx)
            t = miga_fast.ops.ssim_ball_scale(y - x, x, 0.9)
            w = (y - x).clone()
            miga_fast.ops.ssim_window_ball_project_(w, x, 0.5, window=4)
            d = torch.zeros_like(x)
            miga_fast.ops.pgd_step_(d, g, x, 0.1, 0.03, norm="l2")
            lse = torch.ops.miga_fast_triton.mine_row_lse(u, v, torch.ones(4, dtype=u.dtype, device=dev), 0, True)
            abar = torch.linspace(0.3, 0.6, 3, dtype=x.dtype, device=dev)
            mask = (y[:, :1] > 0.5).to(x.dtype)
            s = miga_fast.ops.sampler_step(
                x, mode="ddim", eps=g, a_from=abar, a_to=abar + 0.2, mask=mask, known=y, generator=0
            )
        return [value, gx, t, w, d, lse, s]

    whole = run_all()
    monkeypatch.setattr(launch, "MAX_GRID_Y", 4)
    chunked = run_all()
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- compiled for sm_90


def test_triton_kernels_compile_for_the_default_arch():
    """Triton compiles every kernel for sm_90 on this machine (no GPU needed): the
    GPU-only code paths (scalar casts, int64 offsets) are type-checked and assembled by
    ptxas, float scalars arrive as float64 parameters, and no kernel needs a stack frame
    or local memory. Run in a process without TRITON_INTERPRET (tests/_triton_aot.py)."""
    import json
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("_triton_aot.py")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=900, env=env)
    if out.returncode == 3:
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout.splitlines()[-1])
    assert set(report) == {name for _, name, _ in _jit_kernels()}
    for name, usage in report.items():
        assert usage["STACK"] == 0 and usage["LOCAL"] == 0, (name, usage)
        assert usage["fp64_scalars_as_f64"], name


def test_cuda_kernels_keep_no_stack_frame():
    """The built CUDA kernels (miga_fast._C, sm_90 in CI): no stack frame or local memory,
    whose loads would go to DRAM (a spill, or an array the compiler could not keep in
    registers)."""
    from _triton_aot import cuobjdump_path, resources

    cuobjdump = cuobjdump_path()
    if cuobjdump is None or not miga_fast.backends()["cuda"]["built"]:
        pytest.skip("needs the CUDA build and cuobjdump")
    ext = importlib.import_module("miga_fast._C")
    usage = resources(cuobjdump, Path(ext.__file__))
    assert len(usage) >= 50, "cuobjdump found no CUDA kernels in miga_fast._C"
    offenders = {f: u for f, u in usage.items() if u["STACK"] or u["LOCAL"]}
    assert not offenders, offenders
