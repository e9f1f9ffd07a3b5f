"""Integration tier: the policy server, rosbridge backend and safety layer against a real ROS 2 peer on 127.0.0.1.

The peer is `rosbridge-server-rs` plus an rclpy stub robot (tests/ros_peer/), both from `.venv-ros`
(scripts/setup_ros_peer.sh), each test with its own ROS_DOMAIN_ID and port. When the peer cannot start the tests skip
and say why. Every loop is bounded by `max_steps`/`max_seconds` and every wait by a timeout; the peer's processes are
killed in teardown.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voltron.ros.bridge import make_bridge
from voltron.ros.config import load_robot_config
from voltron.ros.server import ServeOptions, serve

pytestmark = [pytest.mark.ros, pytest.mark.slow]  # a real ROS peer end to end; `make test-fast` leaves it out

REPO = Path(__file__).resolve().parents[1]
RATE_HZ = 15.0
PERIOD = 1.0 / RATE_HZ
WATCHDOG_MS = 300.0
LOW, HIGH, MAX_DELTA = [-0.5, -0.5, -0.5], [0.5, 0.5, 0.5], [0.04, 0.04, 0.04]


def _load_peer_module():
    spec = importlib.util.spec_from_file_location("voltron_ros_peer", REPO / "tests" / "ros_peer" / "peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer_mod = _load_peer_module()


# --- scripted policies ----------------------------------------------------------------------------------------------
# Tiny deterministic policies on the policy contract (tests/test_ros_server.py's ScriptedPolicy: 3-d proprio and
# actions, camera "front"). Everything else in these tests (bridge, server loop, safety layer, rosbridge server, stub
# robot) is real; the last test serves a real BC policy checkpoint.
def _load_scripted_policy() -> type:
    spec = importlib.util.spec_from_file_location("voltron_test_ros_server", REPO / "tests" / "test_ros_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ScriptedPolicy


ScriptedPolicy = _load_scripted_policy()


class RampPolicy(ScriptedPolicy):
    """action_k = k * [0.05, -0.05, 0.1], which leaves the limits and outruns max_delta."""

    def __init__(self):
        super().__init__(proprio_dim=3, action_dim=3)
        self.calls = 0

    def select_action(self, obs: dict) -> np.ndarray:
        assert obs["images"]["front"].dtype == np.uint8 and obs["images"]["front"].shape == (96, 128, 3)
        assert obs["proprio"].shape == (3,) and isinstance(obs["language"], str)
        self.calls += 1
        return self.calls * np.array([0.05, -0.05, 0.1])


class CounterPolicy(ScriptedPolicy):
    """Every call returns a distinct small action (0.001 * call index), so a command identifies the step that
    computed it."""

    def __init__(self):
        super().__init__(proprio_dim=3, action_dim=3)
        self.calls = 0

    def select_action(self, obs: dict) -> np.ndarray:
        self.calls += 1
        return np.full(3, 0.001 * (self.calls % 400))


# --- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture()
def peer(tmp_path):
    try:
        import roslibpy  # noqa: F401  (the [ros] extra in the main venv)
    except ImportError as err:
        pytest.skip(f"roslibpy is not installed in this venv ({err}); pip install -e '.[ros]'")
    try:
        jpeg = peer_mod.write_test_jpeg(tmp_path / "frame.jpg")
        ros_peer = peer_mod.RosPeer(tmp_path / "peer", jpeg=jpeg, joints=3, max_seconds=90).start()
    except peer_mod.PeerUnavailable as err:
        pytest.skip(f"ROS peer unavailable: {err}")
    try:
        yield ros_peer
    finally:
        ros_peer.stop()


def robot_config(peer, tmp_path: Path, **connection):
    overrides = [
        f"--connection.port={peer.port}",
        "--connection.connect_timeout_s=10",
        "--connection.reconnect_initial_s=0.2",
        "--connection.reconnect_max_s=1.0",
        "--action.topic=/commands",
        "--estop.robot_service=/estop",
        f"--safety.watchdog_ms={WATCHDOG_MS}",
    ] + [f"--connection.{k}={v}" for k, v in connection.items()]
    cfg = load_robot_config(REPO / "configs" / "robots" / "generic.yaml", overrides)
    joints = ["joint1", "joint2", "joint3"]
    cfg.state[0].joints = joints
    cfg.action.joints = joints
    cfg.action.low, cfg.action.high, cfg.action.max_delta = list(LOW), list(HIGH), list(MAX_DELTA)
    return cfg.validate("integration test config")


def read_log(path: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    stop = [r for r in records if r.get("event") == "stop"]
    assert stop, "the server log has no stop record"
    return steps, stop[-1]


def wait_for_steps(log_path: Path, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log_path.exists() and sum('"step"' in line for line in log_path.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"the server did not log {count} steps within {timeout_s} s")


def in_background(fn):
    """Run fn in a thread and keep its exception, so the server can own the main thread (signals)."""
    box = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as err:  # re-raised in the test by result()
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result(timeout_s: float = 30.0):
        thread.join(timeout_s)
        assert not thread.is_alive(), "helper thread did not finish"
        if "error" in box:
            raise box["error"]
        return box.get("result")

    return result


def serve_counter_while(background, bridge, log_path: Path, max_steps: int, max_seconds: float = 20):
    """Serve CounterPolicy through `bridge` for `max_steps` ticks (at most `max_seconds`), logging to `log_path`,
    while `background` runs in a thread (the server owns the main thread, for signals); returns the server's
    summary and `background`'s result (its exception re-raised)."""
    result = in_background(background)
    summary = serve(
        CounterPolicy(),
        bridge,
        ServeOptions(rate_hz=RATE_HZ, max_steps=max_steps, max_seconds=max_seconds, log_path=log_path),
    )
    return summary, result()


