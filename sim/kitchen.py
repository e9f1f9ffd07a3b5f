"""Franka Kitchen, R3M's five single-task `kitchen_*-v3` envs, rebuilt on gymnasium-robotics' MuJoCo model.

The Voltron paper evaluates on R3M's kitchen tasks (RoboHive tag v0.0.5, `mj_envs/envs/relay_kitchen/`, on
mujoco-py). This module rebuilds them on the `FrankaKitchen-v1` model that ships inside the `gymnasium-robotics`
wheel (current MuJoCo bindings), following the original where the model allows:

- goals (`__init__.py` there): knob1 -1.57 rad, light switch -0.7 rad, slide door 0.44 m, left hinge door -1.25 rad,
  microwave -1.25 rad; every other articulated object keeps its start value;
- `frame_skip=40` (12.5 Hz), 9-d joint-velocity actions in [-1, 1] scaled by R3M's
  `vel_range` of 2*pi per unit (`franka_kitchen.config`), applied as position targets `qpos + v * dt`;
- reset (`KitchenFrankaRandomDesk`): the arm starts at RPL keyframe 1 plus uniform noise of 5% of each joint's
  range (+-2.5%), and the whole kitchen (`desk`) is shifted by U(-0.1, 0.1) m on x, y and z, redrawn while the
  scene has more than 4 contacts (the kettle, which is not on the desk, must not end up inside the stove);
- success ("solved", `kitchen_multitask_v2.py`): every object joint within 15% of its range of its goal, and an
  episode succeeds once that has held for more than 5 steps (`env_base.evaluate_success`);
- cameras `left_cap2` and `right_cap2` exactly as the original defines them (fixed position, aimed at `knob 1` and
  at the microwave), added to this model; they follow the shifted kitchen as they did there.

What differs is listed in `DIFFERENCES` (and the README); tests/test_kitchen.py checks the goal/range table
against the compiled model.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voltron.errors import MissingDependency
from voltron.sim.env import TaskEnv
from voltron.sim.render import mujoco
from voltron.sim.tasks import KITCHEN_HORIZON, TaskSpec, get_task

HORIZON = KITCHEN_HORIZON  # steps per episode (sim/tasks.py says why)
FRAME_SKIP = 40  # physics steps of 2 ms per env step: 12.5 Hz
MAX_JOINT_SPEED = 2 * math.pi  # R3M's actuator vel_range (4*pi/2): rad/s (m/s for the fingers) per unit action
DESK_JITTER = 0.1  # metres, uniform on x, y, z (KitchenFrankaRandomDesk)
MAX_RESET_CONTACTS = 4  # redraw the desk offset while the scene has more contacts than the kettle resting on the stove
JOINT_NOISE = 0.05  # of each robot joint's range, uniform and centred
SUCCESS_TOLERANCE = 0.15  # of each object joint's range
SUCCESS_STEPS = 5  # an episode succeeds once the goal has held for more than this many steps
CAMERAS = ("left_cap2", "right_cap2")
DEFAULT_CAMERA = "left_cap2"
N_ROBOT = 9  # 7 arm joints and 2 finger joints: the action and proprio size

# RPL keyframe 1 of the original franka_kitchen.xml (the arm's start pose; fingers open)
R3M_INIT_ROBOT_QPOS = (0.101020992, -1.76349747, 1.88974607, -2.4766171, 0.325189114, 0.82909441, 1.62463629,
                       0.039976038, 0.0399791002)  # fmt: skip

# The original's cameras (franka_kitchen.xml at v0.0.5): name -> (position, body it aims at). fovy is MuJoCo's 45.
R3M_CAMERAS = {"left_cap2": ((-1.4, -1.0, 1.8), "knob 1"), "right_cap2": ((1.3, -0.7, 3.4), "microwave")}

# The nine articulated objects R3M's success rule checks, as this model names them (original name in the comment).
OBJECT_JOINTS = (
    "knob_Joint_1",  # knob1_joint
    "knob_Joint_2",  # knob2_joint
    "knob_Joint_3",  # knob3_joint
    "knob_Joint_4",  # knob4_joint
    "light_switch",  # lightswitch_joint
    "slide_cabinet",  # slidedoor_joint
    "left_hinge_cabinet",  # leftdoorhinge
    "right_hinge_cabinet",  # rightdoorhinge
    "microwave",  # microjoint
)
# The original also checks the kettle's six joints (a free joint here): translation within 15% of 3.0 m per axis
# and rotation within 15% of 2*pi per axis (here: the rotation angle, which bounds every axis's).
KETTLE_MAX_SHIFT = SUCCESS_TOLERANCE * 3.0
KETTLE_MAX_TURN = SUCCESS_TOLERANCE * 2 * math.pi

DIFFERENCES = (
    "Model: gymnasium-robotics 1.4.2's FrankaKitchen-v1 assets on MuJoCo 3 instead of RoboHive v0.0.5's "
    "furniture_sim/franka_sim on mujoco-py 2; joint ranges, goal joints and interaction sites have the same values.",
    "Cameras: left_cap2/right_cap2 are re-created with the original's positions and targets; lighting, textures "
    "and the skybox (off in our renderer) differ, so frames are not pixel-identical.",
    "Kettle: a free joint here (six limited joints there); the success rule checks its shift and rotation angle.",
    "Reset: seeded from reset(seed=...) (the original's desk offset used the global numpy generator), and the "
    "contact check runs mj_forward instead of one mj_step.",
    "Observations: images from our OffscreenRenderer at any size (R3M rendered 256x256 and centre-cropped 224); "
    "proprio is the true joint positions (no sensor noise).",
    "kitchen-ldoor-open: at the goal band's edge (-1.01 rad) the left door's handle is 1.06-1.11 m from the arm's "
    "shoulder, beyond its 0.95 m reach in this model, so the expert pulls the door to -0.3 rad by the handle (or "
    "until the handle slips from its fingertips), then pushes its inner face from behind. With the desk shifted away "
    "from the arm, the closed handle's bar is 1.009 and 1.028 m from the shoulder on the 2 of the first 50 reset "
    "seeds the expert fails, beyond its fingertips (the hand's site reaches 0.947 m, the fingertips at most 5.9 cm more).",
    "Horizon 100 steps instead of R3M's 50: this model's arm joints top out near 0.9 rad/s (force limit over "
    "damping), so the scripted experts need a median of 41-76 steps (sim/tasks.py, bench/kitchen_experts.py).",
)


@dataclass(frozen=True)
class KitchenGoal:
    """One task's goal, in this model's names, and the R3M env it reproduces."""

    joint: str  # the object joint that must reach `goal`
    site: str  # the handle/knob site the hand interacts with
    goal: float  # rad (hinge) or m (slide)
    r3m_id: str
    r3m_joint: str
    r3m_site: str


GOALS = {
    "kitchen-knob-on": KitchenGoal("knob_Joint_1", "knob1_site", -1.57, "kitchen_knob1_on-v3", "knob1_joint", "knob1_site"),
    "kitchen-light-on": KitchenGoal("light_switch", "light_site", -0.7, "kitchen_light_on-v3", "lightswitch_joint", "light_site"),
    "kitchen-sdoor-open": KitchenGoal("slide_cabinet", "slide_site", 0.44, "kitchen_sdoor_open-v3", "slidedoor_joint", "slide_site"),
    "kitchen-ldoor-open": KitchenGoal("left_hinge_cabinet", "hinge_site1", -1.25, "kitchen_ldoor_open-v3", "leftdoorhinge", "leftdoor_site"),
    "kitchen-micro-open": KitchenGoal("microwave", "microhandle_site", -1.25, "kitchen_micro_open-v3", "microjoint", "microhandle_site"),
}  # fmt: skip


def model_path() -> Path:
    """The FrankaKitchen-v1 scene inside the installed gymnasium-robotics wheel."""
    try:
        # its import prints a notice about its Adroit envs' rewards to stderr, on every kitchen command
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    except ModuleNotFoundError as error:
        raise MissingDependency(
            "the Franka Kitchen tasks need gymnasium-robotics: pip install -e '.[sim]'", name="gymnasium_robotics"
        ) from error
    return Path(gymnasium_robotics.__file__).parent / "envs/assets/kitchen_franka/kitchen_assets/kitchen_env_model.xml"


def build_model() -> mujoco.MjModel:
    """The kitchen scene with R3M's two cameras added (a fresh model: each env owns and edits its own)."""
    spec = mujoco.MjSpec.from_file(str(model_path()))
    for name, (position, target) in R3M_CAMERAS.items():
        spec.worldbody.add_camera(
            name=name, pos=list(position), mode=mujoco.mjtCamLight.mjCAMLIGHT_TARGETBODY, targetbody=target
        )
    return spec.compile()


