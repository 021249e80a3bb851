"""The process group of ``torchrun`` runs (``multi_gpu_train.json``, ``multi_gpu_evaluate.json``,
``multi_gpu_inference.json``, ``blocks.json``).

``torchrun`` starts one process per device and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; these helpers give
each process its device, join the group (NCCL on GPUs, Gloo on CPUs), keep logs, savers and pictures on rank 0,
and leave the group at the end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["process_device", "device_ids", "init_processes", "end_processes", "rank", "other_rank", "rank_handlers"]


def process_device() -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` under ``torchrun`` with GPUs, ``cuda:0`` or ``cpu`` otherwise."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def device_ids(device: torch.device) -> list[torch.device] | None:
    """``DistributedDataParallel``'s ``device_ids``: this process's GPU, or ``None`` on CPUs."""
    return [device] if torch.device(device).type == "cuda" else None


def init_processes(device: torch.device) -> int:
    """Join the process group (NCCL for GPUs, Gloo for CPUs) unless already in it, make ``device`` the current GPU,
    print which process runs where, and keep only warnings in the logs of ranks other than 0. Returns the rank."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    print(f"process {dist.get_rank()} of {dist.get_world_size()} on {device}, backend {dist.get_backend()}", flush=True)
    if dist.get_rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)
    return dist.get_rank()


def end_processes() -> None:
    """Leave the process group, if in one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank in the group (0 outside one)."""
    return dist.get_rank() if dist.is_initialized() else 0


def other_rank() -> bool:
    """Whether this process is not rank 0: for ``_disabled_`` of what only rank 0 does (savers, pictures)."""
    return rank() > 0


def rank_handlers(handlers: Sequence[Any] | None, keep: int = 0) -> list[Any] | None:
    """``handlers`` on rank 0; on the other ranks only the first ``keep`` of them (those every process needs, such
    as the non-finite loss stop and the validation trigger), or ``None`` when ``keep`` is 0."""
    if handlers is None:
        return None
    return list(handlers) if rank() == 0 else list(handlers[:keep]) or None
