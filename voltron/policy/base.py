"""The policy contract that training, sim evaluation and the ROS server share; its observation schema; the check
that a policy fits an environment or a robot; and `load_policy`, which finds a saved policy's class by its format.

Observation schema: what `select_action` takes, from the simulator and from a robot alike.

    {"images": {camera: (H, W, 3) uint8}, "proprio": (P,) float32, "language": str}

Batched: images (N, H, W, 3), proprio (N, P), language a list of N str. The simulator adds "state" (its privileged
low-dim state, what a state oracle reads instead of "proprio"; `Policy.lowdim` names the key a policy reads).
Actions come back in env/robot units: (A,) for one observation, (N, A) for a batch.

Adding a policy head (action chunking, diffusion, ...) is one file, voltron/policy/<head>.py:

    class ChunkPolicy(Policy):
        format = "voltron-chunk-policy/1"  # config.json's tag; `load_policy` finds this class by it

        def forward(self, batch): ...          # (loss, info) on a training batch
        def select_action(self, obs): ...      # actions for the observation schema above
        def reset(self): ...                   # forget any history at an episode start
        def save_pretrained(self, directory): ...   # config.json written through `policy_meta()`
        @classmethod
        def from_pretrained(cls, directory, device="cpu"): ...

and its __init__ sets proprio_dim, action_dim and cameras (Policy.__init__). `policy_meta()` records the class's
module in config.json, so `load_policy` imports the head's file itself; sim evaluation (`voltron eval`) and
`voltron ros serve` then run it unchanged. `BCPolicy` (voltron/policy/model.py) is the reference implementation.
"""

from __future__ import annotations

import copy
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch.nn as nn

from voltron.errors import UserError
from voltron.io import staged_directory
from voltron.models.checkpoints import CONFIG_NAME, ENCODER_FORMAT, POLICY_FORMAT_RE, read_json

POLICY_PACKAGE = "voltron.policy"  # the only package config.json may name a head's module in
POLICY_CLASSES: dict[str, type[Policy]] = {}  # format tag -> class, filled as each head's module is imported
# Policies saved before config.json recorded the head's module
LEGACY_MODULES = {"voltron-bc-policy/1": "voltron.policy.model"}