# --- tests ----------------------------------------------------------------------------------------------------------
def test_serve_drives_stub_within_limits(peer, tmp_path):
    cfg = robot_config(peer, tmp_path)
    log_path = tmp_path / "serve.jsonl"
    steps_wanted = 40
    summary = serve(
        RampPolicy(),
        make_bridge(cfg),
        ServeOptions(rate_hz=RATE_HZ, max_steps=steps_wanted, max_seconds=20, log_path=log_path),
    )
    assert summary.steps == steps_wanted and summary.stop_reason == "max_steps"
    assert summary.sent == steps_wanted and summary.held == 0
    time.sleep(0.3)  # let the last commands arrive
    commands = np.array([r["data"] for r in peer.records("command")])
    # DDS discovery between the bridge's new publisher and the stub may swallow the first few messages.
    assert len(commands) >= steps_wanted - 5, f"stub received only {len(commands)} commands"
    assert np.all(commands >= np.array(LOW) - 1e-12) and np.all(commands <= np.array(HIGH) + 1e-12)
    steps = np.abs(np.diff(commands, axis=0))
    assert np.all(steps <= np.array(MAX_DELTA) + 1e-9), f"largest step {steps.max(axis=0)}"
    # The policy asked for far more than the limits; the safety layer clipped it and the robot reached the box edge.
    assert np.allclose(commands[-1], [0.5, -0.5, 0.5])
    records, stop = read_log(log_path)
    assert len(records) == steps_wanted and stop["sent"] == steps_wanted
    assert all(r["sent"] and not r["held"] and r["inference_ms"] is not None for r in records)
    assert any("limits" in r["adjusted"] or "max_delta" in r["adjusted"] for r in records)
    assert all(r["obs_age_ms"] < WATCHDOG_MS for r in records)


