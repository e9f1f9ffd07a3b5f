"""Checkpoint directories (config.json + model.safetensors), the local weights cache, and upstream release import."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from voltron.errors import UserError
from voltron.io import atomic_write_bytes, atomic_write_json
from voltron.models.base import ModelConfig, VoltronModel
from voltron.models.registry import (
    available_models,
    build_model,
    config_class,
    default_config,
    model_config_from_dict,
    parse_model_id,
)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# config.json's "format" tag of an encoder checkpoint; a policy's reads "voltron-<head>-policy/<n>". Encoders saved
# before the tag existed have none and load as encoders.
ENCODER_FORMAT = "voltron-encoder/1"
POLICY_FORMAT_RE = re.compile(r"voltron-[a-z0-9-]+-policy/\d+")


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or does not fit the model."""


def read_json(path: Path, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: malformed {what} at line {err.lineno}, column {err.colno}: {err.msg}") from err


# === Save / load ===
def save_pretrained(model: VoltronModel, directory: str | os.PathLike) -> Path:
    """Write config.json and model.safetensors (the frozen language model is referenced by name, not copied)."""
    from safetensors.torch import save

    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.trainable_state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_NAME, save(tensors, metadata={"format": "pt", "family": model.family}))
    atomic_write_json(directory / CONFIG_NAME, {"format": ENCODER_FORMAT, **model.config.to_dict()})
    return directory


def read_config(directory: str | os.PathLike) -> ModelConfig:
    """The config in `directory`/config.json, as its family's config class; a policy checkpoint or another format
    is a one-line UserError."""
    path = Path(directory) / CONFIG_NAME
    data = read_json(path, "model config")
    if not isinstance(data, dict):
        raise UserError(f"holds a JSON {type(data).__name__}", source=path, expected="a JSON object of model fields")
    found = data.pop("format", ENCODER_FORMAT)
    if found != ENCODER_FORMAT:
        if isinstance(found, str) and POLICY_FORMAT_RE.fullmatch(found):
            raise UserError(
                f"a voltron policy checkpoint ({found}), not an encoder",
                source=Path(directory),
                expected=f"an encoder directory; load a policy with voltron.policy.load_policy({str(directory)!r})",
            )
        raise UserError(source=path, key="format", value=found, expected=f"{ENCODER_FORMAT!r} (a voltron encoder)")
    return model_config_from_dict(data, source=str(path))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file ({err}); save the model again or re-copy the file"
        ) from err


def load_state(model: VoltronModel, state: dict[str, torch.Tensor], source: str) -> VoltronModel:
    """Load `state` strictly, except that the frozen language model (lm.*) comes from its own files."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.startswith("lm."))
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit {model.family} ({model.config.size}); "
            f"missing keys {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected keys {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}; the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return model


def load_pretrained(directory: str | os.PathLike) -> VoltronModel:
    directory = Path(directory)
    config = read_config(directory)
    state = read_weights(directory / WEIGHTS_NAME)
    return load_state(build_model(config), state, str(directory / WEIGHTS_NAME))


def resolve_checkpoint(name_or_dir: str | os.PathLike) -> Path:
    """The checkpoint directory that `name_or_dir` names: a directory holding config.json, or a registered model
    id's folder in the local weights cache (`resolve_pretrained`). Anything meant as a path (it holds a path
    separator, or starts with `.` or `~`) that is not a directory raises FileNotFoundError."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: not a voltron checkpoint directory (no {CONFIG_NAME})")
        return path
    if looks_like_path(name_or_dir):
        what = "not a directory" if path.exists() else "no such directory"
        raise FileNotFoundError(
            f"{name_or_dir}: {what}; expected a checkpoint directory (holding {CONFIG_NAME} and {WEIGHTS_NAME}) "
            "or a registered model id such as 'v-cond' (see voltron.available_models())"
        )
    return resolve_pretrained(str(name_or_dir))


def looks_like_path(name_or_dir: str | os.PathLike) -> bool:
    """Whether `name_or_dir` was meant as a directory rather than a model id: it holds a path separator or starts
    with `.` or `~` (model ids such as 'v-cond-base' do neither)."""
    text = os.fspath(name_or_dir)
    separators = {os.sep, os.altsep, "/"} - {None}
    return any(sep in text for sep in separators) or text.startswith((".", "~"))


# === The local weights cache ===
def weights_home() -> Path:
    return Path(os.environ.get("VOLTRON_HOME", "~/.cache/voltron")).expanduser()


def resolve_pretrained(name: str) -> Path:
    """The directory of a registered model's released weights in the local cache, converting upstream files once.

    Looks for $VOLTRON_HOME/<name>/{config.json, model.safetensors}, else the upstream release pair
    $VOLTRON_HOME/<name>/{<name>.pt, <name>-config.json}. Nothing is downloaded: no checksummed source for the
    release files is known to this package, and an unverified download is worse than a clear error.
    """
    parse_model_id(name)  # unknown names fail here with the list of models
    folder = weights_home() / name
    if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        return folder
    upstream_pt, upstream_config = folder / f"{name}.pt", folder / f"{name}-config.json"
    if upstream_pt.is_file() and upstream_config.is_file():
        return convert_upstream(upstream_pt, upstream_config, folder, family=name)
    raise FileNotFoundError(
        f"No weights for {name!r} in {folder}. Put the upstream release files there "
        f"({name}.pt and {name}-config.json, from the Voltron release), or convert them with "
        f"`voltron convert-upstream {name}.pt {name}-config.json {folder}`; set VOLTRON_HOME to use another cache. "
        f"For a randomly initialised model, call voltron.load({name!r}, pretrained=False)."
    )