class Policy(nn.Module, ABC):
    """A policy: `forward(batch) -> (loss, info)` to train, `select_action(obs)` and `reset()` to act.

    `proprio_dim` and `action_dim` are the sizes of the low-dim input (the observation key `lowdim`) and of an
    action; `cameras` names the images it reads from obs["images"] (empty for a low-dim policy). `check_fits`
    compares them with an environment or robot before the first step.
    """

    format: ClassVar[str] = ""  # config.json's "format" tag, "voltron-<head>-policy/<version>"
    lowdim: str = "proprio"  # the observation key of the low-dim input ("state" for a state oracle)
    image_size: int | None = None  # the frame size it was trained on, which the simulator renders at (None: 224)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.format:
            if not POLICY_FORMAT_RE.fullmatch(cls.format):
                raise ValueError(f"{cls.__name__}.format={cls.format!r}; expected 'voltron-<head>-policy/<n>'")
            POLICY_CLASSES[cls.format] = cls

    def __init__(self, proprio_dim: int, action_dim: int, cameras: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.proprio_dim, self.action_dim, self.cameras = int(proprio_dim), int(action_dim), tuple(cameras)

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The training loss on a batch, and a dict of figures to log."""

    @abstractmethod
    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """Actions in env/robot units for an observation in the schema above: (A,), or (N, A) for a batch."""

    @abstractmethod
    def reset(self) -> None:
        """Forget what earlier steps left behind (observation history, queued actions): call at an episode start."""

    def fork(self) -> Policy:
        """A policy that shares this one's weights but keeps its own episode state (observation history, queued
        actions), so several episodes can run at once: evaluation gives each of its envs one.

        The default is a shallow copy, then `reset()`; that suits a head whose `reset` assigns fresh state
        (`self._history = []`). A head that empties a container in place (`self._queue.clear()`) overrides this.
        """
        twin = copy.copy(self)
        twin.reset()
        return twin

    def get_optim_params(self) -> list[dict[str, Any]] | list[nn.Parameter]:
        """What the optimiser trains: parameters, or parameter groups with their own settings (e.g. an "lr")."""
        return [p for p in self.parameters() if p.requires_grad]

    def warmup(self, obs: dict[str, Any]) -> None:
        """One throwaway action on `obs` (a robot's first observation), so the first real step does not pay for
        lazy initialisation; the policy is reset afterwards."""
        self.select_action(obs)
        self.reset()

    @property
    def inference(self) -> str | None:
        """The encoder's inference path (e.g. "fp32/onnxruntime"), or None for a policy without one."""
        return None

    def use_inference(self, precision: str = "fp32", backend: str = "eager") -> str | None:
        """Run the policy's encoder through a fast inference path (voltron.models.inference); returns the path
        that serves. A policy without an encoder has nothing to accelerate."""
        return self.inference

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> Policy:
        """Restore a policy of this class from the folder its `save_pretrained` wrote (what `load_policy` calls)."""
        raise NotImplementedError(f"{cls.__name__} cannot be restored from a folder")

    def save_pretrained(self, directory: str | Path, bundle_encoder: bool = False) -> Path:
        """Write config.json (starting with `policy_meta()`) and the weights to `directory`; with `bundle_encoder`,
        a copy of a referenced encoder too, so the folder runs on its own."""
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")

    def policy_meta(self) -> dict[str, Any]:
        """The keys every policy's config.json starts with: its format tag and the module of its class."""
        return {"format": self.format, "module": type(self).__module__}


@dataclass(frozen=True)
class EnvSpec:
    """What an environment or a robot gives a policy and takes from it, for `check_fits`.

    `lowdim`: observation key -> size ("proprio", and "state" in the simulator); a size of None is not known yet.
    `cameras`: the images it provides; None when it renders whichever camera the policy names (the simulator).
    """

    name: str  # for messages, e.g. "task 'drawer-open'" or "robot 'franka-fr3'"
    action_dim: int
    lowdim: dict[str, int | None] = field(default_factory=dict)
    cameras: tuple[str, ...] | None = None

    @classmethod
    def from_observation(cls, name: str, obs: dict[str, Any], action_dim: int) -> EnvSpec:
        """The spec an observation in the schema (single or batched) shows, with the action size taken."""
        lowdim = {key: int(np.shape(obs[key])[-1]) for key in ("proprio", "state") if obs.get(key) is not None}
        return cls(name, int(action_dim), lowdim, tuple(obs.get("images", {})))


def check_fits(policy: Policy, spec: EnvSpec) -> None:
    """Raise one UserError naming every mismatch between `policy` and `spec`: action size, low-dim input (key and
    size) and cameras. Call it before the first step, so a mismatch stops the run instead of failing every step."""
    problems = []
    if policy.action_dim != spec.action_dim:
        problems.append(f"the policy acts {policy.action_dim}-d, {spec.name} takes {spec.action_dim}-d actions")
    if policy.lowdim not in spec.lowdim:
        problems.append(f"the policy reads obs[{policy.lowdim!r}], {spec.name} gives {sorted(spec.lowdim)}")
    elif spec.lowdim[policy.lowdim] not in (None, policy.proprio_dim):
        problems.append(
            f"the policy expects {policy.lowdim} {policy.proprio_dim}-d, {spec.name} gives "
            f"{policy.lowdim} {spec.lowdim[policy.lowdim]}-d"
        )
    missing = [camera for camera in policy.cameras if spec.cameras is not None and camera not in spec.cameras]
    if missing:
        problems.append(f"the policy reads camera(s) {missing}, {spec.name} has {list(spec.cameras or ())}")
    if problems:
        raise UserError("; ".join(problems), expected=f"a policy trained for {spec.name}")


def load_policy(directory: str | Path, device: str = "cpu") -> Policy:
    """Restore a saved policy of any head: config.json's "format" picks the class (its "module" is imported
    first), whose `from_pretrained` reads the rest."""
    directory = Path(directory).expanduser()
    source = directory / CONFIG_NAME
    meta = read_json(source, "policy config")
    found = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(found, str) or not POLICY_FORMAT_RE.fullmatch(found):
        encoder = isinstance(meta, dict) and (found == ENCODER_FORMAT or (found is None and "family" in meta))
        hint = "; it is an encoder checkpoint: load it with voltron.load" if encoder else ""
        raise UserError(
            f"not a voltron policy checkpoint (format {found!r}){hint}",
            source=source,
            expected="a policy folder written by `voltron train-policy` or `voltron policy export`",
        )
    module = meta.get("module") or LEGACY_MODULES.get(found, "")
    if not isinstance(module, str) or not (module == POLICY_PACKAGE or module.startswith(POLICY_PACKAGE + ".")):
        raise UserError(source=source, key="module", value=module, expected=f"a module of {POLICY_PACKAGE}")
    if found not in POLICY_CLASSES:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UserError(f"cannot import the policy's module ({err})", source=source, key="module") from err
    if found not in POLICY_CLASSES:
        raise UserError(source=source, key="format", value=found, expected=f"one of {sorted(POLICY_CLASSES)}")
    return POLICY_CLASSES[found].from_pretrained(directory, device=device)


def export_policy(source: str | Path, target: str | Path, bundle_encoder: bool = False) -> Path:
    """Copy the policy in `source` to the new folder `target`, after loading it (so its encoder is verified):
    config.json and model.safetensors, and with `bundle_encoder` the encoder it references, so that `target` runs
    on its own (on a robot). `target` must not exist (or be empty): nothing is overwritten, and the folder appears
    whole or not at all."""
    target = Path(target).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError("already exists; exporting never overwrites", source=target, expected="a new folder")
    policy = load_policy(source)
    with staged_directory(target) as staging:
        policy.save_pretrained(staging, bundle_encoder=bundle_encoder)
    return target
