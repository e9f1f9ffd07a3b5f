"""The behaviour-cloning policy: a (frozen) voltron encoder, a pooling extractor, and an MLP head with Tanh actions.

The head is R3M's: BatchNorm1d on its input (pooled image features + low-dim observation), then an MLP. Without an
encoder (`policy.encoder="none"`) the same head sees only the low-dim observation: the proprio-only floor and the
state oracle of the evaluation suites.

Contract (LeRobot-like): `forward(batch) -> (loss, info)`, `select_action(obs) -> actions` (batched, env units),
`save_pretrained(dir)` / `load_policy(dir)`, where the checkpoint carries the encoder reference, extractor and head
weights, normalisation statistics and the config.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from voltron.datasets.windows import NormStats
from voltron.errors import UserError
from voltron.models.base import VoltronModel
from voltron.models.checkpoints import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    atomic_write_json,
    load_state,
    read_config,
    read_json,
    read_weights,
)
from voltron.models.extractors import instantiate_extractor
from voltron.models.registry import build_model, default_config
from voltron.policy.config import NO_ENCODER, BCConfig, PolicyConfig, config_from_dict, config_to_dict

POLICY_FORMAT = "voltron-bc-policy/1"


def build_encoder(config: PolicyConfig) -> VoltronModel | None:
    """The encoder a policy config names: released/trained weights, (pretrained=False) a seeded random init, or
    None for a low-dim-only policy."""
    import voltron

    if config.encoder == NO_ENCODER:
        return None
    if config.pretrained:
        encoder, _ = voltron.load(config.encoder, freeze=config.freeze_encoder)
        return encoder
    source = Path(config.encoder).expanduser()
    model_config = read_config(source) if source.is_dir() else default_config(config.encoder)
    torch.manual_seed(config.encoder_seed)
    encoder = build_model(model_config, **config.encoder_overrides)
    if config.freeze_encoder:
        encoder.eval().requires_grad_(False)
    return encoder


class BCPolicy(nn.Module):
    def __init__(
        self,
        config: BCConfig,
        encoder: VoltronModel | None,
        proprio_dim: int,
        action_dim: int,
        proprio_stats: NormStats,
        action_stats: NormStats,
        image_size: int | None = None,
    ):
        super().__init__()
        self.config, self.encoder = config, encoder
        self.image_size = image_size  # the demos' frame size, which evaluation renders at
        self.proprio_dim, self.action_dim = proprio_dim, action_dim  # proprio_dim: the low-dim input's size
        self.proprio_stats, self.action_stats = proprio_stats, action_stats
        policy = config.policy
        self.uses_language = bool(encoder is not None and policy.use_language and encoder.uses_language)
        if self.uses_language and encoder.lm.cache_size == 0:
            # a policy sees the same few instructions at every step: run the frozen language model once for each
            encoder.lm.cache_size = 256
        self.extractor = None
        feature_dim = 0
        if encoder is not None:
            self.extractor = instantiate_extractor(encoder, n_latents=policy.n_latents, kind=policy.extractor)
            feature_dim = encoder.embed_dim * policy.n_latents
        width = policy.history * (feature_dim + proprio_dim)
        layers: list[nn.Module] = [nn.BatchNorm1d(width)]  # R3M's protocol normalises the head's input
        for hidden in policy.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, action_dim), nn.Tanh())
        self.preprocess = None if encoder is None else encoder.preprocess
        self._history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (features, proprio) of recent steps
        self.fast_encoder = None  # an InferenceEncoder (not a submodule: the weights stay the encoder's)

    def train(self, mode: bool = True) -> BCPolicy:
        super().train(mode)
        if self.encoder is not None and self.encoder_frozen:
            self.encoder.eval()  # a frozen encoder never switches to training behaviour
        return self

    # --- encoding ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    @property
    def encoder_frozen(self) -> bool:
        return self.config.policy.freeze_encoder

    @property
    def lowdim(self) -> str:
        """The observation key of the head's low-dim input: "proprio", or "state" for a state oracle."""
        return self.config.policy.lowdim

    @property
    def uses_images(self) -> bool:
        return self.encoder is not None

    def use_inference(self, precision: str = "fp32", backend: str = "eager") -> str:
        """Run the frozen encoder through a fast inference path (voltron.models.inference) whenever no gradient is
        needed; "auto" picks one. Returns the path that serves, e.g. "int8/onnxruntime" ("none" without encoder)."""
        from voltron.models.inference import accelerate

        self.fast_encoder = None
        if self.encoder is None or (precision, backend) == ("fp32", "eager"):
            return self.inference
        if not self.encoder_frozen:
            raise ValueError(f"inference path {precision}/{backend}: this policy fine-tunes its encoder")
        self.fast_encoder = accelerate(self.encoder.eval(), precision, backend)
        return self.inference

    @property
    def inference(self) -> str:
        """The encoder's inference path, e.g. "fp32/eager"."""
        if self.encoder is None:
            return "none"
        return "fp32/eager" if self.fast_encoder is None else str(self.fast_encoder.spec)

    def encode_tokens(self, frames: torch.Tensor, lang: list[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 frames (B, H, W, 3) -> encoder tokens (B, N, D) and the tokens' key mask (B, N)."""
        images = self.preprocess(frames).to(self.device)
        if self.encoder.n_frames > 1:  # dual-frame encoders see the current frame as both 0 and K
            images = images.unsqueeze(1).expand(-1, self.encoder.n_frames, -1, -1, -1)
        lang = lang if self.uses_language else None
        fast = self.fast_encoder is not None and not torch.is_grad_enabled()
        encoder = self.fast_encoder if fast else self.encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            tokens = encoder(images, lang, mode="multimodal" if self.uses_language else "visual")
        mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        if lang is not None and tokens.shape[1] > self.encoder.config.max_lang_len:
            _, lang_mask = self.encoder.lm.tokenize(list(lang))
            mask[:, -lang_mask.shape[1] :] = lang_mask.to(mask.device)
        return tokens, mask

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, n_latents * D)"""
        return self.extractor(tokens.float(), mask).flatten(1)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """(B, H * feature): pooled features of every frame in the window, oldest first."""
        if self.encoder is None:
            return torch.zeros(len(batch["proprio"]), 0, device=self.device)
        if "tokens" in batch:  # the frozen-encoder cache: (B, H, N, D) plus masks (B, H, N)
            tokens, mask = batch["tokens"], batch["token_mask"]
        else:
            frames = batch["frames"]  # (B, H, h, w, 3) uint8
            batch_size, history = frames.shape[:2]
            lang = None if batch.get("language") is None else [c for c in batch["language"] for _ in range(history)]
            tokens, mask = self.encode_tokens(frames.flatten(0, 1), lang)
            tokens, mask = tokens.unflatten(0, (batch_size, history)), mask.unflatten(0, (batch_size, history))
        pooled = self.pool(tokens.flatten(0, 1).to(self.device), mask.flatten(0, 1).to(self.device))
        return pooled.unflatten(0, tokens.shape[:2]).flatten(1)

    def head_input(self, features: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """(B, H * F) features and (B, H, P) low-dim observations -> (B, H * (F + P)), what the BatchNorm sees."""
        proprio = self.proprio_stats.standardize(proprio.to(self.device).float())  # (B, H, P)
        if self.encoder is None:
            return proprio.flatten(1)
        history = self.config.policy.history
        per_step = torch.cat([features.unflatten(1, (history, -1)), proprio], dim=-1)  # (B, H, F + P)
        return per_step.flatten(1)

    @property
    def input_norm(self) -> nn.BatchNorm1d:
        return self.head[0]

    @torch.no_grad()
    def calibrate_input_norm(self, head_inputs: Iterable[torch.Tensor]) -> None:
        """Set the head's BatchNorm running statistics to the exact mean and variance of the given head inputs.

        Why: the trainable extractor in front of the BatchNorm keeps moving during training, so the running
        averages lag behind the distribution the head was optimised on, and eval mode acts on shifted inputs
        (10-100x the training loss on the training frames). Recomputing the statistics of the final extractor on
        the training windows makes eval mode match what training optimised, and keeps R3M's BatchNorm head.
        """
        total, total_sq, count = 0.0, 0.0, 0
        for chunk in head_inputs:  # (B, width)
            chunk = chunk.double()
            total, total_sq, count = total + chunk.sum(0), total_sq + (chunk**2).sum(0), count + len(chunk)
        if count < 2:
            raise ValueError(f"calibrating the head's input statistics needs at least 2 samples; got {count}")
        mean = total / count
        var = (total_sq / count - mean**2).clamp(min=0) * count / (count - 1)  # unbiased, as BatchNorm keeps it
        norm = self.input_norm
        norm.running_mean.copy_(mean.to(norm.running_mean))
        norm.running_var.copy_(var.to(norm.running_var))

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that behaviour cloning trains on a frozen encoder: extractor and head (with BN statistics)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    # --- the contract -------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """MSE between predicted and demonstrated actions, both scaled to [-1, 1] by the training demos' range."""
        predicted = self.head(self.head_input(self.features(batch), batch["proprio"]))
        target = self.action_stats.to_unit_range(batch["action"].to(self.device).float())
        loss = F.mse_loss(predicted, target)
        return loss, {"mse": loss.detach(), "l1_env_units": self._env_l1(predicted, batch["action"])}

    def _env_l1(self, predicted: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (self.action_stats.from_unit_range(predicted.detach()) - action.to(self.device)).abs().mean()

    def reset(self) -> None:
        """Forget the observation history (call at every episode start)."""
        self._history = []

    @torch.inference_mode()
    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """Actions (N, A) float32 in env units for a batch of observations, or (A,) for a single one.

        `obs`: "image" (N, H, W, 3) uint8 (or "images": {camera: ...}), "proprio" (N, P), "language" (list of N
        str, or one str); a state oracle reads "state" (N, S) instead of "proprio". A single unbatched observation
        works too.
        """
        lowdim = np.asarray(obs[self.lowdim], dtype=np.float32)
        single = lowdim.ndim == 1
        proprio = torch.as_tensor(lowdim).reshape(1 if single else lowdim.shape[0], -1)
        if proprio.shape[1] != self.proprio_dim:
            raise ValueError(
                f"observation {self.lowdim!r} has {proprio.shape[1]} dims; this policy expects {self.proprio_dim}"
            )
        was_training = self.training
        self.eval()
        if self.encoder is None:
            feature = torch.zeros(proprio.shape[0], 0, device=self.device)
        else:
            image = obs["images"][self.camera] if "images" in obs else obs["image"]
            image = torch.as_tensor(np.asarray(image))
            if image.ndim == 3:
                image = image.unsqueeze(0)
            lang = obs.get("language")
            lang = [lang] * image.shape[0] if isinstance(lang, str) else (list(lang) if lang is not None else None)
            if self.uses_language and lang is None:
                raise ValueError("this policy's encoder is multimodal: obs['language'] must hold the instruction")
            feature = self.pool(*self.encode_tokens(image, lang))  # (N, F)
        step = (feature, proprio.to(self.device))
        if not self._history or self._history[-1][0].shape[0] != feature.shape[0]:
            self._history = [step] * self.config.policy.history  # an episode's first step fills the window
        else:
            self._history = [*self._history[1:], step]
        features = torch.stack([f for f, _ in self._history], dim=1).flatten(1)  # (N, H * F)
        proprio_window = torch.stack([p for _, p in self._history], dim=1)  # (N, H, P)
        action = self.action_stats.from_unit_range(self.head(self.head_input(features, proprio_window)))
        self.train(was_training)
        action = action.float().cpu().numpy()
        return action[0] if single else action

    @property
    def camera(self) -> str | None:
        return self.config.policy.camera

    def warmup(self, obs: dict[str, Any] | None = None) -> None:
        """One throwaway action (on `obs`, e.g. the robot's first observation, or on a blank frame) so the first
        real step is not slowed by lazy initialisation; the observation history is cleared afterwards."""
        if obs is None:
            obs = {self.lowdim: np.zeros((1, self.proprio_dim), dtype=np.float32), "language": ["warm up"]}
            if self.encoder is not None:
                size = self.image_size or self.encoder.config.image_size
                obs["image"] = np.zeros((1, size, size, 3), dtype=np.uint8)
        self.select_action(obs)
        self.reset()

    # --- checkpoints --------------------------------------------------------------------------------------------
    @property
    def stores_encoder(self) -> bool:
        """The encoder's weights go into the policy checkpoint unless they are frozen, loaded ones."""
        policy = self.config.policy
        return self.encoder is not None and not (policy.pretrained and policy.freeze_encoder)

    def save_pretrained(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        if self.stores_encoder:
            encoder_state = self.encoder.trainable_state_dict()
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
            state.update({f"encoder.{k}": v.detach().cpu().contiguous().clone() for k, v in encoder_state.items()})
        else:
            state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": POLICY_FORMAT}))
        meta = {
            "format": POLICY_FORMAT,
            "config": config_to_dict(self.config),
            "encoder_config": None if self.encoder is None else self.encoder.config.to_dict(),
            "proprio_dim": self.proprio_dim,
            "action_dim": self.action_dim,
            "proprio_stats": self.proprio_stats.to_dict(),
            "action_stats": self.action_stats.to_dict(),
            "image_size": self.image_size,
            **(extra or {}),
        }
        atomic_write_json(directory / CONFIG_NAME, meta)
        return directory


POLICY_META_KEYS = ("config", "proprio_dim", "action_dim", "proprio_stats", "action_stats")


def _norm_stats(data: Any, source: Path, key: str) -> NormStats:
    fields = ("mean", "std", "min", "max")
    if not isinstance(data, dict) or any(name not in data for name in fields):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"holds {found}", source=source, key=key, expected=f"an object with the lists {list(fields)}")
    return NormStats.from_dict(data)


def load_policy(directory: str | Path, device: str = "cpu") -> BCPolicy:
    """Restore a policy that `BCPolicy.save_pretrained` (or `voltron train-policy`) wrote."""
    directory = Path(directory).expanduser()
    meta = read_json(directory / CONFIG_NAME, "policy config")
    if not isinstance(meta, dict) or meta.get("format") != POLICY_FORMAT:
        raise ValueError(
            f"{directory / CONFIG_NAME}: not a voltron policy checkpoint (format {meta.get('format') if isinstance(meta, dict) else None!r}; "
            f"expected {POLICY_FORMAT!r}); encoders load with voltron.load instead"
        )
    source = directory / CONFIG_NAME
    for key in POLICY_META_KEYS:  # written by every save_pretrained; a hand-edited or truncated file may lack one
        if key not in meta:
            raise UserError(f"missing key {key!r}", source=source, expected=f"the keys {list(POLICY_META_KEYS)}")
    config = config_from_dict(meta["config"])
    stats = {key: _norm_stats(meta[key], source, key) for key in ("proprio_stats", "action_stats")}
    state = read_weights(directory / WEIGHTS_NAME)
    if any(k.startswith("encoder.") for k in state):  # stored encoder: rebuild its architecture, then load below
        from voltron.models.base import ModelConfig

        encoder = build_model(ModelConfig.from_dict(meta["encoder_config"], source=str(directory / CONFIG_NAME)))
        if config.policy.freeze_encoder:
            encoder.eval().requires_grad_(False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = build_encoder(config.policy)
    policy = BCPolicy(
        config,
        encoder,
        meta["proprio_dim"],
        meta["action_dim"],
        stats["proprio_stats"],
        stats["action_stats"],
        meta.get("image_size"),
    )
    policy_state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    missing = sorted(k for k in policy.state_dict() if not k.startswith("encoder.") and k not in policy_state)
    if missing:
        raise ValueError(f"{directory / WEIGHTS_NAME}: policy weights are missing {missing[:6]}")
    policy.load_state_dict(policy_state, strict=False)
    encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if encoder_state:
        load_state(policy.encoder, encoder_state, str(directory / WEIGHTS_NAME))
    return policy.to(device).eval()


def load_head_checkpoint(policy: BCPolicy, path: str | Path) -> BCPolicy:
    """Load a `checkpoints/step_*.safetensors` snapshot (extractor and head, as training saved it) into `policy`."""
    state = read_weights(Path(path))
    expected = set(policy.head_state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path}: not a checkpoint of this policy (missing {missing[:4]}, unexpected {extra[:4]})")
    policy.load_state_dict(state, strict=False)
    return policy
