"""The optimizer: AdamW with weight decay on matrices only (no decay on norms, biases, tokens, position embeddings)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

# Parameter-name endings that never decay: learned tokens (mask/img/lang/cls), learned position and per-frame
# context embeddings (ctx_enc_pe, ...). Every 0-d/1-d parameter (biases, norm gains, LayerScale) is also exempt.
NO_DECAY_SUFFIXES = ("_token", "_pe", ".pe", "pos_embed")


def peak_lr(base_lr: float, effective_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule: base_lr x effective_batch / 256 (1.5e-4 x 1024 / 256 = 6e-4 for the paper)."""
    return base_lr * effective_batch / reference_batch


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies to the parameter called `name`."""
    return param.ndim >= 2 and not name.endswith(NO_DECAY_SUFFIXES)


def param_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters; frozen ones (the language model, lm.*) are left out."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (decay if decays(name, param) else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (requires_grad=False everywhere)")
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    weight_decay: float = 0.05,
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over `named_parameters` (of the wrapped model: FSDP replaces parameters, so build it after wrapping).

    The LR set here is only the initial value; the trainer sets every group's LR from the schedule each step.
    """
    groups = param_groups(named_parameters, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
