"""MetaWorld 3.x scripted expert policies, one per task, with optional Gaussian action noise."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voltron.sim.tasks import TaskSpec, get_task


def expert_policy_classes() -> dict[str, type]:
    """Task name -> MetaWorld's scripted policy class (from `metaworld.policies.ENV_POLICY_MAP`)."""
    importlib.import_module("voltron.sim.render")  # picks MUJOCO_GL before metaworld imports mujoco
    from metaworld.policies import ENV_POLICY_MAP

    return {env_id.removesuffix("-v3"): cls for env_id, cls in ENV_POLICY_MAP.items()}


class ScriptedExpert:
    """MetaWorld's hand-written controller for one task: 39-d state -> (4,) float32 action in [-1, 1].

    With `action_noise > 0`, zero-mean Gaussian noise of that standard deviation is added to every action
    dimension (then clipped), from a generator seeded by `seed`, so noisy demonstrations are reproducible.
    """

    def __init__(self, task: str | TaskSpec, *, action_noise: float = 0.0, seed: int | None = None) -> None:
        if action_noise < 0:
            raise ValueError(f"action_noise={action_noise}: expected a standard deviation >= 0")
        self.task = get_task(task)
        self.action_noise = float(action_noise)
        self.policy = expert_policy_classes()[self.task.name]()
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Restart the noise stream (the MetaWorld policies themselves are stateless)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # The policies warn whenever a gain saturates ("Constant(s) may be too high"); the env clips anyway.
            warnings.simplefilter("ignore", UserWarning)
            action = np.asarray(self.policy.get_action(np.asarray(state, dtype=np.float64)), dtype=np.float32)
        if self.action_noise > 0:
            action = action + self.rng.normal(0.0, self.action_noise, size=action.shape).astype(np.float32)
        return np.clip(action, -1.0, 1.0)

    def act_batch(self, states: np.ndarray) -> np.ndarray:
        """(N, 39) states -> (N, 4) actions, for vectorised environments."""
        return np.stack([self(state) for state in np.asarray(states)])


def expert_name(task: str | TaskSpec) -> str:
    """The class name of `task`'s scripted expert (demo files record it)."""
    spec = get_task(task)
    return "KitchenExpert" if spec.family == "kitchen" else expert_policy_classes()[spec.name].__name__


def make_expert(
    task: str | TaskSpec, *, action_noise: float = 0.0, seed: int | None = None, env: Any = None
) -> ScriptedExpert | Any:
    """The scripted expert for `task`: MetaWorld's policy, or for a Franka Kitchen task the IK expert of
    `voltron.sim.kitchen_experts`, which reads `env` (the KitchenEnv it acts in)."""
    if get_task(task).family == "kitchen":
        from voltron.sim.kitchen_experts import KitchenExpert

        if env is None:
            raise ValueError(f"{get_task(task).name}: the kitchen expert needs the env it acts in (env=...)")
        return KitchenExpert(env, action_noise=action_noise, seed=seed)
    return ScriptedExpert(task, action_noise=action_noise, seed=seed)


@dataclass
class Rollout:
    """One episode as recorded: observation t, then the action taken at t and what followed it."""

    images: list[np.ndarray] = field(default_factory=list)  # T x (H, W, 3) uint8
    proprio: list[np.ndarray] = field(default_factory=list)  # T x (P,) float32
    states: list[np.ndarray] = field(default_factory=list)  # T x (39,) float32 MetaWorld state (state oracles)
    views: dict[str, list[np.ndarray]] = field(default_factory=dict)  # other camera -> T x (H, W, 3) uint8
    actions: list[np.ndarray] = field(default_factory=list)  # T x (4,) float32
    rewards: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    seed: int | None = None

    @property
    def success(self) -> bool:
        return any(self.successes)

    def __len__(self) -> int:
        return len(self.actions)


def rollout(
    env: Any,
    policy: Callable[[np.ndarray], np.ndarray],
    *,
    seed: int | None = None,
    max_steps: int | None = None,
    post_success_steps: int = 10,
    views: Sequence[str] = (),
) -> Rollout:
    """Run `policy` (state -> action) in a `SimEnv` from `reset(seed=seed)`, recording every step.

    The episode stops `post_success_steps` steps after the first success (so demonstrations show the task being
    completed and held), at truncation, or after `max_steps`. `views`: other cameras of the env rendered at every
    step too (`env.render_camera`), e.g. the kitchen's second view.
    """
    obs, info = env.reset(seed=seed)
    record = Rollout(seed=seed, views={camera: [] for camera in views})
    steps_after_success = None
    limit = max_steps or env.horizon
    for _ in range(limit):
        action = policy(info["state"])
        record.images.append(obs["image"])
        for camera, frames in record.views.items():
            frames.append(env.render_camera(camera))
        record.proprio.append(obs["proprio"])
        record.states.append(np.asarray(info["state"], dtype=np.float32))
        record.actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        record.rewards.append(float(reward))
        record.successes.append(bool(info["success"]))
        if info["success"] and steps_after_success is None:
            steps_after_success = 0
        elif steps_after_success is not None:
            steps_after_success += 1
        if terminated or truncated or (steps_after_success is not None and steps_after_success >= post_success_steps):
            break
    return record
