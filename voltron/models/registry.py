"""The model registry: every family and size is registered here once, and built by one factory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from voltron.models.base import ModelConfig, VoltronModel
from voltron.models.mae import MaskedAutoencoder, VCond, VDual
from voltron.models.r3m import R3M, R3MResNet
from voltron.models.vgen import VGen

# ViT sizes: (embed_dim, depth, n_heads) for the encoder and the MAE decoder. `tiny` keeps CPU tests fast.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=96, depth=2, n_heads=3, decoder_embed_dim=64, decoder_depth=1, decoder_n_heads=2),
    "small": dict(embed_dim=384, depth=12, n_heads=6, decoder_embed_dim=192, decoder_depth=6, decoder_n_heads=6),
    "base": dict(embed_dim=768, depth=12, n_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_n_heads=16),
}
DEFAULT_SIZE = "small"
RAW_PIXELS = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # R3M consumes 0-255 floats


@dataclass(frozen=True)
class Family:
    name: str
    model_class: type[VoltronModel]
    description: str
    sizes: tuple[str, ...] = ("tiny", "small", "base")
    overrides: dict[str, Any] = field(default_factory=dict)  # applied to every size
    size_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


register_family(Family("v-cond", VCond, "Voltron V-Cond: one frame, language-conditioned MAE"))
register_family(Family("v-dual", VDual, "Voltron V-Dual: frames (0, K), shared mask, language-conditioned MAE"))
register_family(Family("v-gen", VGen, "Voltron V-Gen: V-Dual + language generation (alpha = 0.5)"))
register_family(Family("r-mvp", MaskedAutoencoder, "R-MVP: visual MAE with CLS token (LayerNorm/GELU)"))
register_family(Family("r-r3m-vit", R3M, "R-R3M ViT: time contrast + language reward + L1/L2", overrides=RAW_PIXELS))
register_family(
    Family(
        "r-r3m-rn50",
        R3MResNet,
        "R-R3M ResNet-50: time contrast + language reward + L1/L2",
        sizes=("tiny", "small"),
        overrides=dict(RAW_PIXELS, trunk="resnet50", embed_dim=2048, n_heads=16, depth=0),
        # tiny keeps ResNet-50 but at 64 px, so the registry-wide CPU tests stay fast
        size_overrides={"tiny": dict(image_size=64, resize=64, crop=64)},
    )
)


def model_id(family: str, size: str) -> str:
    return family if size == DEFAULT_SIZE else f"{family}-{size}"


def available_models() -> list[str]:
    """Every registered model id, e.g. 'v-cond' (small), 'v-cond-base', 'v-cond-tiny'."""
    return [model_id(name, size) for name, fam in FAMILIES.items() for size in fam.sizes]


def parse_model_id(name: str) -> tuple[str, str]:
    for family_name, family in FAMILIES.items():
        for size in family.sizes:
            if name == model_id(family_name, size):
                return family_name, size
    raise KeyError(f"unknown model {name!r}; available models: {', '.join(available_models())}")


def default_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a registered model id, with field overrides (e.g. image_size=64)."""
    family_name, size = parse_model_id(name)
    family = FAMILIES[family_name]
    values = {"family": family_name, "size": size, **SIZES[size], **family.overrides}
    values.update(family.size_overrides.get(size, {}))
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown model config overrides {unknown}; expected a subset of {sorted(known)}")
    return ModelConfig(**apply_overrides(values, overrides))


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Config values with overrides; a new image_size also moves the preprocessing resize/crop unless given."""
    values = {**values, **overrides}
    if "image_size" in overrides and not {"resize", "crop"} & set(overrides):
        values["resize"] = values["crop"] = values["image_size"]
    return values


def build_model(config: ModelConfig | str, **overrides: Any) -> VoltronModel:
    """A randomly initialised model from a config or a registered id."""
    if isinstance(config, str):
        config = default_config(config, **overrides)
    elif overrides:
        config = ModelConfig(**apply_overrides(config.to_dict(), overrides))
    if config.family not in FAMILIES:
        raise KeyError(f"unknown model family {config.family!r}; registered families: {', '.join(FAMILIES)}")
    return FAMILIES[config.family].model_class(config)
