"""How the jobs of a benchmark are split over processes: torchrun ranks, manual shards, or one process.

Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set) :class:`Dist` initialises the
process group (nccl on CUDA, gloo on CPU) and pins each rank to ``cuda:LOCAL_RANK``; rank 0 decides
(configuration, the pending jobs) and :meth:`Dist.broadcast` tells the others. Without torchrun,
``--shard i/n`` takes the jobs whose index in the full job list is ``i`` modulo ``n``, for batch
schedulers that start independent processes.

A job is a tuple whose last entry is the item (an image index, a seed) and whose other entries name
its group: consecutive jobs of one group run as one batch (:func:`batches`). Nothing here knows what
a job computes; :func:`my_jobs` picks a process's share of the pending jobs.
"""
from __future__ import annotations

import datetime
import os
import sys

import torch

from ..errors import InputError

DIST_TIMEOUT = datetime.timedelta(hours=48)  # a rank that finishes early waits this long at the barrier


def parse_shard(text):
    """``"i/n"`` -> ``(i, n)`` (None for None)."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard must be i/n (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {text}: need 0 <= i < n")
    return i, n


class Dist:
    """torchrun ranks, a manual shard ``(i, n)`` (``--shard i/n``), or one process."""

    def __init__(self, shard: str | None = None, device="cpu"):
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.torchrun = self.world > 1
        self.initialized_here = False
        self.shard = parse_shard(shard)
        if self.torchrun and self.shard is not None:
            raise InputError("--shard cannot be combined with torchrun (the ranks already split the jobs)")
        self.device = device
        if self.torchrun:
            import torch.distributed as dist

            cuda = torch.device(device).type == "cuda"
            if cuda:
                self.device = f"cuda:{self.local_rank}"
                torch.cuda.set_device(self.local_rank)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo", timeout=DIST_TIMEOUT)
                self.initialized_here = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """A manual split into more than one shard."""
        return self.shard is not None and self.shard[1] > 1

    @property
    def tag(self) -> str | None:
        """The name of this process's own results file part (None: the process writes the main file)."""
        if self.torchrun:
            return f"rank{self.rank}"
        if self.sharded:
            return f"shard{self.shard[0]}of{self.shard[1]}"
        return None

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (``obj`` itself without torchrun)."""
        if not self.torchrun:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.torchrun:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()

    def say(self, msg: str) -> None:
        """Print to stderr once (rank 0)."""
        if self.is_main:
            print(msg, file=sys.stderr, flush=True)


def batches(jobs, size: int) -> list[tuple]:
    """Consecutive jobs of the same group (all entries but the last), in chunks of at most ``size``
    items: ``[(*group, [item, ...]), ...]``."""
    out, cur = [], None
    for job in jobs:
        group, item = tuple(job[:-1]), job[-1]
        if cur is not None and cur[:-1] == group and len(cur[-1]) < size:
            cur[-1].append(item)
        else:
            cur = (*group, [item])
            out.append(cur)
    return out


def my_jobs(dist: Dist, jobs: list, is_done, batch: int) -> list:
    """This process's share of the jobs not done (``is_done(job)``): under torchrun every ``world``-th
    batch of the pending jobs (batches of at most ``batch``, smaller when there are few jobs, so every
    rank works); with ``--shard i/n`` the jobs of index ``i`` modulo ``n`` in the full list; else all."""
    if dist.torchrun:
        pending = [j for j in jobs if not is_done(j)]
        size = max(1, min(batch, len(pending) // dist.world))
        return [(*b[:-1], i) for b in batches(pending, size)[dist.rank::dist.world] for i in b[-1]]
    if dist.shard is not None:
        i, k = dist.shard
        return [j for j in jobs[i::k] if not is_done(j)]
    return [j for j in jobs if not is_done(j)]
