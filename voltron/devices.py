"""The `device` config value (auto, cpu, cuda) resolved to a torch device: one rule for pretraining and policies."""

from __future__ import annotations

import torch

from voltron.errors import UserError

DEVICES = ("cpu", "cuda")


def resolve_device(preference: str, key: str = "train.device") -> torch.device:
    """`auto` is cuda when torch sees a GPU, else cpu; `cuda` without a GPU is an error naming `key`."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference not in DEVICES:
        raise UserError("unknown device", key=key, value=preference, expected=f"one of auto, {', '.join(DEVICES)}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise UserError("torch sees no CUDA device", key=key, value=preference, expected="cpu or auto")
    return torch.device(preference)
