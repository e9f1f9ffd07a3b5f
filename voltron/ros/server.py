"""The policy server: a fixed-rate loop from the latest observation through the policy and safety layer to the robot.

The policy is a `voltron.policy.base.Policy`; before the first tick it is checked against the robot (`check_fits`:
action size, proprio size, cameras) and warmed up on the first observation. Each tick: take the latest observation;
unless the watchdog already says hold, run `select_action`; filter through `SafetyLayer`; send (unless `dry_run`);
append one JSON line of latency figures. Ticks sit on a fixed grid
(start + k * period): a tick that overruns counts as a missed deadline and the loop skips to the next grid point
rather than bursting to catch up. Every exit path (max steps, max time, SIGINT/SIGTERM, an exception) sends a final
hold before disconnecting.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from voltron.policy.base import EnvSpec, Policy, check_fits
from voltron.ros.bridge import Observation, RobotBridge
from voltron.ros.config import RobotConfig
from voltron.ros.safety import SafetyLayer, StopOnSignals

log = logging.getLogger("voltron.ros.server")
POSE_SIZE = 7  # a PoseStamped state source: position xyz, orientation xyzw


def robot_spec(config: RobotConfig, obs: Observation | None = None) -> EnvSpec:
    """What the robot gives a policy and takes from it, for `check_fits`: its cameras, `action.dim`, and the proprio
    size of `obs`, or without one what the state sources add up to (unknown while a JointState lists no joints)."""
    if obs is not None:
        proprio = int(np.size(obs.proprio))
    else:
        sizes = [POSE_SIZE if s.type.endswith("PoseStamped") else len(s.joints) * len(s.fields) for s in config.state]
        joint_states = [s for s in config.state if not s.type.endswith("PoseStamped")]
        proprio = None if any(not s.joints for s in joint_states) else sum(sizes)
    return EnvSpec(f"robot {config.name!r}", config.action.dim, {"proprio": proprio}, tuple(config.cameras))


@dataclass
class ServeOptions:
    rate_hz: float = 15.0
    dry_run: bool = False  # compute, filter and log actions, but send nothing
    max_steps: int | None = None
    max_seconds: float | None = None
    log_path: str | os.PathLike | None = None  # JSONL, one record per tick
    first_observation_timeout_s: float = 10.0
    # After the final hold, keep the connection this long before disconnecting: a bridge that closes right after
    # publishing can tear down its publisher before the hold reaches the robot (seen with rosbridge over loopback).
    hold_linger_s: float = 0.25

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass
class ServeSummary:
    steps: int = 0
    sent: int = 0
    held: int = 0
    dropped: int = 0  # commands the bridge could not send (disconnected)
    missed_deadlines: int = 0
    warmup_s: float = 0.0
    stop_reason: str = ""
    estop_latched: bool = False
    hold_reasons: dict[str, int] = field(default_factory=dict)
    inference: str | None = None  # the policy's encoder inference path, e.g. "int8/onnxruntime" (policy.inference)

    def as_dict(self) -> dict:
        return asdict(self)


def _squeeze_action(action) -> np.ndarray:
    array = np.asarray(action, dtype=np.float64)
    if array.ndim == 2:  # batched (1, A) or a chunk (T, A): execute the first row
        array = array[0]
    return array


class PolicyServer:
    """Runs one policy on one bridge. `run()` blocks until a bound or a stop signal ends it."""

    def __init__(self, policy: Policy, bridge: RobotBridge, options: ServeOptions):
        if not isinstance(policy, Policy):
            raise TypeError(f"the policy server runs a voltron.policy.base.Policy; got {type(policy).__name__}")
        self.policy = policy
        self.bridge = bridge
        self.options = options
        cfg = bridge.config
        self.safety = SafetyLayer(cfg.action, cfg.safety, options.period_s)
        self.summary = ServeSummary(inference=policy.inference)
        self._estop_forwarded = False
        self._log_file = None

    # --- pieces -----------------------------------------------------------------------------------------------------
    def warm_up(self, obs: Observation) -> float:
        """Check the policy against the robot on its first observation, then warm it up (it is reset after)."""
        check_fits(self.policy, robot_spec(self.bridge.config, obs))
        start = time.perf_counter()
        self.policy.warmup(obs.policy_input())
        return time.perf_counter() - start

    def send_hold(self, reason: str) -> bool:
        """Send the hold action once (not in dry run); used on every exit path."""
        obs = self.bridge.get_observation()
        hold = self.safety.hold_action(obs.current if obs is not None else None)
        if hold is None or self.options.dry_run:
            return False
        ok = self.bridge.send_action(hold, self.options.period_s)
        if ok:
            self.safety.commit(hold)
        log.warning("sent hold (%s): %s", reason, "ok" if ok else "dropped, bridge disconnected")
        return ok

    def step(self, index: int) -> dict:
        """One tick: observe, infer (unless the watchdog already holds), filter, send. Returns its log record."""
        period = self.options.period_s
        t_start = time.time()
        obs = self.bridge.get_observation()
        connected = self.bridge.is_connected
        obs_age = obs.age(t_start) if obs is not None else None
        pre_reasons = self.safety.watchdog_reasons(obs_age, None, connected)

        action, inference_s, error = None, None, None
        if not pre_reasons:  # inference on an observation that would be rejected anyway only costs time
            t_infer = time.perf_counter()
            try:
                action = _squeeze_action(self.policy.select_action(obs.policy_input()))
            except Exception as err:  # a failing policy holds the robot and is logged; it does not kill the loop
                log.exception("select_action failed")
                error = f"select_action raised {type(err).__name__}: {err}"
            inference_s = time.perf_counter() - t_infer

        t_filter = time.time()
        # The watchdog judges the observation's age when the command would leave, not when the tick began.
        decision = self.safety.filter(
            action,
            obs_age_s=obs.age(t_filter) if obs is not None else None,
            inference_s=inference_s,
            connected=connected,
            current=obs.current if obs is not None else None,
            state=obs.proprio if obs is not None else None,
        )
        if error is not None:
            decision.reasons = [error if r == "no action computed" else r for r in decision.reasons]

        latched = self.safety.latched
        if latched is not None and not self._estop_forwarded:
            self._estop_forwarded = True
            self.summary.estop_latched = True
            if not self.options.dry_run and self.bridge.call_robot_estop():
                log.warning("called the robot's stop service %s", self.bridge.config.estop.robot_service)
        elif latched is None:
            self._estop_forwarded = False

        sent, send_s = False, 0.0
        if decision.action is not None and not self.options.dry_run:
            t_send = time.perf_counter()
            sent = self.bridge.send_action(decision.action, period)
            send_s = time.perf_counter() - t_send
            if sent:
                self.safety.commit(decision.action)
            else:
                self.summary.dropped += 1
        elif decision.action is not None:
            self.safety.commit(decision.action)  # dry run: behave as if it had been sent
        t_end = time.time()

        self.summary.steps += 1
        self.summary.sent += int(sent)
        if decision.held:
            self.summary.held += 1
            for reason in decision.reasons:
                key = reason.split(":")[0].split(" (")[0]
                self.summary.hold_reasons[key] = self.summary.hold_reasons.get(key, 0) + 1
        ages = obs.ages(t_filter) if obs is not None else {}
        image_stamp = obs.newest_image_stamp() if obs is not None else None
        return {
            "step": index,
            "t": t_start,
            "obs_age_ms": None if obs_age is None else round(obs_age * 1e3, 3),
            "stream_ages_ms": {k: round(v * 1e3, 3) for k, v in ages.items()},
            "inference_ms": None if inference_s is None else round(inference_s * 1e3, 3),
            "send_ms": round(send_s * 1e3, 3),
            "tick_ms": round((t_end - t_start) * 1e3, 3),
            # Observation-to-command on this side: newest image stamp to the command leaving (robot clock).
            "obs_to_command_ms": None if image_stamp is None or not sent else round((t_end - image_stamp) * 1e3, 3),
            "image_stamp": image_stamp,
            "held": decision.held,
            "reasons": decision.reasons,
            "adjusted": decision.adjustments,
            "action": None if decision.action is None else [round(float(v), 6) for v in decision.action],
            "sent": sent,
            "dry_run": self.options.dry_run,
            "latched": latched is not None,
            "connected": connected,
        }

    # --- the loop ---------------------------------------------------------------------------------------------------
    def run(self) -> ServeSummary:
        opts = self.options
        period = opts.period_s
        bridge = self.bridge
        bridge.serve_estop(self.safety.latch, self.safety.reset)
        log_path = Path(opts.log_path) if opts.log_path else None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(log_path, "a", buffering=1)  # line-buffered: readable while running, complete on kill

        try:
            # A signal only sets the stop event (a handler that sent itself could deadlock on a lock the interrupted
            # code holds); the wait below wakes at once, and the finally clause sends the hold.
            with StopOnSignals() as stopper:
                obs = bridge.wait_for_observation(opts.first_observation_timeout_s)
                self.summary.warmup_s = self.warm_up(obs)
                log.info(
                    "warm-up took %.2f s; serving at %.1f Hz%s",
                    self.summary.warmup_s,
                    opts.rate_hz,
                    " (dry run)" if opts.dry_run else "",
                )
                self._write(
                    {
                        "event": "start",
                        "t": time.time(),
                        "rate_hz": opts.rate_hz,
                        "dry_run": opts.dry_run,
                        "warmup_s": round(self.summary.warmup_s, 4),
                        "robot": bridge.config.name,
                        "inference": self.summary.inference,
                    }
                )
                start = time.monotonic()
                next_tick = start
                index = 0
                while True:
                    if stopper.stop.is_set():
                        self.summary.stop_reason = f"signal {stopper.signum}"
                        break
                    if opts.max_steps is not None and index >= opts.max_steps:
                        self.summary.stop_reason = "max_steps"
                        break
                    if opts.max_seconds is not None and time.monotonic() - start >= opts.max_seconds:
                        self.summary.stop_reason = "max_seconds"
                        break
                    record = self.step(index)
                    index += 1
                    next_tick += period
                    now = time.monotonic()
                    if now > next_tick:  # overran: skip to the next grid point, never burst
                        missed = int((now - next_tick) // period) + 1
                        self.summary.missed_deadlines += 1
                        record["missed_deadline"] = True
                        next_tick += missed * period
                    self._write(record)
                    stopper.stop.wait(max(0.0, next_tick - time.monotonic()))
        except BaseException as err:
            self.summary.stop_reason = f"error: {type(err).__name__}: {err}"
            raise
        finally:
            try:
                if self.send_hold(self.summary.stop_reason or "exit"):
                    time.sleep(self.options.hold_linger_s)
            finally:
                self._write({"event": "stop", "t": time.time(), **self.summary.as_dict()})
                if self._log_file is not None:
                    self._log_file.close()
                    self._log_file = None
        return self.summary

    def _write(self, record: dict) -> None:
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")


def serve(policy: Policy, bridge: RobotBridge, options: ServeOptions) -> ServeSummary:
    """Connect (if needed), run the loop, always disconnect."""
    connected_here = not bridge.is_connected
    if connected_here:
        bridge.connect()
    try:
        return PolicyServer(policy, bridge, options).run()
    finally:
        if connected_here:
            bridge.disconnect()
