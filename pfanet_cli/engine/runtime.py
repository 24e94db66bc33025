"""Where and how training computes: the device, the distributed process group under ``torchrun``,
mixed precision (autocast and gradient scalers), determinism, and putting a network on the device."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pfanet_cli.errors import UsageError


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    requested = requested.lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device("cuda", local_rank)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> tuple[Distributed, torch.device]:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), resolve_device(device_request)
    info = Distributed(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_request, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def agree_across_ranks(distributed: Distributed, choose):
    """Rank 0 calls ``choose()``; every rank gets its answer (for choices that must not differ, such as
    the run directory, whose timestamp would otherwise race between ranks)."""
    if not distributed.enabled:
        return choose()
    choice = [choose() if distributed.is_main else None]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UsageError("train.amp=fp16 needs CUDA; use train.amp=bf16 or off on the CPU")
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_scalers(device: torch.device, amp: str, names: tuple[str, ...]) -> dict[str, torch.amp.GradScaler]:
    """One gradient scaler per optimizer step (fp16 on CUDA only; disabled otherwise)."""
    enabled = amp == "fp16" and device.type == "cuda"
    return {name: torch.amp.GradScaler(device.type, enabled=enabled) for name in names}


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def set_determinism(enabled: bool) -> None:
    torch.use_deterministic_algorithms(enabled, warn_only=False)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.deterministic = enabled
        torch.backends.cudnn.benchmark = not enabled
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(*modules: nn.Module) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce for networks that are in a step's graph but not stepped."""
    stack = contextlib.ExitStack()
    for module in modules:
        if isinstance(module, nn.parallel.DistributedDataParallel):
            stack.enter_context(module.no_sync())
    return stack


def place_module(module: nn.Module, device: torch.device, distributed: Distributed, channels_last: bool,
                 sync_bn: bool = False) -> nn.Module:
    """Move to ``device`` (channels-last when asked; BatchNorm made SyncBatchNorm when ``sync_bn``) and
    wrap in DDP under torchrun."""
    if sync_bn and distributed.enabled:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if distributed.enabled:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)
    return module
