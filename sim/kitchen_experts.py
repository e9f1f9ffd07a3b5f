"""Scripted Franka Kitchen experts: per-task waypoints turned into joint-velocity actions by differential IK.

None ship with the original (R3M's demos came from unreleased state-based policies), so every task uses one
script, read off the task's object joint in the live MuJoCo model:

1. transit: joint space, fingers open, to an arm configuration with the hand 7 cm in front of the handle/knob site,
   level, fingers horizontal across the (vertical) bar (`pregrasp_configuration`: searched once per task on the
   nominal scene, then re-solved for this episode's desk offset);
2. insert: straight in until the bar is between the fingers (bounded: a touched handle stops the hand short);
3. grasp: close the fingers;
4. turn: move the grip point with the object joint, a bounded lead ahead of where it is (rotated about the hinge
   axis, or shifted along the slide axis), the hand following the rotation as far as the task's script says (or
   yawing towards the shoulder, for reach), until the joint is at its goal (or a set amount past it, for a knob or
   lever that lags the hand), then hold it there. The left door lets go at -0.3 rad (or where its handle slips
   from the fingers), goes round the door's free edge and pushes its inner face instead (its handle swings out of
   the arm's reach).

Each step's 6-d end-effector error (position, and orientation as a rotation vector), clipped to a bounded step,
goes through damped least squares on `mj_jacSite`'s Jacobian to 7 joint increments, scaled together so that no
joint is asked for more than its servo's top speed (force limit over damping). A gravity feed-forward
(`qfrc_bias / kp`) is added because the env's position servos otherwise sag below their targets, and the result is
divided by the servos' share of a step's target they cover (first-order response of a damped joint) and by the env's
step size (2*pi rad/s for 80 ms) into the action. The expert reads the env's model and data
(privileged, as scripted experts are) and ignores the state vector it is called with.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from voltron.sim.kitchen import MAX_JOINT_SPEED, N_ROBOT, KitchenEnv
from voltron.sim.render import mujoco

ARM = 7
# Hand frame (the end_effector site) when level and pointing into the kitchen: x up, y (the fingers' axis) along
# world +x, z (the approach) along world +y. Columns are the site's axes in world coordinates.
HAND_LEVEL = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
PREGRASP_DISTANCE = 0.07  # metres in front of the site, along the approach
INSERT_DEPTH = 0.01  # metres past the site: the handle sits between the fingers, not at their tips
MAX_STEP = 0.06  # metres of end-effector motion asked for per env step
MAX_TURN = 0.35  # radians of hand rotation asked for per env step
DAMPING = 0.05  # damped least squares
REACHED = 0.015  # metres: a waypoint counts as reached within this
# metres: a waypoint on the way round a door counts as passed within this (it only steers the path; 0.05 kept the
# hand creeping towards points it was all but past, and the left door succeeded on 41 of 50 seeds instead of 43)
PASSED = 0.08
GRASP_STEPS = 2
LOST_GRIP = 0.02  # metres: the fingers' two openings summed, below which they hold nothing (a bar is 4.4 cm thick)
RELEASE_BACKOFF = 0.06  # metres the hand backs off a handle it lets go of
INSERT_STEPS = 8  # at most: a handle touched on the way in stops the hand short of the waypoint
# At most, towards a waypoint round a door: with 8, a hand slowed by the handle it had let go of went on towards the
# inner face before it was round the free edge, and swung the door shut (3 of 50 left-door seeds)
AROUND_STEPS = 11
MAX_JOINT_STEP = 0.3  # radians per env step in the joint-space transit
SPEED_SHARE = 1.0  # of each joint's top speed (servo force limit over damping) the expert asks for
TRANSIT_DONE = 0.05  # radians: the transit ends when every joint is this close
LIMIT_MARGIN = 0.3  # radians from a joint limit where the null-space push away from it starts
LIMIT_GAIN = 0.5
EPISODE_RESTARTS = 6  # at most, re-solving the pre-grasp pose for an episode's scene
REST_GAIN = 0.03  # null-space pull towards a rest posture, per step
MIN_LIMIT_MARGIN = 0.05  # a pre-grasp configuration keeps every joint this share of its range from its limits
LEAD = {mujoco.mjtJoint.mjJNT_HINGE: 0.3, mujoco.mjtJoint.mjJNT_SLIDE: 0.08}  # how far ahead of the joint to pull


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """The 3x3 rotation by `angle` radians about the unit vector `axis`."""
    quat = np.zeros(4)
    mujoco.mju_axisAngle2Quat(quat, np.asarray(axis, dtype=np.float64), float(angle))
    matrix = np.zeros(9)
    mujoco.mju_quat2Mat(matrix, quat)
    return matrix.reshape(3, 3)


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The rotation vector (world frame) that turns `current` into `target`."""
    quat_target, quat_current, difference, vector = np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(3)
    mujoco.mju_mat2Quat(quat_target, target.reshape(-1))
    mujoco.mju_mat2Quat(quat_current, current.reshape(-1))
    mujoco.mju_negQuat(quat_current, quat_current)
    mujoco.mju_mulQuat(difference, quat_target, quat_current)
    mujoco.mju_quat2Vel(vector, difference, 1.0)
    return vector