def joint_range(model: mujoco.MjModel, joint: str) -> tuple[float, float]:
    low, high = model.jnt_range[model.joint(joint).id]
    return float(low), float(high)


class KitchenEnv(TaskEnv):
    """One Franka Kitchen task as a Gymnasium env with observations {"image", "proprio", "language"}.

    - `image`: (H, W, 3) uint8 from `camera` (default `left_cap2`; the other view is `right_cap2`).
    - `proprio`: (9,) float32, the 7 arm joint angles (rad) and the 2 finger positions (m), R3M's `proprio=9`.
    - `language`: the task instruction, e.g. "open the microwave".

    Actions are (9,) float32 in [-1, 1]: joint velocities in units of 2*pi rad/s (m/s for the fingers), held for one
    80 ms step. `info["success"]` turns True once the goal has held for more than 5 steps (R3M's rule) and stays
    True; `info["solved"]` is that step's check and `info["state"]` the privileged low-dim state (see `STATE_KEYS`).
    The keyword options (camera, image_size, horizon, multisamples, render_images, mesh_cell, ...) are `TaskEnv`'s,
    as for the MetaWorld envs.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12.5}
    ACTIONS = "joint velocities in [-1, 1]"

    # The privileged state (the state oracle's input), in order, with sizes.
    STATE_KEYS = (
        ("robot_qpos", N_ROBOT),
        ("robot_qvel", N_ROBOT),
        ("object_qpos", len(OBJECT_JOINTS)),
        ("kettle_pos", 3),
        ("end_effector", 3),
        ("site_minus_end_effector", 3),  # R3M's `<interact_site>_err`
        ("desk_offset", 3),
    )
    STATE_DIM = sum(size for _, size in STATE_KEYS)

    def __init__(self, task: str | TaskSpec, **options: Any) -> None:
        name = get_task(task).name
        if name not in GOALS:
            raise ValueError(f"{name!r} is not a kitchen task; expected one of {sorted(GOALS)}")
        super().__init__(task, **options)  # the options are TaskEnv's
        self.goal = GOALS[self.task.name]

        self.model = build_model()
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * FRAME_SKIP
        model = self.model
        self._robot_range = np.array([joint_range(model, model.joint(i).name) for i in range(N_ROBOT)])
        self._ctrl_range = model.actuator_ctrlrange[:N_ROBOT].copy()
        self._object_qpos = np.array([model.jnt_qposadr[model.joint(j).id] for j in OBJECT_JOINTS])
        widths = np.array([np.subtract(*joint_range(model, j)[::-1]) for j in OBJECT_JOINTS])
        self._object_tolerance = SUCCESS_TOLERANCE * widths
        self._object_goal = np.zeros(len(OBJECT_JOINTS))
        self._object_goal[OBJECT_JOINTS.index(self.goal.joint)] = self.goal.goal
        self._kettle_qpos = model.jnt_qposadr[model.joint("kettle").id]
        self._desk = model.body("desk").id
        self._desk_home = model.body_pos[self._desk].copy()
        self.end_effector = model.site("end_effector").id
        self.site = model.site(self.goal.site).id
        self._renderer = self.make_renderer(model)
        self._solved_steps = 0
        self._kettle_start = np.zeros(7)

    @property
    def desk_offset(self) -> np.ndarray:
        return self.model.body_pos[self._desk] - self._desk_home

    # -- state, success -------------------------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """The privileged low-dim state, `STATE_KEYS` concatenated (float32)."""
        data = self.data
        end_effector = data.site_xpos[self.end_effector]
        return np.concatenate(
            [
                data.qpos[:N_ROBOT],
                data.qvel[:N_ROBOT],
                data.qpos[self._object_qpos],
                data.qpos[self._kettle_qpos : self._kettle_qpos + 3],
                end_effector,
                data.site_xpos[self.site] - end_effector,
                self.desk_offset,
            ]
        ).astype(np.float32)

    def goal_error(self) -> float:
        """Distance of the task's joint from its goal (rad or m)."""
        return float(abs(self.data.qpos[self._object_qpos[OBJECT_JOINTS.index(self.goal.joint)]] - self.goal.goal))

    def solved(self) -> bool:
        """R3M's per-step check: every object joint within 15% of its range of its goal (the others' goal is their
        start value), and the kettle where it started."""
        errors = np.abs(self.data.qpos[self._object_qpos] - self._object_goal)
        kettle = self.data.qpos[self._kettle_qpos : self._kettle_qpos + 7]
        shift = np.abs(kettle[:3] - self._kettle_start[:3])
        turn = 2 * math.acos(min(1.0, abs(float(np.dot(kettle[3:], self._kettle_start[3:])))))
        return bool(
            np.all(errors < self._object_tolerance) and np.all(shift < KETTLE_MAX_SHIFT) and turn < KETTLE_MAX_TURN
        )

    # -- Gymnasium API --------------------------------------------------------------------------------------------
    def _observe(self) -> dict[str, Any]:
        self._last_image = self._renderer.render(self.data) if self.render_images else self._blank.copy()
        return {
            "image": self._last_image,
            "proprio": self.data.qpos[:N_ROBOT].astype(np.float32),
            "language": self.task.language,
        }

    def _sample_desk_offset(self, rng: np.random.Generator) -> np.ndarray:
        for _ in range(1000):
            offset = rng.uniform(-DESK_JITTER, DESK_JITTER, 3)
            self.model.body_pos[self._desk] = self._desk_home + offset
            mujoco.mj_forward(self.model, self.data)
            if self.data.ncon <= MAX_RESET_CONTACTS:
                return offset
        raise RuntimeError("no desk offset without extra contacts in 1000 draws")  # about half of all draws pass

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        rng = self.np_random
        model, data = self.model, self.data
        mujoco.mj_resetDataKeyframe(model, data, 0)  # kettle on the stove, objects closed
        width = self._robot_range[:, 1] - self._robot_range[:, 0]
        qpos = np.asarray(R3M_INIT_ROBOT_QPOS) + JOINT_NOISE * (rng.uniform(size=N_ROBOT) - 0.5) * width
        data.qpos[:N_ROBOT] = qpos
        data.qpos[self._object_qpos] = 0.0
        data.qvel[:] = 0.0
        data.ctrl[:N_ROBOT] = np.clip(qpos, self._ctrl_range[:, 0], self._ctrl_range[:, 1])
        self._sample_desk_offset(rng)
        self._kettle_start = data.qpos[self._kettle_qpos : self._kettle_qpos + 7].copy()
        self._steps = 0
        self._solved_steps = 0
        return self._observe(), {"success": False, "solved": False, "state": self.state()}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        velocity = self.checked_action(action).astype(np.float64) * MAX_JOINT_SPEED
        data = self.data
        target = data.qpos[:N_ROBOT] + velocity * self.dt  # the original's vel mode: a position target one step out
        data.ctrl[:N_ROBOT] = np.clip(target, self._ctrl_range[:, 0], self._ctrl_range[:, 1])
        mujoco.mj_step(self.model, data, nstep=FRAME_SKIP)
        self._steps += 1
        solved = self.solved()
        self._solved_steps += int(solved)
        success = self._solved_steps > SUCCESS_STEPS
        reward = -self.goal_error()  # R3M's "sparse" reward term, for the task's joint
        info = {"success": success, "solved": solved, "goal_error": -reward, "state": self.state()}
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.horizon
        return self._observe(), reward, terminated, truncated, info

    def render_camera(self, camera: str) -> np.ndarray:
        """The current scene from another camera of this model (e.g. the second view while collecting demos)."""
        return self._renderer.render(self.data, camera=camera)

    def render(self) -> np.ndarray | None:
        """The latest observation image (rendered once per step, not again here)."""
        if self.render_mode != "rgb_array":
            return None
        if self._last_image is None:
            self._last_image = self._renderer.render(self.data)
        return self._last_image

    def close(self) -> None:
        self._renderer.close()
        super().close()
