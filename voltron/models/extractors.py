"""Pooling heads that turn an encoder's token sequence into a fixed-size vector: MAP (default), CLS and mean."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from voltron.models.blocks import RMSNorm, SwishGLU


class MAPAttention(nn.Module):
    """Learned latents (queries) cross-attend to the input tokens (keys/values); no biases, as upstream."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"MAP: embed_dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.q, self.kv, self.proj = (
            nn.Linear(dim, dim, bias=False),
            nn.Linear(dim, 2 * dim, bias=False),
            nn.Linear(dim, dim),
        )

    def forward(self, latents: torch.Tensor, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        (batch, n_latents, dim), length, heads = latents.shape, x.shape[1], self.n_heads
        q = self.q(latents).view(batch, n_latents, heads, -1).transpose(1, 2)  # (B, h, K, d)
        k, v = self.kv(x).view(batch, length, 2, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
        attn_mask = None if key_mask is None else key_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, n_latents, dim))


class MAPBlock(nn.Module):
    """Multi-head attention pooling (upstream Voltron's MAPBlock): (B, N, D) tokens -> (B, D), or (B, K, D) for K > 1.

    Inputs pass through Linear(D, D); K learned latents cross-attend; post-norm RMSNorm residuals around the
    attention and a SwishGLU MLP (hidden 4D). `key_mask` (B, N), 1 = real token, optionally ignores padding
    (upstream pooled pad tokens too; passing no mask reproduces that).
    """

    def __init__(self, embed_dim: int, n_heads: int, n_latents: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed_dim, self.n_latents = embed_dim, n_latents
        self.projection = nn.Linear(embed_dim, embed_dim)
        self.latents = nn.Parameter(torch.zeros(n_latents, embed_dim))
        nn.init.normal_(self.latents, std=0.02)
        self.attn, self.attn_norm = MAPAttention(embed_dim, n_heads), RMSNorm(embed_dim)
        hidden = int(mlp_ratio * embed_dim)
        self.mlp = nn.Sequential(SwishGLU(embed_dim, hidden), nn.Linear(hidden, embed_dim))
        self.mlp_norm = RMSNorm(embed_dim)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"MAP expects tokens (B, N, {self.embed_dim}); got {tuple(tokens.shape)}")
        x = self.projection(tokens)
        z = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)
        z = self.attn_norm(z + self.attn(z, x, key_mask))
        z = self.mlp_norm(z + self.mlp(z))
        return z.squeeze(1) if self.n_latents == 1 else z


class MeanPool(nn.Module):
    def __init__(self, embed_dim: int, **_: object):
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if key_mask is None:
            return tokens.mean(dim=1)
        weights = key_mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class ClsPool(nn.Module):
    """The first token: the CLS token when the encoder's output starts with one, else the first patch."""

    def __init__(self, embed_dim: int, **_: object):
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return tokens[:, 0]


def map_heads(model: nn.Module) -> int:
    """Upstream uses 2 x the encoder's heads; fall back to the largest divisor of embed_dim that is <= 16."""
    dim, heads = model.embed_dim, 2 * getattr(model, "n_heads", 0)
    if heads and dim % heads == 0:
        return heads
    return max(h for h in range(1, 17) if dim % h == 0)


EXTRACTORS: dict[str, Callable[..., nn.Module]] = {
    "map": lambda model, n_latents=1: MAPBlock(model.embed_dim, map_heads(model), n_latents),
    "mean": lambda model, n_latents=1: MeanPool(model.embed_dim),
    "cls": lambda model, n_latents=1: ClsPool(model.embed_dim),
}


def instantiate_extractor(model: nn.Module, n_latents: int = 1, kind: str = "map") -> nn.Module:
    """A fresh, trainable pooling head sized for `model` (MAP by default)."""
    if kind not in EXTRACTORS:
        raise KeyError(f"unknown extractor {kind!r}; expected one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[kind](model, n_latents=n_latents)