def test_bridge_subscribes_when_the_connection_opens_before_its_handlers(peer, tmp_path, monkeypatch):
    """roslibpy's Ros() starts connecting at once, and once the reactor runs the WebSocket can open before the bridge
    registers its 'ready' handler (the flake behind "no message within 10.0 s": no subscribe was ever sent). Force
    that order: every Ros() returns only after its connection is open. The bridge must still subscribe and advertise,
    exactly once per connection."""
    import roslibpy

    original_init = roslibpy.Ros.__init__

    def open_before_returning(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.factory.manager.run()  # start the reactor if nothing in this process has yet
        opened = threading.Event()
        self.factory.on_ready(lambda _proto: opened.set())
        assert opened.wait(10), "the rosbridge connection did not open"

    monkeypatch.setattr(roslibpy.Ros, "__init__", open_before_returning)
    probe = np.array([0.123, 0.123, 0.123])
    with make_bridge(robot_config(peer, tmp_path)) as bridge:
        obs = bridge.wait_for_observation(10.0)
        assert obs.images["front"].shape == (96, 128, 3) and obs.proprio.shape == (3,)
        # The control connection advertised its topic: commands reach the robot (DDS discovery of the server's new
        # publisher may swallow the first few, so send until one arrives).
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not peer.records("command"):
            assert bridge.send_action(probe, PERIOD)
            time.sleep(PERIOD)
        assert peer.records("command"), "no command reached the stub robot"
        assert np.allclose(peer.records("command")[0]["data"], probe)
        # Both registrations saw the same connection; it must not count as a reconnection.
        assert bridge.reconnects == {"sensor": 0, "control": 0}


def test_stopping_images_makes_server_hold_within_watchdog(peer, tmp_path):
    cfg = robot_config(peer, tmp_path)
    log_path = tmp_path / "serve.jsonl"

    def pause_after_warm_loop():
        wait_for_steps(log_path, 10, timeout_s=30)
        return peer.tell_stub("pause_images")

    summary, pause_t = serve_counter_while(pause_after_warm_loop, make_bridge(cfg), log_path, max_steps=30)
    records, _ = read_log(log_path)
    assert summary.steps == 30
    before = [r for r in records if r["t"] < pause_t]
    after = [r for r in records if r["t"] >= pause_t]
    assert len(before) >= 10 and not any(r["held"] for r in before)
    held = [r for r in after if r["held"]]
    assert held, "the server never held after the image stream stopped"
    first_hold = held[0]
    assert any("observation stale" in reason for reason in first_hold["reasons"])
    # The last frame was stamped at or before pause_t: the watchdog must fire within its time plus one tick.
    latency = first_hold["t"] - pause_t
    assert latency <= (WATCHDOG_MS / 1e3) + PERIOD + 0.1, f"held {latency * 1e3:.0f} ms after the images stopped"
    # Once holding, it keeps holding (the images never come back) and sends the hold: the last command again.
    later = records[records.index(first_hold) :]
    assert all(r["held"] for r in later)
    last_policy_action = [r for r in records if not r["held"]][-1]["action"]
    assert all(r["action"] == last_policy_action for r in later)
    time.sleep(0.3)
    tail = [r["data"] for r in peer.records("command") if r["t"] > first_hold["t"] + 0.05]
    assert tail and all(np.allclose(c, last_policy_action) for c in tail)


def test_estop_latches_until_reset(peer, tmp_path):
    import roslibpy

    cfg = robot_config(peer, tmp_path)
    log_path = tmp_path / "serve.jsonl"

    def operator():
        wait_for_steps(log_path, 8, timeout_s=30)
        ros = roslibpy.Ros("127.0.0.1", peer.port)
        ros.run(timeout=10)
        try:
            latched = roslibpy.Service(ros, cfg.estop.service, "std_srvs/Trigger").call(
                roslibpy.ServiceRequest({}), timeout=5
            )
            t_latch = time.time()
            time.sleep(1.0)  # observations stay fresh all along: only the latch holds the robot
            reset = roslibpy.Service(ros, cfg.estop.reset_service, "std_srvs/Trigger").call(
                roslibpy.ServiceRequest({}), timeout=5
            )
            return dict(latched), t_latch, dict(reset), time.time()
        finally:
            ros.factory.stopTrying()
            ros.close()

    summary, (latched, t_latch, reset, t_reset) = serve_counter_while(
        operator, make_bridge(cfg), log_path, max_steps=45
    )
    assert latched["success"] and reset["success"]
    records, _ = read_log(log_path)
    assert summary.steps == 45 and summary.estop_latched
    during = [r for r in records if t_latch + 0.01 < r["t"] < t_reset - 0.01]
    assert len(during) >= 10, "too few steps while latched to judge the latch"
    assert all(r["held"] and any("e-stop latched" in x for x in r["reasons"]) for r in during)
    assert all(r["obs_age_ms"] < WATCHDOG_MS for r in during)  # held by the latch, not by stale data
    assert all(r["inference_ms"] is None for r in during)
    after = [r for r in records if r["t"] > t_reset + 0.01]
    assert after and not any(r["held"] for r in after), "the server did not resume after the reset"
    time.sleep(0.3)
    estops = peer.records("estop")
    assert len(estops) == 1 and t_latch - 1.0 < estops[0]["t"] < t_reset, "the robot's /estop was not called once"


def test_connection_loss_holds_then_reconnects_without_stale_commands(peer, tmp_path):
    cfg = robot_config(peer, tmp_path)
    log_path = tmp_path / "serve.jsonl"

    bridge = make_bridge(cfg)
    probe = np.array([0.321, 0.321, 0.321])  # a command nobody else sends

    def outage():
        wait_for_steps(log_path, 8, timeout_s=30)
        t_kill = time.time()
        peer.kill_server()
        deadline = time.monotonic() + 15  # the transport thread notices the dead socket; slower on a loaded machine
        while bridge.is_connected and time.monotonic() < deadline:
            time.sleep(0.01)
        noticed = not bridge.is_connected
        probe_sent = bridge.send_action(probe, PERIOD)  # while down: must be dropped, not queued for later
        time.sleep(1.0)
        peer.restart_server()
        return t_kill, time.time(), probe_sent, noticed

    summary, (t_kill, t_restart, probe_sent, noticed) = serve_counter_while(
        outage, bridge, log_path, max_steps=240, max_seconds=40
    )
    assert noticed, "the bridge still reported a connection 15 s after the server was killed"
    assert probe_sent is False
    records, _ = read_log(log_path)
    assert summary.steps == 240
    outage_steps = [r for r in records if t_kill + 0.05 < r["t"] < t_restart]
    assert outage_steps and all(r["held"] and not r["sent"] for r in outage_steps)
    assert any("bridge disconnected" in x for r in outage_steps for x in r["reasons"])
    resumed = [r for r in records if r["t"] > t_restart and r["sent"] and not r["held"]]
    assert resumed, f"never resumed after the server came back: {summary}"
    assert bridge.reconnects["sensor"] >= 1 and bridge.reconnects["control"] >= 1
    # After the outage the robot gets only holds (the last command sent before it) and actions computed after it;
    # no policy command computed before the outage is delivered late.
    sent_before = [tuple(r["action"]) for r in records if r["sent"] and r["t"] < t_kill + 0.05]
    hold = sent_before[-1]
    fresh = {tuple(r["action"]) for r in records if r["sent"] and not r["held"] and r["t"] > t_restart}
    time.sleep(0.3)
    late = {tuple(np.round(c["data"], 6)) for c in peer.records("command") if c["t"] > t_restart}
    assert late, "the stub got nothing after the reconnection"
    assert late <= fresh | {hold}, f"unexpected commands after the outage: {sorted(late - fresh - {hold})}"
    assert not late & (set(sent_before) - {hold})
    assert tuple(probe) not in late


def test_sigterm_sends_hold_and_exits_cleanly(peer, tmp_path):
    cfg = robot_config(peer, tmp_path)
    log_path = tmp_path / "serve.jsonl"

    def terminate():
        wait_for_steps(log_path, 10, timeout_s=30)
        t = time.time()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the server's StopOnSignals in the main thread
        return t

    summary, t_signal = serve_counter_while(terminate, make_bridge(cfg), log_path, max_steps=300)
    assert summary.stop_reason == f"signal {int(signal.SIGTERM)}"
    assert summary.steps < 300
    records, stop = read_log(log_path)
    assert stop["stop_reason"].startswith("signal")
    assert records[-1]["t"] < t_signal + PERIOD + 0.1, "the loop kept running after SIGTERM"
    time.sleep(0.3)
    commands = peer.records("command")
    # The final command is the hold: a repeat of the last policy command.
    assert commands[-1]["t"] >= t_signal - 0.01
    assert np.allclose(commands[-1]["data"], records[-1]["action"])


@pytest.mark.parametrize("dry_run", [False, True])
def test_cli_ros_serve_drives_the_stub(peer, tmp_path, monkeypatch, dry_run):
    """`voltron ros serve` end to end: the CLI loads the policy through voltron.policy.load_policy (patched here with
    a fast scripted policy, so the test is about the CLI, dotted overrides and dry run; the next test serves a real
    BC policy checkpoint), reads the robot YAML with dotted overrides, and serves."""
    import voltron.policy
    from voltron.cli import main
    from voltron.ros.config import save_robot_config

    loaded = {}

    def load_policy(run_dir):  # a scripted stand-in: its ramp makes the limit checks below exact
        loaded["run_dir"] = run_dir
        return RampPolicy()

    monkeypatch.setattr(voltron.policy, "load_policy", load_policy, raising=False)
    robot = save_robot_config(robot_config(peer, tmp_path), tmp_path / "robot.yaml")
    log_path = tmp_path / "cli.jsonl"
    argv = ["ros", "serve", "--policy", str(tmp_path / "run"), "--robot", str(robot), "--rate", str(RATE_HZ)]
    argv += ["--max-steps", "20", "--log", str(log_path), "--instruction.default=stack the cups"]
    code = main(argv + (["--dry-run"] if dry_run else []))
    assert code == 0 and loaded["run_dir"] == str(tmp_path / "run")
    records, stop = read_log(log_path)
    assert len(records) == 20 and stop["stop_reason"] == "max_steps"
    time.sleep(0.3)
    commands = peer.records("command")
    if dry_run:
        assert commands == [] and all(not r["sent"] and r["action"] is not None for r in records)
    else:
        assert len(commands) >= 15 and all(r["sent"] for r in records)
        assert np.all(np.abs(np.array([c["data"] for c in commands])) <= 0.5 + 1e-12)


def test_cli_serves_a_real_voltron_policy_checkpoint(peer, tmp_path):
    """`voltron ros serve` loads a real BC policy checkpoint (a tiny V-Cond encoder, MAP and MLP head; untrained,
    since only the plumbing is under test) and drives the stub: language, camera and proprio reach the policy."""
    from voltron.cli import main
    from voltron.datasets.windows import NormStats
    from voltron.models.registry import build_model
    from voltron.policy.config import BCConfig, PolicyConfig
    from voltron.policy.model import BCPolicy
    from voltron.ros.config import save_robot_config

    cfg = robot_config(peer, tmp_path)
    camera, joints = next(iter(cfg.cameras)), len(cfg.action.joints)
    config = BCConfig(
        policy=PolicyConfig(
            encoder="v-cond-tiny", pretrained=False, encoder_overrides={"image_size": 64}, camera=camera,
            hidden_dims=(32, 32),
        )
    )  # fmt: skip
    encoder = build_model("v-cond-tiny", image_size=64).eval().requires_grad_(False)
    stats = NormStats(np.zeros(joints), np.ones(joints), np.array(LOW), np.array(HIGH))
    BCPolicy(config, encoder, joints, joints, stats, stats, image_size=64).save_pretrained(tmp_path / "policy")
    robot = save_robot_config(cfg, tmp_path / "robot.yaml")
    log_path = tmp_path / "serve.jsonl"
    argv = ["ros", "serve", "--policy", str(tmp_path / "policy"), "--robot", str(robot), "--rate", str(RATE_HZ)]
    argv += ["--max-steps", "15", "--log", str(log_path), "--instruction.default=stack the cups"]
    assert main(argv) == 0
    records, stop = read_log(log_path)
    assert len(records) == 15 and stop["stop_reason"] == "max_steps"
    time.sleep(0.3)
    commands = peer.records("command")
    assert len(commands) >= 10 and all(len(c["data"]) == joints for c in commands)
    assert np.all(np.abs(np.array([c["data"] for c in commands])) <= 0.5 + 1e-12)