def _clip_norm(vector: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector * (limit / norm) if norm > limit else vector


@dataclass(frozen=True)
class Script:
    """One task's waypoint choices."""

    roll: float = 0.0  # rotation of the hand about its approach axis at the pre-grasp point
    free_pitch: bool = True  # reach with any pitch about the fingers' axis (a vertical bar fits at any); not knobs
    yaw_blend: float = 0.0  # approach yaw: 0 square to the handle's body, 1 along the line from the shoulder
    grip_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # world offset of the grip point from the site
    hand_turn: float = 1.0  # share of a hinge's rotation the hand follows (a round bar may turn between the fingers)
    # Aim the turn this far (rad or m) past the goal: a knob or lever whose goal is its range's end lags the hand by
    # the grip's slack (0.25 rad on the knob) and would otherwise stop at the edge of the success band.
    overshoot: float = 0.0
    lead: float | None = None  # how far ahead of the joint to pull (rad or m), if not `LEAD`'s
    # While turning, yaw the hand to point along the line from the shoulder (a vertical bar turns between the
    # fingers, and that yaw keeps the wrist nearest the shoulder: the most reach for a door swinging towards the arm)
    face_shoulder: bool = False
    depth: float = INSERT_DEPTH  # metres past the site along the approach at the grasp
    # Once the pull has opened the hinge this far (rad), or the handle has slipped from the fingers, let go and push
    # from inside through these points in the object's frame (the last one is where the hand pushes), for a handle
    # that swings out of the arm's reach.
    push_from_inside: float | None = None
    inside_waypoints: tuple[tuple[float, float, float], ...] = ()
    # Weight of the orientation error against the position error (rad against m) on the handle or door (insert,
    # grasp, turn): below 1 the arm gives up some of the hand's orientation for reach.
    turn_weight: float = 1.0


SCRIPTS = {
    # the knob turns about the approach axis; the gripper is symmetric, and rolled by pi the wrist has room to turn;
    # the knob's disc sits 2 cm behind its bar; the hand leads the knob by 0.6 rad, as the grip's slack takes 0.25
    "kitchen-knob-on": Script(roll=-np.pi, depth=-0.012, overshoot=0.3, lead=0.6),
    # the lever is short (8 cm): a deep grip, and the hand turning a quarter as far as the lever, keep it between
    # the fingers (hand_turn 1 let it slip out on 3 of 25 seeds)
    "kitchen-light-on": Script(overshoot=0.2, hand_turn=0.25, depth=0.03),
    "kitchen-sdoor-open": Script(),
    # the doors' round bars turn between the fingers, so the hand keeps its orientation and the arm its reach
    # low on the bar, just below its lower post (the top is far; at -0.12 the fingers catch the post and most seeds
    # fail, -0.13 to -0.15 all do about as well); past -0.3 rad the handle heads out of the arm's reach (1.06 m from
    # the shoulder at the goal band's edge, reach 0.95 m), so the hand lets go (the door stops near -0.35), goes
    # round the door's free edge and pushes its inner face with the hand's site level with that edge, the nearest
    # point (letting go at -0.28 left too narrow a gap to get round), 3 cm above the door's bottom edge, nearer the
    # shoulder's height. With the desk shifted away (x -0.06 to -0.09 m) the bar's nearest surface is 0.965-0.976 m
    # from the shoulder on 3 of the first 50 reset seeds and the hand's site reaches 0.947 m: the fingertips (5.9 cm
    # past the site) lose the bar at -0.12 to -0.23 rad, where the hand lets go and goes round as well (`_lost_grip`),
    # and the push stalled short of the goal band (-1.01 rad on another seed). Orientation weighted 0.05 against
    # position on the handle and door gives the arm its last centimetres of reach: 48 of 50 seeds succeed at
    # 0.03-0.07 (47 at 0.1, 43 at 0.2, 44 at 1; the push 8 cm above the bottom edge instead of 3 also gives 48 at
    # 0.05, and one fewer at 1). On the other 2 the bar is 1.009 and 1.028 m away, beyond the fingertips.
    "kitchen-ldoor-open": Script(
        yaw_blend=0.5,
        grip_offset=(0.0, 0.0, -0.14),
        hand_turn=0.0,
        depth=-0.01,
        lead=0.6,
        push_from_inside=-0.3,
        inside_waypoints=((0.47, -0.12, -0.17), (0.47, 0.07, -0.17), (0.38, 0.07, -0.17)),
        turn_weight=0.05,
    ),
    "kitchen-micro-open": Script(grip_offset=(0.0, 0.0, 0.1), depth=-0.01, face_shoulder=True),  # high, over the kettle
}
SHOULDER = np.array([0.0, 0.0, 2.133])  # the arm's joint-2 axis height above the base at (0, 0, 1.8)


def grasp_orientation(data: mujoco.MjData, body: int, grip: np.ndarray, script: Script) -> np.ndarray:
    """The hand level with its fingers horizontal across a vertical handle, yawed per `script`, rolled for knobs."""
    body_x = data.xmat[body].reshape(3, 3)[:, 0]
    object_yaw = float(np.arctan2(body_x[1], body_x[0])) if abs(body_x[2]) < 0.9 else 0.0
    shoulder_yaw = shoulder_bearing(grip) - np.pi / 2  # 0 facing +y
    yaw = object_yaw + script.yaw_blend * (shoulder_yaw - object_yaw)
    roll = rotation(np.array([0.0, 0.0, 1.0]), script.roll)
    return rotation(np.array([0.0, 0.0, 1.0]), yaw) @ HAND_LEVEL @ roll


def shoulder_bearing(point: np.ndarray) -> float:
    """The horizontal direction (rad about world z) from the shoulder to `point`."""
    return float(np.arctan2(point[1] - SHOULDER[1], point[0] - SHOULDER[0]))


def dls_step(
    model: mujoco.MjModel, data: mujoco.MjData, site: int, position: np.ndarray, orientation: np.ndarray,
    free_pitch: bool, jacobians: tuple[np.ndarray, np.ndarray], rest: np.ndarray | None = None,
    turn_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(7 joint increments, 6-d error) moving `site` a bounded step towards the pose, by damped least squares, with
    a null-space push away from joint limits (and towards the posture `rest`, if given). `free_pitch` ignores rotation
    about the fingers' axis; `turn_weight` below 1 trades orientation for position (m against rad)."""
    hand_position, hand_orientation = data.site_xpos[site], data.site_xmat[site].reshape(3, 3)
    turn = rotation_error(orientation, hand_orientation)
    if free_pitch:  # a vertical bar sits between the fingers at any pitch about their axis
        finger_axis = hand_orientation[:, 1]
        turn = turn - finger_axis * (turn @ finger_axis)
    error = np.concatenate([position - hand_position, turn])
    step = np.concatenate([_clip_norm(error[:3], MAX_STEP), turn_weight * _clip_norm(turn, MAX_TURN)])
    jacp, jacr = jacobians
    mujoco.mj_jacSite(model, data, jacp, jacr, site)
    jacobian = np.vstack([jacp[:, :ARM], turn_weight * jacr[:, :ARM]])  # (6, 7)
    inverse = jacobian.T @ np.linalg.inv(jacobian @ jacobian.T + DAMPING**2 * np.eye(6))  # (7, 6)
    # Away from joint limits, in the null space: a push that grows within LIMIT_MARGIN of either limit.
    q, low, high = data.qpos[:ARM], model.jnt_range[:ARM, 0], model.jnt_range[:ARM, 1]
    posture = LIMIT_GAIN * (np.maximum(0.0, low + LIMIT_MARGIN - q) - np.maximum(0.0, q - (high - LIMIT_MARGIN)))
    if rest is not None:  # the redundancy would otherwise drift towards the limits (the microwave at a low desk)
        posture = posture + REST_GAIN * (rest - q)
    return inverse @ step + (np.eye(ARM) - inverse @ jacobian) @ posture, error


def solve_ik(
    model: mujoco.MjModel, data: mujoco.MjData, position: np.ndarray, orientation: np.ndarray, free_pitch: bool,
    iterations: int = 100, rest: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:  # fmt: skip
    """Kinematic DLS from `data`'s arm configuration (changed in place): (joint angles, remaining pose error)."""
    site = model.site("end_effector").id
    low, high = model.jnt_range[:ARM, 0], model.jnt_range[:ARM, 1]
    jacobians = (np.zeros((3, model.nv)), np.zeros((3, model.nv)))
    for _ in range(iterations):
        mujoco.mj_kinematics(model, data)
        mujoco.mj_comPos(model, data)
        increment, error = dls_step(model, data, site, position, orientation, free_pitch, jacobians, rest)
        data.qpos[:ARM] = np.clip(data.qpos[:ARM] + increment, low, high)
    mujoco.mj_kinematics(model, data)
    mujoco.mj_comPos(model, data)
    _, error = dls_step(model, data, site, position, orientation, free_pitch, jacobians)
    return data.qpos[:ARM].copy(), float(np.linalg.norm(error[:3]) + 0.1 * np.linalg.norm(error[3:]))


def pregrasp_pose(data: mujoco.MjData, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(hand position, orientation) at the task's pre-grasp point, for the scene in `data`."""
    from voltron.sim.kitchen import GOALS

    model_site = data.model.site(GOALS[task].site)
    body = int(data.model.site_bodyid[model_site.id])
    script = SCRIPTS[task]
    grip = data.site_xpos[model_site.id] + np.asarray(script.grip_offset)
    orientation = grasp_orientation(data, body, grip, script)
    return grip - PREGRASP_DISTANCE * orientation[:, 2], orientation


@functools.cache
def pregrasp_configuration(task: str, restarts: int = 40) -> tuple[float, ...]:
    """Arm joint angles that put the hand at the task's pre-grasp pose in the nominal scene (no desk offset): DLS
    from the start posture and from seeded random perturbations of it; of the collision-free solutions clear of the
    joint limits, the one the arm reaches soonest (the largest joint move over that joint's top speed, which the
    servos' force limits and joint damping set to about 0.9 rad/s for the big joints)."""
    from voltron.sim.kitchen import R3M_INIT_ROBOT_QPOS, build_model

    model = build_model()
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, 0)
    data.qpos[:N_ROBOT] = R3M_INIT_ROBOT_QPOS
    mujoco.mj_forward(model, data)
    position, orientation = pregrasp_pose(data, task)
    start = np.asarray(R3M_INIT_ROBOT_QPOS[:ARM])
    seed_posture = start + np.eye(ARM)[ARM - 1] * SCRIPTS[task].roll  # the flange joint rolls about the approach
    speed = model.actuator_forcerange[:ARM, 1] / model.dof_damping[:ARM]
    low, high = model.jnt_range[:ARM, 0], model.jnt_range[:ARM, 1]
    robot_bodies = {int(model.jnt_bodyid[j]) for j in range(N_ROBOT)}
    rng = np.random.default_rng(0)
    best, best_time = None, np.inf
    for restart in range(restarts):
        data.qpos[:ARM] = np.clip(seed_posture + (rng.normal(0.0, 0.7, ARM) if restart else 0.0), low, high)
        configuration, error = solve_ik(model, data, position, orientation, SCRIPTS[task].free_pitch)
        mujoco.mj_forward(model, data)
        touching = any(
            model.body_rootid[model.geom_bodyid[c.geom1]] != model.body_rootid[model.geom_bodyid[c.geom2]]
            and (int(model.geom_bodyid[c.geom1]) in robot_bodies or int(model.geom_bodyid[c.geom2]) in robot_bodies)
            for c in data.contact[: data.ncon]
        )
        margin = float(np.min(np.minimum(configuration - low, high - configuration) / (high - low)))
        travel = float(np.max(np.abs(configuration - start) / speed))
        if error < 1e-3 and not touching and margin > MIN_LIMIT_MARGIN and travel < best_time:
            best, best_time = configuration, travel
    if best is None:
        raise RuntimeError(f"{task}: no collision-free arm configuration reaches the pre-grasp pose")
    return tuple(float(q) for q in best)


class KitchenExpert:
    """The scripted expert for the env's task: call it once per step (after `reset`) for a (9,) action in [-1, 1].

    With `action_noise > 0`, zero-mean Gaussian noise of that standard deviation is added to every action dimension
    (then clipped), from a generator seeded by `seed`, as for the MetaWorld experts.
    """

    def __init__(self, env: KitchenEnv, *, action_noise: float = 0.0, seed: int | list[int] | None = None) -> None:
        if action_noise < 0:
            raise ValueError(f"action_noise={action_noise}: expected a standard deviation >= 0")
        self.env = env
        self.task = env.task
        self.script = SCRIPTS[env.task.name]
        self.action_noise = float(action_noise)
        model = env.model
        self.joint = model.joint(env.goal.joint).id
        self.joint_type = int(model.jnt_type[self.joint])
        self.qpos_address = int(model.jnt_qposadr[self.joint])
        self.body = int(model.jnt_bodyid[self.joint])
        self.pregrasp = np.asarray(pregrasp_configuration(env.task.name))
        self.kp = model.actuator_gainprm[:ARM, 0].copy()
        # A position servo on a damped joint covers about 1 - exp(-dt kp / damping) of a step's target offset
        # within the step (first-order response; about half for the big joints), so increments are scaled up by it.
        damping = model.dof_damping[:ARM]
        self.tracking = 1.0 - np.exp(-env.dt * self.kp / np.maximum(damping, 1e-6))
        # The most a joint moves in one step: its servo's force limit over its damping (0.87 rad/s for the big
        # joints), less a share for gravity. Asking more saturates some joints and not others, and the hand then
        # leaves its line (it drifted 5 cm off a light switch while inserting, before this cap).
        self.max_increment = SPEED_SHARE * env.dt * model.actuator_forcerange[:ARM, 1] / np.maximum(damping, 1e-6)
        self._jacobians = (np.zeros((3, model.nv)), np.zeros((3, model.nv)))
        self._scratch = mujoco.MjData(model)  # for solving IK without touching the env's state
        self.reset(seed)

    def reset(self, seed: int | list[int] | None = None) -> None:
        """Start a new episode and restart the noise stream."""
        self.rng = np.random.default_rng(seed)
        self.phase = "transit"
        self.phase_steps = 0
        self._target: np.ndarray | None = None  # this episode's pre-grasp configuration
        self._hold = HAND_LEVEL  # and the hand orientation there
        self._inside: int | None = None  # the inside waypoint being reached, once the hand has let go
        # at the grasp: the hand's position in the object's frame, the joint value, the hand's orientation
        self._grip: tuple[np.ndarray, float, np.ndarray] | None = None

    def _joint_value(self) -> float:
        return float(self.env.data.qpos[self.qpos_address])

    def _hand(self) -> tuple[np.ndarray, np.ndarray]:
        data = self.env.data
        return data.site_xpos[self.env.end_effector].copy(), data.site_xmat[self.env.end_effector].reshape(3, 3).copy()

    # -- control ------------------------------------------------------------------------------------------------
    def _action(self, increment: np.ndarray, fingers: float, keep_path: bool = True) -> np.ndarray:
        """Joint increments wanted this step -> the env's action (servo lag and gravity sag compensated)."""
        over = float(np.max(np.abs(increment) / self.max_increment))
        if keep_path and over > 1.0:  # every joint within its top speed, all scaled alike so the hand keeps its path
            increment = increment / over
        increment = increment / self.tracking + self.env.data.qfrc_bias[:ARM] / self.kp
        action = np.zeros(N_ROBOT)
        action[:ARM] = increment / (MAX_JOINT_SPEED * self.env.dt)
        action[ARM:] = fingers
        peak = float(np.max(np.abs(action[:ARM])))
        if peak > 1.0:  # scale rather than clip, so the hand keeps its direction
            action[:ARM] /= peak
        return action

    def _grasp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(grip point, hand orientation) on the handle as it is now."""
        data = self.env.data
        grip = data.site_xpos[self.env.site] + np.asarray(self.script.grip_offset)
        return grip, grasp_orientation(data, self.body, grip, self.script)

    def _turn_target(self) -> tuple[np.ndarray, np.ndarray]:
        """Where the hand should be: its grip on the object, moved a bounded lead further towards the goal."""
        data = self.env.data
        body_position, body_orientation = data.xpos[self.body], data.xmat[self.body].reshape(3, 3)
        local_position, grasp_value, grasp_orientation_ = self._grip
        position = body_position + body_orientation @ local_position
        value = self._joint_value()
        aim = self.env.goal.goal + self.script.overshoot * np.sign(self.env.goal.goal)
        most = self.script.lead or LEAD[self.joint_type]
        lead = float(np.clip(aim - value, -most, most))
        axis = data.xaxis[self.joint]
        if self.joint_type == mujoco.mjtJoint.mjJNT_SLIDE:
            return position + axis * lead, grasp_orientation_
        anchor = data.xanchor[self.joint]
        position = anchor + rotation(axis, lead) @ (position - anchor)
        if self.script.face_shoulder:  # a vertical bar turns between the fingers: yaw the wrist towards the arm
            grip_at_grasp = anchor + rotation(axis, grasp_value - value) @ (position - anchor)
            turn = rotation(np.array([0.0, 0.0, 1.0]), shoulder_bearing(position) - shoulder_bearing(grip_at_grasp))
            return position, turn @ grasp_orientation_
        hand_turn = rotation(axis, self.script.hand_turn * (value + lead - grasp_value))
        return position, hand_turn @ grasp_orientation_

    def _lost_grip(self) -> bool:
        """Whether the fingers, closing on the handle, have closed on nothing (it slipped out)."""
        return float(np.sum(self.env.data.qpos[ARM:N_ROBOT])) < LOST_GRIP

    def _step(self) -> np.ndarray:
        """This step's action before noise, advancing the phase when its waypoint is reached."""
        data, model, site = self.env.data, self.env.model, self.env.end_effector
        if self.phase == "transit":  # joint space to the pre-grasp configuration, fingers open
            if self._target is None:  # solved once per episode, from the nominal one, for this scene
                self._scratch.qpos[:] = data.qpos
                self._scratch.qpos[:ARM] = self.pregrasp
                mujoco.mj_kinematics(model, self._scratch)
                position, orientation = pregrasp_pose(self._scratch, self.task.name)
                low, high = model.jnt_range[:ARM, 0], model.jnt_range[:ARM, 1]
                rng = np.random.default_rng(0)  # restarts for a shifted scene where DLS stalls in a local minimum
                best = np.inf
                for restart in range(EPISODE_RESTARTS):
                    noise = rng.normal(0.0, 0.5, ARM) if restart else 0.0
                    self._scratch.qpos[:ARM] = np.clip(self.pregrasp + noise, low, high)
                    target, error = solve_ik(
                        model, self._scratch, position, orientation, self.script.free_pitch, 100, self.pregrasp
                    )
                    if error < best - 1e-4:  # the nominal start wins ties: it is nearest the planned posture
                        best, self._target = error, target
                        self._hold = self._scratch.site_xmat[site].reshape(3, 3).copy()  # the pitch it chose
                    if best < 2e-3:
                        break
            remaining = self._target - data.qpos[:ARM]
            if np.max(np.abs(remaining)) < TRANSIT_DONE:
                self._advance("insert")
            # each joint at its own top speed: the joint-space path's shape does not matter, only its time
            return self._action(np.clip(remaining, -MAX_JOINT_STEP, MAX_JOINT_STEP), 1.0, keep_path=False)
        fingers = 1.0 if self.phase in ("insert", "release") else -1.0
        script = self.script
        if self.phase == "turn" and script.push_from_inside is not None and self._inside is None:
            opened = (self._joint_value() - script.push_from_inside) * np.sign(self.env.goal.goal) >= 0
            if opened or self._lost_grip():
                self._inside = 0
                self._advance("release")
        if self.phase == "release":  # fingers open, the hand backs off the handle
            position, orientation = self._hand()[0] - RELEASE_BACKOFF * self._hold[:, 2], self._hold
        elif self.phase == "around":  # waypoints in the object's frame, so they move with it
            body_position, body_orientation = data.xpos[self.body], data.xmat[self.body].reshape(3, 3)
            local = np.asarray(script.inside_waypoints[self._inside])
            position, orientation = body_position + body_orientation @ local, self._hold
        elif self.phase == "turn":
            position, orientation = self._turn_target()
        else:  # straight in along the approach of the pre-grasp solution, holding its orientation
            grip, _ = self._grasp_pose()
            position, orientation = grip + self.script.depth * self._hold[:, 2], self._hold
        # going round a door, the hand's orientation keeps it clear of the doors; on the handle or door, reach counts
        weight = 1.0 if self.phase in ("release", "around") else script.turn_weight
        increment, error = dls_step(model, data, site, position, orientation, False, self._jacobians, None, weight)
        increment = np.clip(increment, -MAX_JOINT_STEP, MAX_JOINT_STEP)
        reached = np.linalg.norm(error[:3]) < REACHED
        if self.phase == "insert" and (reached or self.phase_steps + 1 >= INSERT_STEPS):
            self._advance("grasp")
        elif self.phase == "release" and self.phase_steps + 1 >= GRASP_STEPS:
            self._advance("around")
        elif self.phase == "around" and (np.linalg.norm(error[:3]) < PASSED or self.phase_steps + 1 >= AROUND_STEPS):
            self._inside += 1
            if self._inside == len(script.inside_waypoints):  # push at the last point, as if gripping it
                self._grip = (np.asarray(script.inside_waypoints[-1]), self._joint_value(), self._hold)
                self._advance("turn")
            else:
                self._advance("around")
        elif self.phase == "grasp" and self.phase_steps + 1 >= GRASP_STEPS:
            body_position, body_orientation = data.xpos[self.body], data.xmat[self.body].reshape(3, 3)
            hand_position, hand_orientation = self._hand()
            self._grip = (body_orientation.T @ (hand_position - body_position), self._joint_value(), hand_orientation)
            self._advance("turn")
        return self._action(increment, fingers)

    def _advance(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, -1  # __call__ counts this step

    def __call__(self, state: np.ndarray | None = None) -> np.ndarray:
        action = self._step()
        self.phase_steps += 1
        if self.action_noise > 0:
            action = action + self.rng.normal(0.0, self.action_noise, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
