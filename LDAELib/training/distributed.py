"""Data parallelism with plain ``torch.distributed``: one process per GPU (or CPU), launched by torchrun.

Started without torchrun everything runs in one process and nothing here touches
``torch.distributed``. Under ``torchrun --nproc_per_node N`` (and ``--nnodes`` for several
machines) each process reads RANK / WORLD_SIZE / LOCAL_RANK from the environment, joins the
process group (NCCL on GPUs, gloo on CPUs), trains a DistributedDataParallel replica on its share
of every global batch, and only rank 0 writes checkpoints and logs.

Data order: :class:`StepSampler` takes the indices a ``torch.utils.data.DistributedSampler``
(shuffle, seed, ``set_epoch``, drop_last) gives this rank for the epoch a step falls in, so the
set of volumes in a global batch is the same whatever the number of processes, and a resumed run
picks up exactly where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import LDAEError


@dataclass
class DistContext:
    """Where this process stands: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a float tensor over the processes (identity in one process)."""
        if not self.distributed:
            return values
        v = values.detach().clone().to(self.device)
        dist.all_reduce(v, op=dist.ReduceOp.SUM)
        return v / self.world_size

    def broadcast_object(self, obj):
        """Rank 0's Python value on every rank (small JSON-like objects only)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """"auto" → this process's GPU when CUDA is available, else the CPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise LDAEError("--device cuda was given but this PyTorch sees no CUDA GPU; use --device cpu")
        if d.index is None:
            d = torch.device(f"cuda:{local_rank}")
    return d


def setup(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun, else run in one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=resolve_device(device, 0))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialised = True
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, initialised_here=initialised)


def teardown(ctx: DistContext) -> None:
    if ctx.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``module`` when there are several processes."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


class StepSampler:
    """This rank's dataset indices for any optimizer step (DistributedSampler semantics, step-indexed).

    Args:
        n: training items; global_batch: items per optimizer step over all ranks; seed: data order.
    """

    def __init__(self, n: int, global_batch: int, ctx: DistContext, seed: int) -> None:
        if global_batch % ctx.world_size:
            raise LDAEError(f"batch_size {global_batch} is not divisible by the {ctx.world_size} processes; choose a multiple")
        self.n, self.ctx, self.seed = n, ctx, seed
        self.per_rank = global_batch // ctx.world_size
        self._sampler = DistributedSampler(range(n), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed, drop_last=True)
        self.steps_per_epoch = len(self._sampler) // self.per_rank
        if self.steps_per_epoch < 1:
            raise LDAEError(f"batch_size {global_batch} is larger than the {n} training volumes; lower it")
        self._epoch, self._order = -1, []

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._sampler.set_epoch(epoch)
            self._order, self._epoch = list(self._sampler), epoch
        return self._order[j * self.per_rank:(j + 1) * self.per_rank]


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stage, seed, step, item…), the same on every machine."""
    ss = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def item_generator(*parts: int) -> torch.Generator:
    """A CPU generator for the random draws of one item at one step: identical however the batch is split."""
    return torch.Generator().manual_seed(derived_seed(*parts))
