"""The task registry: the five CortexBench MetaWorld evaluation tasks, the 45 others used for the sim corpus, and
the five Franka Kitchen tasks (R3M's kitchen_*-v3, see voltron.sim.kitchen)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # metaworld imports mujoco, which must wait until voltron.sim.render has picked MUJOCO_GL
    from metaworld.sawyer_xyz_env import SawyerXYZEnv

# CortexBench's MetaWorld suite (VC-1 / R3M), on the MetaWorld v3 environments.
EVAL_TASKS = ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")

# Proprioception is MetaWorld's state[:4]: the hand (end-effector body) position in metres and the finger
# distance normalised to [0, 1] (0 closed, 1 open), the 4-d `gripper_proprio` of CortexBench.
PROPRIO_KEYS = ("hand_x", "hand_y", "hand_z", "gripper_opening")

DEFAULT_CAMERA = "corner"
DEFAULT_HORIZON = 500  # CortexBench's episode length, and MetaWorld's max_path_length

# Task name -> language instruction, one entry per MetaWorld v3 environment ("<name>-v3").
_INSTRUCTIONS = {
    "assembly": "put the nut onto the peg",
    "basketball": "dunk the ball into the hoop",
    "bin-picking": "move the puck from one bin into the other",
    "box-close": "put the lid on the box",
    "button-press": "press the button",
    "button-press-topdown": "press the button down from the top",
    "button-press-topdown-wall": "press the button down from the top behind the wall",
    "button-press-wall": "press the button behind the wall",
    "coffee-button": "press the button on the coffee machine",
    "coffee-pull": "pull the mug out of the coffee machine",
    "coffee-push": "push the mug under the coffee machine",
    "dial-turn": "turn the dial",
    "disassemble": "pull the nut off the peg",
    "door-close": "close the door",
    "door-lock": "lock the door",
    "door-open": "open the door",
    "door-unlock": "unlock the door",
    "drawer-close": "close the drawer",
    "drawer-open": "open the drawer",
    "faucet-close": "turn the faucet off",
    "faucet-open": "turn the faucet on",
    "hammer": "hammer the nail into the wall",
    "hand-insert": "put the gripper into the hole",
    "handle-press": "press the handle down",
    "handle-press-side": "press the handle down from the side",
    "handle-pull": "pull the handle up",
    "handle-pull-side": "pull the handle up from the side",
    "lever-pull": "pull the lever up",
    "peg-insert-side": "insert the peg into the hole from the side",
    "peg-unplug-side": "unplug the peg from the side",
    "pick-out-of-hole": "pick the puck out of the hole",
    "pick-place": "pick up the puck and place it at the goal",
    "pick-place-wall": "pick up the puck and place it behind the wall",
    "plate-slide": "slide the plate into the goal",
    "plate-slide-back": "slide the plate back out of the goal",
    "plate-slide-back-side": "slide the plate sideways out of the goal",
    "plate-slide-side": "slide the plate sideways into the goal",
    "push": "push the puck to the goal",
    "push-back": "pull the puck back to the goal",
    "push-wall": "push the puck around the wall to the goal",
    "reach": "reach to the goal",
    "reach-wall": "reach over the wall to the goal",
    "shelf-place": "put the puck on the shelf",
    "soccer": "kick the ball into the goal",
    "stick-pull": "pull the bottle with the stick",
    "stick-push": "push the bottle with the stick",
    "sweep": "sweep the puck off the table",
    "sweep-into": "sweep the puck into the hole",
    "window-close": "slide the window closed",
    "window-open": "slide the window open",
}


class UnknownTaskError(ValueError):
    """A task name that is not in the registry."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: how to build it, what to observe, and what to say about it."""

    name: str  # e.g. "drawer-open"
    language: str  # the instruction given to language-conditioned policies, e.g. "open the drawer"
    camera: str = DEFAULT_CAMERA
    horizon: int = DEFAULT_HORIZON
    proprio_keys: tuple[str, ...] = PROPRIO_KEYS
    family: str = "metaworld"  # which env class runs it (voltron.sim.env.make_env): "metaworld" or "kitchen"
    action_dim: int = 4
    state_dim: int = 39  # the privileged low-dim state (info["state"]) a state oracle reads
    views: tuple[str, ...] = ()  # cameras its demos record and a suite reports (default: just `camera`)
    upstream_id: str | None = None  # the original env id, when it is not "<name>-v3"

    @property
    def env_id(self) -> str:
        """The original env's id, e.g. MetaWorld's "drawer-open-v3" or R3M's "kitchen_micro_open-v3"."""
        return self.upstream_id or f"{self.name}-v3"

    @property
    def is_eval(self) -> bool:
        """True for evaluation tasks (MetaWorld's five and the kitchen's), which the pretraining corpus must never
        show."""
        return self.name in EVAL_TASKS or self.family != "metaworld"

    def metaworld_env(self, horizon: int | None = None) -> SawyerXYZEnv:
        """The raw MetaWorld environment (39-d state observations, no rendering); see `make_metaworld_env`. The
        Gymnasium env with images is `voltron.sim.env.make_env`."""
        if self.family != "metaworld":
            raise UnknownTaskError(f"{self.name} is a {self.family} task; build it with voltron.sim.env.make_env")
        return make_metaworld_env(self.env_id, horizon=horizon or self.horizon)


