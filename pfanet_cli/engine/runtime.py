"""Where and how training computes: the device, the distributed process group under ``torchrun``,
precision (what ``train.amp: auto`` picks, TF32, autocast and gradient scalers), determinism, and
putting a network on the device (channels-last, SyncBatchNorm, DDP, ``torch.compile``)."""

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
    backend: str | None = None
    """The process group's backend (``gloo``, ``nccl``) when started by torchrun, even with one process."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(device_request: str) -> tuple[Distributed, torch.device]:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on CUDA), with any
    number of processes, one included (so ``torchrun --nproc_per_node 1`` runs the DDP code path)."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return Distributed(), resolve_device(device_request)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank, backend=str(dist.get_backend())), device


def agree_across_ranks(distributed: Distributed, choose):
    """Rank 0 calls ``choose()``; every rank gets its answer (for choices that must not differ, such as
    the run directory, whose timestamp would otherwise race between ranks)."""
    if not distributed.enabled:
        return choose()
    choice = [choose() if distributed.is_main else None]
    dist.broadcast_object_list(choice, src=0)
    return choice[0]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware, as torch reports it: AVX512-BF16 dot products
    (Intel Cooper Lake, AMD Zen 4 and later) or AMX-BF16 tiles (Intel Sapphire Rapids and later). On the
    2-core development CPU (AMD EPYC with AVX512-BF16) paper-scale bf16 steps took half the time of fp32
    ones (README, Benchmarks); without such instructions bf16 is emulated and slower."""
    capabilities = getattr(torch.cpu, "get_capabilities", lambda: {})()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_amp(requested: str, device: torch.device) -> str:
    """``train.amp`` -> the autocast mode used: ``off``, ``bf16`` or ``fp16``.

    ``auto``: on CUDA fp32 storage and arithmetic with TF32 allowed (``train.tf32``), no autocast; on a
    CPU bf16 only where :func:`cpu_has_native_bf16`, else fp32."""
    if requested == "fp16" and device.type != "cuda":
        raise UsageError("train.amp=fp16 needs CUDA; use train.amp=bf16, auto or off on the CPU")
    if requested != "auto":
        return requested
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "off"


def describe_precision(device: torch.device, amp: str, tf32: bool) -> str:
    """A few words for the start line: ``fp32 (TF32 allowed)``, ``bf16 autocast``, ..."""
    if amp != "off":
        return f"{amp} autocast"
    return "fp32 (TF32 allowed)" if device.type == "cuda" and tf32 else "fp32"


def allow_tf32(enabled: bool) -> None:
    """TF32 for CUDA matrix products and cuDNN convolutions (fp32 storage; about 10 mantissa bits in the
    products). Global flags: they change nothing on a CPU."""
    precision = "tf32" if enabled else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast for a resolved ``amp`` (:func:`resolve_amp`): ``off``, ``bf16`` or ``fp16``."""
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


def _uncompiled(module: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped, or ``module`` itself."""
    return getattr(module, "_orig_mod", module)


def unwrap(module: nn.Module) -> nn.Module:
    """The network itself, without its ``torch.compile`` and DDP wrappers (whose state-dict keys differ)."""
    module = _uncompiled(module)
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def no_sync(*modules: nn.Module) -> contextlib.ExitStack:
    """Skip DDP's gradient all-reduce for networks that are in a step's graph but not stepped."""
    stack = contextlib.ExitStack()
    for module in map(_uncompiled, modules):
        if isinstance(module, nn.parallel.DistributedDataParallel):
            stack.enter_context(module.no_sync())
    return stack


def place_module(module: nn.Module, device: torch.device, distributed: Distributed, channels_last: bool,
                 sync_bn: bool = False, compile: bool = False) -> nn.Module:
    """Move to ``device`` (channels-last when asked; BatchNorm made SyncBatchNorm when ``sync_bn``),
    wrap in DDP under torchrun, and in ``torch.compile`` when ``compile`` (compiled lazily, at the first
    call). :func:`unwrap` gives the network back."""
    if sync_bn and distributed.enabled:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    module = module.to(device)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if distributed.enabled:
        ids = [device.index] if device.type == "cuda" else None
        module = nn.parallel.DistributedDataParallel(module, device_ids=ids)  # buffers broadcast by default
    return torch.compile(module) if compile else module
