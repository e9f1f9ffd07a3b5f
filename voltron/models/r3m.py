"""R3M baselines: a ViT (r-r3m-vit) or ResNet-50 (r-r3m-rn50) trained with time contrast, a language reward and L1/L2.

Inputs for pretraining are five sorted frames per video [s_0, s_i, s_j, s_k, s_T] and the video's caption.
L = l1 * mean|e|_1 + l2 * mean|e|_2 + tcn * L_tcn + lang * L_lang (weights 1e-5, 1e-5, 1, 1 as upstream).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from voltron.models.base import ModelConfig, VoltronModel
from voltron.models.blocks import Block, PatchEmbed, sincos_2d, transformer_init
from voltron.models.language import LanguageEncoder


class R3M(VoltronModel):
    family = "r-r3m-vit"
    n_frames = 1  # frames per image at inference; pretraining examples hold five
    train_frames = 5
    data_modality = "quintet+language"
    uses_language = False  # the representation is visual; language only shapes the reward during pretraining

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self._build_trunk(config)
        self.lm = LanguageEncoder(config.language_model, config.max_lang_len, config.lang_cache_size)
        hidden, layers, width = config.reward_hidden, [], 2 * self.embed_dim + self.lm.hidden_dim
        for _ in range(4):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.language_reward = nn.Sequential(*layers, nn.Linear(width, 1), nn.Sigmoid())
        self.language_reward.apply(transformer_init)

    def _build_trunk(self, config: ModelConfig) -> None:
        self.patch2embed = PatchEmbed(config.image_size, config.patch_size, config.embed_dim, config.in_channels)
        self.register_buffer("pe", sincos_2d(config.embed_dim, self.patch2embed.grid_size))
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.n_heads, config.mlp_ratio, voltron=False) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        self.apply(transformer_init)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, D): the mean of the LayerNorm'd patch tokens."""
        x = self.patch2embed(images) + self.pe
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(dim=1)

    def forward(self, images: torch.Tensor, lang: list[str] | None = None, mode: str = "multimodal") -> torch.Tensor:
        """(B, 1, D) for either mode; R3M takes no language at inference."""
        self.check_mode(mode)
        frames = self.check_images(images)
        self.check_lang(lang, frames.shape[0])
        return self.embed(frames[:, 0]).unsqueeze(1)

    # --- pretraining ----------------------------------------------------------------------------------------
    def batch_frames(self, batch: dict[str, Any]) -> torch.Tensor:
        frames = self.normalize(batch["frames"])
        size = self.config.image_size
        if frames.ndim != 5 or tuple(frames.shape[1:]) != (self.train_frames, 3, size, size):
            raise ValueError(
                f"{self.family}: batch['frames'] has shape {tuple(frames.shape)}; "
                f"expected (B, {self.train_frames}, 3, {size}, {size}) sorted frames [s0, si, sj, sk, sT]"
            )
        return frames

    def language_embedding(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm(ids, mask)  # (B, L, H)
        if self.config.legacy_query_mask:  # upstream averaged over every position, pads included
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def reward(self, initial: torch.Tensor, current: torch.Tensor, lang: torch.Tensor) -> torch.Tensor:
        return self.language_reward(torch.cat([initial, current, lang], dim=-1)).squeeze(-1)  # (B,)

    @staticmethod
    def similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.linalg.vector_norm(x - y, dim=-1)

    def permutations(self, batch_size: int, device) -> list[torch.Tensor]:
        # cross-batch negatives, drawn from the global RNG (its state is checkpointed by the trainer)
        return [torch.randperm(batch_size, device=device) for _ in range(self.config.n_negatives)]

    @staticmethod
    def info_nce(positive: torch.Tensor, negatives: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.stack([positive, *negatives], dim=1)  # (B, 1 + n)
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return F.cross_entropy(logits, target), accuracy

    def pretrain_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = self.batch_frames(batch)
        batch_size, device = frames.shape[0], frames.device
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise KeyError(
                f"{self.family} pretraining batch needs 'input_ids' and 'attention_mask'; got {sorted(batch)}"
            )
        emb = self.embed(frames.flatten(0, 1)).unflatten(0, (batch_size, self.train_frames))  # (B, 5, D)
        s0, si, sj, sk, st = emb.unbind(dim=1)
        l1 = torch.linalg.vector_norm(emb, ord=1, dim=-1).mean()
        l2 = torch.linalg.vector_norm(emb, ord=2, dim=-1).mean()

        perms = self.permutations(batch_size, device)
        sim = self.similarity
        tcn_a, acc_a = self.info_nce(sim(si, sj), [sim(si, sk)] + [sim(si, si[p]) for p in perms])
        tcn_b, acc_b = self.info_nce(sim(sj, sk), [sim(si, sk)] + [sim(sk, sk[p]) for p in perms])
        tcn = (tcn_a + tcn_b) / 2

        lang = self.language_embedding(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        lang_terms, lang_accs = [], []
        for positive, negative in ((st, s0), (sj, si), (sk, sj)):  # later frames make more progress on the task
            term, accuracy = self.info_nce(
                self.reward(s0, positive, lang),
                [self.reward(s0, negative, lang)] + [self.reward(s0, positive, lang[p]) for p in perms],
            )
            lang_terms.append(term)
            lang_accs.append(accuracy)
        lang_loss = torch.stack(lang_terms).mean()

        cfg = self.config
        loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.tcn_weight * tcn + cfg.lang_weight * lang_loss
        metrics = {
            "tcn_loss": tcn.detach(),
            "lang_loss": lang_loss.detach(),
            "l1": l1.detach(),
            "l2": l2.detach(),
            "tcn_accuracy": (acc_a + acc_b) / 2,
            "lang_accuracy": torch.stack(lang_accs).mean(),
        }
        return loss, metrics


class R3MResNet(R3M):
    """R3M with a torchvision ResNet-50 trunk (fc removed): 2048-d representations."""

    family = "r-r3m-rn50"

    def _build_trunk(self, config: ModelConfig) -> None:
        from torchvision.models import resnet50

        self.resnet = resnet50(weights=None)
        self.resnet.fc = nn.Identity()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.resnet(images)  # (B, 2048)
