"""Pooling heads that turn an encoder's token sequence into a fixed-size vector: MAP (default), CLS and mean."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from voltron.models.blocks import RMSNorm, SwishGLU


class MAPAttention(nn.Module):
    """Learned latents (queries) cross-attend to the input tokens (keys/values); no biases, as upstream.

    `inputs`, a Linear applied to the tokens before the keys and values (MAPBlock's projection), is folded into the
    queries instead of being applied to every token: with K latents per head, softmax(q.W_k(W_p t + b)) needs only
    u = W_p^T W_k^T q, and sum_i a_i W_v(W_p t_i + b) = W_v(W_p (sum_i a_i t_i) + b) because the weights sum to 1
    (q.W_k b is the same for every token, so the softmax cancels it). Exact algebra, the same parameters and
    gradients to float rounding, and every per-token product is D x heads*K instead of D x 3D: a BC step on
    cached tokens is several times faster (bench/eval.py). Under torch.inference_mode the same path serves.
    """

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

    def forward(
        self, latents: torch.Tensor, x: torch.Tensor, key_mask: torch.Tensor | None, inputs: nn.Linear | None = None
    ) -> torch.Tensor:
        """latents (B, K, D), tokens x (B, N, D_in), key_mask (B, N) 1 = attend; `inputs` maps D_in -> D."""
        (batch, n_latents, dim), heads = latents.shape, self.n_heads
        head_dim = dim // heads
        q = self.q(latents).view(batch, n_latents, heads, head_dim)  # (B, K, h, d)
        w_k, w_v = self.kv.weight.view(2, heads, head_dim, dim).unbind(0)  # (h, d, D) each
        u = torch.einsum("bkhj,hjd->bhkd", q, w_k)  # query folded through the key weights: (B, h, K, D)
        if inputs is not None:
            u = u @ inputs.weight  # ... and through the input projection: (B, h, K, D_in)
        x = x.to(u.dtype)  # cached tokens may be float16; convert them once for both products
        logits = torch.einsum("bhke,bne->bhkn", u, x) * head_dim**-0.5
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
        pooled = torch.einsum("bhkn,bne->bhke", logits.softmax(dim=-1), x)  # (B, h, K, D_in)
        if inputs is not None:
            pooled = inputs(pooled)  # the weights sum to 1, so the bias passes through once
        out = torch.einsum("bhkd,hjd->bkhj", pooled, w_v)  # (B, K, h, d)
        return self.proj(out.reshape(batch, n_latents, dim))


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
        z = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        z = self.attn_norm(z + self.attn(z, tokens, key_mask, inputs=self.projection))
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
