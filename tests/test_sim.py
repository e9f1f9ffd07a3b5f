"""Tests for voltron.sim on real MuJoCo: tasks, rendering, experts, demo collection, the corpus and vector envs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from voltron.datasets.demos import DemoFile, Episode, write_demos
from voltron.sim.corpus import CAPTIONS, FPS, FRAME_HEIGHT, FRAME_WIDTH, make_corpus, plan_clip
from voltron.sim.env import SimEnv
from voltron.sim.experts import ScriptedExpert, expert_policy_classes, rollout
from voltron.sim.render import FLIPPED_CAMERAS, GL_PACKAGES, OffscreenRenderer, gl_help, simplify_meshes
from voltron.sim.tasks import CORPUS_TASKS, EVAL_TASKS, TASKS, UnknownTaskError, get_task
from voltron.sim.vector import VectorSimEnv, WorkerError, WorkerTimeout

# Run the CLI in a child the way a user would; cwd is a temp dir so the repo's top-level datasets/ is not on sys.path.
CLI = "import sys; from voltron.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def make_env():
    envs = []

    def factory(task, **kwargs):
        envs.append(SimEnv(task, **kwargs))
        return envs[-1]

    yield factory
    for env in envs:
        env.close()


# -- registry ----------------------------------------------------------------------------------------------------
def test_registry_covers_all_metaworld_v3_tasks():
    from metaworld.env_dict import ENV_CLS_MAP

    assert {spec.env_id for spec in TASKS.values()} == set(ENV_CLS_MAP)
    assert EVAL_TASKS == ("assembly", "bin-picking", "button-press-topdown", "drawer-open", "hammer")
    assert len(CORPUS_TASKS) == 45 and not set(CORPUS_TASKS) & set(EVAL_TASKS)
    assert set(expert_policy_classes()) == set(TASKS)
    for spec in TASKS.values():
        assert spec.horizon == 500 and spec.camera == "corner" and len(spec.proprio_keys) == 4 and spec.language
    assert get_task("drawer-open-v3") is TASKS["drawer-open"] and get_task("drawer-open").language == "open the drawer"


def test_unknown_task_error_lists_valid_names():
    with pytest.raises(UnknownTaskError) as info:
        get_task("drawer-opne")
    message = str(info.value)
    assert "'drawer-opne'" in message and all(name in message for name in TASKS)
    with pytest.raises(UnknownTaskError, match="hammer"):
        SimEnv("nail-hammering")


def test_every_corpus_task_has_several_valid_captions():
    assert set(CAPTIONS) == set(CORPUS_TASKS)
    for task, captions in CAPTIONS.items():
        assert len(captions) >= 3, task
        for caption in captions:
            assert len(re.findall(r"\[[^\]]+\]", caption.template)) == len(caption.placeholders), caption
            assert "[" not in caption.label and caption.label == caption.label.lower()


# -- environments and rendering ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", EVAL_TASKS)
def test_eval_task_resets_steps_and_renders(make_env, task):
    env = make_env(task, horizon=4)
    obs, info = env.reset(seed=0)
    assert info["success"] is False
    for step in range(4):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert truncated == (step == 3) and not terminated
    assert env.observation_space.contains(obs)
    image = obs["image"]
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    # Not blank: a real scene has strong contrast and many distinct colours.
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32 and np.isfinite(obs["proprio"]).all()
    assert 0.0 <= obs["proprio"][3] <= 1.0  # gripper opening
    assert obs["language"] == get_task(task).language
    assert isinstance(info["success"], bool) and isinstance(reward, float)
    assert env.render() is obs["image"]


def test_resets_are_seeded_and_renderers_do_not_interfere(make_env):
    env = make_env("drawer-open")
    other = make_env("hammer")
    first, info_first = env.reset(seed=3)
    other.reset(seed=0)  # a second renderer in the process, used in between
    again, info_again = env.reset(seed=3)
    np.testing.assert_array_equal(info_first["state"], info_again["state"])
    np.testing.assert_array_equal(first["image"], again["image"])
    _, info_other_seed = env.reset(seed=4)
    assert not np.allclose(info_first["state"][4:7], info_other_seed["state"][4:7])  # drawer placement differs
    # Same seed and same actions give the same trajectory.
    actions = np.random.default_rng(0).uniform(-1, 1, size=(5, 4)).astype(np.float32)
    trajectories = []
    for _ in range(2):
        env.reset(seed=3)
        trajectories.append([env.step(a)[4]["state"] for a in actions])
    np.testing.assert_array_equal(trajectories[0], trajectories[1])


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_coarse_meshes_change_frames_slightly_and_physics_not_at_all(make_env):
    # The expert's trajectory with coarsened meshes equals the one with full meshes state for state (physics never
    # reads the face lists), while the frames keep the scene: under 2/255 mean difference, far fewer triangles.
    coarse, full = make_env("assembly", image_size=64), make_env("assembly", image_size=64, mesh_cell=0.0)
    assert coarse._renderer.faces[1] < 0.5 * coarse._renderer.faces[0]
    assert full._renderer.faces[0] == full._renderer.faces[1]
    runs = []
    for env in (coarse, full):
        expert = ScriptedExpert(env.task)
        obs, info = env.reset(seed=5)
        frames, states = [obs["image"]], [info["state"]]
        for _ in range(40):
            obs, _, _, _, info = env.step(expert(info["state"]))
            frames.append(obs["image"])
            states.append(info["state"])
        runs.append((np.stack(frames).astype(int), np.stack(states)))
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    difference = np.abs(runs[0][0] - runs[1][0])
    assert 0 < difference.mean() < 2.0
    before, after = simplify_meshes(coarse._env.model, coarse.mesh_cell)
    assert before == after  # a second pass with the same cell changes nothing
    with pytest.raises(ValueError, match="mesh_cell"):
        simplify_meshes(coarse._env.model, -1.0)


def test_flipped_camera_table_matches_camera_geometry():
    import mujoco

    env = get_task("assembly").metaworld_env()
    env.seed(0)
    env.reset()
    model, data = env.model, env.data
    for camera_id in range(model.ncam):
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, camera_id)
        if model.cam_mode[camera_id] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED:
            assert name not in FLIPPED_CAMERAS
            continue
        up_z = data.cam_xmat[camera_id].reshape(3, 3)[2, 1]  # world z of the image's up axis
        assert (name in FLIPPED_CAMERAS) == (up_z < 0), (name, up_z)
    # Turning upright is a 180-degree rotation (no mirroring) of the raw frame.
    with OffscreenRenderer(model, width=64, height=48, camera="corner2", upright=False) as raw_renderer:
        raw = raw_renderer.render(data)
    with OffscreenRenderer(model, width=64, height=48, camera="corner2") as upright_renderer:
        upright = upright_renderer.render(data)
    np.testing.assert_array_equal(upright, raw[::-1, ::-1])
    env.close()


def test_gl_error_names_the_packages_to_install(tmp_path):
    help_text = gl_help()
    assert all(package in help_text for packages in GL_PACKAGES.values() for package in packages)
    from voltron.sim.render import _probe_backend

    if _probe_backend("osmesa") is None:
        pytest.skip("OSMesa works on this machine, so the no-GL error cannot be provoked with it")
    code = "from voltron.sim.env import SimEnv; SimEnv('reach', image_size=8)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MUJOCO_GL": "osmesa"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "GLBackendError" in result.stderr and "libosmesa6" in result.stderr and "MUJOCO_GL=osmesa" in result.stderr


# -- experts and demonstrations ----------------------------------------------------------------------------------
@pytest.mark.parametrize("task", EVAL_TASKS)
def test_scripted_expert_succeeds(make_env, task):
    env = make_env(task, image_size=32, horizon=300)
    record = rollout(env, ScriptedExpert(task, seed=0), seed=0, post_success_steps=0)
    assert record.success, f"{task}: expert failed within 300 steps"
    assert record.successes[-1] and len(record) < 300


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_collect_writes_demos_the_reader_loads(tmp_path):
    from voltron.sim.collect import collect

    out = tmp_path / "demos" / "button-press-topdown.hdf5"
    path, stats = collect("button-press-topdown", 2, out, post_success_steps=2, progress=False)
    assert path == out and stats.successes == 2 and stats.success_rate == 1.0
    with DemoFile(out) as demos:
        assert len(demos) == 2 and demos.cameras == ["corner"]
        assert demos.env_args["env_name"] == "button-press-topdown-v3" and demos.env_args["image_size"] == [224, 224]
        for index, episode in enumerate(demos):
            steps = len(episode)
            assert episode.images["corner"].shape == (steps, 224, 224, 3)
            assert episode.images["corner"].dtype == np.uint8
            assert episode.proprio.shape == (steps, 4) and episode.proprio.dtype == np.float32
            assert episode.actions.shape == (steps, 4) and np.abs(episode.actions).max() <= 1.0
            assert episode.rewards.shape == (steps,) and episode.dones[-1] == 1 and episode.dones.sum() == 1
            assert episode.language == "press the button down from the top"
            assert episode.attrs["seed"] == index
        with DemoFile(out, split="train") as train, DemoFile(out, split="valid") as valid:
            assert sorted(train.demo_keys + valid.demo_keys) == ["demo_0", "demo_1"]


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
def test_killed_collection_leaves_no_file(tmp_path):
    out = tmp_path / "demos" / "reach.hdf5"
    args = [*"sim collect --task reach --episodes 200 --image-size 64 --no-progress --out".split(), str(out)]
    child = subprocess.Popen(
        [sys.executable, "-c", CLI, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.parent.glob(".reach.hdf5.*.partial")):  # appears once the first demo is being written
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "collection never started writing"
            time.sleep(0.1)
        time.sleep(1.0)  # mid-run: a few demos in, far from 200
        assert child.poll() is None
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert not out.exists()
    # The killed writer's temporary file is cleaned up by the next write to the same path.
    assert len(list(out.parent.glob(".reach.hdf5.*.partial"))) == 1
    episode = Episode({"corner": np.zeros((1, 8, 8, 3), np.uint8)}, np.zeros((1, 4)), np.zeros((1, 4)), "reach")
    write_demos(out, [episode], {"task": "reach"})
    assert out.exists() and not list(out.parent.glob(".reach.hdf5.*.partial"))


# -- the sim-made corpus -----------------------------------------------------------------------------------------
@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_make_corpus_writes_sth_sth_layout_and_resumes(tmp_path):
    from voltron.cli import main
    from voltron.datasets.video import load_decord

    out = tmp_path / "corpus"
    args = "sim make-corpus --tasks reach,handle-press --clips-per-task 2 --no-progress --out".split()
    assert main([*args, str(out)]) == 0
    videos = sorted((out / "videos").glob("*.webm"))
    assert len(videos) == 4
    decord = load_decord()
    for video in videos:
        reader = decord.VideoReader(str(video))
        assert reader.get_avg_fps() == pytest.approx(FPS)
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        assert frames.shape[1:] == (FRAME_HEIGHT, FRAME_WIDTH, 3) and len(frames) >= 10
        assert frames.std() > 20  # a visible scene, not a blank clip

    train = json.loads((out / "labels" / "train.json").read_text())
    validation = json.loads((out / "labels" / "validation.json").read_text())
    class_index = json.loads((out / "labels" / "labels.json").read_text())
    assert len(train) == 2 and len(validation) == 2  # clip index 1 of each task is a validation clip
    assert {r["id"] for r in train + validation} == {v.stem for v in videos}
    for record in train + validation:
        assert set(record) == {"id", "label", "template", "placeholders"} and record["id"].isdigit()
        words = iter(record["placeholders"])
        filled = re.sub(r"\[[^\]]+\]", lambda _, words=words: next(words), record["template"])
        assert filled.lower() == record["label"]
        assert record["template"].replace("[", "").replace("]", "") in class_index

    # Resume: nothing is re-rendered; a deleted clip is re-made with the same label.
    stamps = {v.name: v.stat().st_mtime_ns for v in videos}
    report = make_corpus(out, tasks="reach,handle-press", clips_per_task=2, progress=False)
    assert report.skipped_existing == 4 and report.rendered == 0
    assert {v.name: v.stat().st_mtime_ns for v in videos} == stamps
    videos[0].unlink()
    report = make_corpus(out, tasks="reach,handle-press", clips_per_task=2, progress=False)
    assert report.rendered == 1 and videos[0].exists()
    assert json.loads((out / "labels" / "train.json").read_text()) == train
    assert json.loads((out / "labels" / "validation.json").read_text()) == validation


def test_corpus_plan_is_deterministic_and_refuses_eval_tasks(tmp_path):
    assert plan_clip("reach", 3) == plan_clip("reach", 3)
    assert plan_clip("reach", 3).id != plan_clip("push", 3).id
    assert len({plan_clip("reach", i).reset_seed for i in range(10)}) == 10
    with pytest.raises(ValueError, match="evaluation tasks"):
        make_corpus(tmp_path, tasks="reach,drawer-open", clips_per_task=1, progress=False)


# -- vectorised rollouts -----------------------------------------------------------------------------------------
@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_vector_env_steps_in_lockstep_and_reports_worker_errors():
    with VectorSimEnv.from_task("button-press-topdown", 2, image_size=32, horizon=3) as venv:
        obs, info = venv.reset(seed=0)
        assert obs["image"].shape == (2, 32, 32, 3) and obs["proprio"].shape == (2, 4)
        assert obs["language"] == ["press the button down from the top"] * 2
        assert not np.allclose(info["state"][0], info["state"][1])  # seeds 0 and 1
        expert = ScriptedExpert("button-press-topdown")
        for _ in range(3):
            obs, rewards, terminated, truncated, info = venv.step(expert.act_batch(info["state"]))
        assert rewards.shape == (2,) and truncated.all() and info["finished"].all()
        frozen = venv.step(np.zeros((2, 4)))  # finished envs are not stepped again
        np.testing.assert_array_equal(frozen[0]["image"], obs["image"])
        assert (frozen[1] == 0).all() and frozen[3].all()
    with VectorSimEnv.from_task("button-press-topdown", 2, image_size=32, horizon=3) as venv:
        venv.reset(seed=0)
        with pytest.raises(WorkerError) as info_error:
            venv.step(np.zeros((2, 3), dtype=np.float32))  # a worker's SimEnv rejects 3-d actions
        assert info_error.value.index == 0
        assert "ValueError" in info_error.value.worker_traceback and "expected 4 finite values" in str(info_error.value)
        assert venv.closed and not any(p.is_alive() for p in venv._processes)


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_vector_env_reports_a_killed_worker_without_hanging():
    with VectorSimEnv.from_task("reach", 2, image_size=32, vector_kwargs={"step_timeout_s": 30}) as venv:
        venv.reset(seed=0)
        os.kill(venv.pids[1], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WorkerError, match=r"worker 1: process \d+ was killed by signal SIGKILL during step"):
            venv.step(np.zeros((2, 4)))
        assert time.monotonic() - started < 10
    with pytest.raises(WorkerTimeout, match="no answer to start within 0 s"):
        VectorSimEnv.from_task("reach", 1, vector_kwargs={"start_timeout_s": 0.01})


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_vector_env_one_at_a_time_gives_the_lockstep_answers_and_reports_a_dead_worker():
    expert = ScriptedExpert("button-press-topdown")
    with VectorSimEnv.from_task("button-press-topdown", 2, image_size=32, horizon=5) as venv:
        obs, info = venv.reset(seed=[7, 3])
        lockstep = [venv.step(expert.act_batch(info["state"]))]
        lockstep.append(venv.step(expert.act_batch(lockstep[-1][4]["state"])))
        venv.send(1, "reset", 3)  # env 1 runs seed 3 again, alone, while env 0 sits on seed 7's second step
        index, (obs1, info1) = venv.receive()
        assert index == 1 and np.array_equal(info1["state"], info["state"][1])
        with pytest.raises(RuntimeError, match="no request in flight"):
            venv.receive()
        for step in lockstep:
            venv.send(1, "step", expert(info1["state"]))
            with pytest.raises(RuntimeError, match="already has a step in flight"):
                venv.send(1, "step", expert(info1["state"]))
            index, (obs1, reward, terminated, truncated, info1) = venv.receive()
            assert index == 1 and reward == step[1][1] and np.array_equal(obs1["image"], step[0]["image"][1])
        venv.send(0, "step", np.zeros(4))
        venv.send(1, "step", np.zeros(4))
        assert sorted(venv.receive()[0] for _ in range(2)) == [0, 1]
        os.kill(venv.pids[0], signal.SIGKILL)
        venv.send(0, "step", np.zeros(4))
        with pytest.raises(WorkerError, match=r"worker 0: process \d+ was killed by signal SIGKILL during step"):
            venv.receive()
        assert venv.closed


# -- CLI ---------------------------------------------------------------------------------------------------------
def test_cli_registers_sim_commands(tmp_path):
    from voltron.cli import build_parser
    from voltron.config import command_config
    from voltron.sim.cli import CollectConfig, CorpusConfig

    parser = build_parser()
    (tmp_path / "collect.yaml").write_text("seed: 5\nimage_size: 64\n")
    command = (
        f"sim collect --task drawer-open --out d.hdf5 --action-noise 0.1 --seed 3 --config {tmp_path}/collect.yaml"
    )
    args = parser.parse_args(command.split())
    args.overrides = ["--episodes=7"]  # what voltron.cli.main hands over from `--episodes=7` or `episodes=7`
    resolved = command_config(CollectConfig, args, "voltron sim collect", ("task", "out"))
    assert (resolved.episodes, resolved.action_noise, resolved.seed) == (7, 0.1, 3)  # the flag wins over the file
    assert resolved.image_size == 64 and resolved.progress and callable(args.func)
    args = parser.parse_args(["sim", "make-corpus", "--out", "corpus"])
    resolved = command_config(CorpusConfig, args, "voltron sim make-corpus", ("out",))
    assert resolved.tasks == "45" and resolved.clips_per_task == 10 and callable(args.func)


# -- DART noise in demo collection ---------------------------------------------------------------------------------
class _ExpertSpy:
    """The real expert, keeping what it returned in the current attempt (collection resets it per attempt)."""

    def __init__(self, expert):
        self.expert, self.returned = expert, []

    def reset(self, seed=None):
        self.expert.reset(seed)
        self.returned = []

    def __call__(self, state):
        self.returned.append(self.expert(state))
        return self.returned[-1]


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
@pytest.mark.parametrize("task", ["button-press-topdown", "kitchen-knob-on"])
def test_dart_noise_is_executed_but_the_demo_records_the_clean_action(tmp_path, monkeypatch, task):
    from voltron.policy.suite import ensure_demos
    from voltron.sim import collect as collect_module
    from voltron.sim.experts import make_expert

    spies = []

    def spy_on_expert(*args, **kwargs):
        spies.append(_ExpertSpy(make_expert(*args, **kwargs)))
        return spies[-1]

    monkeypatch.setattr(collect_module, "make_expert", spy_on_expert)
    camera = get_task(task).camera
    path = ensure_demos(task, 1, tmp_path, 8, camera, progress=False, dart_noise=0.1)  # the suite's way in
    assert path.name == f"{task}-1x8px-{camera}-dart0.1.hdf5"  # never the noise-free file's name
    with DemoFile(path) as demos:
        dart = demos[0]
        assert (demos.env_args["dart_noise"], demos.env_args["action_noise"]) == (0.1, 0.0)
    # every label is the expert's own (clean) action for the state it saw ...
    assert np.array_equal(dart.actions, np.stack(spies[0].returned))
    # ... while the env executed something else: the noise-free expert from the same reset seed goes elsewhere
    clean_path, _ = collect_module.collect(
        task, 1, tmp_path / "clean.hdf5", seed=dart.attrs["seed"], image_size=8, valid_fraction=0.0, progress=False
    )
    with DemoFile(clean_path) as demos:
        clean = demos[0]
        assert demos.env_args["dart_noise"] == 0.0 and clean.attrs["seed"] == dart.attrs["seed"]
    steps = min(len(clean), len(dart))
    assert np.array_equal(clean.state[0], dart.state[0])  # the same scene ...
    assert np.abs(clean.state[1:steps] - dart.state[1:steps]).max() > 1e-3  # ... and a different trajectory


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_a_bad_dart_noise_is_one_line_naming_it(tmp_path, capsys, value):
    from voltron.cli import main
    from voltron.errors import UserError
    from voltron.sim.collect import collect

    with pytest.raises(UserError, match=r"^dart_noise=.*expected a finite standard deviation >= 0") as error:
        collect("button-press-topdown", 1, tmp_path / "d.hdf5", dart_noise=value, image_size=8, progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "d.hdf5").exists()
    assert main(f"sim collect --task reach --out {tmp_path}/d.hdf5 --dart-noise {value}".split()) == 2
    stderr = capsys.readouterr().err.strip()
    assert stderr.startswith("error: dart_noise=") and "\n" not in stderr and not (tmp_path / "d.hdf5").exists()


def test_the_suite_does_not_reuse_a_policy_trained_on_other_demos(tmp_path):
    from voltron.errors import UserError
    from voltron.policy.config import NO_ENCODER
    from voltron.policy.suite import ORACLE, Row, SuiteOptions, train_and_evaluate

    run = tmp_path / "policies" / "state_oracle" / "kitchen-knob-on" / "seed0"  # as an earlier protocol left it
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"")
    (run / "config.json").write_text(json.dumps({"training": {"demos": "/old/kitchen-knob-on-25x32px-left_cap2.hdf5"}}))
    demos = tmp_path / "demos" / "kitchen-knob-on-25x32px-left_cap2-dart0.03.hdf5"
    row = Row(ORACLE, NO_ENCODER, lowdim="state")
    with pytest.raises(UserError, match=r"trained on kitchen-knob-on-25x32px-left_cap2\.hdf5.*-dart0\.03\.hdf5"):
        train_and_evaluate(SuiteOptions(), row, "kitchen-knob-on", 25, 0, demos, run, {})


@pytest.mark.slow  # about 30 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_suite_demos_short_of_the_count_are_an_error_and_leave_no_file(tmp_path):
    """Noise the expert cannot recover from leaves it short of the demos asked: the suite refuses, naming the task and
    the noise, rather than training on fewer demos than its table says."""
    from voltron.errors import UserError
    from voltron.policy.suite import ensure_demos

    task = "drawer-open"  # at DART 3.0 its expert succeeds on 1 of the 8 attempts the collector makes for 2 demos
    with pytest.raises(UserError, match=r"dart_noise=3\.0.*succeeded in 1 of 8 attempts, fewer than the 2 demos"):
        ensure_demos(task, 2, tmp_path, 8, get_task(task).camera, progress=False, dart_noise=3.0)
    assert not list((tmp_path / "demos").glob("*.hdf5"))
