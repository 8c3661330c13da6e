"""Process-group setup and `parallelize`: parallelism stays out of the model.

Under `torchrun` (WORLD_SIZE > 1) the process group starts with NCCL on GPUs and gloo
on CPUs; `parallelize` then applies torch.compile (optional) and DDP or FSDP2
(`fully_shard` on every transformer block, then the root). Single process: unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from flowfactory.errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{name}' (cpu or cuda)")
    return torch.device(name)


def init_distributed(device: str = "cpu") -> DistEnv:
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistEnv(device=dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    return DistEnv(rank=rank, world=dist.get_world_size(), device=dev)


def parallelize(model: nn.Module, blocks: list[nn.Module], env: DistEnv, mode: str, compile: bool) -> nn.Module:
    """Compile the blocks (optional), then wrap for data parallelism ("ddp" or "fsdp")."""
    if compile:
        for b in blocks:
            b.compile()
    if not env.distributed:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for b in blocks:
            fully_shard(b)
        fully_shard(model)
        return model
    raise UserError(f"unknown parallel mode '{mode}' (ddp or fsdp)")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict on the CPU, whatever the wrapping; collective under FSDP.

    Copies: on the CPU the returned tensors would otherwise alias the live parameters.
    """
    return {k: v.detach().clone() for k, v in get_model_state_dict(model, options=_FULL).items()}


def load_model_state(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    return get_optimizer_state_dict(model, opt, options=_FULL)


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
    set_optimizer_state_dict(model, opt, sd, options=StateDictOptions(full_state_dict=True))


def all_reduce_mean(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= env.world
    return x
