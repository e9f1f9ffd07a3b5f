"""The model registry: every family and size is registered here once, and built by one factory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from voltron.errors import UserError
from voltron.models.base import ModelConfig, VoltronModel
from voltron.models.mae import MaskedAutoencoder, VCond, VDual
from voltron.models.r3m import R3M, R3MResNet
from voltron.models.vgen import VGen
from voltron.registries import register_once

# ViT sizes: (embed_dim, depth, n_heads) for the encoder and the MAE decoder (the decoder's only for the families
# whose config has one). `tiny` keeps CPU tests fast.
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
    return register_once(FAMILIES, family.name, family, "model family")


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


def config_class(family: str, source: str = "model config") -> type[ModelConfig]:
    """The config dataclass of a registered family: ModelConfig's shared fields plus the ones the family owns."""
    if family not in FAMILIES:
        raise UserError(source=source, key="family", value=family, expected=f"one of {', '.join(FAMILIES)}")
    return FAMILIES[family].model_class.config_class


def check_config_keys(family: str, values: dict[str, Any], source: str) -> None:
    """A UserError for the first key of `values` that `family`'s config does not own, naming the families that do."""
    own = config_class(family, source).field_names()
    for key in sorted(set(values) - own):
        owners = [name for name, fam in FAMILIES.items() if key in fam.model_class.config_class.field_names()]
        if owners:
            raise UserError(
                f"a key of {', '.join(owners)}, which {family} does not have",
                source=source,
                key=key,
                value=values[key],
                expected=f"{family}'s keys: {', '.join(sorted(own))}",
            )
        raise UserError(
            "unknown model config key", source=source, key=key, value=values[key], expected=f"one of {sorted(own)}"
        )


def model_config_from_dict(data: dict[str, Any], source: str = "model config") -> ModelConfig:
    """The config that a config.json (or a policy's encoder_config) holds, as its family's config class.

    Files written before each family owned its fields (ModelConfig was one flat dataclass) carry every family's
    keys. Another family's key is dropped only where it holds what that writer put there, the field's default or
    the size table's value for the file's size, so that a value set on purpose is refused rather than lost.
    """
    family = data.get("family")
    if family is None:
        raise UserError("model config has no 'family' key", source=source)
    own = config_class(family, source).field_names()
    written = _flat_defaults(data.get("size"))
    kept = {k: v for k, v in data.items() if k in own or k not in written or v != written[k]}
    check_config_keys(family, {k: v for k, v in kept.items() if k != "extra"}, source)  # from_dict drops `extra`
    return config_class(family).from_dict(kept, source)


def _flat_defaults(size: Any) -> dict[str, Any]:
    """What the flat ModelConfig wrote for every family's own field at `size`: the size table's value, else the
    field's default."""
    defaults = {
        f.name: f.default
        for fam in FAMILIES.values()
        for f in dataclasses.fields(fam.model_class.config_class)
        if f.default is not dataclasses.MISSING
    }
    return {**defaults, **SIZES.get(size, {})} if isinstance(size, str) else defaults


def default_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a registered model id, with field overrides (e.g. image_size=64)."""
    family_name, size = parse_model_id(name)
    family = FAMILIES[family_name]
    cls = config_class(family_name)
    check_config_keys(family_name, overrides, "model config overrides")
    sizes = {k: v for k, v in SIZES[size].items() if k in cls.field_names()}  # no decoder sizes without a decoder
    values = {"family": family_name, "size": size, **sizes, **family.overrides}
    values.update(family.size_overrides.get(size, {}))
    return cls(**apply_overrides(values, overrides))


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
    elif overrides or type(config) is not config_class(config.family):  # e.g. a bare ModelConfig(family=...)
        check_config_keys(config.family, overrides, "model config overrides")
        config = model_config_from_dict(apply_overrides(config.to_dict(), overrides))
    return FAMILIES[config.family].model_class(config)
