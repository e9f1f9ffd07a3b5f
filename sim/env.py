"""The Gymnasium environment for the MetaWorld tasks: camera image, proprioception and instruction in, success out."""

from __future__ import annotations

import importlib
import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from voltron.sim.render import OffscreenRenderer
from voltron.sim.tasks import KITCHEN_TASKS, TaskSpec, get_task, task_names

_LANGUAGE_CHARSET = string.ascii_letters + string.digits + " ,.'-"

# Observation frames draw the meshes coarsened on an 8 mm grid (sim/render.py `simplify_meshes`): MetaWorld's arm
# keeps 17k of its 68k triangles, frames differ by under 0.5/255 on average, and a frame renders about 1.5x faster
# in software GL (bench/render.py). Demos record the value (env_args); evaluation renders with the same default.
DEFAULT_MESH_CELL = 0.008


def task_spaces(task: TaskSpec, image_shape: tuple[int, int]) -> tuple[spaces.Box, spaces.Dict]:
    """The action space ([-1, 1]^action_dim) and the observation space {"image", "proprio", "language"} that every
    task env declares."""
    action_space = spaces.Box(-1.0, 1.0, shape=(task.action_dim,), dtype=np.float32)
    observation_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, shape=(*image_shape, 3), dtype=np.uint8),
            "proprio": spaces.Box(-np.inf, np.inf, shape=(len(task.proprio_keys),), dtype=np.float32),
            "language": spaces.Text(max_length=256, charset=_LANGUAGE_CHARSET),
        }
    )
    return action_space, observation_space


class TaskEnv(gym.Env):
    """What every task env shares (`SimEnv` for MetaWorld, `voltron.sim.kitchen.KitchenEnv` for Franka Kitchen):
    the constructor's options, the spaces (`task_spaces`), the blank frame for `render_images=False` and the
    offscreen renderer's settings. Subclasses build their MuJoCo model after calling this `__init__`.

    `camera` defaults to the task's, `horizon` to the task's (steps), `image_size` is an int or (H, W);
    `multisamples` is the renderer's anti-aliasing (0, the default, is fastest; see OffscreenRenderer);
    `render_images=False` renders nothing and observes a blank frame of the same shape (for low-dim policies);
    `mesh_cell` coarsens the meshes for drawing (metres; 0 draws the full meshes; physics is unaffected).
    """

    def __init__(
        self,
        task: str | TaskSpec,
        *,
        camera: str | None = None,
        image_size: int | tuple[int, int] = 224,
        horizon: int | None = None,
        multisamples: int = 0,
        terminate_on_success: bool = False,
        render_mode: str | None = "rgb_array",
        render_images: bool = True,
        mesh_cell: float = DEFAULT_MESH_CELL,
    ) -> None:
        self.task = get_task(task)
        self.camera = camera or self.task.camera
        self.horizon = int(horizon or self.task.horizon)
        self.image_shape = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)  # (H, W)
        self.terminate_on_success = terminate_on_success
        self.multisamples = multisamples
        self.render_mode = render_mode
        # False: observations carry a blank frame of the declared shape and nothing is rendered. For low-dim
        # policies (state oracle, proprio-only): a MetaWorld frame costs 12-20 ms in software GL at any size
        # (the arm's 67k mesh faces), a physics step under 1 ms.
        self.render_images = render_images
        self._blank = np.zeros((*self.image_shape, 3), dtype=np.uint8)
        self.mesh_cell = mesh_cell
        self.action_space, self.observation_space = task_spaces(self.task, self.image_shape)
        self._steps = 0
        self._last_image: np.ndarray | None = None

    def make_renderer(self, model: Any) -> OffscreenRenderer:
        """The one renderer this env reuses for `model` (a mujoco.MjModel), at the env's camera and image size."""
        return OffscreenRenderer(
            model,
            height=self.image_shape[0],
            width=self.image_shape[1],
            camera=self.camera,
            multisamples=self.multisamples,
            mesh_cell=self.mesh_cell,
        )

    @property
    def language(self) -> str:
        return self.task.language

    ACTIONS = "values in [-1, 1]"  # what an action holds, for the error message (each env class names its own)

    def checked_action(self, action: np.ndarray) -> np.ndarray:
        """`action` as float32, clipped to [-1, 1]; a wrong shape or a NaN/inf is a ValueError naming both."""
        action = np.asarray(action, dtype=np.float32)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(
                f"{self.task.name}: action {action!r} has shape {action.shape}; expected "
                f"{self.action_space.shape[0]} finite {self.ACTIONS}"
            )
        return np.clip(action, -1.0, 1.0)


