"""Franka Kitchen on real MuJoCo: the five R3M tasks against the original's goals and ranges, the Gymnasium contract,
reset randomisation, the success rule, and the scripted experts."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from voltron.sim.env import make_env
from voltron.sim.kitchen import (
    CAMERAS,
    DESK_JITTER,
    GOALS,
    HORIZON,
    OBJECT_JOINTS,
    SUCCESS_STEPS,
    KitchenEnv,
    build_model,
    joint_range,
)
from voltron.sim.render import mujoco
from voltron.sim.tasks import KITCHEN_TASKS, TASKS, get_task

# RoboHive v0.0.5 (`mj_envs/envs/relay_kitchen/__init__.py` for the goals; the joint ranges from the furniture_sim
# submodule it pins, 7288196: oven_body.xml, slidecabinet_body.xml, hingecabinet_body.xml, microwave_body.xml):
# task -> (R3M id, original joint, goal, original range).
R3M_ORIGINAL = {
    "kitchen-knob-on": ("kitchen_knob1_on-v3", "knob1_joint", -1.57, (-1.57, 0.0)),
    "kitchen-light-on": ("kitchen_light_on-v3", "lightswitch_joint", -0.7, (-0.7, 0.0)),
    "kitchen-sdoor-open": ("kitchen_sdoor_open-v3", "slidedoor_joint", 0.44, (0.0, 0.44)),
    "kitchen-ldoor-open": ("kitchen_ldoor_open-v3", "leftdoorhinge", -1.25, (-1.57, 0.0)),
    "kitchen-micro-open": ("kitchen_micro_open-v3", "microjoint", -1.25, (-2.094, 0.0)),
}
# The other articulated joints' original ranges, which the success rule also checks (their goal is their start).
R3M_OTHER_RANGES = {
    "knob_Joint_2": (-1.57, 0.0), "knob_Joint_3": (-1.57, 0.0), "knob_Joint_4": (-1.57, 0.0),
    "right_hinge_cabinet": (0.0, 1.57),
}  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return build_model()


def test_goals_and_ranges_match_the_original(model):
    assert set(GOALS) == set(KITCHEN_TASKS) == set(R3M_ORIGINAL)
    for task, (r3m_id, r3m_joint, goal, original_range) in R3M_ORIGINAL.items():
        spec = GOALS[task]
        assert (spec.r3m_id, spec.r3m_joint, spec.goal) == (r3m_id, r3m_joint, goal)
        assert joint_range(model, spec.joint) == pytest.approx(original_range, abs=1e-6), task
        low, high = original_range
        assert low <= goal <= high
        assert get_task(r3m_id) is KITCHEN_TASKS[task] and KITCHEN_TASKS[task].env_id == r3m_id
    for joint, original_range in R3M_OTHER_RANGES.items():
        assert joint_range(model, joint) == pytest.approx(original_range, abs=1e-6), joint
    assert len(OBJECT_JOINTS) == 9


def test_cameras_are_the_originals(model):
    for camera in CAMERAS:
        assert int(model.cam(camera).mode[0]) == mujoco.mjtCamLight.mjCAMLIGHT_TARGETBODY  # as defined there
    assert model.body(int(model.cam("left_cap2").targetbodyid[0])).name == "knob 1"
    assert model.body(int(model.cam("right_cap2").targetbodyid[0])).name == "microwave"


def test_registry_keeps_metaworld_and_adds_the_kitchen():
    assert not set(KITCHEN_TASKS) & set(TASKS)
    for spec in KITCHEN_TASKS.values():
        assert (spec.family, spec.horizon, spec.action_dim, len(spec.proprio_keys)) == ("kitchen", HORIZON, 9, 9)
        assert spec.views == CAMERAS and spec.is_eval and spec.state_dim == KitchenEnv.STATE_DIM
    assert get_task("drawer-open").family == "metaworld" and get_task("drawer-open").action_dim == 4


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
@pytest.mark.parametrize("task", sorted(GOALS))
def test_every_kitchen_env_passes_check_env(task):
    env = make_env(task, image_size=16)
    try:
        assert isinstance(env, KitchenEnv)
        check_env(env, skip_render_check=False)
        obs, info = env.reset(seed=3)
        assert obs["image"].shape == (16, 16, 3) and obs["image"].dtype == np.uint8 and obs["image"].any()
        assert obs["proprio"].shape == (9,) and obs["proprio"].dtype == np.float32
        assert info["state"].shape == (KitchenEnv.STATE_DIM,) and not info["success"]
        assert obs["language"] == KITCHEN_TASKS[task].language
    finally:
        env.close()


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_gymnasium_ids_and_other_view():
    env = gym.make("voltron/kitchen-micro-open", image_size=16, camera="right_cap2")
    try:
        obs, _ = env.reset(seed=0)
        assert obs["image"].shape == (16, 16, 3)
        assert not np.array_equal(env.unwrapped.render_camera("left_cap2"), obs["image"])
    finally:
        env.close()


def test_reset_is_reproducible_and_randomised():
    with KitchenEnv("kitchen-light-on", image_size=16, render_images=False) as env:
        offsets, arms = [], []
        for seed in (0, 1, 0):
            obs, info = env.reset(seed=seed)
            offsets.append(env.desk_offset.copy())
            arms.append(obs["proprio"].copy())
            assert np.all(np.abs(env.desk_offset) <= DESK_JITTER) and env.data.ncon <= 4
        assert np.array_equal(offsets[0], offsets[2]) and np.array_equal(arms[0], arms[2])
        assert not np.allclose(offsets[0], offsets[1]) and not np.allclose(arms[0], arms[1])
        with pytest.raises(ValueError, match="9 finite"):
            env.step(np.full(9, np.nan, np.float32))
        with pytest.raises(ValueError, match="9 finite"):
            env.step(np.zeros(4, np.float32))


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_render_images_false_observes_a_blank_frame():
    with KitchenEnv("kitchen-knob-on", image_size=8, render_images=False) as env:
        obs, _ = env.reset(seed=0)
        assert obs["image"].shape == (8, 8, 3) and not obs["image"].any()


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_success_needs_the_goal_held_for_more_than_five_steps():
    with KitchenEnv("kitchen-sdoor-open", image_size=8, render_images=False) as env:
        env.reset(seed=0)
        address = env.model.jnt_qposadr[env.model.joint("slide_cabinet").id]
        hold = np.zeros(9, np.float32)
        env.data.qpos[address] = 0.44 - 0.5 * 0.15 * 0.44  # within 15% of the range
        successes = []
        for _ in range(SUCCESS_STEPS + 2):
            _, reward, _, _, info = env.step(hold)
            successes.append(info["success"])
            assert info["solved"] and reward == pytest.approx(-env.goal_error())
        assert successes == [False] * SUCCESS_STEPS + [True, True]
        # Another object moved by more than 15% of its range fails the step, as in the original.
        env.data.qpos[env.model.jnt_qposadr[env.model.joint("microwave").id]] = -0.2 * 2.094
        assert not env.solved()
        env.data.qpos[env.model.jnt_qposadr[env.model.joint("microwave").id]] = 0.0
        env.data.qpos[address] = 0.44 - 0.2 * 0.44
        assert not env.solved() and env.goal_error() == pytest.approx(0.088)


def test_differences_are_stated():
    from voltron.sim.kitchen import DIFFERENCES, MAX_JOINT_SPEED

    assert MAX_JOINT_SPEED == pytest.approx(2 * math.pi) and len(DIFFERENCES) >= 4


# -- scripted experts, demos and the suite --------------------------------------------------------------------------
def test_dls_step_moves_the_hand_towards_a_pose(model):
    from voltron.sim.kitchen import R3M_INIT_ROBOT_QPOS
    from voltron.sim.kitchen_experts import HAND_LEVEL, solve_ik

    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, 0)
    data.qpos[:9] = R3M_INIT_ROBOT_QPOS
    mujoco.mj_forward(model, data)
    target = data.site_xpos[model.site("end_effector").id] + np.array([0.1, 0.15, 0.05])
    _, before = solve_ik(model, data, target, HAND_LEVEL, False, iterations=0)
    _, after = solve_ik(model, data, target, HAND_LEVEL, False, iterations=60)
    assert before > 0.1 and after < 1e-3


# Reset seeds each expert must solve within the horizon, among them seeds the experts failed on before be5127a
# (knob 7 stopped at the success band's edge and 9 got there at step 99; light 0 and 10 lost the switch on the way
# in; ldoor 2's door closed again, 33's hand swung it shut on its way round the free edge before AROUND_STEPS, and
# 17's handle slipped from a grip higher on the bar, and 37's slipped from the fingertips at -0.2 rad, where the hand
# stayed until it let go there and pushed from inside; 26, with the bar 0.965 m from the shoulder, slipped too and
# the push stalled out of reach; micro 1 ran out of reach while pulling and 15's pre-grasp IK stalled).
# bench/kitchen_experts.py measures the rate over 50 seeds.
EXPERT_SEEDS = {
    "kitchen-knob-on": (7, 9),
    "kitchen-light-on": (0, 10),
    "kitchen-sdoor-open": (0, 1),
    "kitchen-ldoor-open": (0, 2, 17, 26, 33, 37),
    "kitchen-micro-open": (1, 15),
}


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
@pytest.mark.parametrize("task", sorted(EXPERT_SEEDS))
def test_expert_succeeds_within_the_horizon(task):
    from voltron.sim.experts import make_expert, rollout

    env = make_env(task, image_size=8, render_images=False)
    try:
        expert = make_expert(env.task, env=env)
        for seed in EXPERT_SEEDS[task]:
            expert.reset(seed)
            record = rollout(env, expert, seed=seed, post_success_steps=0)
            assert record.success and len(record) <= HORIZON, (task, seed, len(record))
    finally:
        env.close()


def test_expert_keeps_every_joint_within_its_top_speed():
    from voltron.sim.kitchen_experts import ARM, KitchenExpert

    with KitchenEnv("kitchen-light-on", image_size=8, render_images=False) as env:
        env.reset(seed=0)
        expert = KitchenExpert(env)
        wanted = np.array([0.5, -0.2, 0.1, 0.0, 0.3, 0.0, 0.0])  # far beyond one step's reach
        action = expert._action(wanted, 1.0)
        increment = action[:ARM] * env.dt * 2 * math.pi - env.data.qfrc_bias[:ARM] / expert.kp
        increment = increment * expert.tracking
        # every joint at most at its top speed, and the joints in the asked-for proportion (the hand keeps its line)
        assert np.all(np.abs(increment) <= expert.max_increment + 1e-9)
        assert increment / np.linalg.norm(increment) == pytest.approx(wanted / np.linalg.norm(wanted), abs=1e-6)


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_collected_demos_hold_both_views(tmp_path):
    from voltron.datasets.demos import DemoFile
    from voltron.sim.collect import collect

    path, stats = collect("kitchen-sdoor-open", 1, tmp_path / "k.hdf5", image_size=16, progress=False)
    assert stats.successes == 1
    with DemoFile(path) as demos:
        assert demos.cameras == sorted(CAMERAS) and demos.env_args["cameras"] == list(CAMERAS)
        assert demos.env_args["env_name"] == "kitchen_sdoor_open-v3" and demos.env_args["action_space"]["shape"] == [9]
        episode = demos[0]
        assert episode.images["left_cap2"].shape[1:] == (16, 16, 3) and episode.actions.shape[1] == 9
        assert not np.array_equal(episode.images["left_cap2"], episode.images["right_cap2"])
        assert episode.state.shape[1] == KitchenEnv.STATE_DIM and episode.proprio.shape[1] == 9


@pytest.mark.slow
def test_kitchen_suite_reports_each_view_and_their_mean(tmp_path):
    import json

    from voltron.datasets.demos import DemoFile
    from voltron.policy.suite import FLOOR, ORACLE, SuiteOptions, run_eval_suite, suite_spec

    options = SuiteOptions(
        encoders=["v-cond-tiny"], random_init=[True], suite="kitchen5", tasks=["kitchen-sdoor-open"],
        demos_per_task=[2], seeds=1, episodes=2, checkpoints=1, checkpoint_episodes=0, num_envs=1, steps=3,
        image_size=32, out=str(tmp_path / "suite"), train_overrides=["--train.batch_size=8"], progress=False,
    )  # fmt: skip
    table = run_eval_suite(options)
    encoder = "v-cond-tiny (random init)"
    views = [f"{encoder} [left_cap2]", f"{encoder} [right_cap2]", f"{encoder} [mean of views]"]
    assert list(table.rows) == [ORACLE, FLOOR, *views]
    assert table.rows[views[2]]["kitchen-sdoor-open"]["n"] == 4  # both views' episodes, pooled
    results = json.loads((tmp_path / "suite" / "results.json").read_text())
    assert results["protocol"]["views"] == ["left_cap2", "right_cap2"]
    # the suite's DART noise, recorded in the protocol and in the demo file's name and env_args
    assert results["protocol"]["dart_noise"] == suite_spec("kitchen5").dart_noise > 0
    (demos,) = (tmp_path / "suite" / "demos").glob("*.hdf5")
    with DemoFile(demos) as demo_file:
        assert demos.stem.endswith(f"-dart{suite_spec('kitchen5').dart_noise:g}")
        assert demo_file.env_args["dart_noise"] == suite_spec("kitchen5").dart_noise
    cameras = {r["settings"]["camera"] for label in views[:2] for r in results["runs"][label]["kitchen-sdoor-open"]}
    assert cameras == {"left_cap2", "right_cap2"}
    times = results["wall_seconds"]  # where the suite's time went: demos, then BC and rollouts per row
    assert times["demos"]["collect_s"] > 0 and all(times[label]["train_s"] > 0 for label in views[:2])
    assert all(times[label]["eval_s"] > 0 for label in [ORACLE, FLOOR, *views[:2]])
    assert "Wall time" in (tmp_path / "suite" / "results.md").read_text()


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_collection_gives_up_on_an_expert_that_never_succeeds(tmp_path, monkeypatch):
    from voltron.sim import collect as collect_module

    monkeypatch.setattr(collect_module, "GIVE_UP_AFTER", 2)
    out = tmp_path / "none.hdf5"
    with pytest.raises(collect_module.NoSuccessfulEpisodes, match="0 of 2 attempts"):
        collect_module.collect("kitchen-micro-open", 3, out, image_size=8, horizon=5, progress=False)
    assert not out.exists()
