"""Backend selection, build reporting and the `miga-fast backends` command."""
import json
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
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", ext.__file__], capture_output=True, text=True,
                         timeout=120).stdout
    assert dis.count("ymm") > 200, "no AVX2 code in miga_fast._C: the target pragma did not take effect"