class SimEnv(TaskEnv):
    """A MetaWorld task as a Gymnasium env with observations {"image", "proprio", "language"} (for a Franka Kitchen
    task, `SimEnv(task)` builds a `voltron.sim.kitchen.KitchenEnv` instead).

    - `image`: (H, W, 3) uint8 from the task's camera (default `corner`, 224x224), upright (see FLIPPED_CAMERAS).
    - `proprio`: (4,) float32, hand xyz in metres and gripper opening in [0, 1].
    - `language`: the task instruction, e.g. "open the drawer".

    Actions are (4,) float32 in [-1, 1]: hand dx, dy, dz (scaled by 1 cm per unit) and gripper effort (+1 closes).
    `info["success"]` is MetaWorld's success flag as a bool, `info["state"]` the 39-d MetaWorld state (what the
    scripted experts read). Episodes are truncated after `horizon` steps (default 500), and terminated on success
    only if `terminate_on_success`. `reset(seed=s)` always gives the same scene for the same `s`.
    The keyword options (camera, image_size, horizon, multisamples, render_images, mesh_cell, ...) are `TaskEnv`'s.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}  # MetaWorld steps at 80 Hz (5 x 2.5 ms)
    ACTIONS = "values (dx, dy, dz, gripper) in [-1, 1]"

    def __new__(cls, task: str | TaskSpec | None = None, *args: Any, **kwargs: Any) -> gym.Env:
        # SimEnv(task) builds the env class of the task's family (ENV_CLASSES), so every caller that names SimEnv
        # (evaluation, vector envs, collection) runs the Franka Kitchen tasks too; Python then skips __init__ here.
        # (No task: unpickling or copying, which call __new__ bare.)
        env_cls = SimEnv if task is None else env_class(task)
        if cls is SimEnv and env_cls is not SimEnv:
            return env_cls(task, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, task: str | TaskSpec, **options: Any) -> None:
        super().__init__(task, **options)  # the options are TaskEnv's
        self._env = self.task.metaworld_env(horizon=self.horizon)
        self._renderer = self.make_renderer(self._env.model)

    def _observe(self, state: np.ndarray) -> dict[str, Any]:
        self._last_image = self._renderer.render(self._env.data) if self.render_images else self._blank.copy()
        return {
            "image": self._last_image,
            "proprio": np.asarray(state[: len(self.task.proprio_keys)], dtype=np.float32),
            "language": self.task.language,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(int(seed))  # object and goal placement come from this generator
        state, _ = self._env.reset()
        self._steps = 0
        return self._observe(state), {"success": False, "state": state}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        state, reward, _, _, mw_info = self._env.step(self.checked_action(action))
        self._steps += 1
        success = bool(mw_info.get("success", 0.0))
        info = {**mw_info, "success": success, "state": state}
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.horizon
        return self._observe(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The latest observation image (rendered once per step, not again here)."""
        if self.render_mode != "rgb_array":
            return None
        if self._last_image is None:
            self._last_image = self._renderer.render(self._env.data)
        return self._last_image

    def close(self) -> None:
        self._renderer.close()
        self._env.close()
        super().close()


# TaskSpec.family -> the env class that runs it ("module:Class", imported when first built)
ENV_CLASSES = {"metaworld": "voltron.sim.env:SimEnv", "kitchen": "voltron.sim.kitchen:KitchenEnv"}


def env_class(task: str | TaskSpec) -> type[gym.Env]:
    """The env class for `task`: `SimEnv` for MetaWorld, `voltron.sim.kitchen.KitchenEnv` for Franka Kitchen."""
    module, name = ENV_CLASSES[get_task(task).family].split(":")
    return getattr(importlib.import_module(module), name)


def make_env(task: str | TaskSpec, **kwargs: Any) -> gym.Env:
    """The env for `task` (any family); keyword arguments as for `SimEnv`, which every env class takes."""
    return env_class(task)(task, **kwargs)


def _register_gymnasium_ids() -> None:
    # `gymnasium.make("voltron/drawer-open")` (or "voltron/kitchen-micro-open") works too; the envs enforce their
    # own horizon.
    for name in [*task_names(), *KITCHEN_TASKS]:
        env_id = f"voltron/{name}"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=ENV_CLASSES[get_task(name).family], kwargs={"task": name})


_register_gymnasium_ids()
