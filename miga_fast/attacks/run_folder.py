"""A dataset run's folder (docs/attacks.md, "Runs over a dataset"): the locked, resumable
JSON-lines log of per-sample results, the configuration it must match, and the summary."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

import torch

from .. import distributed
from .._validation import check_int, check_scalar
from ..progress import progress_bar
from ._common import model_device
from .result import AttackResult
from .run_data import RunData, tensor_id


def run_attack(
    attack,
    data,
    out_dir,
    batch_size: int = 64,
    sigma: float = 25.0,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    num_workers: int | None = None,
) -> dict:
    """DenoiserAttack.run: see its docstring. Under torch.distributed (torchrun), rank r
    attacks batches r, r + N, ... into its own log; rank 0 merges (miga_fast.distributed)."""
    from .. import __version__
    from ..data import add_gaussian_noise

    check_int(batch_size, "batch_size", 1)
    sigma = check_scalar(sigma, "sigma")
    check_int(seed, "seed")
    rank, world = distributed.rank_world()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out_dir` {out} exists and is not a folder")
    if world > 1 and attack.carries_state:
        raise ValueError(
            f"{type(attack).__name__} carries state from batch to batch ({attack.carries_state}): its results "
            "would depend on how the batches are split among processes; run it in one process"
        )
    device = model_device(attack.denoiser_eager) or torch.device("cpu")
    run_data = RunData(data, batch_size, attack.min_batch, num_workers, pin_memory=device.type == "cuda")
    out.mkdir(parents=True, exist_ok=True)
    # Rank 0 holds the folder's lock for the whole run (it is the last to finish: it merges),
    # plans the data (its fingerprint: one loading pass), checks the configuration and mends
    # cut lines; the others wait, then start. An error there stops every rank (none is left
    # waiting at a barrier).
    with contextlib.ExitStack() as held:
        error = None
        if rank == 0:
            try:
                held.enter_context(RunLock(out))
                run_data.plan()
                check_sizes(run_data.sizes, attack)
                config = {
                    "miga_fast": __version__,
                    "attack": type(attack).__name__,
                    "parameters": attack._parameters(),
                    "models": {"denoiser": model_id(attack.denoiser_eager), "classifier": model_id(attack.classifier)},
                    "data": run_data.fingerprint,
                    "images": sum(run_data.sizes),
                    "batch_size": batch_size,
                    "sigma": sigma,
                    "seed": seed,
                }
                claim_folder(out, config, overwrite)
                for log_path in logs_of(out):
                    read_log(log_path)  # drops a line cut by an interruption
            except (ValueError, OSError, RunFolderBusyError) as exc:
                error = exc
        message = distributed.agree(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise ValueError(message)
        done = read_logs(out)
        log = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
        total = sum(run_data.sizes) if run_data.sizes is not None else None  # rank 0 knows it
        desc = attack.name if world == 1 else f"{attack.name} ({world} processes)"
        shown = progress and rank == 0  # the bar: rank 0's, counting every rank's images
        with (
            log.open("a") as f,
            progress_bar(
                total=total, desc=desc, enabled=shown, unit="img", initial=images_recorded(out) if shown else 0
            ) as bar,
        ):
            for i, x, y in run_data.batches(lambda i: i % world == rank and i not in done):
                x = x.to(device, non_blocking=True)
                gen = torch.Generator(device=x.device).manual_seed(seed + i)
                x_noisy = add_gaussian_noise(x, sigma, generator=gen)
                labels = y.to(device, non_blocking=True) if y is not None else None
                with distributed.seeded_batch(seed, i, x.device), _batch_generator(attack, seed, i, x.device):
                    res = attack.forward(x_noisy, labels if attack.classifier is not None else None, x_clean=x)
                rec = {"batch": i, "n": int(x.shape[0]), **per_sample_record(res)}
                f.write(json.dumps(rec) + "\n")
                f.flush()
                if world == 1:
                    bar.update(int(x.shape[0]))
                elif shown:  # read from the logs: every rank's records
                    bar.update(images_recorded(out) - bar.n)
            if world > 1 and shown:
                wait_for_records(out, total, bar)
        distributed.barrier()  # every rank's records are on disk
        done = read_logs(out)
        n_batches = len(run_data.sizes)
        missing = [i for i in range(n_batches) if i not in done]
        if missing:
            raise RuntimeError(f"batches {missing[:5]} of {out} have no record after the run")
        summary = summarise([done[i] for i in sorted(done) if i < n_batches])
        summary["attack"] = repr(attack)
        if world > 1:
            summary["processes"] = world
        if rank == 0:
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        distributed.barrier()  # the summary is written before any rank returns
    return summary


def check_sizes(sizes: list[int], attack) -> None:
    if not sizes:
        raise ValueError("the dataset is empty")
    if sizes[-1] < attack.min_batch:
        raise ValueError(
            f"{type(attack).__name__} needs at least {attack.min_batch} images "
            f"({attack._min_batch_reason()}); the dataset holds {sizes[-1]}"
        )


_RECORD_HEAD = re.compile(r'^\{"batch": (\d+), "n": (\d+),', re.MULTILINE)


def images_recorded(out: Path) -> int:
    """Images with a record in any log of the run folder (for the progress bar: the heads
    of the lines only, each batch once)."""
    seen = {}
    for log_path in logs_of(out):
        with contextlib.suppress(OSError):
            for batch, n in _RECORD_HEAD.findall(log_path.read_text()):
                seen.setdefault(batch, int(n))
    return sum(seen.values())


def wait_for_records(out: Path, total: int, bar, poll_s: float = 1.0, stall_s: float = 600.0) -> None:
    """Rank 0, its own batches done: keep the bar moving with the other ranks' records
    until every image has one, or nothing has moved for stall_s (then the barrier that
    follows waits, and times out as torch.distributed's barriers do)."""
    last, since = bar.n, time.monotonic()
    while bar.n < total and time.monotonic() - since < stall_s:
        time.sleep(poll_s)
        bar.update(images_recorded(out) - bar.n)
        if bar.n != last:
            last, since = bar.n, time.monotonic()


@contextlib.contextmanager
def _batch_generator(attack, seed: int, batch: int, device: torch.device):
    """An attack given a generator draws its random start, in a run, from one seeded by
    that generator's seed, the run's seed and the batch alone (the same for any sharding);
    the attack's own generator is put back afterwards."""
    own = getattr(attack, "generator", None)
    if not isinstance(own, torch.Generator):
        yield
        return
    g = torch.Generator(device=device)
    g.manual_seed(distributed.batch_seed(own.initial_seed() ^ seed, batch))
    attack.generator = g
    try:
        yield
    finally:
        attack.generator = own


def logs_of(out: Path) -> list[Path]:
    """The record logs of a run folder: results.jsonl (one process) and
    results.rank<r>.jsonl (one per rank of a distributed run), in a stable order."""
    return sorted(out.glob("results*.jsonl"))


def read_logs(out: Path) -> dict:
    """The records of every log of a run folder, by batch (read only: rank 0 mends the
    files before the ranks read them)."""
    done = {}
    for log_path in logs_of(out):
        for line in log_path.read_text().split("\n"):
            try:
                rec = json.loads(line)
                done.setdefault(rec["batch"], rec)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


class RunFolderBusyError(RuntimeError):
    """Another run is writing to the same output folder."""


class RunLock:
    """An exclusive lock on a run folder (out_dir/.lock), held while a run writes to it;
    released when the run ends, or when its process dies."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise RunFolderBusyError(
                f"another run is writing to {self.path.parent} (it holds {self.path}); "
                "wait for it or choose another folder"
            ) from None
        except ImportError:  # no fcntl (Windows): no lock
            pass
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None
        return False


def claim_folder(out: Path, config: dict, overwrite: bool) -> None:
    """Resume only a folder written by the same configuration; overwrite=True starts anew."""
    cfg_path, summary = out / "config.json", out / "summary.json"
    if overwrite:
        for p in (*logs_of(out), summary, cfg_path):
            p.unlink(missing_ok=True)
    elif cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{cfg_path} is unreadable ({exc}); pass overwrite=True to start anew") from exc
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            if "parameters" in diff:
                p_old, p_new = old.get("parameters", {}), config["parameters"]
                diff += [f"parameters.{k}" for k in sorted(set(p_old) | set(p_new)) if p_old.get(k) != p_new.get(k)]
            raise ValueError(
                f"{out} holds a run of another configuration (it differs in {', '.join(diff)}); "
                "resume it with the same settings, choose another folder, or pass overwrite=True "
                "(CLI: --overwrite) to delete its results"
            )
    elif any(p.stat().st_size for p in logs_of(out)):
        raise ValueError(
            f"{out} holds results without a config.json (a run of unknown configuration); "
            "choose another folder or pass overwrite=True (CLI: --overwrite)"
        )
    cfg_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def model_id(model) -> dict | None:
    """A model's identity: its class and the SHA-256 of its state dict (names, dtypes,
    shapes and values)."""
    if model is None:
        return None
    h = hashlib.sha256()
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name in sorted(state):
        h.update(name.encode())
        h.update(tensor_id(state[name]).encode())
    return {"class": type(model).__name__, "sha256": h.hexdigest()}


def read_log(log: Path) -> dict:
    """The complete records of a previous run, by batch. A line cut by an interruption
    (or otherwise unreadable) is dropped from the file, so its batch is redone cleanly."""
    if not log.exists():
        return {}
    text = log.read_text()
    done, kept, dropped = {}, [], False
    for line in text.split("\n"):
        if not line:
            continue
        try:
            rec = json.loads(line)
            batch = rec["batch"]
        except (json.JSONDecodeError, KeyError, TypeError):
            dropped = True
            continue
        if batch not in done:
            done[batch] = rec
            kept.append(line)
    if dropped or (text and not text.endswith("\n")):
        log.write_text("".join(line + "\n" for line in kept))
    return done


def per_sample_record(res: AttackResult) -> dict:
    rec = {
        "psnr": res.psnr.tolist(),
        "ssim": res.ssim.tolist(),
        "ssim_vs_denoised": res.ssim_vs_denoised.tolist(),
        "linf": res.linf.tolist(),
        "l2": res.l2.tolist(),
        "psnr_vs_denoised": [x if math.isfinite(x) else None for x in res.psnr_vs_denoised.tolist()],
        "seconds": res.seconds,
    }
    if res.success is not None:
        rec["success"] = res.success.tolist()
        rec["correct_before"] = res.correct_before.tolist()
    return rec


def summarise(records: list[dict]) -> dict:
    def flat(key):
        return [v for r in records for v in r.get(key, []) if v is not None]

    n = sum(r["n"] for r in records)
    summary = {
        "n": n,
        "batches": len(records),
        "psnr": mean_of(flat("psnr")),
        "ssim": mean_of(flat("ssim")),
        "psnr_vs_denoised": mean_of(flat("psnr_vs_denoised")),
        "ssim_vs_denoised": mean_of(flat("ssim_vs_denoised")),
        "linf": max(flat("linf"), default=float("nan")),
        "l2": mean_of(flat("l2")),
        "images_per_s": n / max(sum(r["seconds"] for r in records), 1e-9),
    }
    if all("success" in r for r in records):
        ok = [s for r in records for s, c in zip(r["success"], r["correct_before"]) if c]
        summary["asr"] = mean_of([float(s) for s in ok])
        summary["correct_before"] = len(ok)
    return summary


def mean_of(values):
    return sum(values) / len(values) if values else float("nan")
