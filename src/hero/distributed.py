"""Several processes, one run: data-parallel rollouts and updates under ``accelerate launch`` (or ``torchrun``).

How ``hero.train`` splits a round over N processes (ranks; rank 0 is the main process):

- **State.** Every process holds the whole pipeline and the algorithm's state, identical on all of them: the same
  seed, the LoRA broadcast from rank 0 at start (as DDP does), then the same inputs and the same steps.
- **Sampling.** Each process samples a contiguous share of the round's images (``rollout(..., shard=...)``). The
  noise is drawn for the whole round from the (seed, round) generators first and then sliced, so the round's
  images are those of a one-process run whatever N is. The shares are gathered to every process (on the CPU).
- **Feedback.** Only rank 0 holds the feedback source (the web server, a reward model, the simulated human) and
  the feedback log; it judges the round, records it, and broadcasts the ``RoundFeedback`` to the others.
- **Learning.** Every process runs the algorithm's ``learn`` on the whole round. The LoRA updates are the
  data-parallel part: ``policy_gradient.accumulation_schedule`` gives each process every N-th backward pass
  (minibatch × timestep) with its loss weight × N, and ``policy_gradient.clip_and_step`` averages the LoRA
  gradients over the processes before clipping and stepping. Both take the ``Dist`` as an argument: the trainer
  gets it from ``make_algorithm(cfg, pipe, dist)`` and passes ``self.policy.dist`` to every update, so each call
  site shows whether it all-reduces (the default, ``SINGLE``, keeps a library call local). Each step is therefore
  the one-process step (up to the order of float additions) and is the *same* on every process, so the LoRA
  weights stay identical without being broadcast again. An algorithm whose update does not use the schedule
  (SEIKO) computes the whole gradient on every process; the average of equal gradients is that gradient. Small
  nets outside the LoRA (HERO's embedding net, DPOK's value net) are trained on every process from the same data;
  rank 0's are checkpointed.
- **Checkpoints.** Written by rank 0 only; the processes meet at a barrier after every round. ``--resume`` reads
  the checkpoint on every process, so the run folder must be on a filesystem all processes see (always true on
  one machine; on several machines, a shared filesystem).

Pickled objects (trajectories, judgements) travel through a gloo group on the CPU with a long timeout: the other
processes wait there, without spinning a GPU, while a person judges in the browser. Gradients are averaged
through the default group (NCCL on GPUs, gloo on CPUs). One process (no launcher, or ``--num_processes 1``) never
touches ``torch.distributed``: ``SINGLE`` does nothing, and the run is exactly the one-process run.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

__all__ = ["Dist", "SINGLE", "init_distributed", "is_main_process", "launched_world_size",
           "shard_range"]

T = TypeVar("T")

# How long the other processes wait for rank 0 at a pickled-object collective (a person judging a round).
OBJECT_TIMEOUT = timedelta(days=7)


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of n items: the first n % world_size ranks take one more."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return range(lo, lo + base + (rank < extra))


def launched_world_size() -> int:
    """Number of processes the launcher started (``WORLD_SIZE``, set by accelerate launch / torchrun); 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process() -> bool:
    """Whether this is rank 0 (or the only process), usable before ``init_distributed`` (e.g. in the CLI)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, number of processes, and the collectives the round loop uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    object_group: Any = None  # gloo group for pickled objects; None with one process

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> range:
        """This process's contiguous share of n items (all of them with one process)."""
        return shard_range(n, self.rank, self.world_size)

    def share(self, items: Sequence[tuple[Any, Any, float]]) -> list[tuple[Any, Any, float]]:
        """Every world_size-th (indices, steps, loss weight) item, its weight × world_size (``average_gradients``
        then divides the summed gradients by world_size again)."""
        if not self.enabled:
            return list(items)
        return [(a, b, w * self.world_size) for a, b, w in items[self.rank::self.world_size]]

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier(group=self.object_group)

    def broadcast(self, obj: T, src: int = 0) -> T:
        """Rank ``src``'s ``obj`` on every process (pickled; keep tensors on the CPU)."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src, group=self.object_group)
        return box[0]

    def all_gather(self, obj: T) -> list[T]:
        """Every process's ``obj``, in rank order (pickled; keep tensors on the CPU)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj, group=self.object_group)
        return out

    def merge_lists(self, lists: dict[str, list[float]]) -> dict[str, list[float]]:
        """Concatenate each key's list over the processes (rank order): per-pass statistics of a sharded loop."""
        if not self.enabled:
            return lists
        parts = self.all_gather(lists)
        return {k: [v for part in parts for v in part[k]] for k in lists}

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the processes (one all-reduce).

        A parameter that got no gradient on any process keeps ``grad = None`` (the optimiser then skips it, as it
        would in one process); one that got a gradient on some process only counts zeros from the others.
        """
        if not self.enabled:
            return
        params = list(params)
        if not params:
            return
        device = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in params] + [has])
        torch.distributed.all_reduce(flat)  # sum
        any_grad = flat[-len(params):] > 0
        flat = flat[: -len(params)] / self.world_size
        offset = 0
        for p, keep in zip(params, any_grad.tolist(), strict=True):
            n = p.numel()
            p.grad = flat[offset: offset + n].view_as(p).to(p.dtype).clone() if keep else None
            offset += n

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter], src: int = 0) -> None:
        """Copy rank ``src``'s values into these parameters on every process (as DDP does at start)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=src)



SINGLE = Dist()
_object_group = None  # one per process: later runs in the same launched process reuse it


def init_distributed(device: str) -> tuple[Dist, str]:
    """Join the launcher's processes, if it started several; return (this process's Dist, its device).

    Started by ``accelerate launch`` or ``torchrun`` with N > 1 processes, accelerate's ``PartialState`` sets up
    the process group (NCCL on CUDA, gloo on the CPU) and each process takes the GPU of its local rank
    (``device="cuda"`` becomes ``cuda:<local rank>``). Otherwise nothing happens: ``(SINGLE, device)``.
    The group lives until the process exits, so several runs in one launched process share it.
    """
    global _object_group
    if launched_world_size() <= 1:
        return SINGLE, device
    from accelerate import PartialState

    kind = torch.device(device).type
    state = PartialState(cpu=kind == "cpu")
    if state.num_processes <= 1:
        return SINGLE, device
    if kind != "cpu":
        device = f"{kind}:{state.local_process_index}"
        if kind == "cuda":
            torch.cuda.set_device(device)
    if _object_group is None:
        _object_group = torch.distributed.new_group(backend="gloo", timeout=OBJECT_TIMEOUT)
        atexit.register(_leave)
    return Dist(rank=state.process_index, world_size=state.num_processes, local_rank=state.local_process_index,
                object_group=_object_group), device


def _leave() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
