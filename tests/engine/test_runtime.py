"""Precision (what ``train.amp: auto`` picks, TF32), the torch.compile and DDP wrappers, and joining a
process group under torchrun with one process."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

from pfanet_cli.config import load_recipe
from pfanet_cli.engine import runtime
from pfanet_cli.engine.runtime import (
    Distributed,
    allow_tf32,
    describe_precision,
    init_distributed,
    no_sync,
    place_module,
    resolve_amp,
    unwrap,
)
from pfanet_cli.errors import UsageError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("native_bf16, expected", [(False, "off"), (True, "bf16")])
def test_auto_precision_is_fp32_on_cuda_and_bf16_only_on_a_cpu_that_has_it(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert resolve_amp("auto", CPU) == expected
    assert resolve_amp("auto", CUDA) == "off"  # fp32 storage, TF32 allowed by train.tf32
    assert resolve_amp("bf16", CPU) == resolve_amp("bf16", CUDA) == "bf16"  # on request
    assert resolve_amp("fp16", CUDA) == "fp16"
    with pytest.raises(UsageError, match="train.amp=fp16 needs CUDA"):
        resolve_amp("fp16", CPU)


@pytest.mark.parametrize("flags, native", [({"avx2": True, "avx512_bf16": False, "amx_bf16": False}, False),
                                           ({"avx512_bf16": True, "amx_bf16": False}, True),
                                           ({"avx512_bf16": False, "amx_bf16": True}, True), ({}, False)],
                         ids=["avx2-only", "avx512-bf16", "amx-bf16", "no-flags"])
def test_native_bf16_is_read_from_the_cpu_flags_torch_reports(monkeypatch, flags, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags, raising=False)
    assert runtime.cpu_has_native_bf16() is native
    assert resolve_amp("auto", CPU) == ("bf16" if native else "off")


def test_the_paper_recipe_no_longer_asks_for_bf16():
    recipe = load_recipe("sysu_pfanet.yaml")
    assert recipe.train.amp == "auto" and recipe.train.tf32 and not recipe.train.compile
    assert resolve_amp(recipe.train.amp, CUDA) == "off"  # fp32 with TF32
    assert describe_precision(CUDA, "off", tf32=True) == "fp32 (TF32 allowed)"
    assert describe_precision(CPU, "off", tf32=True) == "fp32"
    assert describe_precision(CUDA, "bf16", tf32=True) == "bf16 autocast"


def tf32_flags() -> tuple:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_allow_tf32_sets_the_cuda_flags_and_can_undo_them():
    before = tf32_flags()
    try:
        allow_tf32(True)
        assert tf32_flags() in (("tf32", "tf32"), (True, True))
        allow_tf32(False)
        assert tf32_flags() in (("ieee", "ieee"), (False, False))
    finally:
        allow_tf32(before[0] in ("tf32", True))


def test_unwrap_and_no_sync_see_through_compile_and_ddp(monkeypatch):
    network = nn.Conv2d(3, 4, 3)
    compiled = place_module(network, CPU, Distributed(), channels_last=True, compile=True)
    assert compiled is not network and unwrap(compiled) is network
    assert list(unwrap(compiled).state_dict()) == ["weight", "bias"]  # no _orig_mod. prefix in checkpoints
    assert network.weight.is_contiguous(memory_format=torch.channels_last)

    entered = []

    class FakeDDP(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def no_sync(self):
            entered.append(self)
            return torch.no_grad()  # any context manager

    monkeypatch.setattr(nn.parallel, "DistributedDataParallel", FakeDDP)
    wrapped = FakeDDP(network)
    compiled_ddp = torch.compile(wrapped)
    assert unwrap(compiled_ddp) is network and unwrap(wrapped) is network
    with no_sync(compiled_ddp, network):
        pass
    assert entered == [wrapped]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_one_process_under_torchrun_joins_a_process_group(monkeypatch):
    """``torchrun --nproc_per_node 1`` runs the DDP code path (gloo here, NCCL on a GPU), so a one-GPU
    machine can check it (benchmarks/gpu.py)."""
    assert init_distributed("cpu") == (Distributed(), CPU)  # not under torchrun
    environment = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(free_port())}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    try:
        info, device = init_distributed("cpu")
        assert info == Distributed(0, 1, 0, backend="gloo") and info.enabled and device == CPU
        assert dist.is_initialized() and dist.get_world_size() == 1
        placed = place_module(nn.Linear(2, 2), device, info, channels_last=False)
        assert isinstance(placed, nn.parallel.DistributedDataParallel)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
