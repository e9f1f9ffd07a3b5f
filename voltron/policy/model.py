"""The behaviour-cloning policy: a (frozen) voltron encoder, a pooling extractor, and an MLP head with Tanh actions.

The head is R3M's: BatchNorm1d on its input (pooled image features + low-dim observation), then an MLP. Without an
encoder (`policy.encoder="none"`) the same head sees only the low-dim observation: the proprio-only floor and the
state oracle of the evaluation suites.

BCPolicy implements the policy contract of voltron/policy/base.py. Its checkpoint (config.json + model.safetensors)
carries the extractor and head weights, the normalisation statistics and the config, plus the encoder: its weights
when they were trained or randomly initialised, else a reference to the pretrained encoder (a registered id or a
directory) with its config and the SHA-256 of its weights, which loading verifies. With `bundle_encoder` the
referenced encoder is copied into the policy folder (`encoder/`), so the folder runs on its own (on a robot).
"""

from __future__ import annotations

import shutil
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
from voltron.io import sha256_file, staged_directory
from voltron.models.base import VoltronModel
from voltron.models.checkpoints import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    atomic_write_json,
    load_state,
    read_json,
    read_weights,
    resolve_checkpoint,
)
from voltron.models.extractors import instantiate_extractor
from voltron.models.registry import build_model, model_config_from_dict
from voltron.policy.base import Policy, load_policy  # noqa: F401  (load_policy: re-exported for callers here)
from voltron.policy.config import NO_ENCODER, BCConfig, PolicyConfig, config_from_dict, config_to_dict

POLICY_FORMAT = "voltron-bc-policy/1"
BUNDLE_DIR = "encoder"  # a bundled encoder's folder inside the policy folder (config.json + model.safetensors)


def open_encoder(config: PolicyConfig) -> tuple[VoltronModel | None, dict[str, Any] | None, Path | None]:
    """The encoder a policy config names: (encoder, record, folder).

    Pretrained weights (a registered id or a directory) come with a record of what was loaded, {"source", "sha256"
    of the folder's model.safetensors}, and the folder; a random init (`pretrained=False`, seeded by
    `encoder_seed`, of an id's or a directory's architecture) and "none" (a low-dim-only policy) with None.
    """
    import voltron

    if config.encoder == NO_ENCODER:
        return None, None, None
    if not config.pretrained:
        torch.manual_seed(config.encoder_seed)
        with warnings.catch_warnings():  # random on purpose: the policy config says so
            warnings.simplefilter("ignore")
            encoder, _ = voltron.load(
                config.encoder, pretrained=False, freeze=config.freeze_encoder, **config.encoder_overrides
            )
        return encoder, None, None
    folder = resolve_checkpoint(config.encoder)
    record = {"source": config.encoder, "sha256": sha256_file(folder / WEIGHTS_NAME)}
    encoder, _ = voltron.load(folder, freeze=config.freeze_encoder)
    return encoder, record, folder


def copy_encoder(folder: Path, target: Path, sha256: str) -> Path:
    """Copy an encoder checkpoint (config.json, model.safetensors) from `folder` to the new folder `target`, whole
    or not at all, after checking that the copied weights are the ones `sha256` names. A `target` that already
    holds those weights is kept; one holding others (an older run's bundle, in a folder trained into again) goes."""
    if (target / WEIGHTS_NAME).is_file() and sha256_file(target / WEIGHTS_NAME) == sha256:
        return target
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    with staged_directory(target) as staging:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(folder / name, staging / name)
        verify_encoder_weights(staging, sha256, shown=folder)
    return target


def verify_encoder_weights(folder: Path, sha256: str, shown: Path | None = None) -> None:
    """Refuse an encoder folder whose weights are not the ones the policy was trained on."""
    weights = (shown or folder) / WEIGHTS_NAME
    found = sha256_file(folder / WEIGHTS_NAME)
    if found != sha256:
        raise UserError(
            f"the encoder weights have sha256 {found}, but the policy was trained on sha256 {sha256}; the encoder "
            "was replaced since (e.g. a resumed pretraining re-exported into its folder)",
            source=weights,
            expected="the policy's own encoder: put it back, or retrain the policy on this one",
        )


