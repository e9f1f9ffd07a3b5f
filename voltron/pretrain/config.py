"""The pretraining config: typed dataclasses loaded from YAML with dotted command-line overrides (draccus)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The YAML files in configs/pretrain/ state only what differs from these defaults, which follow the paper:
# AdamW (0.9, 0.95), weight decay 0.05 on every non-bias parameter with ndim >= 2 (learned tokens and per-frame
# context embeddings included, as upstream Voltron), peak LR 1.5e-4 x 1024 / 256, 20 warm-up epochs, cosine to 0 at
# 400 epochs, and a validation loss at the end of every epoch.


@dataclass
class ModelSection:
    name: str = "v-cond"  # a registered model id: v-cond, v-cond-tiny, v-cond-base, v-dual, r-mvp, ...
    # The model config fields a pretraining run usually sets; None keeps the registry's value. mask_ratio is the
    # masked autoencoders' (MAEConfig): setting it for an R3M model is refused, naming the key and the family.
    language_model: str | None = None  # hub name, local path, or the offline alias `minilm`
    lang_cache_size: int | None = None  # memoise the frozen language model's output per caption (0: off)
    image_size: int | None = None  # must equal the store's frame size (data.root/store.json)
    max_lang_len: int | None = None  # must equal the store's tokenised caption length
    mask_ratio: float | None = None
    # Any other field of the model family's config class (voltron.models.registry.config_class), e.g.
    # {decoder_depth: 4}; another family's key is a one-line error
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_overrides(self) -> dict[str, Any]:
        """The keyword overrides for `default_config(name, ...)`."""
        named = {"language_model", "lang_cache_size", "image_size", "max_lang_len", "mask_ratio"}
        clash = sorted(named & set(self.overrides))
        if clash:
            raise ValueError(f"model.overrides repeats {clash}; set them as model.<key> instead")
        explicit = {key: getattr(self, key) for key in sorted(named) if getattr(self, key) is not None}
        return {**explicit, **self.overrides}


@dataclass
class DataSection:
    root: str = "data/sth-sth-v2"  # what `voltron preprocess ... --out DIR` wrote
    split: str = "train"
    num_workers: int = 4  # DataLoader worker processes per rank
    prefetch_factor: int = 4
    # extra keyword arguments for voltron.datasets.loader.open_store, e.g. {augment: random-resized-crop}
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSection:
    base_lr: float = 1.5e-4  # per 256 examples; the peak LR is base_lr x global_batch / 256 unless `lr` is set
    lr: float | None = None  # the peak LR itself; the resolved config always states it
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    # which parameters decay (voltron.pretrain.optim.DECAY_RULES): "upstream" = every non-bias tensor with ndim >= 2,
    # learned tokens and per-frame context embeddings included (the paper's); "exempt-embeddings" also spares
    # *_token and *_pe parameters (the timm/DeiT convention). Norm gains, biases and LayerScale never decay.
    decay_rule: str = "upstream"
    eps: float = 1e-8
    schedule: str = "warmup-cosine"  # see voltron.pretrain.schedule.SCHEDULES
    warmup_epochs: float = 20.0
    min_lr: float = 0.0
    grad_clip: float | None = None  # max global grad-norm; None logs the norm without clipping (as upstream)


@dataclass
class TrainSection:
    epochs: float = 400.0  # the schedule's length: the LR reaches min_lr here, and the run ends here
    global_batch: int = 1024  # examples per optimizer step over all ranks (the paper's effective batch)
    device_batch: int = 128  # examples per forward pass per rank; accumulation = global / (device x world)
    max_steps: int | None = None  # stop (checkpoint + export) after this many optimizer steps; schedule unchanged
    max_minutes: float | None = None  # wall-clock budget of this invocation's loop; stopping checkpoints + exports
    seed: int = 7
    device: str = "auto"  # auto (cuda when available), cpu, cuda
    strategy: str = "ddp"  # ddp, or fsdp (shards parameters, gradients and optimizer state; base sizes and up)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU), bf16, fp32
    compile: bool = False  # torch.compile the objective
    attention: str = "sdpa"  # sdpa or eager
    find_unused_parameters: bool = False  # DDP's flag, for objectives that leave parameters unused


@dataclass
class ValSection:
    """The validation loss: the objective on the store's held-out split, with no gradient and deterministic masks
    (each example's seed fixes its MAE mask; R3M's negatives come from a generator seeded per validation batch), so
    the same weights always give the same value. Averaged over examples and all ranks; logged as `val_loss`."""

    enabled: bool = True  # at the end of every epoch (as upstream), plus every `every_steps` optimizer steps
    every_steps: int | None = None  # None: only at epoch ends
    split: str = "val"
    batch_size: int | None = None  # examples per forward pass per rank; None: train.device_batch
    max_examples: int | None = None  # only the first examples of the split (clip-major); None: all of them


@dataclass
class CheckpointSection:
    every_steps: int = 1000  # also written at the end and when a time budget stops the run
    keep_last: int = 3
    verify: bool = True  # check sizes and SHA-256 of every file before resuming from a checkpoint


@dataclass
class LogSection:
    every_steps: int = 10  # one JSONL record (metrics.jsonl) every N optimizer steps
    progress: bool = True  # tqdm bar with ETA on rank 0
    tensorboard: bool = False  # needs the [track] extra
    wandb: bool = False  # needs the [track] extra; off by default
    wandb_project: str = "voltron-pretraining"
    wandb_entity: str | None = None
    peak_tflops: float | None = None  # per-device peak for MFU; by default looked up from the GPU's name


@dataclass
class PretrainConfig:
    run_dir: str = "runs/pretrain/v-cond"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)


class PretrainError(ValueError):
    """A run that cannot start or resume as configured; the message says what to change."""


def validate(config: PretrainConfig) -> None:
    """Check names and counts up front, so a typo fails before any model or data is built."""
    from voltron.models.blocks import ATTENTION_IMPLS
    from voltron.models.registry import available_models
    from voltron.pretrain.distributed import BACKENDS, STRATEGIES
    from voltron.pretrain.optim import DECAY_RULES
    from voltron.pretrain.schedule import SCHEDULES

    choices = {
        "model.name": (config.model.name, available_models()),
        "train.strategy": (config.train.strategy, sorted(STRATEGIES)),
        "train.precision": (config.train.precision, ["auto", "bf16", "fp32"]),
        "train.attention": (config.train.attention, list(ATTENTION_IMPLS)),
        "train.device": (config.train.device, ["auto", *BACKENDS]),
        "optim.schedule": (config.optim.schedule, sorted(SCHEDULES)),
        "optim.decay_rule": (config.optim.decay_rule, list(DECAY_RULES)),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise PretrainError(f"{key}={value!r}; expected one of {', '.join(allowed)}")
    positive = {
        "train.global_batch": config.train.global_batch,
        "train.device_batch": config.train.device_batch,
        "train.epochs": config.train.epochs,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.keep_last": config.checkpoint.keep_last,
        "log.every_steps": config.log.every_steps,
    }
    for key, value in positive.items():
        if not value > 0:
            raise PretrainError(f"{key}={value!r}; expected a positive number")
    for key in ("every_steps", "batch_size", "max_examples"):
        value = getattr(config.val, key)
        if value is not None and not value > 0:
            raise PretrainError(f"val.{key}={value!r}; expected a positive number or null")
    if config.train.max_steps is not None and config.train.max_steps < 0:
        raise PretrainError(f"train.max_steps={config.train.max_steps}; expected >= 0 or null")
    try:
        config.model.config_overrides()
    except ValueError as err:
        raise PretrainError(str(err)) from None


def check_inputs_offline(config: PretrainConfig) -> None:
    """Before any data or model is loaded: the store folder exists, and the language model (for the objectives that
    use one) is on disk, since nothing is downloaded at run time. The paper configs name distilbert-base-uncased,
    which a fresh install does not have."""
    from voltron.models.language import MINILM_ALIAS
    from voltron.models.registry import FAMILIES, default_config

    root = Path(config.data.root)
    if not root.is_dir():
        raise PretrainError(
            f"data.root={config.data.root!r}: no such directory; expected a store written by "
            f"`voltron preprocess ... --out {config.data.root}` (or set --data.root=DIR)"
        )
    validate(config)
    model_config = default_config(config.model.name, **config.model.config_overrides())
    if not FAMILIES[model_config.family].model_class.uses_language:
        return
    name = model_config.language_model
    if name == MINILM_ALIAS or os.path.isdir(os.path.expanduser(name)):
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub id either (e.g. a local path that does not exist)
        cached = None
    if not isinstance(cached, str):
        raise PretrainError(
            f"model.language_model={name!r}: not available offline (not a local directory, not in the Hugging Face "
            f"cache, and nothing is downloaded at run time); pass --model.language_model={MINILM_ALIAS} (the "
            "embedded offline model, same BERT-uncased vocabulary) or a local directory holding the model"
        )


CONFIG_FILE = "pretrain.yaml"  # the fully resolved config, written next to the run's checkpoints

# Keys that may differ between a run and its resume: how long to run, where to log, how to execute.
# Anything else changing (model, data, optimizer, batch, seed) would silently break exact resume.
RESUMABLE_CHANGES = (
    "model.lang_cache_size",
    "train.max_steps",
    "train.max_minutes",
    "train.compile",
    "train.attention",
    "train.device",
    "train.device_batch",
    "train.strategy",
    "data.num_workers",
    "data.prefetch_factor",
    "data.root",
    "checkpoint.",
    "log.",
    "val.",  # validation never touches the weights, the data order or the training RNG
)


def parse_args(args: list[str] | None = None) -> PretrainConfig:
    """A config from command-line style arguments: `--config FILE.yaml` (optional) then `--dotted.key=value`."""
    # the one config path: its errors name the file, key and value; `--config v-cond` names a packaged config
    from voltron.config import parse_config

    return parse_config(PretrainConfig, args=list(args or []), prog="voltron pretrain")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> PretrainConfig:
    """Load a YAML config and apply dotted overrides, e.g. load_config("configs/pretrain/demo.yaml", ["--optim.lr=3e-4"])."""
    return parse_args(([] if path is None else ["--config", str(path)]) + list(overrides or []))


def to_dict(config: PretrainConfig) -> dict[str, Any]:
    from voltron.config import config_to_dict

    return config_to_dict(config)


def from_dict(data: dict[str, Any], source: str = "trainer state") -> PretrainConfig:
    from voltron.config import config_from_dict

    return config_from_dict(PretrainConfig, data, source)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("overrides", "options"):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def incompatible_changes(saved: PretrainConfig, current: PretrainConfig) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between a run's saved config and the one resuming it, beyond RESUMABLE_CHANGES."""
    old, new = flatten(to_dict(saved)), flatten(to_dict(current))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not key.startswith(RESUMABLE_CHANGES) and key != "run_dir"
    }


def replace(config: PretrainConfig, **sections: dict[str, Any]) -> PretrainConfig:
    """A copy with some fields changed, e.g. replace(cfg, train={"max_steps": 5}, run_dir="x")."""
    values = {}
    for name, change in sections.items():
        if isinstance(change, dict):
            values[name] = dataclasses.replace(getattr(config, name), **change)
        else:
            values[name] = change
    return dataclasses.replace(config, **values)
