"""benchmarks/gpu_check.py's GPU-only logic, run here on made-up benchmark results: the
goals it derives and the summary it writes (the GPU path itself runs only on a GPU)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench():
    shape = [64, 3, 224, 224]
    return {
        "projection": {
            "rows": [
                {
                    "norm": "linf",
                    "shape": shape,
                    "impl": "reference (torch.compile)",
                    "cache": "warm",
                    "ms": 0.30,
                    "fraction_of_copy_bw": 0.5,
                },
                {
                    "norm": "linf",
                    "shape": shape,
                    "impl": "miga_fast cuda",
                    "cache": "warm",
                    "ms": 0.20,
                    "fraction_of_copy_bw": 0.8,
                },
                {
                    "norm": "l2",
                    "shape": shape,
                    "impl": "reference (torch.compile)",
                    "cache": "warm",
                    "ms": 0.30,
                    "fraction_of_copy_bw": 0.5,
                },
                {
                    "norm": "l2",
                    "shape": shape,
                    "impl": "miga_fast cuda",
                    "cache": "warm",
                    "ms": 0.40,
                    "fraction_of_copy_bw": 0.6,
                },
            ]
        },
        "ssim": {
            "device_type": "cuda",
            "rows": [
                {
                    "shape": [16, 3, 128, 128],
                    "pass": "forward+backward",
                    "impl": "miga_fast cuda",
                    "ms": 1.0,
                    "speedup_vs_pytorch_msssim": 4.0,
                }
            ],
        },
        "mine": {
            "rows": [
                {
                    "B": 4096,
                    "H": 256,
                    "pass": "forward+backward",
                    "impl": "miga_fast cuda",
                    "ms": 2.0,
                    "speedup_vs_eager": 12.5,
                }
            ]
        },
        "attack": {"rows": [{"shape": [256, 3, 32, 32], "path": "compiled+fused", "speedup_vs_eager": 2.0}]},
    }


def test_goals_are_derived_from_the_benchmark_rows(gpu_check):
    goals = {g["goal"]: g for g in gpu_check.goals(_bench())}
    goal = "64x3x224x224 (warm cache): CUDA step no slower than the torch.compile'd reference"
    assert goals[f"projection linf {goal}"]["met"]
    assert not goals[f"projection l2 {goal}"]["met"]
    assert goals["SSIM value+gradient: CUDA vs pytorch-msssim (>= 3x)"]["met"]
    assert goals["SSIM value+gradient: CUDA vs fused-ssim (>= 2x)"]["met"] is None  # not installed: said so
    assert goals["MINE all-pairs bound B=4096 H=256 forward+backward: >= 10x eager"]["met"]
    assert not goals["MIGA step, batch 256: compiled+fused >= 3x eager"]["met"]
    assert gpu_check.goals({}) == []


def test_report_names_the_device_and_every_part(gpu_check, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "RESULTS", tmp_path)
    env = {
        "gpu": "NVIDIA H200",
        "driver": "580",
        "torch_cuda": "13.0",
        "nvcc": "13.0",
        "torch": "2.11",
        "triton": "3.6",
        "python": "3.12",
        "capability": "9.0",
    }
    parts = {"build": {"rc": 0, "seconds": 95.0}, "tests": {"rc": 1, "seconds": 80.0, "summary": "1 failed"}}
    report = {"date": "today", "environment": env, "seconds": 175.0, "parts": parts, "goals": gpu_check.goals(_bench())}
    jpath, mpath = gpu_check.write_report(report)
    assert jpath.name == "gpu_check_nvidia_h200.json" and json.loads(jpath.read_text())["parts"]["tests"]["rc"] == 1
    text = mpath.read_text()
    assert "NVIDIA H200" in text and "| build | 95 | 150 | passed |" in text and "FAILED (rc 1)" in text
    assert "| MINE all-pairs bound B=4096 H=256 forward+backward: >= 10x eager | 12.5x | yes |" in text


def test_every_benchmark_has_a_gpu_command_within_the_budget(gpu_check):
    gpu = gpu_check.bench_commands(True)
    assert set(gpu) == {"projection", "ssim", "mine", "attack"} == set(gpu_check.BENCH_TIMEOUT)
    assert sum(gpu_check.BENCH_TIMEOUT.values()) <= gpu_check.BUDGET["bench"]
    assert sum(gpu_check.BUDGET.values()) <= 8 * 60
    for cmd in gpu.values():
        assert (ROOT / cmd[1]).exists()


def test_the_measurement_list_comes_from_docs_kernels(gpu_check):
    """On a GPU the check prints what must be measured by hand: docs/kernels.md's list."""
    items = gpu_check.measure_list()
    assert len(items) >= 5 and any("MINE" in i for i in items) and any("float64" in i for i in items)