class BCPolicy(Policy):
    format = POLICY_FORMAT

    def __init__(
        self,
        config: BCConfig,
        encoder: VoltronModel | None,
        proprio_dim: int,
        action_dim: int,
        proprio_stats: NormStats,
        action_stats: NormStats,
        image_size: int | None = None,
        *,
        encoder_record: dict[str, Any] | None = None,
        encoder_folder: Path | None = None,
    ):
        policy = config.policy
        cameras = (policy.camera,) if encoder is not None and policy.camera else ()
        super().__init__(proprio_dim, action_dim, cameras)  # proprio_dim: the size of the low-dim input
        self.config, self.encoder = config, encoder
        self.image_size = image_size  # the demos' frame size, which evaluation renders at
        self.proprio_stats, self.action_stats = proprio_stats, action_stats
        # a referenced (frozen, pretrained) encoder: {"source", "sha256"[, "bundled"]}, and the folder it came from
        self.encoder_record, self.encoder_folder = encoder_record, encoder_folder
        self.extra_meta: dict[str, Any] = {}  # other config.json keys (e.g. "training"), kept through an export
        self.uses_language = bool(encoder is not None and policy.use_language and encoder.uses_language)
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
            return encoder.forward_with_mask(images, lang, mode="multimodal" if self.uses_language else "visual")

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

        `obs` follows the observation schema (voltron/policy/base.py): "images" {camera: (N, H, W, 3) uint8},
        "proprio" (N, P), "language" (list of N str, or one str); a state oracle reads "state" (N, S) instead of
        "proprio". A single unbatched observation works too.
        """
        if self.lowdim not in obs:
            raise UserError(f"no {self.lowdim!r} in the observation (keys {sorted(obs)})", expected="the schema")
        lowdim = np.asarray(obs[self.lowdim], dtype=np.float32)
        single = lowdim.ndim == 1
        proprio = torch.as_tensor(lowdim).reshape(1 if single else lowdim.shape[0], -1)
        if proprio.shape[1] != self.proprio_dim:
            raise UserError(
                f"observation {self.lowdim!r} has {proprio.shape[1]} dims; this policy expects {self.proprio_dim}"
            )
        # Switch modes only when needed: train()/eval() walk every submodule, the language model's included,
        # which cost about 20 ms per action here (a third of a rollout step) when done twice at every step.
        was_training = self.training
        if was_training:
            self.eval()
        if self.encoder is None:
            feature = torch.zeros(proprio.shape[0], 0, device=self.device)
        else:
            image = np.asarray(self._camera_image(obs))
            # decoded robot frames can be read-only; torch warns on those, and a frame is cheap to copy
            image = torch.from_numpy(image if image.flags.writeable else image.copy())
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
        if was_training:
            self.train()
        action = action.float().cpu().numpy()
        return action[0] if single else action

    @property
    def camera(self) -> str | None:
        return self.config.policy.camera

    def _camera_image(self, obs: dict[str, Any]) -> Any:
        """The policy's camera image from obs["images"] (a policy saved without a camera name takes the only one)."""
        images = obs.get("images")
        if not isinstance(images, dict):
            raise UserError(
                f"the observation has no 'images' dict (keys {sorted(obs)})",
                expected='{"images": {camera: (H, W, 3) uint8}, "proprio": ..., "language": ...}',
            )
        camera = self.camera or (next(iter(images)) if len(images) == 1 else None)
        if camera not in images:
            raise UserError(f"no camera {camera!r} in obs['images'] (it has {sorted(images)})")
        return images[camera]

    def warmup(self, obs: dict[str, Any] | None = None) -> None:
        """One throwaway action (on `obs`, e.g. the robot's first observation, or on a blank frame) so the first
        real step is not slowed by lazy initialisation; the observation history is cleared afterwards."""
        if obs is None:
            obs = {self.lowdim: np.zeros((1, self.proprio_dim), dtype=np.float32), "language": ["warm up"]}
            if self.encoder is not None:
                size = self.image_size or self.encoder.config.image_size
                obs["images"] = {self.camera: np.zeros((1, size, size, 3), dtype=np.uint8)}
        super().warmup(obs)

    def get_optim_params(self) -> list[dict[str, Any]]:
        """The extractor and head at `train.lr`; a fine-tuned encoder's trainable weights at `train.encoder_lr`."""
        train = self.config.train
        parameters = [*self.head.parameters(), *([] if self.extractor is None else self.extractor.parameters())]
        groups = [{"params": parameters, "lr": train.lr}]
        if self.encoder is not None and not self.encoder_frozen:
            groups.append({"params": [p for p in self.encoder.parameters() if p.requires_grad], "lr": train.encoder_lr})
        return groups

    # --- checkpoints --------------------------------------------------------------------------------------------
    @property
    def stores_encoder(self) -> bool:
        """The encoder's weights go into the policy checkpoint unless they are frozen, loaded ones."""
        policy = self.config.policy
        return self.encoder is not None and not (policy.pretrained and policy.freeze_encoder)

    def save_pretrained(
        self, directory: str | Path, extra: dict[str, Any] | None = None, bundle_encoder: bool = False
    ) -> Path:
        """Write config.json and model.safetensors to `directory`. A referenced encoder is recorded (source, config,
        SHA-256); with `bundle_encoder` (or when it was bundled already) it is also copied into `directory`/encoder,
        after checking that the weights are still the ones the policy was trained on."""
        from safetensors.torch import save

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        if self.stores_encoder:
            encoder_state = self.encoder.trainable_state_dict()
            state.update({f"encoder.{k}": v.detach().cpu().contiguous().clone() for k, v in encoder_state.items()})
        meta = {
            **self.policy_meta(),
            "config": config_to_dict(self.config),
            "encoder_config": None if self.encoder is None else self.encoder.config.to_dict(),
            "proprio_dim": self.proprio_dim,
            "action_dim": self.action_dim,
            "proprio_stats": self.proprio_stats.to_dict(),
            "action_stats": self.action_stats.to_dict(),
            "image_size": self.image_size,
            **self.extra_meta,
            **(extra or {}),
        }
        if self.encoder is not None and not self.stores_encoder:
            if self.encoder_record is None:
                raise ValueError("this policy references its encoder but has no record of its weights to save")
            record = {**self.encoder_record, "bundled": self.encoder_record.get("bundled")}
            if bundle_encoder or record["bundled"]:
                target = directory / BUNDLE_DIR
                if self.encoder_folder is None or self.encoder_folder.resolve() != target.resolve():
                    copy_encoder(self.encoder_folder or resolve_checkpoint(record["source"]), target, record["sha256"])
                record["bundled"] = BUNDLE_DIR
            meta["encoder_weights"] = record
        atomic_write_bytes(directory / WEIGHTS_NAME, save(state, metadata={"format": POLICY_FORMAT}))
        atomic_write_json(directory / CONFIG_NAME, meta)  # last: the folder is a policy once this lands
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> BCPolicy:
        """Restore a policy that `save_pretrained` (or `voltron train-policy`) wrote; a referenced encoder is
        verified against the recorded SHA-256 and config first."""
        directory = Path(directory).expanduser()
        source = directory / CONFIG_NAME
        meta = read_json(source, "policy config")
        if not isinstance(meta, dict) or meta.get("format") != POLICY_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise UserError(
                f"not a voltron policy checkpoint (format {found!r}); encoders load with voltron.load instead",
                source=source,
                expected=repr(POLICY_FORMAT),
            )
        for key in POLICY_META_KEYS:  # written by every save_pretrained; a hand-edited or truncated file may lack one
            if key not in meta:
                raise UserError(f"missing key {key!r}", source=source, expected=f"the keys {list(POLICY_META_KEYS)}")
        config = config_from_dict(meta["config"])
        stats = {key: _norm_stats(meta[key], source, key) for key in ("proprio_stats", "action_stats")}
        state = read_weights(directory / WEIGHTS_NAME)
        record = folder = None
        if any(k.startswith("encoder.") for k in state):  # stored encoder: rebuild its architecture, then load below
            encoder = build_model(model_config_from_dict(meta["encoder_config"], source=str(source)))
            if config.policy.freeze_encoder:
                encoder.eval().requires_grad_(False)
        elif config.policy.encoder == NO_ENCODER:
            encoder = None
        else:
            encoder, record, folder = _referenced_encoder(directory, config.policy, meta)
        policy = cls(
            config,
            encoder,
            meta["proprio_dim"],
            meta["action_dim"],
            stats["proprio_stats"],
            stats["action_stats"],
            meta.get("image_size"),
            encoder_record=record,
            encoder_folder=folder,
        )
        policy.extra_meta = {k: v for k, v in meta.items() if k not in SAVED_META_KEYS}
        policy_state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
        missing = sorted(k for k in policy.state_dict() if not k.startswith("encoder.") and k not in policy_state)
        if missing:
            raise ValueError(f"{directory / WEIGHTS_NAME}: policy weights are missing {missing[:6]}")
        policy.load_state_dict(policy_state, strict=False)
        encoder_state = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
        if encoder_state:
            load_state(policy.encoder, encoder_state, str(directory / WEIGHTS_NAME))
        return policy.to(device).eval()


