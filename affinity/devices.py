"""Where tensors live: CUDA when present (or asked for), otherwise CPU."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    pass


def resolve_device(name: str = "auto") -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("training.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def solve_dtype(device: torch.device) -> torch.dtype:
    """Float64 on CPU (cheap, exact); float32 on GPUs, where float64 is slow."""
    return torch.float64 if device.type == "cpu" else torch.float32
