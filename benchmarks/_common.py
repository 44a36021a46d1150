"""Shared by the benchmark scripts: the command line, timing, device names, the result
record and its JSON output."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import miga_fast
from miga_fast.nvtx import nvtx_range

ROOT = Path(__file__).resolve().parent


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"{platform.processor() or 'CPU'} ({torch.get_num_threads()} threads)"


def compiled_backends(op: str, device: torch.device) -> list[str]:
    """The compiled backends that can run `op` (its name in torch.ops.miga_fast) on float32
    tensors of `device`, from the op's dispatch table; Triton's CPU interpreter is no
    benchmark, so CPU runs leave it out."""
    table = miga_fast._backend.OPS[op]
    return [b for b in table.runnable(device) if b != "reference" and not (b == "triton" and device.type == "cpu")]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device, warmup: int, reps: int, min_time: float) -> float:
    """Median seconds per call: `reps` samples, each enough calls to last `min_time`."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


@contextlib.contextmanager
def call_context(backend, checks, range_name: str):
    """A timed call's context: its miga_fast backend ("auto" for None), value checks on or
    off, and an NVTX range for Nsight."""
    with miga_fast.set_backend(backend or "auto"), miga_fast.value_checks(checks), nvtx_range(range_name):
        yield


def interleaved_times(cases: dict, device, rounds: int, min_time: float) -> dict:
    """Times several implementations in interleaved rounds, so a noisy machine slows them
    alike. cases: key -> (fn, context), where context() gives the context manager a call
    runs in (backend, value checks, NVTX range). Round 0 calls each once, untimed (warm-up,
    compilation); each later round times each once (time_call, min_time seconds), in the
    order of `cases`. Returns key -> the list of seconds per call. A context is usually
    functools.partial(call_context, backend, checks, range_name)."""
    times = {key: [] for key in cases}
    for rnd in range(rounds + 1):
        for key, (fn, context) in cases.items():
            with context():
                if rnd == 0:
                    fn()
                else:
                    times[key].append(time_call(fn, device, 1, 1, min_time))
    return times


def _cpu_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_extra_bytes(fn, device):
    """Memory the call needs beyond what was allocated before it (None if unmeasurable)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not _cpu_peak_reset():
        return None
    base = _cpu_peak()
    fn()
    return max(0, _cpu_peak() - base)


def strongest_peer(medians: dict) -> str | None:
    """The fastest implementation not miga_fast's own, from name -> seconds (None when
    there is none)."""
    peers = {n: t for n, t in medians.items() if not n.startswith("miga_fast")}
    return min(peers, key=peers.get) if peers else None


def write_json(result: dict, family: str, out: str | None, quick: bool) -> Path:
    """results/<family>_<device>.json for a full run, bench-out/<family>_quick.json for a
    quick one, or `out`."""
    if out:
        path = Path(out)
    elif quick:
        path = ROOT.parent / "bench-out" / f"{family}_quick.json"
    else:
        slug = "".join(c if c.isalnum() else "_" for c in result["device"].split(" (")[0]).strip("_").lower()
        path = ROOT / "results" / f"{family}_{result['device_type']}_{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {os.path.relpath(path)}")
    return path


def parse_sizes(text: str | None, dims: int):
    """--sizes "64x3x224x224,16x3x128x128" -> [(64, 3, 224, 224), ...] (None: None)."""
    if not text:
        return None
    sizes = []
    for item in text.split(","):
        parts = tuple(int(v) for v in item.lower().split("x"))
        if len(parts) != dims or min(parts) < 1:
            raise SystemExit(f"--sizes: {item!r} is not {dims} positive integers joined by 'x'")
        sizes.append(parts)
    return sizes


def bench_parser(doc: str, quick_help: str = "a short run: fewer sizes and samples") -> argparse.ArgumentParser:
    """The options every benchmark takes (--device, --quick, --out); scripts add their own."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument(
        "--out",
        default=None,
        help="JSON path (default: benchmarks/results/<family>_<device>.json; bench-out/ with --quick)",
    )
    return p


def result_record(family: str, device: torch.device, args, rows: list, **extra) -> dict:
    """A benchmark's JSON record: the machine and versions, its settings, the rows."""
    return {
        "benchmark": family,
        "device": device_name(device),
        "device_type": device.type,
        **extra,
        "torch": torch.__version__,
        "miga_fast": miga_fast.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "rows": rows,
    }


def finish(result: dict, family: str, args, print_table) -> int:
    """Print the table, write the JSON; the script's exit status."""
    print_table(result)
    write_json(result, family, args.out, args.quick)
    return 0
