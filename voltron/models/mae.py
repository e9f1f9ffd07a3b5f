"""Masked-autoencoder encoders: R-MVP (visual MAE), V-Cond (language-conditioned) and V-Dual (two frames, 0 and K).

One class covers all three; the differences are class attributes (frames, language, CLS token, block style),
so the trainer, the registry and the tests treat them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from voltron.models.base import ModelConfig, VoltronModel
from voltron.models.blocks import (
    Block,
    PatchEmbed,
    RMSNorm,
    hashed_uniform,
    key_padding_mask,
    legacy_query_mask,
    patchify,
    sincos_2d,
    transformer_init,
)
from voltron.models.language import LanguageEncoder


@dataclass
class MAEConfig(ModelConfig):
    """The masked autoencoders' own fields (R-MVP, V-Cond, V-Dual; V-Gen adds its own in VGenConfig)."""

    decoder_embed_dim: int = 192
    decoder_depth: int = 6
    decoder_n_heads: int = 6
    mask_ratio: float = 0.75


class MaskedAutoencoder(VoltronModel):
    family = "r-mvp"
    config_class = MAEConfig
    n_frames = 1
    sampling_scheme = "state"
    uses_language = False
    cls_token_enabled = True  # R-MVP prepends a CLS token (as MAE); the Voltron models have none
    voltron_blocks = False  # RMSNorm + SwishGLU + LayerScale blocks (V-*) or LayerNorm + GELU (MAE)

    def __init__(self, config: MAEConfig):
        super().__init__(config)
        dim, dec_dim, frames = config.embed_dim, config.decoder_embed_dim, self.n_frames
        self.patch2embed = PatchEmbed(config.image_size, config.patch_size, dim, config.in_channels)
        grid, n_extra = self.patch2embed.grid_size, int(self.cls_token_enabled)
        self.num_patches = self.patch2embed.num_patches

        def norm(d: int) -> nn.Module:
            return RMSNorm(d) if self.voltron_blocks else nn.LayerNorm(d, eps=1e-6)

        self.register_buffer("encoder_pe", sincos_2d(dim, grid, cls_token=self.cls_token_enabled))
        self.encoder_blocks = nn.ModuleList(
            Block(dim, config.n_heads, config.mlp_ratio, self.voltron_blocks) for _ in range(config.depth)
        )
        self.encoder_norm = norm(dim)
        self.encoder2decoder = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.register_buffer("decoder_pe", sincos_2d(dec_dim, grid, cls_token=self.cls_token_enabled))
        self.decoder_blocks = nn.ModuleList(
            Block(dec_dim, config.decoder_n_heads, config.mlp_ratio, self.voltron_blocks)
            for _ in range(config.decoder_depth)
        )
        self.decoder_norm = norm(dec_dim)
        self.decoder_prediction = nn.Linear(dec_dim, config.patch_size**2 * config.in_channels)
        if self.cls_token_enabled:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if frames > 1:  # learned per-frame context embeddings, randn-initialised as upstream
            self.ctx_enc_pe = nn.Parameter(torch.randn(1, frames, 1, dim))
            self.ctx_dec_pe = nn.Parameter(torch.randn(1, frames, 1, dec_dim))
        if self.uses_language:
            self.img_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.lang_token = nn.Parameter(torch.zeros(1, 1, dim))
        self._build_extra(config)
        self._init_weights(n_extra)
        if self.uses_language:  # created after init so the frozen LM keeps its pretrained weights
            self.lm = LanguageEncoder(config.language_model, config.max_lang_len, config.lang_cache_size)
            self.lang2encoder = nn.Linear(self.lm.hidden_dim, dim)
            transformer_init(self.lang2encoder)
            self._build_language_heads(config)

    def _build_extra(self, config: MAEConfig) -> None:
        """Hook for subclasses' extra vision-side modules."""

    def _build_language_heads(self, config: MAEConfig) -> None:
        """Hook for subclasses' extra language-side modules (built once the LM's width is known)."""

    def _init_weights(self, n_extra: int) -> None:
        proj = self.patch2embed.proj.weight
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
        for name, param in self.named_parameters():
            if name.endswith("_token"):
                nn.init.normal_(param, std=0.02)
        for module in self.modules():
            if module is not self.patch2embed.proj:
                transformer_init(module)

    # --- language -------------------------------------------------------------------------------------------
    def language_inputs(
        self, lang: list[str] | None, batch_size: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if lang is None:
            return self.lm.blank(batch_size, device)
        ids, mask = self.lm.tokenize(lang)
        return ids.to(device), mask.to(device)

    def pad_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return legacy_query_mask(mask) if self.config.legacy_query_mask else key_padding_mask(mask)

    # --- encoder --------------------------------------------------------------------------------------------
    def encode(
        self,
        frames: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """frames (B, F, 3, S, S) normalised; keep (B, K) visible patch ids or None for all.

        Returns (B, [1 +] F*K [+ L], D): optional CLS, the visible patches of every frame, then language tokens.
        """
        batch, n_frames = frames.shape[:2]
        pe = self.encoder_pe[:, int(self.cls_token_enabled) :]
        patches = (self.patch2embed(frames.flatten(0, 1)) + pe).unflatten(0, (batch, n_frames))  # (B, F, N, D)
        if n_frames > 1:
            patches = patches + self.ctx_enc_pe[:, :n_frames]
        if keep is not None:
            index = keep[:, None, :, None].expand(-1, n_frames, -1, patches.shape[-1])
            patches = patches.gather(2, index)  # (B, F, K, D)
        if self.uses_language:
            patches = patches + self.img_token
        tokens = [patches.flatten(1, 2)]
        if self.cls_token_enabled:
            tokens.insert(0, (self.cls_token + self.encoder_pe[:, :1]).expand(batch, -1, -1))
        attn_mask = None
        if self.uses_language:
            lang = self.lang2encoder(self.lm(input_ids, attention_mask)) + self.lang_token  # (B, L, D)
            tokens.append(lang)
            n_visual = sum(t.shape[1] for t in tokens[:-1])
            visible = torch.ones(batch, n_visual, dtype=attention_mask.dtype, device=attention_mask.device)
            attn_mask = self.pad_mask(torch.cat([visible, attention_mask], dim=1))
        x = torch.cat(tokens, dim=1)
        for block in self.encoder_blocks:
            x = block(x, attn_mask)
        return self.encoder_norm(x)

    def forward(self, images: torch.Tensor, lang: list[str] | None = None, mode: str = "multimodal") -> torch.Tensor:
        """Representations (B, N, D): the last frame's patch tokens, then (multimodal) the language tokens.

        R-MVP has no language: both modes give its patch tokens (its CLS token is `forward_cls`).
        """
        return self.forward_with_mask(images, lang, mode)[0]

    def forward_with_mask(
        self, images: torch.Tensor, lang: list[str] | None = None, mode: str = "multimodal"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`'s tokens and their key mask (B, N): 1 on patches, the tokenizer's attention mask on language."""
        self.check_mode(mode)
        frames = self.check_images(images)
        lang = self.check_lang(lang, frames.shape[0])
        ids = mask = None
        if self.uses_language:
            ids, mask = self.language_inputs(lang, frames.shape[0], frames.device)
        return self.output_tokens(self.encode(frames, ids, mask), mask, mode)

    def output_tokens(
        self, x: torch.Tensor, lang_mask: torch.Tensor | None, mode: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode`'s sequence (B, [1 +] F*N [+ L], D) -> what forward returns (the last frame's patches, then the
        language tokens in multimodal mode) and its key mask (B, N [+ L])."""
        start = int(self.cls_token_enabled) + (self.n_frames - 1) * self.num_patches
        patches = x[:, start : start + self.num_patches]
        visible = torch.ones(patches.shape[:2], dtype=torch.long, device=patches.device)
        if mode == "visual" or not self.uses_language:
            return patches, visible
        tokens = torch.cat([patches, x[:, start + self.num_patches :]], dim=1)
        return tokens, torch.cat([visible, lang_mask.to(visible)], dim=1)

    def forward_cls(self, images: torch.Tensor) -> torch.Tensor:
        if not self.cls_token_enabled:
            raise ValueError(f"{self.family} has no CLS token")
        return self.encode(self.check_images(images))[:, :1]

    # --- pretraining ----------------------------------------------------------------------------------------
    def sample_noise(self, batch: dict[str, Any], batch_size: int, n: int, salt: int, device) -> torch.Tensor:
        """Per-example uniforms: hashed from batch['seed'] when present (rank-independent), else torch.rand."""
        if "seed" in batch:
            return hashed_uniform(batch["seed"].to(device), n, salt)
        return torch.rand(batch_size, n, device=device)

    def random_mask(self, batch: dict[str, Any], batch_size: int, device) -> tuple[torch.Tensor, ...]:
        """One random mask per example, shared by all its frames: keep (B, K) visible patch ids, restore (B, N)
        (the argsort that undoes the shuffle) and mask (B, N) with 1 = hidden (MAE convention)."""
        n_keep = int(self.num_patches * (1 - self.config.mask_ratio))
        shuffle = self.sample_noise(batch, batch_size, self.num_patches, 0, device).argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        mask = torch.ones(batch_size, self.num_patches, device=device)
        mask[:, :n_keep] = 0
        return shuffle[:, :n_keep], restore, mask.gather(1, restore)

    def decode(
        self,
        visible: torch.Tensor,
        restore: torch.Tensor,
        extra: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """visible: encoder output without language (B, [1 +] F*K, D). Returns per-patch pixel predictions
        (B, F, N, p*p*C) and, when `extra` decoder tokens (B, L, Dd) are appended, their outputs (B, L, Dd)."""
        batch, n_frames = visible.shape[0], self.n_frames
        n_keep = (visible.shape[1] - int(self.cls_token_enabled)) // n_frames
        y = self.encoder2decoder(visible)
        cls = None
        if self.cls_token_enabled:
            cls, y = y[:, :1] + self.decoder_pe[:, :1], y[:, 1:]
        y = y.unflatten(1, (n_frames, n_keep))  # (B, F, K, Dd)
        hidden = self.mask_token.expand(batch, n_frames, self.num_patches - n_keep, -1)
        y = torch.cat([y, hidden.to(y.dtype)], dim=2)
        y = y.gather(2, restore[:, None, :, None].expand(-1, n_frames, -1, y.shape[-1]))  # unshuffle (B, F, N, Dd)
        y = y + self.decoder_pe[:, int(self.cls_token_enabled) :].unsqueeze(1)
        if n_frames > 1:
            y = y + self.ctx_dec_pe[:, :n_frames]
        tokens = [y.flatten(1, 2)]
        if cls is not None:
            tokens.insert(0, cls)
        if extra is not None:
            tokens.append(extra)
        x = torch.cat(tokens, dim=1)
        for block in self.decoder_blocks:
            x = block(x, attn_mask)
        x = self.decoder_norm(x)
        start = int(self.cls_token_enabled)
        patches = x[:, start : start + n_frames * self.num_patches].unflatten(1, (n_frames, self.num_patches))
        extra_out = x[:, start + n_frames * self.num_patches :] if extra is not None else None
        return self.predict_patches(patches), extra_out

    def predict_patches(self, patches: torch.Tensor) -> torch.Tensor:
        return self.decoder_prediction(patches)

    def reconstruction_loss(
        self, frames: torch.Tensor, predictions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch normalised pixel MSE over hidden patches; returns (mean over frames, per-frame (F,))."""
        targets = patchify(frames, self.config.patch_size)  # (B, F, N, p*p*C)
        mean, var = targets.mean(dim=-1, keepdim=True), targets.var(dim=-1, unbiased=True, keepdim=True)
        targets = (targets - mean) / (var + 1e-6).sqrt()
        per_patch = (predictions.float() - targets).pow(2).mean(dim=-1)  # (B, F, N)
        per_frame = (per_patch * mask[:, None]).sum(dim=(0, 2)) / mask.sum()
        return per_frame.mean(), per_frame

    def batch_language(self, batch: dict[str, Any], device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.uses_language:
            return None, None
        for key in ("input_ids", "attention_mask"):
            if key not in batch:
                raise KeyError(f"{self.family} pretraining batch needs {key!r} (B, L); got keys {sorted(batch)}")
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    def pretrain_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = self.batch_frames(batch)
        batch_size, device = frames.shape[0], frames.device
        keep, restore, mask = self.random_mask(batch, batch_size, device)
        ids, lang_mask = self.batch_language(batch, device)
        x = self.encode(frames, ids, lang_mask, keep)
        n_visual = int(self.cls_token_enabled) + self.n_frames * keep.shape[1]
        predictions, _ = self.decode(x[:, :n_visual], restore)
        loss, per_frame = self.reconstruction_loss(frames, predictions, mask)
        metrics = {"reconstruction_loss": loss.detach()}
        if self.n_frames > 1:
            metrics.update({f"reconstruction_loss_frame{i}": v.detach() for i, v in enumerate(per_frame)})
        return loss, metrics


class VCond(MaskedAutoencoder):
    """V-Cond: single frame, the caption conditions a joint vision-language encoder."""

    family = "v-cond"
    sampling_scheme = "state+language"
    uses_language = True
    cls_token_enabled = False
    voltron_blocks = True


class VDual(VCond):
    """V-Dual: frames 0 and K share one random mask; L = (L_0 + L_K) / 2."""

    family = "v-dual"
    n_frames = 2
    sampling_scheme = "state+ok"
