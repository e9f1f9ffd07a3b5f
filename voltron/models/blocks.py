"""ViT building blocks shared by every model: patch embedding, sin-cos positions, RMSNorm, SwishGLU, attention."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION_IMPLS = ("sdpa", "eager")


# === Positions ===
def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / (10000 ** (np.arange(dim // 2, dtype=np.float32) / (dim / 2.0)))
    angles = np.einsum("m,d->md", positions.reshape(-1), omega)  # (M, D/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (M, D)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (1, N(+1), D), laid out exactly as MAE and upstream Voltron do.

    The grid is built as meshgrid(w, h), so the first half of the channels encodes the column; imported
    upstream weights depend on this order.
    """
    coords = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(coords, coords), axis=0).reshape(2, 1, grid_size, grid_size)
    table = np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros([1, dim], dtype=table.dtype), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


class PatchEmbed(nn.Module):
    """(B, C, H, W) images -> (B, N, D) patch tokens through a strided convolution."""

    def __init__(self, image_size: int, patch_size: int, embed_dim: int, in_channels: int = 3):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.grid_size = image_size // patch_size
        self.num_patches = self.grid_size**2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, N, D)


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., N, p*p*C), pixel order (p_h, p_w, c) as in MAE."""
    *lead, channels, height, width = images.shape
    gh, gw = height // patch_size, width // patch_size
    x = images.reshape(*lead, channels, gh, patch_size, gw, patch_size)
    x = x.movedim(-5, -1)  # (..., gh, p, gw, p, C)
    x = x.transpose(-4, -3)  # (..., gh, gw, p, p, C)
    return x.reshape(*lead, gh * gw, patch_size * patch_size * channels)


# === Normalisation and MLPs ===
class RMSNorm(nn.Module):
    """x / max(||x|| * d^-1/2, eps) * g, as in upstream Voltron."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class SwishGLU(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.act, self.project = nn.SiLU(), nn.Linear(in_dim, 2 * out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected, gate = self.project(x).tensor_split(2, dim=-1)
        return projected * self.act(gate)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 0.1):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


# === Attention ===
def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) 1=real/0=pad -> (B, 1, 1, N) boolean: every query ignores padded keys."""
    return mask.bool()[:, None, None, :]


def legacy_query_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, 1, N, 1): upstream Voltron's mask, which blanks padded *query rows* (they become uniform
    averages over all tokens) while every token still attends to pads. Released weights were trained with it."""
    return mask.bool()[:, None, :, None]


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention`, or an eager reference path.

    `attn_mask` is boolean and broadcastable to (B, heads, N, N), True where attention is allowed. Masked scores
    are filled with the dtype's most negative finite value rather than -inf, so a fully masked row (only the
    legacy query mask makes those) becomes a uniform average instead of NaN, exactly as upstream.
    """

    def __init__(self, embed_dim: int, n_heads: int, qkv_bias: bool = True):
        super().__init__()
        if embed_dim % n_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, embed_dim // n_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.impl = "sdpa"

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        bias = None
        if attn_mask is not None:
            bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(~attn_mask, torch.finfo(q.dtype).min)
        if self.impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if bias is not None:
                scores = scores + bias
            out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    """A pre-norm transformer block. `voltron=True`: RMSNorm, SwishGLU MLP and LayerScale 0.1 (V-* models);
    `voltron=False`: LayerNorm(1e-6) and a GELU MLP (R-MVP, R3M-ViT). Parameter names follow upstream."""

    def __init__(self, embed_dim: int, n_heads: int, mlp_ratio: float = 4.0, voltron: bool = True):
        super().__init__()
        hidden = int(mlp_ratio * embed_dim)
        self.voltron = voltron
        norm = (lambda: RMSNorm(embed_dim)) if voltron else (lambda: nn.LayerNorm(embed_dim, eps=1e-6))
        self.pre_norm_attn, self.attn = norm(), Attention(embed_dim, n_heads)
        self.pre_norm_mlp = norm()
        first = SwishGLU(embed_dim, hidden) if voltron else nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU())
        self.mlp = nn.Sequential(first, nn.Dropout(0.0), nn.Linear(hidden, embed_dim))
        if voltron:
            self.layer_scale_attn, self.layer_scale_mlp = LayerScale(embed_dim), LayerScale(embed_dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.voltron:
            x = x + self.layer_scale_attn(self.attn(self.pre_norm_attn(x), attn_mask))
            return x + self.layer_scale_mlp(self.mlp(self.pre_norm_mlp(x)))
        x = x + self.attn(self.pre_norm_attn(x), attn_mask)
        return x + self.mlp(self.pre_norm_mlp(x))


def set_attention_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every attention layer of `model` to 'sdpa' or the eager reference ('eager')."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; expected one of {ATTENTION_IMPLS}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.impl = impl
    return model


def transformer_init(module: nn.Module) -> None:
    """xavier_uniform Linear weights with zero bias, unit LayerNorm (JAX ViT / MAE / upstream Voltron)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# === Deterministic per-example noise ===
_MIX1, _MIX2, _GOLDEN = -4658895280553007687, -7723592293110705685, -7046029254386353131  # splitmix64, as int64


def hashed_uniform(seeds: torch.Tensor, n: int, salt: int = 0) -> torch.Tensor:
    """(B,) int64 seeds -> (B, n) floats in [0, 1), a pure function of (seed, position, salt) on any device.

    MAE masks drawn from this depend only on each example's seed, not on which rank or batch slot holds it,
    so a 2-process run sees exactly the masks of a 1-process run with the same global batch.
    """
    positions = torch.arange(n, device=seeds.device, dtype=torch.int64)
    offset = ((salt + 1) * _GOLDEN + 2**63) % 2**64 - 2**63  # wrap to int64 like the tensor arithmetic
    z = seeds.to(torch.int64)[:, None] * 1_000_003 + positions[None, :] + offset
    for shift, mult in ((30, _MIX1), (27, _MIX2)):
        z = (z ^ ((z >> shift) & ((1 << (64 - shift)) - 1))) * mult  # logical shift on int64
    z = z ^ ((z >> 31) & ((1 << 33) - 1))
    return ((z >> 11) & ((1 << 53) - 1)).double().div_(float(1 << 53)).float()
