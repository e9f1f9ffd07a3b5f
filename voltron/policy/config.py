"""Policy and behaviour-cloning configs: typed dataclasses, loaded from YAML with dotted overrides (draccus)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import voltron.config
from voltron.config import parse_config
from voltron.policy.evaluate import EVAL_SEED_OFFSET

LOWDIM_KEYS = ("proprio", "state")  # what the head sees besides the image: proprioception, or the simulator state
NO_ENCODER = "none"  # policy.encoder for low-dim-only reference policies (state oracle, proprio-only floor)
SCHEDULES = ("cosine", "constant")
CACHE_DTYPES = ("float16", "bfloat16", "float32")  # torch dtype names for the frozen-encoder token cache


@dataclass
class PolicyConfig:
    """The architecture (R3M / Voltron frozen-representation protocol) and what it consumes."""

    encoder: str = "v-cond"  # a registered model id, a checkpoint directory, or "none" (no image: low-dim only)
    pretrained: bool = True  # False: the same architecture, randomly initialised (seeded by `encoder_seed`)
    encoder_seed: int = 0  # random init only; fixed apart from `seed` so every policy seed sees the same encoder
    lowdim: str = "proprio"  # appended to the image features (R3M): "proprio", or "state" for the state oracle
    encoder_overrides: dict[str, Any] = field(
        default_factory=dict
    )  # random init only: ModelConfig fields, e.g. image_size
    freeze_encoder: bool = True
    extractor: str = "map"  # a voltron.models.extractors.EXTRACTORS name: map (default), mean, cls (baselines)
    n_latents: int = 1
    hidden_dims: tuple[int, ...] = (256, 256)
    history: int = 1  # observation frames per decision
    use_language: bool = True  # feed the episode's instruction to multimodal encoders
    camera: str | None = None  # default: the demos' first camera
    seed: int = 0


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 256
    lr: float = 1e-3
    schedule: str = "cosine"  # cosine decay to 0 after warm-up: the last checkpoint is converged, not a lottery
    warmup_steps: int = 100
    checkpoint_every: int = 0  # also save the extractor+head every K steps (for best-checkpoint evaluation); 0: off
    max_episodes: int = 0  # train on the first N episodes of the train split (demo-count sweeps); 0: all
    encoder_lr: float = 1e-5  # only when the encoder is fine-tuned
    weight_decay: float = 1e-4
    train_split: str = "train"
    valid_split: str = "valid"
    log_every: int = 50
    valid_every: int = 500
    encode_batch_size: int = 32  # frames per encoder call while filling the feature cache
    cache_dtype: str = "float16"  # frozen-encoder token cache; float32 doubles its memory
    device: str = "auto"  # auto: cuda when available
    # copy a referenced (frozen, pretrained) encoder into the policy folder (encoder/), so the folder runs on its own;
    # trained or randomly initialised encoders are always stored in the policy's weights
    bundle_encoder: bool = False


@dataclass
class BCConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def validate(config: BCConfig) -> BCConfig:
    from voltron.models.extractors import EXTRACTORS  # the registry; imported here to keep `voltron --help` light

    if config.policy.extractor not in EXTRACTORS:
        raise ValueError(f"policy.extractor={config.policy.extractor!r}; expected one of {sorted(EXTRACTORS)}")
    if config.policy.encoder_overrides and config.policy.pretrained:
        raise ValueError(
            "policy.encoder_overrides only applies to a randomly initialised encoder (policy.pretrained=false)"
        )
    if config.policy.history < 1 or config.policy.n_latents < 1:
        raise ValueError("policy.history and policy.n_latents must be >= 1")
    if config.policy.lowdim not in LOWDIM_KEYS:
        raise ValueError(f"policy.lowdim={config.policy.lowdim!r}; expected one of {LOWDIM_KEYS}")
    if config.train.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule={config.train.schedule!r}; expected one of {SCHEDULES}")
    if config.train.steps < 1:
        raise ValueError(f"train.steps={config.train.steps}; expected at least 1 (0 would save an untrained policy)")
    if config.train.cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"train.cache_dtype={config.train.cache_dtype!r}; expected one of {CACHE_DTYPES}")
    return config


def load_bc_config(path: str | None = None, overrides: list[str] | None = None) -> BCConfig:
    """Defaults, then the YAML file at `path` (stating only what differs), then dotted overrides (`--train.steps=500`)."""
    return validate(parse_config(BCConfig, path, overrides))  # errors name the file, key and value


def config_to_dict(config: BCConfig) -> dict[str, Any]:
    return voltron.config.config_to_dict(config)


def config_from_dict(data: dict[str, Any], source: str = "policy config.json") -> BCConfig:
    return validate(voltron.config.config_from_dict(BCConfig, data, source))


@dataclass
class EvalConfig:
    """`voltron eval`: one policy on one MuJoCo task (configs/eval/*.yaml state what differs)."""

    policy: str = ""  # policy run directory (what train-policy wrote); required
    task: str = ""  # task name, e.g. drawer-open; required
    episodes: int = 50
    seed: int = EVAL_SEED_OFFSET  # first reset seed (demos start at 0, and seeds a demo used are refused)
    allow_seed_overlap: bool = False  # evaluate on seeds a demo used anyway
    checkpoint: str | None = None  # a CHECKPOINT_DIR/step_*.safetensors of the run instead of its final weights
    num_envs: int = 2  # environments stepped in parallel worker processes
    horizon: int | None = None  # max steps per episode (None: the task's, 500)
    videos: int = 3  # captioned MP4s of the first N episodes
    out: str | None = None  # output directory (None: POLICY/eval/TASK)
    precision: str = "fp32"  # encoder inference precision: fp32, bf16, int8 or auto (voltron.models.inference)
    inference_backend: str = "eager"  # eager, compile, onnxruntime or auto
    progress: bool = True
