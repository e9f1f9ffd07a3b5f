"""V-Gen: V-Dual plus a prefix-masked language generator; L = L_rec + 0.5 * L_lm, and intent scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from voltron.models.blocks import key_padding_mask, legacy_query_mask, transformer_init
from voltron.models.mae import MAEConfig, VDual


@dataclass
class VGenConfig(MAEConfig):
    """V-Gen's own fields on top of the masked autoencoder's."""

    gen_ratio: float = 0.5  # alpha: the share of examples that generate their caption
    mae_weight: float = 1.0
    lm_weight: float = 0.5


class VGen(VDual):
    """Each example either conditions on its caption (the encoder sees it; the LM target is [CLS] only, weight 0)
    or generates it (the encoder sees [CLS] only; the decoder predicts the caption, weight 1), with probability
    `gen_ratio` (alpha = 0.5) of generating."""

    family = "v-gen"
    config_class = VGenConfig

    def _build_language_heads(self, config: VGenConfig) -> None:
        dec_dim = config.decoder_embed_dim
        self.lang2decoder = nn.Linear(self.lm.hidden_dim, dec_dim)
        self.decoder_lang_prediction = nn.Linear(dec_dim, self.lm.vocab_size)
        transformer_init(self.lang2decoder)
        transformer_init(self.decoder_lang_prediction)

    def prefix_mask(self, n_lang: int, device) -> torch.Tensor:
        """(S, S) boolean over [patches of both frames ; language]: patches attend to all patches (never to
        language); each language token attends to every patch and to earlier language tokens."""
        n_patches = self.n_frames * self.num_patches
        total = n_patches + n_lang
        mask = torch.ones(total, total, dtype=torch.bool, device=device).tril()
        mask[:n_patches, :n_patches] = True
        return mask

    def decoder_attn_mask(self, lang_mask: torch.Tensor) -> torch.Tensor:
        batch = lang_mask.shape[0]
        patches = torch.ones(batch, self.n_frames * self.num_patches, dtype=lang_mask.dtype, device=lang_mask.device)
        full = torch.cat([patches, lang_mask], dim=1)
        pad = legacy_query_mask(full) if self.config.legacy_query_mask else key_padding_mask(full)
        return self.prefix_mask(lang_mask.shape[1], lang_mask.device)[None, None] & pad

    def language_loss(self, logits: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Per-example mean next-token cross-entropy (B,): logits[:, t] predicts ids[:, t + 1] where mask[:, t]."""
        batch, length, vocab = logits.shape
        ce = F.cross_entropy(
            logits[:, :-1].reshape(-1, vocab).float(), target_ids[:, 1:].reshape(-1), reduction="none"
        ).view(batch, length - 1)
        valid = target_mask[:, :-1].to(ce.dtype)
        return (ce * valid).sum(dim=-1) / valid.sum(dim=-1).clamp(min=1.0)

    def pretrain_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = self.batch_frames(batch)
        batch_size, device = frames.shape[0], frames.device
        keep, restore, mask = self.random_mask(batch, batch_size, device)
        ids, lang_mask = self.batch_language(batch, device)
        generate = self.sample_noise(batch, batch_size, 1, 1, device)[:, 0] < self.config.gen_ratio  # (B,)
        blank_ids, blank_mask = self.lm.blank(batch_size, device)
        gen = generate[:, None]
        enc_ids, enc_mask = torch.where(gen, blank_ids, ids), torch.where(gen, blank_mask, lang_mask)
        tgt_ids, tgt_mask = torch.where(gen, ids, blank_ids), torch.where(gen, lang_mask, blank_mask)

        x = self.encode(frames, enc_ids, enc_mask, keep)
        n_visual = self.n_frames * keep.shape[1]
        lang_tokens = self.lang2decoder(self.lm.embed_tokens(tgt_ids))  # (B, L, Dd)
        predictions, lang_out = self.decode(x[:, :n_visual], restore, lang_tokens, self.decoder_attn_mask(tgt_mask))
        rec_loss, per_frame = self.reconstruction_loss(frames, predictions, mask)
        per_example = self.language_loss(self.decoder_lang_prediction(lang_out), tgt_ids, tgt_mask)
        weight = generate.to(per_example.dtype)
        lm_loss = (per_example * weight).sum() / (1e-8 + weight.sum())
        loss = self.config.mae_weight * rec_loss + self.config.lm_weight * lm_loss
        metrics = {
            "reconstruction_loss": rec_loss.detach(),
            "lm_loss": lm_loss.detach(),
            "lm_ppl": lm_loss.detach().exp(),
            "generate_fraction": weight.mean(),
        }
        return loss, metrics

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Intent scoring: (B, k) mean log-likelihood of each of k captions given each (0, K) frame pair, with
        blank encoder language (as the generate examples saw in training). Higher means more likely."""
        frames = self.check_images(images)
        if isinstance(captions, str) or not captions:
            raise ValueError("captions must be a non-empty list of strings")
        batch_size, device, k = frames.shape[0], frames.device, len(captions)
        keep = torch.arange(self.num_patches, device=device).expand(batch_size, -1)
        blank_ids, blank_mask = self.lm.blank(batch_size, device)
        x = self.encode(frames, blank_ids, blank_mask, keep)[:, : self.n_frames * self.num_patches]
        ids, lang_mask = self.language_inputs(list(captions), k, device)
        x = x.repeat_interleave(k, dim=0)  # (B*k, F*N, D): example-major
        ids, lang_mask = ids.repeat(batch_size, 1), lang_mask.repeat(batch_size, 1)
        restore = torch.arange(self.num_patches, device=device).expand(batch_size * k, -1)
        lang_tokens = self.lang2decoder(self.lm.embed_tokens(ids))
        _, lang_out = self.decode(x, restore, lang_tokens, self.decoder_attn_mask(lang_mask))
        return -self.language_loss(self.decoder_lang_prediction(lang_out), ids, lang_mask).view(batch_size, k)
