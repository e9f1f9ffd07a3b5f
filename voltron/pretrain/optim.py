"""The optimizer: AdamW with decoupled weight decay on the parameters a decay rule selects (see DECAY_RULES)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn as nn

# Parameter-name endings that the "exempt-embeddings" rule never decays: learned tokens (mask/img/lang/cls) and
# learned position or per-frame context embeddings (ctx_enc_pe, ...).
EMBEDDING_SUFFIXES = ("_token", "_pe", ".pe", "pos_embed")


def _upstream(name: str, param: torch.Tensor) -> bool:
    # upstream Voltron (and MAE's pretraining): every tensor with ndim >= 2 that is not a bias, so the learned
    # tokens (1, 1, D) and the per-frame context embeddings (1, F, 1, D) decay too
    return param.ndim >= 2 and not name.endswith(".bias")


def _exempt_embeddings(name: str, param: torch.Tensor) -> bool:
    # the timm/DeiT convention: learned tokens and embeddings are offsets, not weights of a map, so they keep
    # their scale instead of being pulled toward 0 (over the paper's schedule AdamW's decay alone would shrink
    # them about 140x: exp(-0.05 x the summed LR of about 99))
    return _upstream(name, param) and not name.endswith(EMBEDDING_SUFFIXES)


# name -> decays(parameter name, parameter); norms, LayerScale and other 0-d/1-d parameters never decay
DECAY_RULES: dict[str, Callable[[str, torch.Tensor], bool]] = {
    "upstream": _upstream,
    "exempt-embeddings": _exempt_embeddings,
}
DEFAULT_DECAY_RULE = "upstream"


def peak_lr(base_lr: float, effective_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule: base_lr x effective_batch / 256 (1.5e-4 x 1024 / 256 = 6e-4 for the paper)."""
    return base_lr * effective_batch / reference_batch


def decays(name: str, param: torch.Tensor, rule: str = DEFAULT_DECAY_RULE) -> bool:
    """Whether weight decay applies to the parameter called `name` under `rule` (a key of DECAY_RULES)."""
    if rule not in DECAY_RULES:
        raise ValueError(f"optim.decay_rule={rule!r}; expected one of {', '.join(DECAY_RULES)}")
    return DECAY_RULES[rule](name, param)


def param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]], weight_decay: float, rule: str = DEFAULT_DECAY_RULE
) -> list[dict]:
    """Two AdamW groups over the trainable parameters; frozen ones (the language model, lm.*) are left out."""
    decay, no_decay = [], []
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        (decay if decays(name, param, rule) else no_decay).append(param)
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
    decay_rule: str = DEFAULT_DECAY_RULE,
) -> torch.optim.AdamW:
    """AdamW over `named_parameters` (of the wrapped model: FSDP replaces parameters, so build it after wrapping).

    The LR set here is only the initial value; the trainer sets every group's LR from the schedule each step.
    """
    groups = param_groups(named_parameters, weight_decay, decay_rule)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