TASKS: dict[str, TaskSpec] = {name: TaskSpec(name, language) for name, language in _INSTRUCTIONS.items()}
CORPUS_TASKS = tuple(name for name in TASKS if name not in EVAL_TASKS)  # 45 names, alphabetical

# Franka Kitchen (voltron.sim.kitchen holds the goals and the env): R3M's five kitchen_*-v3 tasks (100 steps, see
# below), 9-d joint-velocity actions, 9-d proprio (7 arm joints, 2 fingers), two views.
KITCHEN_PROPRIO_KEYS = (*(f"panda_joint{i}" for i in range(1, 8)), "finger_joint1", "finger_joint2")
R3M_KITCHEN_HORIZON = 50  # R3M's max_episode_steps for every kitchen_*-v3 task
# Ours is 100 steps (8 s): in this model the arm's big joints top out near 0.9 rad/s (servo force limit 87 N m
# against joint damping 100 N m s/rad), far below R3M's 2*pi rad/s action scale, so reaching a handle from the
# start pose alone takes 15-25 steps; our experts need a median of 41-86 steps (bench/kitchen_experts.py).
KITCHEN_HORIZON = 100
_KITCHEN = {
    "kitchen-knob-on": ("turn the oven knob", "kitchen_knob1_on-v3"),
    "kitchen-light-on": ("switch on the light", "kitchen_light_on-v3"),
    "kitchen-sdoor-open": ("slide the cabinet door open", "kitchen_sdoor_open-v3"),
    "kitchen-ldoor-open": ("open the left cabinet door", "kitchen_ldoor_open-v3"),
    "kitchen-micro-open": ("open the microwave", "kitchen_micro_open-v3"),
}
KITCHEN_TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(
        name,
        language,
        camera="left_cap2",
        horizon=KITCHEN_HORIZON,
        proprio_keys=KITCHEN_PROPRIO_KEYS,
        family="kitchen",
        action_dim=9,
        state_dim=39,
        views=("left_cap2", "right_cap2"),
        upstream_id=upstream,
    )  # fmt: skip
    for name, (language, upstream) in _KITCHEN.items()
}


def task_names() -> list[str]:
    """Every registered task name: the five evaluation tasks first, then the corpus tasks."""
    return [*EVAL_TASKS, *CORPUS_TASKS]


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered task called `name` ("drawer-open"; MetaWorld's "drawer-open-v3" is accepted too, and so are
    the kitchen's R3M ids, e.g. "kitchen_micro_open-v3")."""
    if isinstance(name, TaskSpec):
        return name
    key = name.strip().lower()
    kitchen = KITCHEN_TASKS.get(key) or next((t for t in KITCHEN_TASKS.values() if t.env_id == key), None)
    if kitchen is not None:
        return kitchen
    key = key.removesuffix("-v3")
    if key not in TASKS:
        raise UnknownTaskError(
            f"unknown task {name!r}. Evaluation tasks: {', '.join(EVAL_TASKS)}. "
            f"Other MetaWorld tasks: {', '.join(CORPUS_TASKS)}. Franka Kitchen tasks: {', '.join(KITCHEN_TASKS)}."
        )
    return TASKS[key]


def make_metaworld_env(env_id: str, *, horizon: int = DEFAULT_HORIZON) -> SawyerXYZEnv:
    """A single-task MetaWorld v3 env whose resets are reproducible from `env.seed(seed)`.

    The goal is observable (the last 3 of the 39 state entries), as in CortexBench's `-goal-observable` envs and
    as MetaWorld's scripted experts expect. Unlike `Meta-World/MT1`, which freezes 50 pre-sampled task variations,
    every reset draws a fresh object/goal placement from the env's own seeded generator, so `env.seed(s)` followed by
    `reset()` always gives the same scene. This mirrors what metaworld's `_create_observable_goal_envs` does.
    """
    importlib.import_module("voltron.sim.render")  # picks MUJOCO_GL before metaworld imports mujoco
    from metaworld.env_dict import ENV_CLS_MAP

    if env_id not in ENV_CLS_MAP:
        raise UnknownTaskError(f"unknown MetaWorld env id {env_id!r}; expected one of {sorted(ENV_CLS_MAP)}")
    env: Any = ENV_CLS_MAP[env_id]()  # no render_mode: rendering goes through voltron.sim.render instead
    env._partially_observable = False  # goal position in the observation
    del env.sawyer_observation_space  # cached property; recomputed with the goal bounds
    env._set_task_called = True  # we sample placements ourselves instead of using benchmark Task objects
    env._freeze_rand_vec = False
    env.seeded_rand_vec = True  # placements from env.np_random, which env.seed(seed) resets
    env.max_path_length = horizon  # MetaWorld raises if stepped past this
    return env
