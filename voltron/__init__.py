"""voltron: video-language visual representations for robotics, from pretraining to policies on robots."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from voltron import llvm_isolation

# Before anything can import Triton: its LLVM must not bind to Mesa's when a frame was rendered first.
llvm_isolation.install()

__version__ = "0.1.0"
__all__ = ["available_models", "instantiate_extractor", "load", "__version__"]


def available_models() -> list[str]:
    """Every registered model id: v-cond, v-dual, v-gen, r-mvp, r-r3m-vit, r-r3m-rn50, with -tiny/-base sizes."""
    from voltron.models.registry import available_models as _available

    return _available()


def load(
    name_or_dir: str | os.PathLike, device: str = "cpu", freeze: bool = True, pretrained: bool = True, **overrides
):
    """Return `(model, preprocess)` for a registered model id or a checkpoint directory.

    - A directory (anything `save_pretrained` or `voltron pretrain` wrote) is restored exactly.
    - A registered id loads its released weights from the local cache ($VOLTRON_HOME, default ~/.cache/voltron),
      or stops with an error saying where to put them. `pretrained=False` gives a randomly initialised model
      (with a warning); `overrides` then change config fields, e.g. image_size=64.
    - `freeze=True` puts the model in eval mode with no trainable parameters.
    `preprocess` maps images (PIL, uint8 HWC arrays or (..., 3, H, W) tensors) to the model's input.
    """
    from voltron.models.checkpoints import CONFIG_NAME, load_pretrained, resolve_pretrained
    from voltron.models.registry import build_model, parse_model_id

    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: not a voltron checkpoint directory (no {CONFIG_NAME})")
        model = load_pretrained(path)
    else:
        name = str(name_or_dir)
        parse_model_id(name)  # unknown names fail with the list of available models
        if pretrained:
            if overrides:
                raise ValueError("config overrides only apply to pretrained=False models")
            model = load_pretrained(resolve_pretrained(name))
        else:
            warnings.warn(f"voltron.load({name!r}, pretrained=False): randomly initialised weights", stacklevel=2)
            model = build_model(name, **overrides)
    model = model.to(device)
    if freeze:
        model.eval().requires_grad_(False)
    return model, model.preprocess


def instantiate_extractor(model, n_latents: int = 1, kind: str = "map"):
    """A trainable pooling head for `model`'s tokens: MAP (multi-head attention pooling) by default."""
    from voltron.models.extractors import instantiate_extractor as _instantiate

    return _instantiate(model, n_latents=n_latents, kind=kind)
