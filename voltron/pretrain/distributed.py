"""torch.distributed plumbing: process groups under torchrun, DDP/FSDP wrapping, and the few collectives the loop uses."""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from voltron.devices import resolve_device

# torchrun sets these; a plain `python -m voltron.pretrain` or `voltron pretrain` runs as one process.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}  # per voltron.devices.DEVICES


@dataclass
class DistEnv:
    """Where this process sits: rank, world size, its device, and whether it created the process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world_size
        return values

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any rank (stop requests, time budgets)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item() > 0)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def setup(device_preference: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the torchrun process group when launched by torchrun (NCCL on GPU, gloo on CPU), else one process."""
    device = resolve_device(device_preference)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    env = DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    if world_size > 1 and not dist.is_initialized():
        missing = [name for name in TORCHRUN_VARS if name not in os.environ]
        if missing:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} but {missing} are unset; launch multi-process runs with torchrun"
            )
        dist.init_process_group(
            BACKENDS[device.type],
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
        env.owns_group = True
    elif dist.is_initialized():
        env.rank, env.world_size = dist.get_rank(), dist.get_world_size()
    return env


# === Strategies: how the objective is wrapped, and how gradient sync is skipped during accumulation ===
class Strategy:
    """Wraps the objective for data-parallel training. `no_sync(module, sync)` is entered around every
    micro-batch's forward and backward; `sync=False` on all but the last micro-batch of an optimizer step."""

    name = ""
    sharded = False  # whether ranks hold only shards of the parameters (then exports gather a full copy)

    def wrap(self, module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
        raise NotImplementedError

    def no_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


STRATEGIES: dict[str, Callable[[], Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"train.strategy={name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]()


@register_strategy
class DDPStrategy(Strategy):
    """DistributedDataParallel: full replicas, gradients all-reduced in buckets during backward."""

    name = "ddp"

    def wrap(self, module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
        if not env.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)

    def no_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        if sync or not hasattr(module, "no_sync"):
            return contextlib.nullcontext()
        return module.no_sync()


@register_strategy
class FSDPStrategy(Strategy):
    """FSDP2 (`fully_shard`): each transformer block is its own shard unit, the rest shards at the root."""

    name = "fsdp"
    sharded = True

    def wrap(self, module: nn.Module, env: DistEnv, find_unused_parameters: bool = False) -> nn.Module:
        if not env.distributed:
            warnings.warn("train.strategy=fsdp with one process: nothing to shard, training unsharded", stacklevel=2)
            self.sharded = False
            return module
        from torch.distributed.fsdp import fully_shard

        from voltron.models.blocks import Block

        for child in module.modules():
            if isinstance(child, Block):
                fully_shard(child)
        fully_shard(module)
        return module

    def no_sync(self, module: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        if hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(sync)  # FSDP2: skip reduce-scatter until the last micro-batch
        return contextlib.nullcontext()
