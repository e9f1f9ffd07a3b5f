"""R3M baselines: a ViT (r-r3m-vit) or ResNet-50 (r-r3m-rn50) trained with time contrast, a language reward and L1/L2.

Inputs for pretraining are five sorted frames per video [s_0, s_i, s_j, s_k, s_T] and the video's caption.
L = l1 * mean|e|_1 + l2 * mean|e|_2 + tcn * L_tcn + lang * L_lang (weights 1e-5, 1e-5, 1, 1 as upstream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from voltron.models.base import ModelConfig, VoltronModel
from voltron.models.blocks import Block, PatchEmbed, sincos_2d, transformer_init
from voltron.models.language import LanguageEncoder

INFO_NCE_EPS = 1e-8  # upstream's `eps`


@dataclass
class R3MConfig(ModelConfig):
    """R3M's own fields: the trunk and the loss weights (upstream's), and the language reward's MLP width."""

    trunk: str = "vit"  # "vit" or "resnet50"
    l1_weight: float = 1e-5
    l2_weight: float = 1e-5
    tcn_weight: float = 1.0
    lang_weight: float = 1.0
    n_negatives: int = 3
    reward_hidden: int = 1024


class R3M(VoltronModel):
    family = "r-r3m-vit"
    config_class = R3MConfig
    n_frames = 1  # frames per image at inference; pretraining examples hold five
    train_frames = 5
    sampling_scheme = "quintet+language"
    uses_language = False  # the representation is visual; language only shapes the reward during pretraining

    def __init__(self, config: R3MConfig):
        super().__init__(config)
        self._build_trunk(config)
        self.lm = LanguageEncoder(config.language_model, config.max_lang_len, config.lang_cache_size)
        hidden, layers, width = config.reward_hidden, [], 2 * self.embed_dim + self.lm.hidden_dim
        for _ in range(4):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.language_reward = nn.Sequential(*layers, nn.Linear(width, 1), nn.Sigmoid())
        self.language_reward.apply(transformer_init)

    def _build_trunk(self, config: R3MConfig) -> None:
        self.patch2embed = PatchEmbed(config.image_size, config.patch_size, config.embed_dim, config.in_channels)
        self.register_buffer("pe", sincos_2d(config.embed_dim, self.patch2embed.grid_size))
        self.blocks = nn.ModuleList(
            Block(config.embed_dim, config.n_heads, config.mlp_ratio, voltron=False) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)
        proj = self.patch2embed.proj.weight  # xavier as for a Linear over the flattened patch, as upstream
        nn.init.xavier_uniform_(proj.data.view(proj.shape[0], -1))
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

    def permutations(self, batch_size: int, n_terms: int, device) -> list[list[torch.Tensor]]:
        """`n_terms` lists of `n_negatives` cross-batch permutations, each drawn fresh as upstream does.

        Drawn on the CPU from the global RNG (the trainer checkpoints its state) in upstream's order: negative
        round by round, one permutation per term within a round. Self is not excluded (as upstream and R3M): a
        fixed point makes that row's negative equal its positive.
        """
        rounds = [[torch.randperm(batch_size) for _ in range(n_terms)] for _ in range(self.config.n_negatives)]
        return [[perm.to(device) for perm in term] for term in zip(*rounds)]

    def time_contrastive_logits(
        self, si: torch.Tensor, sj: torch.Tensor, sk: torch.Tensor, perms: list[list[torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (B, 2 + n) logit tables [positive, hard negative (i, k), cross-batch negatives]: sim(i, j) must beat
        sim(i, k) and sim(i, other video's i); sim(j, k) must beat sim(i, k) and sim(j, other video's j).

        The second term follows upstream Voltron, whose cross-batch negatives pair s_j with shuffled s_j; the
        original R3M trainer paired s_k with shuffled s_k there (sim(es2, es2_shuf)).
        """
        sim = self.similarity
        hard = sim(si, sk)
        term_ij = torch.stack([sim(si, sj), hard] + [sim(si, si[p]) for p in perms[0]], dim=1)
        term_jk = torch.stack([sim(sj, sk), hard] + [sim(sj, sj[p]) for p in perms[1]], dim=1)
        return term_ij, term_jk

    def language_logits(
        self, states: tuple[torch.Tensor, ...], lang: torch.Tensor, perms: list[list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        """Three (B, 2 + n) reward tables [positive, in-video negative, cross-video negatives] for this caption:
        R(s0, sT) vs R(s0, s0), R(s0, sj) vs R(s0, si), R(s0, sk) vs R(s0, sj), each also against another video's
        progress R(s0[p], s[p]) under this video's caption, as upstream and the original R3M trainer score it.
        All 3 (2 + n) reward evaluations go through the MLP as one batch."""
        s0, si, sj, sk, st = states
        inputs = []
        for (positive, negative), term_perms in zip(((st, s0), (sj, si), (sk, sj)), perms):
            inputs += [(s0, positive), (s0, negative)] + [(s0[p], positive[p]) for p in term_perms]
        rows = torch.cat([torch.cat([initial, current, lang], dim=-1) for initial, current in inputs])
        rewards = self.language_reward(rows).squeeze(-1).unflatten(0, (len(inputs), -1))  # (3 (2 + n), B)
        return list(rewards.t().unflatten(1, (3, -1)).unbind(dim=1))  # 3 x (B, 2 + n)

    @staticmethod
    def info_nce(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE over (B, 1 + m) logits whose column 0 is the positive, and how often it beats every negative.

        Upstream's (and the original R3M trainer's) arithmetic, -log(eps + e^pos / (eps + sum e^logits)) with
        eps = 1e-8, rather than a log-softmax: every logit here is <= 1 (similarities are -distances, rewards lie
        in (0, 1)), so nothing overflows, and where all similarities underflow the loss saturates at -log(1e-8)
        (about 18.4) exactly as upstream's does.
        """
        exp = logits.exp()
        nce = -torch.log(INFO_NCE_EPS + exp[:, 0] / (INFO_NCE_EPS + exp.sum(dim=1)))
        accuracy = (logits[:, 1:].max(dim=1).values < logits[:, 0]).float().mean()
        return nce.mean(), accuracy

    def pretrain_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        frames = self.batch_frames(batch)
        batch_size, device = frames.shape[0], frames.device
        if "input_ids" not in batch or "attention_mask" not in batch:
            raise KeyError(
                f"{self.family} pretraining batch needs 'input_ids' and 'attention_mask'; got {sorted(batch)}"
            )
        emb = self.embed(frames.flatten(0, 1)).unflatten(0, (batch_size, self.train_frames))  # (B, 5, D)
        states = emb.unbind(dim=1)  # s0, si, sj, sk, sT: each (B, D)
        l1 = torch.linalg.vector_norm(emb, ord=1, dim=-1).mean()
        l2 = torch.linalg.vector_norm(emb, ord=2, dim=-1).mean()

        # Time contrast draws its permutations first, then the language terms (upstream's order).
        term_ij, term_jk = self.time_contrastive_logits(*states[1:4], self.permutations(batch_size, 2, device))
        (tcn_a, _), (tcn_b, _) = self.info_nce(term_ij), self.info_nce(term_jk)
        tcn = (tcn_a + tcn_b) / 2
        # upstream's TCN accuracy: how often the positive beats the hard negative sim(i, k)
        tcn_accuracy = (
            (term_ij[:, 0] > term_ij[:, 1]).float().mean() + (term_jk[:, 0] > term_jk[:, 1]).float().mean()
        ) / 2

        lang = self.language_embedding(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        lang_tables = self.language_logits(states, lang, self.permutations(batch_size, 3, device))
        lang_terms, lang_accs = zip(*(self.info_nce(table) for table in lang_tables))
        lang_loss = torch.stack(lang_terms).mean()

        cfg = self.config
        loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.tcn_weight * tcn + cfg.lang_weight * lang_loss
        metrics = {
            "tcn_loss": tcn.detach(),
            "lang_loss": lang_loss.detach(),
            "l1": l1.detach(),
            "l2": l2.detach(),
            "tcn_accuracy": tcn_accuracy,
            "lang_accuracy": torch.stack(lang_accs).mean(),
        }
        return loss, metrics


class R3MResNet(R3M):
    """R3M with a torchvision ResNet-50 trunk (fc removed): 2048-d representations."""

    family = "r-r3m-rn50"

    def _build_trunk(self, config: R3MConfig) -> None:
        from torchvision.models import resnet50

        self.resnet = resnet50(weights=None)
        self.resnet.fc = nn.Identity()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.resnet(images)  # (B, 2048)
