"""Backend selection, build reporting and the `miga-fast backends` command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import miga_fast
from miga_fast import BackendUnavailableError, ops


def test_backends_reports_every_backend():
    info = miga_fast.backends()
    for name in ("cuda", "triton", "cpu", "reference"):
        assert set(info[name]) == {"built", "runs_here", "note"}
    assert info["reference"]["runs_here"]
    assert info["versions"]["torch"] == torch.__version__
    assert info["selected"] == miga_fast.get_backend()


def test_the_build_matches_this_machine():
    """On a machine with nvcc and a CUDA torch, CI builds (and so compiles) the CUDA kernels."""
    info = miga_fast.backends()
    assert info["cpu"]["built"], info["cpu"]["note"]
    expect_cuda = torch.version.cuda is not None and Path("/usr/local/cuda/bin/nvcc").exists()
    if expect_cuda:
        assert info["cuda"]["built"], info["cuda"]["note"]
    assert info["versions"]["version_note"] is None  # built for the torch that runs


def test_set_backend_is_a_function_and_a_context_manager():
    assert miga_fast.get_backend() == "auto"
    with miga_fast.set_backend("reference"):
        assert miga_fast.get_backend() == "reference"
        with miga_fast.set_backend("cpu"):
            assert miga_fast.get_backend() == "cpu"
        assert miga_fast.get_backend() == "reference"
    assert miga_fast.get_backend() == "auto"
    miga_fast.set_backend("cpu")
    try:
        assert miga_fast.get_backend() == "cpu"
    finally:
        miga_fast.set_backend("auto")


def test_unknown_backend_is_an_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        miga_fast.set_backend("tpu")
    assert miga_fast.get_backend() == "auto"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_a_backend_that_cannot_run_here_is_an_error_never_a_fallback():
    x = torch.rand(2, 3, 4, 4)
    d = torch.zeros_like(x)
    if miga_fast.backends()["cuda"]["built"]:
        with miga_fast.set_backend("cuda"):
            with pytest.raises(BackendUnavailableError, match="runs CUDA tensors"):
                ops.project_(d, x, 0.1)
    else:
        with pytest.raises(BackendUnavailableError):
            miga_fast.set_backend("cuda")


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    x = torch.rand(2, 3, 4, 4)
    with miga_fast.set_backend("triton"):
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
            ops.project_(torch.zeros_like(x), x, 0.1)


def test_cpu_backend_rejects_half_precision():
    x = torch.rand(2, 3, 4, 4).half()
    with miga_fast.set_backend("cpu"):
        with pytest.raises(BackendUnavailableError, match="float32/float64"):
            ops.project_(torch.zeros_like(x), x, 0.1)
    # auto falls back to the reference for what no kernel covers
    ops.project_(torch.zeros_like(x), x, 0.1)


def _cli(*args):
    exe = Path(sys.executable).with_name("miga-fast")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_cli_backends_table_and_json():
    out = _cli("backends")
    assert out.returncode == 0, out.stderr
    assert "reference" in out.stdout and "runs here" in out.stdout
    out = _cli("backends", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["reference"]["runs_here"] is True


def test_cli_bad_command_is_a_clear_error():
    out = _cli("frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr and "Traceback" not in out.stderr


def test_cpu_kernels_carry_an_avx2_build():
    """The loops are instantiated a second time under `#pragma GCC target("avx2")`
    (csrc/cpu/instantiate_loops.h): the built library must hold 256-bit (ymm) code, or the
    run-time dispatch silently falls back to the generic loops (2-3x slower)."""
    import platform
    import shutil
    import subprocess

    import pytest

    import miga_fast._C as ext

    if platform.machine() != "x86_64" or shutil.which("objdump") is None:
        pytest.skip("needs x86-64 and objdump")
    dis = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", ext.__file__], capture_output=True, text=True, timeout=120
    ).stdout
    assert dis.count("ymm") > 200, "no AVX2 code in miga_fast._C: the target pragma did not take effect"


# --- the per-op dispatch tables (backends that say why) ---------------------------------

OP_NAMES = {
    "pgd_step_linf_",
    "pgd_step_linf_image_",
    "pgd_step_l2_",
    "mi_fgsm_step_",
    "project_linf_",
    "project_l2_",
    "ssim",
    "ssim_ball_scale",
    "ssim_window_ball_project_",
    "mine_row_lse",
    "sampler_step",
}


def test_every_op_has_a_dispatch_table():
    ops_table = miga_fast.backends()["ops"]
    assert set(ops_table) == OP_NAMES
    for table in ops_table.values():
        assert table["reference"] == {"built": True, "reasons": [], "needs": ["any float dtype, any device"]}
        for backend in ("cuda", "cpu", "triton"):
            entry = table[backend]
            assert entry["built"] == (not entry["reasons"])
            assert entry["needs"]


def test_every_table_answers_without_facts():
    """Callers such as the benchmarks ask which backends run an op on a device at its
    defaults: no fact is required."""
    from miga_fast._backend import OPS

    for op in OPS.values():
        assert "reference" in op.runnable(torch.device("cpu"))
        op.runnable(torch.device("cuda"), torch.float16)


def test_auto_takes_the_first_backend_that_can_run():
    from miga_fast._backend import OPS

    cpu = torch.device("cpu")
    # float32 CPU tensors: the C++ kernels; half on CPU: not the C++ kernels (float32/float64), not the
    # Triton interpreter (auto never takes it), so the reference
    assert OPS["pgd_step_linf_"].select(cpu, torch.float32) == "cpu"
    assert OPS["pgd_step_linf_"].select(cpu, torch.float16) == "reference"
    # MINE computes half in float32 before dispatch: the C++ kernel takes it
    assert OPS["mine_row_lse"].select(cpu, torch.float16) == "cpu"
    # the SSIM map comes from the reference only
    assert OPS["ssim"].select(cpu, torch.float32, return_map=False) == "cpu"
    assert OPS["ssim"].select(cpu, torch.float32, return_map=True) == "reference"
    # the CUDA ball takes 4096 candidates at most; on CUDA tensors more go to Triton (when it is built)
    cuda = torch.device("cuda")
    ball = OPS["ssim_ball_scale"]
    why = ball.not_supported_reasons("cuda", cuda, torch.float32, candidates=5000)
    assert any("candidates <= 4096" in r for r in why)
    if miga_fast.backends()["cuda"]["built"]:
        assert ball.not_supported_reasons("cuda", cuda, torch.float32, candidates=4096) == []
    if miga_fast.backends()["triton"]["built"]:
        assert ball.select(cuda, torch.float32, candidates=5000) == "triton"


def test_a_named_backend_that_cannot_run_lists_every_backend_and_why():
    x = torch.rand(2, 3, 16, 16)
    with miga_fast.set_backend("cpu"):
        with pytest.raises(BackendUnavailableError) as info:
            ops.ssim(x, x.clone(), return_map=True)
    text = str(info.value)
    assert "backend 'cpu' cannot run ssim" in text
    for line in ("  cuda: ", "  cpu: ", "  triton: ", "  reference: can run"):
        assert line in text, text
    assert "return_map=False" in text and "set_backend('auto')" in text
    # every named failure is raised before anything is written
    d = torch.full_like(x, 0.01).half()
    before = d.clone()
    with miga_fast.set_backend("cpu"):
        with pytest.raises(BackendUnavailableError, match="takes float32/float64, got float16"):
            ops.pgd_step_(d, torch.ones_like(d), x.half(), 0.1, 0.01)
    assert torch.equal(d, before)


def test_the_cli_prints_the_table_per_op():
    out = _cli("backends")
    assert out.returncode == 0, out.stderr
    for name in OP_NAMES:
        assert f"\n{name}  [" in out.stdout
    assert "candidates <= 4096" in out.stdout and "return_map=False" in out.stdout
    assert set(json.loads(_cli("backends", "--json").stdout)["ops"]) == OP_NAMES


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision_is_as_close_as_the_reference(dtype, rng):
    """The Triton kernels take half precision (they compute in float32): against the float64
    reference on the same rounded inputs they must be at least as close as the reference run
    in that dtype (within one rounding of the dtype)."""
    if not miga_fast.backends()["triton"]["runs_here"]:
        pytest.skip("Triton cannot run here")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(2, 3, 16, 16, generator=rng).to(dev, dtype)
    y = (x.float() + 0.2 * torch.randn(2, 3, 16, 16, generator=rng).to(dev)).clamp(0, 1).to(dtype)
    g = torch.randn(2, 3, 16, 16, generator=rng).to(dev, dtype)
    ulp = torch.finfo(dtype).eps

    def run(backend, exact=False):
        cast = (lambda t: t.double()) if exact else (lambda t: t)
        with miga_fast.set_backend(backend):
            d = cast(torch.zeros_like(x))
            ops.pgd_step_(d, cast(g), cast(x), 0.1, 0.03, norm="l2")
            w = cast(y - x)
            ops.ssim_window_ball_project_(w, cast(x), 0.8)
            return [ops.ssim(cast(x), cast(y)), ops.ssim_ball_scale(cast(y - x), cast(x), 0.97), d, w]

    truth = run("reference", exact=True)
    for name, tri, ref, t in zip(("ssim", "ball", "pgd_l2", "window_ball"), run("triton"), run("reference"), truth):
        err_tri = (tri.double() - t).abs().max().item()
        err_ref = (ref.double() - t).abs().max().item()
        assert err_tri <= err_ref + 2 * ulp, (name, err_tri, err_ref)


def test_the_tables_without_a_cuda_build(monkeypatch):
    """A CPU-only build (the package check's wheel): every CUDA entry says why, and neither
    backends() nor a named 'cuda' backend recurses or fails."""
    from miga_fast import _backend

    monkeypatch.setitem(_backend._BUILT, "cuda", False)
    for op in _backend.OPS.values():
        monkeypatch.setattr(op, "_built", {"reference": ()})
    info = miga_fast.backends()
    assert not info["cuda"]["built"]
    for table in info["ops"].values():
        assert table["cuda"]["built"] is False and table["cuda"]["reasons"]
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' is not available"):
        miga_fast.set_backend("cuda")


# ------------------------------------------------------------------ CPU threads
needs_cpp = pytest.mark.skipif(miga_fast._extension.load() is None, reason="needs the built extension")


@needs_cpp
@pytest.mark.skipif(
    not torch.backends.openmp.is_available() or (os.cpu_count() or 1) < 2, reason="needs OpenMP torch and 2 CPUs"
)
def test_cpu_kernels_run_on_every_intra_op_thread():
    """The CPU kernels' at::parallel_for really forks (a build without -fopenmp runs it
    serially on one thread, silently)."""
    from miga_fast import _C

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _C.cpu_parallel_threads() == 2
        torch.set_num_threads(1)
        assert _C.cpu_parallel_threads() == 1
    finally:
        torch.set_num_threads(before)


@needs_cpp
def test_cpu_results_do_not_depend_on_the_thread_count(rng):
    """Bit for bit the same results on 1 and 2 threads: every reduction runs in a fixed
    order inside one task (projection l2 and MI-FGSM, SSIM, the MINE bound)."""
    x = torch.rand(5, 3, 41, 37, generator=rng)
    g = torch.randn(5, 3, 41, 37, generator=rng)
    d = (torch.rand(5, 3, 41, 37, generator=rng) - 0.5) * 0.1
    y = (x + 0.1 * torch.randn(5, 3, 41, 37, generator=rng)).clamp(0, 1)
    u, v, w = (torch.randn(300, 16, generator=rng) for _ in range(3))

    def outputs():
        with miga_fast.set_backend("cpu"):
            l2 = ops.pgd_step_(d.clone(), g, x, 0.5, 0.1, "l2")
            m = torch.zeros_like(d)
            mi = ops.mi_fgsm_step_(d.clone(), m, g, x, 8 / 255, 2 / 255)
            xx = x.clone().requires_grad_(True)
            s = ops.ssim(xx, y)
            (gs,) = torch.autograd.grad(s.sum(), xx)
            lse = torch.ops.miga_fast.mine_row_lse(u, v, w[0], 0, True)
        return [l2, mi, m, s.detach(), gs, lse]

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs()
        torch.set_num_threads(2)
        two = outputs()
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)
