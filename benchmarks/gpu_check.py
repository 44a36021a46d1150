"""`make gpu-check`: everything a GPU can prove, in one command, for whoever holds an H100
or H200 for ten minutes.

With a GPU, in order, each part timed and bounded:
  1. build     the extension for this GPU's architecture (TORCH_CUDA_ARCH_LIST from the
               device), installed into the running Python; peers carried as wheels in
               .whl/ (torchattacks, pytorch-msssim, fused-ssim) are installed first
  2. tests     the whole test suite on the GPU (the CUDA and Triton backends run for real;
               the emulated-CUDA module is left out: the real kernels replace it)
  3. sanitize  compute-sanitizer memcheck and racecheck over tests/sanitizer_cases.py (every
               CUDA kernel family once, small shapes, checked against the references)
  4. bench     every benchmark in a short mode that still times the named peers (the
               torch.compile'd reference, torchattacks' step, pytorch-msssim, eager PyTorch)
Then one JSON and one Markdown summary in benchmarks/results/ (gpu_check_<device>.json/.md):
the device, driver, CUDA, torch and Triton versions, each part's time and outcome, and
each performance goal met or not.

Without a GPU it says so, does what can run (the build, the emulated CUDA tests, the
sanitizer cases on the C++ kernels, the benchmarks' CPU short mode) and exits 0 when
those pass; CI runs this dry path. Exit status: 0 when every part that ran passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "bench-out" / "gpu_check"
# Seconds per part on an H200 (the whole check must fit in 8 minutes), and the
# benchmarks each part runs.
BUDGET = {"build": 150, "tests": 120, "sanitize": 60, "bench": 150}
BENCH_TIMEOUT = {"projection": 40, "ssim": 30, "mine": 30, "attack": 50}  # within BUDGET["bench"]
# bench_purify is not in the budget (its first call compiles the reference step): run it by
# hand in a GPU session (docs/kernels.md, "First GPU session"); goals() reads its JSON when
# it is passed in as bench["purify"].


def python() -> str:
    return sys.executable


def sh(cmd, timeout, env=None, log=None) -> tuple[int, float, str]:
    """Run `cmd`; (exit status, seconds, the output's tail). 124 on a timeout."""
    start = time.perf_counter()
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = 124
        out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        out += f"\n[timed out after {timeout} s]"
    seconds = time.perf_counter() - start
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(map(str, cmd))}\n{out}")
    return rc, seconds, "\n".join(out.strip().splitlines()[-15:])


def environment(gpu: bool) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": None,
        "capability": None,
        "driver": None,
        "nvcc": None,
        "triton": None,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - not installed or broken: reported as missing
        pass
    if gpu:
        env["gpu"] = torch.cuda.get_device_name()
        major, minor = torch.cuda.get_device_capability()
        env["capability"] = f"{major}.{minor}"
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        env["driver"] = out.stdout.strip() or None
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        env["nvcc"] = out.strip().splitlines()[-1] if out.strip() else None
    return env


# ------------------------------------------------------------------------------- parts