POLICY_META_KEYS = ("config", "proprio_dim", "action_dim", "proprio_stats", "action_stats")
# every key save_pretrained writes itself; the others (e.g. "training") are kept as they were through a re-save
SAVED_META_KEYS = {"format", "module", "encoder_config", "image_size", "encoder_weights", *POLICY_META_KEYS}


def _norm_stats(data: Any, source: Path, key: str) -> NormStats:
    fields = ("mean", "std", "min", "max")
    if not isinstance(data, dict) or any(name not in data for name in fields):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"holds {found}", source=source, key=key, expected=f"an object with the lists {list(fields)}")
    return NormStats.from_dict(data)


def _referenced_encoder(
    directory: Path, config: PolicyConfig, meta: dict[str, Any]
) -> tuple[VoltronModel, dict[str, Any] | None, Path | None]:
    """A policy's frozen pretrained encoder, from its bundled copy or where it was trained, after checking that its
    weights' SHA-256 and its config are what the policy recorded: (encoder, record, folder)."""
    import voltron

    record = meta.get("encoder_weights")
    if record is None:  # saved before policies recorded their encoder; nothing to verify against
        warnings.warn(
            f"{directory}: this policy records no digest of its encoder; {config.encoder} is loaded unverified "
            "(save the policy again, e.g. with `voltron policy export`, to record it)",
            stacklevel=3,
        )
        folder = resolve_checkpoint(config.encoder)
        encoder, _ = voltron.load(folder, freeze=config.freeze_encoder)
        return encoder, {"source": config.encoder, "sha256": sha256_file(folder / WEIGHTS_NAME)}, folder
    source = directory / CONFIG_NAME
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str) or "source" not in record:
        raise UserError(source=source, key="encoder_weights", value=record, expected='{"source": ..., "sha256": ...}')
    if record.get("bundled"):
        folder = directory / record["bundled"]
        if not (folder / WEIGHTS_NAME).is_file():
            raise UserError(
                "the bundled encoder is missing", source=folder / WEIGHTS_NAME, expected="the whole policy folder"
            )
    else:
        try:
            folder = resolve_checkpoint(record["source"])
        except FileNotFoundError as err:
            raise UserError(
                f"the policy's encoder is missing ({str(err).split(';')[0]})",
                source=source,
                expected="the encoder at that path, or a policy folder with its encoder bundled "
                "(voltron policy export SRC DST --bundle-encoder, on the machine that trained it)",
            ) from err
    verify_encoder_weights(folder, record["sha256"])
    encoder, _ = voltron.load(folder, freeze=config.freeze_encoder)
    recorded = model_config_from_dict(meta.get("encoder_config") or {}, source=f"{source} encoder_config")
    if encoder.config != recorded:
        changed = sorted(k for k, v in recorded.to_dict().items() if encoder.config.to_dict()[k] != v)
        raise UserError(
            f"the encoder's config differs from the one the policy recorded in {changed}",
            source=folder / CONFIG_NAME,
            expected=f"the config in {source} (encoder_config)",
        )
    return encoder, record, folder


def load_head_checkpoint(policy: BCPolicy, path: str | Path) -> BCPolicy:
    """Load a `checkpoints/step_*.safetensors` snapshot (extractor and head, as training saved it) into `policy`."""
    state = read_weights(Path(path))
    expected = set(policy.head_state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path}: not a checkpoint of this policy (missing {missing[:4]}, unexpected {extra[:4]})")
    policy.load_state_dict(state, strict=False)
    return policy
