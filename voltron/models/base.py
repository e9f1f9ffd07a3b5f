"""The model config, the preprocessing contract that ships with the weights, and the base class every encoder shares."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from voltron.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("multimodal", "visual")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model exactly; saved as config.json next to the weights.

    These are the fields every family shares. A family that needs more subclasses this dataclass in its own module
    (`voltron.models.mae.MAEConfig`, `voltron.models.vgen.VGenConfig`, `voltron.models.r3m.R3MConfig`) and names
    it as its model class's `config_class`; `voltron.models.registry.model_config_from_dict` reads a config.json
    into the family's class and refuses another family's keys.
    """

    family: str
    size: str = "small"
    # Vision transformer (ignored by the ResNet trunk except image_size)
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    embed_dim: int = 384
    depth: int = 12
    n_heads: int = 6
    mlp_ratio: float = 4.0
    # Language
    language_model: str = "minilm"
    max_lang_len: int = 20
    lang_cache_size: int = 0
    legacy_query_mask: bool = False  # upstream's pad mask on query rows; on for imported release weights
    # Preprocessing contract: short-side resize, centre crop, then (x/255 - mean) / std
    resize: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        """This class's config from JSON values; every key must be one of its fields (see `field_names`)."""
        known = cls.field_names()
        data = {k: v for k, v in data.items() if not (k == "extra" and v == {})}  # older files: an always-empty field
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown model config keys {unknown}", source=source, expected=f"a subset of {sorted(known)}"
            )
        if "family" not in data:
            raise UserError("model config has no 'family' key", source=source)
        values = dict(data)
        for f in dataclasses.fields(cls):
            if f.name in values:
                values[f.name] = _checked_value(values[f.name], f.type, source, f.name)
        return cls(**values)


# Field annotation (a string, under `from __future__ import annotations`) -> what config.json may hold for it.
_JSON_KINDS = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
}


def _checked_value(value: Any, annotation: str, source: str, key: str) -> Any:
    """`value` for a ModelConfig field as read from JSON, or a UserError naming the file, key, value and type."""
    if annotation.startswith("tuple[float"):  # mean/std: three numbers, one per RGB channel
        if isinstance(value, list | tuple) and len(value) == 3 and all(_is_number(v) for v in value):
            return tuple(float(v) for v in value)
        raise UserError(source=source, key=key, value=value, expected="a list of 3 numbers (R, G, B)")
    if annotation not in _JSON_KINDS:
        return value
    types, expected = _JSON_KINDS[annotation]
    if isinstance(value, bool) and bool not in types:  # JSON true/false is not a size or a rate
        raise UserError(source=source, key=key, value=value, expected=expected)
    if not isinstance(value, types):
        raise UserError(source=source, key=key, value=value, expected=expected)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# How far float pixels may stray outside [0, 1] (resampling and colour jitter overshoot a little) before they are
# taken for 0-255 values, which would otherwise come out about 255 times too bright with no warning.
UNIT_RANGE_TOLERANCE = 0.01


