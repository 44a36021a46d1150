"""Benchmark of a dataset run split among processes (miga_fast.distributed, docs/scaling.md):
`miga-fast attack` on the shipped digits models, as one process and under
`torchrun --standalone --nproc-per-node N`, in images per second.

Two figures per row: the whole command, from launch to exit (what a user waits for: the
start-up of N interpreters, the models loaded N times, the process group), and the attack
alone (the images over the slowest rank's summed per-batch seconds, from the records).
The cores are shared out: each of the N processes gets cores / N threads (OMP_NUM_THREADS),
so that one process with every core is the baseline. Every run also checks that its
merged records equal the one-process run's (value checks on: the run's own).

A second table streams an image folder (the digits written as 512 x 512 PNGs, read back
at 32 x 32 with --size: a decode and a resize per image, as for a user's photos) in one
process, with 0 and 2 DataLoader worker processes (--workers), and checks that both give
the same records.

    python benchmarks/bench_scale.py            # 1 and 2 processes (and 4 on a GPU machine)
    python benchmarks/bench_scale.py --quick    # fewer images
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from miga_fast.attacks import run_folder

from _common import bench_parser, finish, result_record

BIN = Path(sys.executable).parent


def _command(nproc: int, n: int, steps: int, out: Path, data: str = "digits", extra=()) -> list[str]:
    cli = shutil.which("miga-fast", path=str(BIN))
    args = ["attack", "--denoiser", "dncnn_digits", "--classifier", "cnn_digits", "--data", data, *extra]
    args += ["--batch-size", "16", "--steps", str(steps), "--n-images", str(n), "--out", str(out)]
    if nproc == 1:
        return [cli, *args]
    torchrun = shutil.which("torchrun", path=str(BIN))
    return [torchrun, "--standalone", "--nproc-per-node", str(nproc), cli, *args]


def _records(out: Path) -> dict:
    return {b: {k: v for k, v in r.items() if k != "seconds"} for b, r in run_folder.read_logs(out).items()}


def _slowest_rank_seconds(out: Path) -> float:
    return max(sum(json.loads(line)["seconds"] for line in log.read_text().splitlines()) for log in out.glob("*.jsonl"))


def _timed(command: list[str], threads: int, out: Path, what: str) -> tuple[dict, dict]:
    """Runs one command with `threads` threads per process; (its records, its timings)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{what}: the run failed:\n{done.stderr[-3000:]}")
    records = _records(out)
    n = sum(r["n"] for r in records.values())  # the images attacked (a data set may hold fewer than asked)
    return records, {
        "images": n,
        "command_seconds": round(wall, 2),
        "command_images_per_s": round(n / wall, 2),
        "attack_images_per_s": round(n / _slowest_rank_seconds(out), 2),
    }


def run(args) -> dict:
    cores = os.cpu_count() or 1
    counts = [1, 2] + ([4] if cores >= 8 else [])
    n, steps = (64, 5) if args.quick else (181, 10)  # 181: every test digit
    rows, reference = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in counts:
            out = Path(tmp) / f"run{nproc}"
            threads = max(1, cores // nproc)
            records, timing = _timed(_command(nproc, n, steps, out), threads, out, f"{nproc} processes")
            reference = records if reference is None else reference
            rows.append(
                {
                    "processes": nproc,
                    "threads_per_process": threads,
                    "steps": steps,
                    **timing,
                    "same_records_as_one_process": records == reference,
                }
            )
        folder_rows = _folder_rows(Path(tmp), n, steps, cores)
    return result_record("scale", torch.device("cpu"), args, rows, cores=cores, folder_rows=folder_rows)


def _write_folder(root: Path, n: int) -> None:
    """The first n test digits (at most the 181 there are) as 512 x 512 grey PNGs in class
    folders named by index."""
    import numpy as np
    from PIL import Image

    from miga_fast import data

    x, y = data.load_digits("test")
    for i in range(min(n, x.shape[0])):
        folder = root / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        im = Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8), mode="L")
        im.resize((512, 512), Image.BICUBIC).save(folder / f"{i:05d}.png")


def _folder_rows(tmp: Path, n: int, steps: int, cores: int) -> list[dict]:
    root = tmp / "folder"
    _write_folder(root, n)
    rows, reference = [], None
    for workers in (0, 2):
        out = tmp / f"folder_w{workers}"
        extra = ("--size", "32", "--channels", "1", "--workers", str(workers))
        command = _command(1, n, steps, out, str(root), extra)
        records, timing = _timed(command, cores, out, f"folder, {workers} workers")
        reference = records if reference is None else reference
        rows.append(
            {
                "workers": workers,
                "steps": steps,
                **timing,
                "same_records_as_no_workers": records == reference,
            }
        )
    return rows


def print_table(result: dict) -> None:
    print(f"\nmiga-fast attack sharded over processes ({result['device']}, {result['cores']} cores)")
    print(f"{'processes':>9} {'threads':>7} {'command img/s':>13} {'attack img/s':>12} {'same records':>12}")
    base = result["rows"][0]
    for r in result["rows"]:
        speed = r["attack_images_per_s"] / base["attack_images_per_s"]
        print(
            f"{r['processes']:>9} {r['threads_per_process']:>7} {r['command_images_per_s']:>13.1f} "
            f"{r['attack_images_per_s']:>12.1f} {str(r['same_records_as_one_process']):>12}   ({speed:.2f}x)"
        )
    print("\nan image folder streamed (512 x 512 PNGs read at 32 x 32), one process")
    print(f"{'workers':>9} {'command img/s':>13} {'attack img/s':>12} {'same records':>12}")
    for r in result.get("folder_rows", []):
        print(
            f"{r['workers']:>9} {r['command_images_per_s']:>13.1f} {r['attack_images_per_s']:>12.1f} "
            f"{str(r['same_records_as_no_workers']):>12}"
        )


def main() -> int:
    p = bench_parser(__doc__)
    args = p.parse_args()
    return finish(run(args), "scale", args, print_table)


if __name__ == "__main__":
    sys.exit(main())