# === Upstream release import ===
UPSTREAM_CONFIG_KEYS = {
    "resolution": "image_size",
    "patch_size": "patch_size",
    "in_channels": "in_channels",
    "encoder_depth": "depth",
    "encoder_embed_dim": "embed_dim",
    "encoder_n_heads": "n_heads",
    "depth": "depth",
    "embed_dim": "embed_dim",
    "n_heads": "n_heads",
    "decoder_depth": "decoder_depth",
    "decoder_embed_dim": "decoder_embed_dim",
    "decoder_n_heads": "decoder_n_heads",
    "mlp_ratio": "mlp_ratio",
    "mask_ratio": "mask_ratio",
    "language_model": "language_model",
    "max_lang_len": "max_lang_len",
    "gen_ratio": "gen_ratio",
    "mae_weight": "mae_weight",
    "lm_weight": "lm_weight",
}
# V-Gen's upstream names for the tokens and the patch head that every other family names as below
UPSTREAM_RENAMES = {
    "img_enc_token": "img_token",
    "lang_enc_token": "lang_token",
    "decoder_patch_prediction": "decoder_prediction",
}
# upstream-only tensors: the frozen LM (rebuilt from its name), V-Gen's unused decoder tokens, its fixed prefix mask
UPSTREAM_DROPPED_PREFIXES = ("lm.", "img_dec_token", "lang_dec_token", "prefix_mask")


def upstream_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Accept the release format [state_dict, optimizer_state] and the DDP {"model_state_dict": ...} format."""
    if isinstance(obj, list | tuple) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    elif isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{source}: expected an upstream Voltron checkpoint ([state_dict, optimizer_state] or "
            f"{{'model_state_dict': ...}}); got {type(obj).__name__}"
        )
    state = {}
    for key, value in obj.items():
        key = key.removeprefix("module.")
        if key.startswith(UPSTREAM_DROPPED_PREFIXES):
            continue
        head, _, rest = key.partition(".")
        state[".".join(filter(None, [UPSTREAM_RENAMES.get(head, head), rest]))] = value
    return state


def convert_upstream(
    checkpoint: str | os.PathLike,
    config_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    family: str | None = None,
    language_model: str | None = None,
) -> Path:
    """Import an upstream Voltron release checkpoint into a voltron checkpoint directory.

    `family` is the upstream model id (v-cond, v-dual, v-gen, v-cond-base, r-mvp, r-r3m-vit, r-r3m-rn50); by
    default the checkpoint's file stem. Imported models use upstream's legacy query-row padding mask.
    `language_model` overrides the config's (e.g. a local copy of distilbert-base-uncased).
    """
    checkpoint, config_json = Path(checkpoint), Path(config_json)
    missing = [f"{checkpoint}: no such file (the upstream checkpoint, <id>.pt)"] if not checkpoint.is_file() else []
    if not config_json.is_file():
        missing.append(f"{config_json}: upstream model config not found (<id>-config.json)")
    if missing:  # every missing input in one message, before any guess about the family from a file name
        raise FileNotFoundError("; ".join(missing))
    if family is not None and family not in available_models():
        raise UserError(source=checkpoint, key="family", value=family, expected=f"one of {available_models()}")
    name = family or checkpoint.stem
    if name not in available_models():
        raise UserError(
            f"cannot tell the model family from the file name {name!r}",
            source=checkpoint,
            expected=f"--family (family= in Python) naming one of {available_models()}",
        )
    upstream = read_json(config_json, "upstream model config")
    if not isinstance(upstream, dict):
        raise CheckpointError(f"{config_json}: expected a JSON object of model arguments")
    own = config_class(parse_model_id(name)[0]).field_names()  # the table maps keys of every upstream model
    overrides = {
        ours: upstream[theirs] for theirs, ours in UPSTREAM_CONFIG_KEYS.items() if theirs in upstream and ours in own
    }
    if language_model:
        overrides["language_model"] = language_model
    config = default_config(name, legacy_query_mask=True, **overrides)
    try:
        obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt pickles
        raise CheckpointError(f"{checkpoint}: cannot read the upstream checkpoint ({err})") from err
    model = build_model(config)
    state = upstream_state_dict(obj, str(checkpoint))
    expected = model.state_dict()
    for key, value in list(state.items()):  # upstream keeps some tokens with extra singleton axes
        if key in expected and value.shape != expected[key].shape and value.numel() == expected[key].numel():
            state[key] = value.reshape(expected[key].shape)
    load_state(model, state, str(checkpoint))
    return save_pretrained(model, out_dir)