def part_build(gpu: bool, env: dict) -> dict:
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if wheels:  # the peers a GPU machine lacks, carried as wheels
        sh([python(), "-m", "pip", "install", "-q", "--no-index", "--no-deps", *map(str, wheels)], 120)
    build_env = {"MIGA_FAST_CUDA": "1"} if gpu else {}
    if gpu:
        build_env["TORCH_CUDA_ARCH_LIST"] = env["capability"]
    cmd = [python(), "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "."]
    rc, s, tail = sh(cmd, BUDGET["build"] * (1 if gpu else 3), build_env, WORK / "build.log")
    if rc == 0:  # the build must load and say what it holds (run outside the source tree)
        probe = subprocess.run(
            [python(), "-c", "import miga_fast, json; print(json.dumps(miga_fast.backends()))"],
            cwd=WORK,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if probe.returncode != 0:
            rc, tail = probe.returncode, probe.stderr.strip()[-2000:]
        else:
            info = json.loads(probe.stdout.strip().splitlines()[-1])
            if not info["cpu"]["built"] or (gpu and not info["cuda"]["runs_here"]):
                rc, tail = 1, f"the build does not run here: cpu {info['cpu']['note']}; cuda {info['cuda']['note']}"
    return {"rc": rc, "seconds": s, "tail": tail, "wheels": [w.name for w in wheels]}


def part_tests(gpu: bool) -> dict:
    # -P: the source folder stays off sys.path, so the tests import the installed build
    cmd = [python(), "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if gpu:
        cmd += ["tests", "--ignore", "tests/test_cuda_emulated.py"]
        try:
            import xdist  # noqa: F401

            cmd += ["-n", str(min(8, os.cpu_count() or 1))]
        except ImportError:
            pass
    else:
        cmd += ["tests/test_cuda_emulated.py"]
    rc, s, tail = sh(cmd, BUDGET["tests"] * (1 if gpu else 4), None, WORK / "tests.log")
    return {"rc": rc, "seconds": s, "tail": tail, "summary": tail.splitlines()[-1] if tail else ""}


def part_sanitize(gpu: bool) -> dict:
    case = [python(), "tests/sanitizer_cases.py"]
    if not gpu:  # the cases themselves, on the C++ kernels
        rc, s, tail = sh(case + ["cpu"], 120, None, WORK / "sanitize.log")
        return {"rc": rc, "seconds": s, "tail": tail, "tools": {}}
    sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not Path(sanitizer).exists():
        return {"rc": 1, "seconds": 0.0, "tail": "compute-sanitizer not found", "tools": {}}
    results, total, worst = {}, 0.0, 0
    for tool in ("memcheck", "racecheck"):
        cmd = [sanitizer, "--tool", tool, "--error-exitcode", "3", "--print-limit", "20", *case]
        rc, s, tail = sh(cmd, BUDGET["sanitize"] // 2, None, WORK / f"sanitize_{tool}.log")
        results[tool] = {"rc": rc, "seconds": s, "tail": tail}
        total += s
        worst = worst or rc
    return {
        "rc": worst,
        "seconds": total,
        "tail": "\n".join(f"{k}: rc {v['rc']}" for k, v in results.items()),
        "tools": results,
    }


def bench_commands(gpu: bool) -> dict:
    b = [python()]
    if gpu:
        return {
            "projection": b
            + [
                "benchmarks/bench_projection.py",
                "--sizes",
                "64x3x224x224,64x3x64x64",
                "--reps",
                "3",
                "--min-time",
                "0.02",
                "--no-in-graph",  # its compiles do not fit the budget: run it apart (benchmarks/README.md)
            ],
            "ssim": b + ["benchmarks/bench_ssim.py", "--quick"],
            "mine": b + ["benchmarks/bench_mine.py", "--sizes", "4096x256", "--rounds", "2", "--min-time", "0.05"],
            "attack": b + ["benchmarks/bench_attack.py", "--quick", "--steps", "5", "--rounds", "2"],
        }
    return {
        "projection": b + ["benchmarks/bench_projection.py", "--quick", "--reps", "1", "--min-time", "0.01"],
        "ssim": b + ["benchmarks/bench_ssim.py", "--quick", "--rounds", "1", "--min-time", "0.01"],
        "mine": b + ["benchmarks/bench_mine.py", "--sizes", "256x32", "--rounds", "1", "--min-time", "0.01"],
    }


def part_bench(gpu: bool) -> dict:
    results, total, worst, tails = {}, 0.0, 0, []
    commands = bench_commands(gpu)
    for name, cmd in commands.items():
        out = WORK / f"{name}.json"
        rc, s, tail = sh(
            cmd + ["--out", str(out)], BENCH_TIMEOUT[name] * (1 if gpu else 4), None, WORK / f"bench_{name}.log"
        )
        total += s
        worst = worst or rc
        tails.append(f"{name}: rc {rc}, {s:.0f} s")
        results[name] = json.loads(out.read_text()) if rc == 0 and out.exists() else None
    return {"rc": worst, "seconds": total, "tail": "\n".join(tails), "results": results}


# ------------------------------------------------------------------------------- goals


def _rows(result, **match):
    return [r for r in (result or {}).get("rows", []) if all(r.get(k) == v for k, v in match.items())]


def goals(bench: dict) -> list[dict]:
    """Each performance goal of the issues, measured or not, from this run's benchmarks."""
    out = []
    proj = bench.get("projection")
    for row in _rows(proj, impl="miga_fast cuda"):
        cache = row.get("cache", "warm")
        comp = _rows(proj, impl="reference (torch.compile)", norm=row["norm"], shape=row["shape"], cache=cache)
        shape = "x".join(map(str, row["shape"])) + f" ({cache} cache)"
        if comp:
            out.append(
                {
                    "goal": f"projection {row['norm']} {shape}: CUDA step no slower than the torch.compile'd reference",
                    "value": f"{row['ms']:.4f} vs {comp[0]['ms']:.4f} ms",
                    "met": row["ms"] <= comp[0]["ms"],
                }
            )
        out.append(
            {
                "goal": f"projection {row['norm']} {shape}: fraction of the copy bandwidth",
                "value": f"{row['fraction_of_copy_bw']:.0%}",
                "met": None,
            }
        )
    ssim = bench.get("ssim")
    for row in _rows(ssim, impl="miga_fast cuda", **{"pass": "forward+backward"}):
        if row.get("speedup_vs_pytorch_msssim"):
            out.append(
                {
                    "goal": "SSIM value+gradient: CUDA vs pytorch-msssim (>= 3x)",
                    "value": f"{row['speedup_vs_pytorch_msssim']:.2f}x",
                    "met": row["speedup_vs_pytorch_msssim"] >= 3,
                }
            )
    fused = _rows(ssim, impl="fused-ssim (same)", **{"pass": "forward+backward"})
    ours = _rows(ssim, impl="miga_fast cuda (same)", **{"pass": "forward+backward"})
    if fused and ours:
        ratio = fused[0]["ms"] / ours[0]["ms"]
        out.append(
            {
                "goal": "SSIM value+gradient: CUDA vs fused-ssim, same padding (>= 2x)",
                "value": f"{ratio:.2f}x",
                "met": ratio >= 2,
            }
        )
    elif ssim is not None and ssim.get("device_type") == "cuda":
        out.append(
            {
                "goal": "SSIM value+gradient: CUDA vs fused-ssim (>= 2x)",
                "value": "fused-ssim not installed (carry its wheel in .whl/)",
                "met": None,
            }
        )
    for row in _rows(bench.get("mine"), impl="miga_fast cuda", B=4096, H=256, **{"pass": "forward+backward"}):
        out.append(
            {
                "goal": "MINE all-pairs bound B=4096 H=256 forward+backward: >= 10x eager",
                "value": f"{row['speedup_vs_eager']:.1f}x" if row.get("speedup_vs_eager") else "eager did not run",
                "met": (row.get("speedup_vs_eager") or 0) >= 10,
            }
        )
    for row in _rows(bench.get("purify"), table="step", impl="miga_fast cuda", **{"pass": "forward"}):
        shape = "x".join(map(str, row["shape"]))
        out.append(
            {
                "goal": f"sampler step {shape} outside the model: <= 2% of one UNet call",
                "value": f"{100 * row['share_of_model_call']:.2f}%",
                "met": row["share_of_model_call"] <= 0.02,
            }
        )
    for row in _rows(bench.get("attack"), path="compiled+fused"):
        out.append(
            {
                "goal": f"MIGA step, batch {row['shape'][0]}: compiled+fused >= 3x eager",
                "value": f"{row['speedup_vs_eager']:.2f}x",
                "met": row["speedup_vs_eager"] >= 3,
            }
        )
    return out


# ------------------------------------------------------------------------------- report


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


def write_report(report: dict) -> tuple[Path, Path]:
    name = slug(report["environment"]["gpu"] or "no_gpu")
    RESULTS.mkdir(parents=True, exist_ok=True)
    jpath, mpath = RESULTS / f"gpu_check_{name}.json", RESULTS / f"gpu_check_{name}.md"
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    env = report["environment"]
    lines = [
        f"# make gpu-check: {env['gpu'] or 'no GPU (dry run)'}",
        "",
        f"{report['date']}; driver {env['driver']}, CUDA {env['torch_cuda']} (nvcc: {env['nvcc']}), "
        f"torch {env['torch']}, Triton {env['triton']}, Python {env['python']}; "
        f"compute capability {env['capability']}.",
        "",
        "| part | seconds | budget | outcome |",
        "|---|---:|---:|---|",
    ]
    for name, part in report["parts"].items():
        outcome = "passed" if part["rc"] == 0 else ("skipped" if part["rc"] is None else f"FAILED (rc {part['rc']})")
        lines.append(f"| {name} | {part['seconds']:.0f} | {BUDGET[name]} | {outcome} |")
    lines += ["", f"Total {report['seconds']:.0f} s.", "", "## Goals", ""]
    if report["goals"]:
        lines += ["| goal | measured | met |", "|---|---|---|"]
        lines += [
            f"| {g['goal']} | {g['value']} | {'—' if g['met'] is None else ('yes' if g['met'] else 'no')} |"
            for g in report["goals"]
        ]
    else:
        lines.append("No GPU: no goal was measured.")
    tests = report["parts"].get("tests", {})
    if tests.get("summary"):
        lines += ["", f"Tests: {tests['summary']}"]
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath


def measure_list() -> list[str]:
    """The items of docs/kernels.md's 'First GPU session' list."""
    text = (ROOT / "docs" / "kernels.md").read_text()
    section = text.split("## First GPU session", 1)[-1].split("\n## ", 1)[0]
    return [line[2:].strip() for line in section.splitlines() if line.startswith("- ")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="build,tests,sanitize,bench", help="a comma-separated subset")
    p.add_argument("--no-report", action="store_true", help="do not write benchmarks/results/gpu_check_*")
    args = p.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available()
    env = environment(gpu)
    print(
        f"gpu-check: {env['gpu'] or 'no GPU visible: the dry path (build, emulated CUDA tests, CPU benchmarks)'}"
        f"; torch {env['torch']} (CUDA {env['torch_cuda']}), Triton {env['triton']}, driver {env['driver']}",
        flush=True,
    )
    WORK.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runners = {
        "build": lambda: part_build(gpu, env),
        "tests": lambda: part_tests(gpu),
        "sanitize": lambda: part_sanitize(gpu),
        "bench": lambda: part_bench(gpu),
    }
    parts = {}
    for name in args.parts.split(","):
        if name not in runners:
            p.error(f"unknown part {name!r}; parts: {', '.join(runners)}")
        print(f"gpu-check: {name} ...", flush=True)
        parts[name] = runners[name]()
        status = "ok" if parts[name]["rc"] == 0 else f"FAILED (rc {parts[name]['rc']}); log in {WORK}"
        print(
            f"gpu-check: {name}: {status}, {parts[name]['seconds']:.0f} s (budget {BUDGET[name]} s on an H200)",
            flush=True,
        )
        if parts[name]["rc"] != 0:
            print(parts[name]["tail"], flush=True)
    bench = parts.get("bench", {}).get("results", {}) or {}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "environment": env,
        "gpu": gpu,
        "seconds": time.perf_counter() - start,
        "parts": {k: {kk: vv for kk, vv in v.items() if kk != "results"} for k, v in parts.items()},
        "goals": goals(bench) if gpu else [],
        "benchmarks": bench,
    }
    for g in report["goals"]:
        mark = "—" if g["met"] is None else ("met" if g["met"] else "NOT met")
        print(f"  goal: {g['goal']}: {g['value']} ({mark})")
    if gpu and not args.no_report:
        jpath, mpath = write_report(report)
        print(f"gpu-check: wrote {jpath.relative_to(ROOT)} and {mpath.relative_to(ROOT)}")
    elif not args.no_report:
        (WORK / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"gpu-check: no GPU: the dry run's report is {(WORK / 'report.json').relative_to(ROOT)} "
            "(benchmarks/results/ keeps GPU reports only)"
        )
    if gpu:
        print("gpu-check: to measure by hand (docs/kernels.md, 'First GPU session'):")
        for item in measure_list():
            print(f"  - {item}")
    print(f"gpu-check: {time.perf_counter() - start:.0f} s in all", flush=True)
    failed = [k for k, v in parts.items() if v["rc"] != 0]
    if failed:
        print(f"gpu-check: FAILED parts: {', '.join(failed)}")
    print(f"gpu-check: {len(parts) - len(failed)} passed, {len(failed)} failed")  # parts, as a test runner counts
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
