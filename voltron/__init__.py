"""voltron: video-language visual representations for robotics, from pretraining to policies on robots."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

# libgomp's worker threads spin after every parallel region by default. In a control or evaluation loop torch
# alternates with simulator worker processes (or a robot bridge) on the same cores, and the spinning threads starve
# them: on 2 cores a V-Cond-tiny policy stepped 2 MetaWorld envs at 4.7 env steps/s spinning and 17.9 passive.
# Must be set before torch loads OpenMP; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from voltron import llvm_isolation  # noqa: E402

# Before anything can import Triton: its LLVM must not bind to Mesa's when a frame was rendered first.
llvm_isolation.install()

__version__ = "0.1.0"
__all__ = ["available_models", "instantiate_extractor", "load", "__version__"]


def available_models() -> list[str]:
    """Every registered model id: v-cond, v-dual, v-gen, r-mvp, r-r3m-vit, r-r3m-rn50, with -tiny/-base sizes."""
    from voltron.models.registry import available_models as _available

    return _available()


def load(
    name_or_dir: str | os.PathLike,
    device: str = "cpu",
    freeze: bool = True,
    pretrained: bool = True,
    precision: str = "fp32",
    backend: str = "eager",
    **overrides,
):
    """Return `(model, preprocess)` for a registered model id or a checkpoint directory.

    - A directory (anything `save_pretrained` or `voltron pretrain` wrote) is restored exactly. A path that is not
      a directory (anything with a path separator, or starting with `.` or `~`) raises FileNotFoundError, and a
      policy directory says to use `voltron.policy.load_policy`.
    - A registered id loads its released weights from the local cache ($VOLTRON_HOME, default ~/.cache/voltron),
      or stops with an error saying where to put them.
    - `pretrained=False` gives a randomly initialised model (with a warning) of the id's or the directory's
      architecture; `overrides` then change config fields, e.g. image_size=64.
    - `freeze=True` puts the model in eval mode with no trainable parameters.
    - `precision` ("fp32", "bf16", "int8" or "auto") and `backend` ("eager", "compile", "onnxruntime" or "auto")
      choose an inference path for a frozen model (voltron.models.inference). Anything but fp32/eager returns an
      `InferenceEncoder`: the same forward contract, the module as `.model`, the path and its measured token error
      against fp32 in `.spec` and `.report`.
    `preprocess` maps images (PIL, uint8 HWC arrays or (..., 3, H, W) tensors) to the model's input.
    """
    from voltron.models.checkpoints import load_pretrained, looks_like_path, read_config, resolve_checkpoint
    from voltron.models.registry import build_model, parse_model_id

    is_directory = Path(name_or_dir).expanduser().is_dir() or looks_like_path(name_or_dir)
    if not is_directory:
        parse_model_id(str(name_or_dir))  # unknown names fail with the list of available models
    if pretrained:
        if overrides:
            raise ValueError("config overrides only apply to pretrained=False models")
        model = load_pretrained(resolve_checkpoint(name_or_dir))
    else:
        warnings.warn(
            f"voltron.load({str(name_or_dir)!r}, pretrained=False): randomly initialised weights", stacklevel=2
        )
        # a directory gives its architecture (config.json) and nothing else: its weights are not read
        config = read_config(resolve_checkpoint(name_or_dir)) if is_directory else str(name_or_dir)
        model = build_model(config, **overrides)
    model = model.to(device)
    if freeze:
        model.eval().requires_grad_(False)
    if (precision, backend) != ("fp32", "eager"):
        from voltron.models.inference import accelerate

        model = accelerate(model, precision, backend)
    return model, model.preprocess


def instantiate_extractor(model, n_latents: int = 1, kind: str = "map"):
    """A trainable pooling head for `model`'s tokens: MAP (multi-head attention pooling) by default."""
    from voltron.models.extractors import instantiate_extractor as _instantiate

    return _instantiate(model, n_latents=n_latents, kind=kind)