def check_unit_range(images: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    """Raise a UserError unless non-uint8 `images` lie in [0, 1] (within UNIT_RANGE_TOLERANCE); NaN fails too.
    `dtype` names the caller's input type in the message when `images` is already a float copy of it."""
    if images.numel() == 0:
        return
    low, high = (float(v) for v in torch.aminmax(images.detach()))
    if not (low >= -UNIT_RANGE_TOLERANCE and high <= 1 + UNIT_RANGE_TOLERANCE):
        kind = str(dtype or images.dtype).removeprefix("torch.")
        raise UserError(
            f"{kind} images with values in [{low:.4g}, {high:.4g}]",
            key="images",
            expected="uint8 images (0-255) or float images in [0, 1]; divide 0-255 floats by 255 first",
        )


class Preprocess:
    """Images -> the float tensor a model expects: short-side resize (antialiased), centre crop, normalise.

    Accepts a PIL image, a uint8 numpy array (H, W, 3) or (B, H, W, 3), or a torch tensor (..., 3, H, W) or
    (..., H, W, 3) that is uint8 (0-255) or float in [0, 1]; floats outside [0, 1] (0-255 floats, say) raise a
    UserError rather than come out 255 times too bright. Returns float32 (..., 3, crop, crop).
    """

    def __init__(self, resize: int, crop: int, mean, std):
        self.resize, self.crop = int(resize), int(crop)
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def from_config(cls, config: ModelConfig) -> Preprocess:
        return cls(config.resize, config.crop, config.mean, config.std)

    def __repr__(self) -> str:
        return f"Preprocess(resize={self.resize}, crop={self.crop}, mean={self.mean}, std={self.std})"

    @staticmethod
    def to_tensor(images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            array = np.asarray(images)  # PIL images convert through the array protocol
            if array.ndim not in (3, 4) or array.shape[-1] != 3:
                raise ValueError(f"expected an RGB image (H, W, 3) or batch (B, H, W, 3); got shape {array.shape}")
            array = np.ascontiguousarray(array) if array.flags.writeable else array.copy()  # torch warns on read-only
            images = torch.from_numpy(array).movedim(-1, -3)
        if images.ndim >= 3 and images.shape[-3] != 3 and images.shape[-1] == 3:
            images = images.movedim(-1, -3)  # channels-last tensors, e.g. frames straight from a decoder
        if images.ndim < 3 or images.shape[-3] != 3:
            raise ValueError(f"expected images shaped (..., 3, H, W) or (..., H, W, 3); got {tuple(images.shape)}")
        return images

    def __call__(self, images: Any) -> torch.Tensor:
        images = self.to_tensor(images)
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:])
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        else:
            x = x.float()
            check_unit_range(x, images.dtype)
        height, width = x.shape[-2:]
        if min(height, width) != self.resize:
            scale = self.resize / min(height, width)
            size = (max(self.resize, round(height * scale)), max(self.resize, round(width * scale)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1)
        return ((x - mean) / std).reshape(*lead, 3, self.crop, self.crop)


class VoltronModel(nn.Module):
    """Base of every encoder. Subclasses set the class attributes and implement `encode` and `pretrain_loss`.

    Contract:
    - `forward(images, lang=None, mode="multimodal"|"visual") -> (B, N, embed_dim)` tokens, where `images` are
      preprocessed floats shaped (B, 3, S, S), or (B, n_frames, 3, S, S) for multi-frame models;
      `forward_with_mask` returns the same tokens and their key mask (B, N), 0 on language padding.
    - `pretrain_loss(batch) -> (loss, metrics)` on a loader batch: "frames" uint8 (B, [n_frames,] 3, S, S),
      "input_ids"/"attention_mask" (B, L) when the model uses language, and optionally "seed" (B,) int64.
    """

    family: ClassVar[str] = ""
    config_class: ClassVar[type[ModelConfig]] = ModelConfig  # the family's config dataclass: the fields it owns
    n_frames: ClassVar[int] = 1
    sampling_scheme: ClassVar[str] = "state"  # voltron.datasets.sampling.SCHEMES: the examples pretraining feeds it
    uses_language: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "data_modality" in cls.__dict__ and "sampling_scheme" not in cls.__dict__:  # its earlier name
            warnings.warn(f"{cls.__name__}.data_modality is deprecated; name it sampling_scheme", DeprecationWarning, 2)
            cls.sampling_scheme = cls.__dict__["data_modality"]

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_dim, self.n_heads = config.embed_dim, config.n_heads

    # --- inputs ---------------------------------------------------------------------------------------------
    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_config(self.config)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def image_shape(self) -> tuple[int, ...]:
        size = self.config.image_size
        return (3, size, size) if self.n_frames == 1 else (self.n_frames, 3, size, size)

    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validate preprocessed images and return them as (B, n_frames, 3, S, S)."""
        expected = self.image_shape()
        shape_text = "(B, " + ", ".join(str(d) for d in expected) + ")"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{self.family}: images must be a torch.Tensor shaped {shape_text}; got {type(images)}")
        if not images.is_floating_point():
            raise ValueError(
                f"{self.family}: images must be float (run the model's preprocess first); got dtype {images.dtype}, "
                f"expected float shaped {shape_text}"
            )
        if images.ndim != len(expected) + 1 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"{self.family}: images have shape {tuple(images.shape)}; expected {shape_text}")
        return images if self.n_frames > 1 else images.unsqueeze(1)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 loader frames (..., 3, S, S) -> normalised floats, on the frames' device."""
        if frames.dtype != torch.uint8:
            raise ValueError(f"{self.family}: batch['frames'] must be uint8 (..., 3, S, S); got {frames.dtype}")
        mean = torch.tensor(self.config.mean, device=frames.device).view(3, 1, 1)
        std = torch.tensor(self.config.std, device=frames.device).view(3, 1, 1)
        return (frames.float() / 255.0 - mean) / std

    def batch_frames(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's frames, normalised and shaped (B, n_frames, 3, S, S)."""
        return self.check_images(self.normalize(batch["frames"]))

    def check_lang(self, lang: list[str] | None, batch_size: int) -> list[str] | None:
        if lang is None:
            return None
        if not self.uses_language:
            raise ValueError(f"{self.family} has no language input; pass lang=None")
        if isinstance(lang, str) or not isinstance(lang, list | tuple):
            raise TypeError(f"lang must be a list of strings, one per image; got {type(lang).__name__}")
        if len(lang) != batch_size:
            raise ValueError(f"lang has {len(lang)} captions for {batch_size} images; expected one caption per image")
        return list(lang)

    @staticmethod
    def check_mode(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")

    def forward_with_mask(
        self, images: torch.Tensor, lang: list[str] | None = None, mode: str = "multimodal"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward`'s tokens (B, N, D) and their key mask (B, N) int64: 1 for a real token, 0 for padding (a
        language position past the caption's end), which a pooling head should not attend to. Families whose
        tokens are never padding return all ones."""
        tokens = self(images, lang, mode=mode)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)

    # --- bookkeeping ----------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights that define this model; the frozen language model is rebuilt from its name instead."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("lm.")}

    def num_parameters(self, include_language_model: bool = False) -> int:
        return sum(
            p.numel() for name, p in self.named_parameters() if include_language_model or not name.startswith("lm.")
        )

    def input_contract(self) -> str:
        shape = "(B, " + ", ".join(str(d) for d in self.image_shape()) + ")"
        lang = f"lang: list[str] (<= {self.config.max_lang_len} tokens)" if self.uses_language else "no language"
        return f"images {shape} float, {lang}"

    def save_pretrained(self, directory) -> None:
        from voltron.models.checkpoints import save_pretrained

        save_pretrained(self, directory)

    def pretrain_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        raise NotImplementedError
