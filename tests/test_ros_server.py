"""The policy server loop without ROS: fixed rate, bounds, JSONL log, dry run, watchdog timing, SIGTERM, policy errors.

`FeedBridge` is an in-process RobotBridge (a test double for the transport only): a thread feeds real encoded
JointState/CompressedImage dicts into the real ObservationBuffer at 30 Hz and records published commands. The
loop, safety layer and codecs are the real ones; tests/test_ros_integration.py runs them against a ROS peer.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from voltron.errors import UserError
from voltron.policy.base import Policy
from voltron.ros import codecs
from voltron.ros.bridge import RobotBridge
from voltron.ros.config import robot_config_from_dict
from voltron.ros.server import PolicyServer, ServeOptions, robot_spec, serve

RATE = 15.0
WATCHDOG_MS = 250.0


def config():
    return robot_config_from_dict(
        {
            "name": "feed",
            "cameras": {"front": {"topic": "/cam"}},
            "state": [{"topic": "/joint_states", "joints": ["a", "b"]}],
            "instruction": {"topic": None, "default": "wave"},
            "action": {"topic": "/cmd", "joints": ["a", "b"], "low": [-1, -1], "high": [1, 1], "max_delta": [0.1, 0.1]},
            "safety": {"watchdog_ms": WATCHDOG_MS},
            "estop": {"robot_service": "/robot_stop"},
        }
    )


class FeedBridge(RobotBridge):
    def __init__(self, cfg, hz=30.0):
        super().__init__(cfg)
        self.hz = hz
        self.images_on = threading.Event()
        self.images_on.set()
        self.commands: list[tuple[float, np.ndarray]] = []
        self.robot_estops = 0
        self._stop = threading.Event()
        self._thread = None
        self._jpeg = codecs.encode_compressed_image(np.full((16, 20, 3), 90, np.uint8))
        self.connected = False

    def connect(self):
        self.connected = True
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self):
        deadline = time.monotonic() + 60  # bounded even if a test forgets to disconnect
        while not self._stop.is_set() and time.monotonic() < deadline:
            now = time.time()
            position = self.commands[-1][1] if self.commands else np.zeros(2)
            self.buffer.put("/joint_states", codecs.encode_joint_state(["a", "b"], position, stamp=now))
            if self.images_on.is_set():
                self.buffer.put("/cam", dict(self._jpeg, header=codecs.make_header(now)))
            self._stop.wait(1.0 / self.hz)

    def disconnect(self):
        self._stop.set()
        self.connected = False
        if self._thread is not None:
            self._thread.join(5)

    @property
    def is_connected(self):
        return self.connected

    def _publish_command(self, msg):
        if not self.connected:
            return False
        self.commands.append((time.time(), codecs.decode_action(msg, self.config.action)))
        return True

    def serve_estop(self, on_latch, on_reset):
        self.latch, self.reset = on_latch, on_reset

    def call_robot_estop(self):
        self.robot_estops += 1
        return True


class ScriptedPolicy(Policy):
    """A policy contract without learning (the server only acts): subclasses script `select_action`."""

    def __init__(self, proprio_dim=2, action_dim=2, cameras=("front",)):
        super().__init__(proprio_dim, action_dim, cameras)

    def forward(self, batch):
        raise NotImplementedError("a scripted policy has nothing to train")

    def reset(self):
        self.calls = 0


class StepPolicy(ScriptedPolicy):
    """Deterministic: 0.05 * call index on every component."""

    def __init__(self, sleep_s=0.0, **dims):
        super().__init__(**dims)
        self.calls, self.sleep_s, self.warmed = 0, sleep_s, False

    def warmup(self, obs):
        assert obs["images"]["front"].shape == (16, 20, 3) and obs["language"] == "wave"
        self.warmed = True

    def select_action(self, obs):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return np.full((1, 2), 0.05 * self.calls)  # batched (1, A): the server takes the row


def records(path):
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in lines if "step" in r], [r for r in lines if "event" in r]


def test_fixed_rate_bounded_steps_and_log(tmp_path):
    bridge, policy, log = FeedBridge(config()), StepPolicy(), tmp_path / "log.jsonl"
    start = time.monotonic()
    summary = serve(policy, bridge, ServeOptions(rate_hz=RATE, max_steps=20, log_path=log))
    elapsed = time.monotonic() - start
    assert policy.warmed and policy.calls == 20
    assert summary.steps == 20 and summary.sent == 20 and summary.stop_reason == "max_steps"
    assert 19 / RATE - 0.05 < elapsed < 20 / RATE + 1.0  # fixed rate: neither bursting nor dawdling
    steps, events = records(log)
    assert [e["event"] for e in events] == ["start", "stop"]
    ticks = np.diff([r["t"] for r in steps])
    assert np.median(ticks) == pytest.approx(1 / RATE, abs=0.01)
    for key in ("obs_age_ms", "inference_ms", "send_ms", "stream_ages_ms", "obs_to_command_ms", "action"):
        assert all(r[key] is not None for r in steps), key
    # 0.05 per call is inside max_delta; 21 commands: 20 steps and the final hold (a repeat of the last).
    assert len(bridge.commands) == 21
    np.testing.assert_allclose(bridge.commands[-1][1], bridge.commands[-2][1])
    np.testing.assert_allclose(bridge.commands[19][1], [1.0, 1.0])  # 0.05 * 20, at the limit


def test_max_seconds_bound(tmp_path):
    summary = serve(StepPolicy(), FeedBridge(config()), ServeOptions(rate_hz=RATE, max_seconds=0.5))
    assert summary.stop_reason == "max_seconds" and 5 <= summary.steps <= 9


def test_dry_run_sends_nothing_but_logs_actions(tmp_path):
    bridge, log = FeedBridge(config()), tmp_path / "dry.jsonl"
    summary = serve(StepPolicy(), bridge, ServeOptions(rate_hz=RATE, max_steps=10, dry_run=True, log_path=log))
    assert bridge.commands == [] and summary.sent == 0 and summary.steps == 10
    steps, _ = records(log)
    assert all(r["dry_run"] and not r["sent"] and r["action"] is not None for r in steps)
    np.testing.assert_allclose(steps[-1]["action"], [0.5, 0.5])


def test_images_stopping_hold_within_the_watchdog(tmp_path):
    bridge, log = FeedBridge(config()), tmp_path / "wd.jsonl"
    paused = {}

    def pause():
        time.sleep(0.6)
        paused["t"] = time.time()
        bridge.images_on.clear()

    threading.Thread(target=pause, daemon=True).start()
    summary = serve(StepPolicy(), bridge, ServeOptions(rate_hz=RATE, max_steps=22, log_path=log))
    steps, _ = records(log)
    first_hold = next(r for r in steps if r["held"])
    assert "observation stale" in first_hold["reasons"][0]
    assert first_hold["t"] - paused["t"] <= WATCHDOG_MS / 1e3 + 1 / RATE + 0.05
    assert first_hold["t"] - paused["t"] >= WATCHDOG_MS / 1e3 - 1 / 30 - 0.01  # not before the watchdog time
    after = steps[steps.index(first_hold) :]
    assert all(r["held"] and r["inference_ms"] is None for r in after)  # no inference on stale data
    assert summary.hold_reasons.get("observation stale") == len(after)


def test_slow_policy_overruns_are_held_and_counted(tmp_path):
    log = tmp_path / "slow.jsonl"
    bridge = FeedBridge(config())
    summary = serve(StepPolicy(sleep_s=1.5 / RATE), bridge, ServeOptions(rate_hz=RATE, max_steps=6, log_path=log))
    steps, _ = records(log)
    assert summary.missed_deadlines == 6 and all(r.get("missed_deadline") for r in steps)
    assert all(r["held"] and any("inference overran" in x for x in r["reasons"]) for r in steps)
    # Nothing was sent before, so the hold is the measured joint position (the feed starts at zero).
    assert summary.sent == 6 and all(np.array_equal(c, [0.0, 0.0]) for _, c in bridge.commands)


def test_policy_exception_holds_and_the_loop_goes_on(tmp_path):
    class Flaky(StepPolicy):
        def select_action(self, obs):
            if self.calls == 3:
                self.calls += 1
                raise RuntimeError("encoder blew up")
            return super().select_action(obs)

    log = tmp_path / "flaky.jsonl"
    summary = serve(Flaky(), FeedBridge(config()), ServeOptions(rate_hz=RATE, max_steps=8, log_path=log))
    steps, _ = records(log)
    assert summary.steps == 8 and summary.held == 1
    assert steps[3]["held"] and "encoder blew up" in steps[3]["reasons"][0]
    assert not steps[4]["held"]


def test_estop_latch_forwards_once_and_resets(tmp_path):
    bridge = FeedBridge(config())
    bridge.connect()
    server = PolicyServer(StepPolicy(), bridge, ServeOptions(rate_hz=RATE, max_steps=1))
    bridge.serve_estop(server.safety.latch, server.safety.reset)
    bridge.wait_for_observation(5)
    assert not server.step(0)["held"]
    bridge.latch("test")
    held = [server.step(i) for i in range(1, 5)]
    assert all(r["held"] and r["latched"] for r in held) and bridge.robot_estops == 1
    bridge.reset()
    assert not server.step(5)["held"]
    bridge.disconnect()


def test_sigterm_sends_a_final_hold_and_returns(tmp_path):
    bridge = FeedBridge(config())

    def terminate():
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate, daemon=True).start()
    summary = serve(StepPolicy(), bridge, ServeOptions(rate_hz=RATE, max_steps=200, max_seconds=10))
    assert summary.stop_reason == f"signal {int(signal.SIGTERM)}" and summary.steps < 15
    assert len(bridge.commands) == summary.sent + 1
    np.testing.assert_allclose(bridge.commands[-1][1], bridge.commands[-2][1])


def test_first_observation_timeout_names_the_missing_topic(tmp_path):
    bridge = FeedBridge(config())
    bridge.images_on.clear()
    with pytest.raises(TimeoutError, match="/cam"):
        serve(StepPolicy(), bridge, ServeOptions(rate_hz=RATE, max_steps=3, first_observation_timeout_s=0.3))
    assert bridge.commands == []


@pytest.mark.parametrize(
    "dims, message",
    [
        ({"action_dim": 3}, "the policy acts 3-d, robot 'feed' takes 2-d actions"),
        ({"proprio_dim": 7}, "the policy expects proprio 7-d, robot 'feed' gives proprio 2-d"),
        ({"cameras": ("wrist",)}, r"the policy reads camera\(s\) \['wrist'\], robot 'feed' has \['front'\]"),
    ],
)
def test_a_policy_that_does_not_fit_the_robot_stops_before_the_first_tick(dims, message, tmp_path):
    bridge, log = FeedBridge(config()), tmp_path / "misfit.jsonl"
    policy = StepPolicy(**dims)
    with pytest.raises(UserError, match=message):
        serve(policy, bridge, ServeOptions(rate_hz=RATE, max_steps=5, log_path=log))
    assert policy.calls == 0 and not policy.warmed  # never asked for an action
    assert all(np.array_equal(c, [0.0, 0.0]) for _, c in bridge.commands)  # at most the exit hold (measured position)


def test_robot_spec_from_the_config_and_only_policies_are_served():
    cfg = config()
    assert robot_spec(cfg).lowdim == {"proprio": 2} and robot_spec(cfg).cameras == ("front",)
    cfg.state[0].joints = []  # all joints in message order: the size is known only once a message arrives
    assert robot_spec(cfg).lowdim == {"proprio": None} and robot_spec(cfg).action_dim == 2
    with pytest.raises(TypeError, match="voltron.policy.base.Policy"):
        PolicyServer(object(), FeedBridge(cfg), ServeOptions())


def test_ros_serve_refuses_a_policy_that_does_not_fit_before_connecting(tmp_path, capsys):
    """`voltron ros serve` checks a real BC policy checkpoint against the robot config before it connects: a policy
    trained on sim demos (camera "corner", 4-d actions) on a 6-joint arm is one line naming every mismatch."""
    from voltron.cli import main
    from voltron.datasets.windows import NormStats
    from voltron.models.registry import build_model
    from voltron.policy.config import BCConfig, PolicyConfig
    from voltron.policy.model import BCPolicy

    config = BCConfig(
        policy=PolicyConfig(
            encoder="r-mvp-tiny", pretrained=False, encoder_overrides={"image_size": 32}, camera="corner",
            hidden_dims=(8,),
        )
    )  # fmt: skip
    stats = NormStats(np.zeros(4), np.ones(4), -np.ones(4), np.ones(4))
    encoder = build_model("r-mvp-tiny", image_size=32).eval().requires_grad_(False)
    BCPolicy(config, encoder, 4, 4, stats, stats, image_size=32).save_pretrained(tmp_path / "policy")
    robot = Path(__file__).resolve().parents[1] / "configs" / "robots" / "generic.yaml"
    argv = ["ros", "serve", "--policy", str(tmp_path / "policy"), "--robot", str(robot)]
    argv += ["--connection.port=1", "--max-steps", "1", "--log", str(tmp_path / "never.jsonl")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "robot 'generic-arm' takes 6-d actions" in error
    assert "proprio 4-d, robot 'generic-arm' gives proprio 6-d" in error and "['corner']" in error
    assert not (tmp_path / "never.jsonl").exists()  # it never got as far as serving
