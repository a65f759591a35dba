"""Where the worker computes: device and dtype choice, memory accounting, out-of-memory errors."""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass

import torch

from registry.errors import InvalidInput

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Device:
    """The torch device and the dtype base models are loaded in."""

    torch_device: torch.device
    dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    @property
    def name(self) -> str:
        return str(self.torch_device)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def gpu_name(self) -> str | None:
        return torch.cuda.get_device_name(self.torch_device) if self.is_cuda else None


def resolve_device(choice: str) -> Device:
    """``auto``: CUDA when present (bfloat16 where the GPU supports it, else float32), else the
    CPU in float32; ``cpu``; ``cuda`` (refused where no CUDA device exists).

    Raises:
        InvalidInput: an unknown choice, or ``cuda`` without a CUDA device.
    """
    if choice not in DEVICES:
        raise InvalidInput(f"unknown device {choice!r}; use one of {', '.join(DEVICES)}")
    cuda = torch.cuda.is_available()
    if choice == "cuda" and not cuda:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise InvalidInput(f"--device cuda: no CUDA device is available (torch "
                           f"{torch.__version__}, {build}); use --device cpu or auto")
    if choice == "cpu" or not cuda:
        return Device(torch.device("cpu"), torch.float32)
    # Deterministic kernels: the base's outputs after an adapter is detached are compared bit
    # for bit with those cached before, so the same input must give the same bits.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return Device(torch.device("cuda", torch.cuda.current_device()), dtype)


def reset_peak(device: Device) -> None:
    if device.is_cuda:
        torch.cuda.reset_peak_memory_stats(device.torch_device)


def peak_bytes(device: Device) -> int:
    """GPU: the peak allocated since ``reset_peak``; CPU: the process's peak RSS so far."""
    if device.is_cuda:
        return int(torch.cuda.max_memory_allocated(device.torch_device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


_TRIED = re.compile(r"Tried to allocate ([\d.]+ [KMGT]?i?B)")


def describe_oom(exc: BaseException, device: Device) -> str:
    """One line for an out-of-memory failure: what was needed and what the device has."""
    message = str(exc)
    tried = _TRIED.search(message)
    needed = f"needed {tried.group(1)} more" if tried else "ran out of memory"
    if device.is_cuda:
        free, total = torch.cuda.mem_get_info(device.torch_device)
        gib = 1024**3
        return (f"CUDA out of memory on {device.gpu_name()} ({device.name}): {needed}; "
                f"{total / gib:.1f} GiB total, {free / gib:.1f} GiB free, "
                f"{torch.cuda.memory_allocated(device.torch_device) / gib:.1f} GiB allocated "
                "by this worker")
    return f"out of memory on the CPU: {needed} ({message.splitlines()[0][:200]})"


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | MemoryError)


def empty_cache(device: Device) -> None:
    if device.is_cuda:
        torch.cuda.empty_cache()
