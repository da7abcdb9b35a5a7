"""Sharding fit and score over a torch.distributed process group (``torchrun -m padim ...``).

PaDiM's statistics are sums, so ranks fit disjoint shards of the sorted image list and add their
sums with one all-reduce. Everything here is a no-op without an initialised process group of
more than one rank: a single process behaves exactly as before.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; :func:`init_from_env` then starts the group
(gloo on the CPU, NCCL when the model runs on CUDA, one GPU per LOCAL_RANK). The Python API
uses whatever group the caller initialised.
"""

from __future__ import annotations

import os
import sys


def _dist():
    import torch.distributed

    return torch.distributed


def active() -> bool:
    """True inside an initialised process group of more than one rank (torch-free when torch
    was never imported: then there is none, and padim.runtime's scoring stays without torch)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if active() else 0


def world_size() -> int:
    return _dist().get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes shared outputs."""
    return rank() == 0


def init_from_env(device: str = "auto") -> bool:
    """Start the process group torchrun describes (WORLD_SIZE > 1); True when one is active.

    ``device``: the model's device option; CUDA (asked for, or "auto" with a GPU) → NCCL and
    the GPU of LOCAL_RANK, else gloo."""
    if active():
        return True
    import torch

    dist = _dist()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return active()


def shard_range(n_items: int) -> range:
    """This rank's contiguous block of ``n_items`` (sorted) items: disjoint, covering, in order,
    so concatenating the ranks' results in rank order gives the one-process order."""
    r, w = rank(), world_size()
    return range(n_items * r // w, n_items * (r + 1) // w)


def shard(items: list) -> list:
    """This rank's contiguous block of ``items`` (see :func:`shard_range`)."""
    return [items[i] for i in shard_range(len(items))]


def _comm_device(tensor):
    """Where the backend wants tensors: CUDA for NCCL, the CPU for gloo."""
    import torch

    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum_(tensor):
    """Sum ``tensor`` over all ranks, in place (a no-op in one process)."""
    if not active():
        return tensor
    device = _comm_device(tensor)
    if tensor.device == device:
        _dist().all_reduce(tensor)
        return tensor
    moved = tensor.to(device)
    _dist().all_reduce(moved)
    tensor.copy_(moved)
    return tensor


def broadcast_(tensor, src: int = 0):
    """Overwrite ``tensor`` with rank ``src``'s, in place (a no-op in one process)."""
    if not active():
        return tensor
    device = _comm_device(tensor)
    moved = tensor if tensor.device == device else tensor.to(device)
    _dist().broadcast(moved, src)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def all_gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not active():
        return [obj]
    gathered = [None] * world_size()
    _dist().all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src)
    return box[0]


def barrier() -> None:
    if active():
        _dist().barrier()


def all_reduce_stats_(stats) -> None:
    """Sum a :class:`padim.gaussian.GaussianStats` over all ranks, in place.

    The ranks first re-express their sums about one shift (that of the lowest rank with samples),
    then all-reduce count, Σx and the packed Σxxᵀ in float64: P·(d(d+1)/2 + d) values + 1, the
    same figure whatever the number of images."""
    if not active():
        return
    counts = all_gather(int(stats.count))
    holders = [r for r, c in enumerate(counts) if c > 0]
    if not holders:
        return
    import torch

    shift = stats.shift if stats.shift is not None else torch.zeros(stats.num_positions, stats.dim,
                                                                    dtype=torch.float64, device=stats.device)
    shift = broadcast_(shift.clone(), holders[0])
    stats.reshift_(shift)
    all_reduce_sum_(stats.sum)
    all_reduce_sum_(stats.sum_outer)
    stats.count = int(sum(counts))
