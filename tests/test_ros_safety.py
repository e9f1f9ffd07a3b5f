"""The safety layer on its own: every rule, the watchdog against a real clock, the e-stop latch and signal handling."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from voltron.ros.bridge import Observation
from voltron.ros.config import ActionConfig, SafetyConfig, WorkspaceConfig
from voltron.ros.safety import SafetyLayer, StopOnSignals

PERIOD = 1 / 15
FRESH = 0.01  # an observation age well inside the watchdog, seconds


def layer(
    kind="position",
    hold="auto",
    max_delta=(0.1, 0.1, 0.1),
    workspace=None,
    watchdog_ms=200.0,
    budget_ms=None,
    joints=("j1", "j2", "j3"),
):
    action = ActionConfig(
        kind=kind,
        hold=hold,
        joints=list(joints),
        low=[-1.0, -1.0, -0.5],
        high=[1.0, 1.0, 0.5],
        max_delta=None if max_delta is None else list(max_delta),
    )
    return SafetyLayer(
        action, SafetyConfig(watchdog_ms=watchdog_ms, inference_budget_ms=budget_ms, workspace=workspace), PERIOD
    )


def passed(safety, action, **kw):
    kw.setdefault("obs_age_s", FRESH)
    decision = safety.filter(np.asarray(action, dtype=float), **kw)
    assert not decision.held, decision.reasons
    safety.commit(decision.action)
    return decision


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_actions_are_rejected_and_hold_the_last_command(bad):
    safety = layer(max_delta=None)
    passed(safety, [0.2, 0.3, 0.1])
    decision = safety.filter(np.array([0.0, bad, 0.0]), obs_age_s=FRESH)
    assert decision.held and "non-finite" in decision.reasons[0] and "[1]" in decision.reasons[0]
    np.testing.assert_array_equal(decision.action, [0.2, 0.3, 0.1])


def test_wrong_shape_is_rejected():
    safety = layer()
    decision = safety.filter(np.zeros(4), obs_age_s=FRESH, current=np.zeros(3))
    assert decision.held and "shape" in decision.reasons[0]


def test_clips_to_action_limits():
    safety = layer(max_delta=None)
    decision = passed(safety, [5.0, -5.0, 0.7])
    np.testing.assert_array_equal(decision.action, [1.0, -1.0, 0.5])
    assert decision.adjustments == ["limits"]


def test_limits_change_per_step_relative_to_the_last_sent_command():
    safety = layer(max_delta=(0.1, 0.2, 0.05))
    first = passed(safety, [0.5, 0.5, 0.5], current=np.zeros(3))  # before any command: relative to the measurement
    np.testing.assert_allclose(first.action, [0.1, 0.2, 0.05])
    assert "max_delta" in first.adjustments
    second = passed(safety, [0.5, -0.5, 0.06])
    np.testing.assert_allclose(second.action, [0.2, 0.0, 0.06])
    # A command that was not sent (dropped) does not move the reference.
    safety.filter(np.array([1.0, 1.0, 0.5]), obs_age_s=FRESH)
    third = passed(safety, [1.0, 1.0, 0.5])
    np.testing.assert_allclose(third.action, [0.3, 0.2, 0.11])


def test_velocity_commands_ramp_from_zero():
    safety = layer(kind="velocity", max_delta=(0.1, 0.1, 0.1))
    np.testing.assert_allclose(passed(safety, [1.0, -1.0, 0.0]).action, [0.1, -0.1, 0.0])


def test_workspace_box_in_position_mode():
    box = WorkspaceConfig(low=[-0.3, 0.0], high=[0.3, 0.4], action_dims=[0, 1])
    safety = layer(max_delta=None, workspace=box)
    decision = passed(safety, [0.9, -0.2, 0.4])
    np.testing.assert_allclose(decision.action, [0.3, 0.0, 0.4])
    assert "workspace" in decision.adjustments


def test_workspace_box_in_velocity_mode_stops_at_the_wall_and_pulls_back_in():
    box = WorkspaceConfig(low=[0.0, 0.0], high=[0.5, 0.5], action_dims=[0, 1], mode="velocity", state_dims=[3, 4])
    safety = layer(kind="velocity", max_delta=None, workspace=box, joints=())
    state = np.array([9.0, 9.0, 9.0, 0.49, 0.25])  # end effector 1 cm from the x wall
    decision = passed(safety, [0.9, 0.3, 0.0], state=state)
    predicted = state[3:5] + decision.action[:2] * PERIOD
    assert np.all(predicted <= 0.5 + 1e-12) and np.all(predicted >= 0.0)
    np.testing.assert_allclose(decision.action[:2], [(0.5 - 0.49) / PERIOD, 0.3])
    outside = np.array([0, 0, 0, 0.6, 0.25])
    back = passed(safety, [0.5, 0.0, 0.0], state=outside)
    assert back.action[0] < 0  # outside the box: the only allowed motion is back in
    assert safety.filter(np.zeros(3), obs_age_s=FRESH, state=None).held  # no position known: hold


def test_every_command_stays_inside_limits_under_random_inputs():
    rng = np.random.default_rng(0)
    box = WorkspaceConfig(low=[-0.2], high=[0.9], action_dims=[1], mode="velocity", state_dims=[0])
    safety = layer(kind="velocity", max_delta=(0.3, 0.3, 0.3), workspace=box, joints=())
    previous = np.zeros(3)
    for _ in range(500):
        action = rng.normal(scale=3.0, size=3)
        decision = safety.filter(action, obs_age_s=FRESH, state=rng.uniform(-1, 2, size=1))
        assert np.all(decision.action >= safety.low) and np.all(decision.action <= safety.high)
        if "workspace" not in decision.adjustments:  # the box may brake harder than max_delta, never the reverse
            assert np.all(np.abs(decision.action - previous) <= 0.3 + 1e-12)
        safety.commit(decision.action)
        previous = decision.action


def test_watchdog_on_observation_age_with_a_real_clock():
    safety = layer(watchdog_ms=150.0)
    passed(safety, [0.0, 0.0, 0.0])
    stamp = time.time()
    obs = Observation(
        images={},
        proprio=np.zeros(3, np.float32),
        language="",
        stamps={"camera:front": stamp},
        received={"camera:front": stamp},
    )
    assert not safety.filter(np.zeros(3), obs_age_s=obs.age()).held
    while time.time() - stamp < 0.16:
        time.sleep(0.005)
    decision = safety.filter(np.zeros(3), obs_age_s=obs.age())
    assert decision.held and "observation stale" in decision.reasons[0]
    assert safety.filter(np.zeros(3), obs_age_s=None).reasons == ["no observation yet"]
    assert safety.filter(np.zeros(3), obs_age_s=float("nan")).held  # an unreadable age is not fresh


def test_watchdog_on_inference_overrun_defaults_to_one_period():
    safety = layer()
    assert safety.inference_budget_s == pytest.approx(PERIOD)
    passed(safety, [0.0, 0.0, 0.0], inference_s=PERIOD * 0.9)
    decision = safety.filter(np.full(3, 0.05), obs_age_s=FRESH, inference_s=PERIOD * 1.1)
    assert decision.held and "inference overran" in decision.reasons[0]
    assert layer(budget_ms=30).filter(np.zeros(3), obs_age_s=FRESH, inference_s=0.031).held


def test_disconnected_bridge_holds():
    safety = layer()
    decision = safety.filter(np.zeros(3), obs_age_s=FRESH, connected=False, current=np.zeros(3))
    assert decision.held and decision.reasons == ["bridge disconnected"]


@pytest.mark.parametrize(
    "kind,hold,expected",
    [
        ("position", "auto", [0.1, 0.1, 0.05]),  # last sent
        ("position", "last", [0.1, 0.1, 0.05]),
        ("position", "current", [0.3, -0.2, 0.1]),  # measured
        ("position", "zero", [0.0, 0.0, 0.0]),
        ("velocity", "auto", [0.0, 0.0, 0.0]),
    ],
)
def test_hold_actions(kind, hold, expected):
    safety = layer(kind=kind, hold=hold, max_delta=None)
    passed(safety, [0.1, 0.1, 0.05])
    decision = safety.filter(np.zeros(3), obs_age_s=1.0, current=np.array([0.3, -0.2, 0.1]))
    assert decision.held
    np.testing.assert_allclose(decision.action, expected)


def test_hold_before_anything_is_known_sends_nothing():
    decision = layer(hold="last").filter(np.zeros(3), obs_age_s=None)
    assert decision.held and decision.action is None


def test_estop_latches_until_reset():
    safety = layer(max_delta=None)
    passed(safety, [0.4, 0.4, 0.4])
    caller = threading.Thread(target=safety.latch, args=("/voltron/estop called",))  # services call from elsewhere
    caller.start()
    caller.join()
    assert safety.latched == "/voltron/estop called"
    for _ in range(20):  # fresh observations and good actions do not unlatch it
        decision = safety.filter(np.full(3, 0.1), obs_age_s=FRESH)
        assert decision.held and "e-stop latched" in decision.reasons[0]
        np.testing.assert_allclose(decision.action, [0.4, 0.4, 0.4])
    safety.latch("second call")  # a second trigger keeps the first reason
    assert safety.latched == "/voltron/estop called"
    safety.reset()
    assert safety.latched is None
    assert not safety.filter(np.full(3, 0.1), obs_age_s=FRESH).held


def test_sigterm_and_sigint_set_the_stop_event_and_restore_handlers():
    before = signal.getsignal(signal.SIGTERM)
    for signum in (signal.SIGTERM, signal.SIGINT):
        with StopOnSignals() as stopper:
            os.kill(os.getpid(), signum)
            assert stopper.stop.wait(2.0), "the signal did not set the stop event"
            assert stopper.signum == signum
    assert signal.getsignal(signal.SIGTERM) == before
