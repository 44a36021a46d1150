"""Dataset runs over several processes with torch.distributed (docs/scaling.md).

A run (DenoiserAttack.run, `miga-fast attack`) started under `torchrun --nproc-per-node N`
(one node or several) shards its batches by rank: batch i goes to rank i mod N. Each
batch's randomness (its noise, the attack's random start, anything drawn from the global
generator) is seeded by the run's seed and the batch index alone, so the merged results
do not depend on N. Each rank appends its records to its own log, and rank 0 merges them.

Nothing here is needed for one process: without torch.distributed initialised (and
without torchrun's environment), rank is 0 and world is 1.
"""

from __future__ import annotations

import contextlib
import os

import torch


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextlib.contextmanager
def process_group(device: str | torch.device | None = None):
    """Under torchrun (WORLD_SIZE > 1), a process group for the block: NCCL when the
    device is a GPU, gloo otherwise; torn down afterwards. Anywhere else, nothing."""
    import torch.distributed as dist

    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    cuda = device is not None and torch.device(device).type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if rank_world()[1] > 1:
        dist.barrier()


def agree(error: str | None) -> str | None:
    """Every rank's error message, or None: the first non-None message of any rank (so that
    all ranks stop together instead of some waiting forever at the next barrier)."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return error
    gathered = [None] * rank_world()[1]
    dist.all_gather_object(gathered, error)
    return next((e for e in gathered if e is not None), None)


def device_for_rank(device: str | torch.device) -> torch.device:
    """A GPU run under torchrun uses the GPU of its local rank (cuda:LOCAL_RANK)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch `batch` of a run seeded `seed`: the same on every rank, for any N."""
    return (seed * 1_000_003 + batch) % (2**63 - 1)


@contextlib.contextmanager
def seeded_batch(seed: int, batch: int, device: torch.device):
    """The global generators (CPU, and the device's when it is a GPU) seeded for this batch
    alone, and restored afterwards: whatever an attack draws from them depends on the
    batch, not on which rank runs it or what ran before."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(batch_seed(seed, batch))
        yield
