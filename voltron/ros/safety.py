"""The safety layer every backend shares: it decides what may reach the robot, and holds when in doubt.

Rules, in the order they apply to a policy action:
1. hold instead when the e-stop is latched, the bridge is disconnected, an observation is older than the watchdog
   (`safety.watchdog_ms`), or inference overran its budget (`safety.inference_budget_ms`, default one period);
2. reject (hold) an action with NaN/Inf or the wrong shape;
3. clip to the action limits (`action.low`/`action.high`);
4. limit the change per step (`action.max_delta`) relative to the last command actually sent (or the measured
   position before the first one);
5. keep the end effector inside the workspace box (`safety.workspace`);
6. clip to the limits again, so every command sent is inside them whatever the rules above did.

"Hold" is `action.hold`: the last command sent (position control), zeros (velocity control) or the measured
position. The soft e-stop latches until `reset()`; `StopOnSignals` turns SIGINT/SIGTERM into a clean stop with a
final hold. The hardware e-stop stays authoritative: this layer only decides what the policy may send.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field

import numpy as np

from voltron.ros.config import ActionConfig, SafetyConfig

log = logging.getLogger("voltron.ros.safety")


@dataclass
class SafetyDecision:
    action: np.ndarray | None  # (A,) float64 to send; None when holding is impossible (nothing known to hold)
    held: bool  # True when the policy's action was replaced by the hold action
    reasons: list[str] = field(default_factory=list)  # why it held
    adjustments: list[str] = field(default_factory=list)  # which rules changed a passed action


class SafetyLayer:
    """Stateful filter between `select_action` and `send_action`. Thread-safe for `latch`/`reset`."""

    def __init__(self, action: ActionConfig, safety: SafetyConfig, period_s: float):
        self.action_cfg = action
        self.cfg = safety
        self.period_s = float(period_s)
        self.low = np.asarray(action.low, dtype=np.float64)
        self.high = np.asarray(action.high, dtype=np.float64)
        self.max_delta = None if action.max_delta is None else np.asarray(action.max_delta, dtype=np.float64)
        self.watchdog_s = safety.watchdog_ms / 1000.0
        budget_ms = safety.inference_budget_ms
        self.inference_budget_s = self.period_s if budget_ms is None else budget_ms / 1000.0
        self.hold_mode = action.hold_mode()
        self.last_sent: np.ndarray | None = None
        self._lock = threading.Lock()
        self._latched: str | None = None
        self._holding: tuple[str, ...] = ()  # reasons of the current hold streak, to log transitions only

    @property
    def dim(self) -> int:
        return self.low.size

    # --- soft e-stop ------------------------------------------------------------------------------------------------
    def latch(self, reason: str = "soft e-stop") -> None:
        with self._lock:
            if self._latched is None:
                self._latched = reason
                log.warning("e-stop latched: %s", reason)

    def reset(self) -> None:
        with self._lock:
            if self._latched is not None:
                log.warning("e-stop reset (was: %s)", self._latched)
            self._latched = None

    @property
    def latched(self) -> str | None:
        """The latch reason, or None when not latched."""
        with self._lock:
            return self._latched

    # --- rules ------------------------------------------------------------------------------------------------------
    def watchdog_reasons(
        self, obs_age_s: float | None, inference_s: float | None = None, connected: bool = True
    ) -> list[str]:
        """Why the policy's output must not be sent now (empty list: it may)."""
        reasons = []
        latched = self.latched
        if latched is not None:
            reasons.append(f"e-stop latched ({latched})")
        if not connected:
            reasons.append("bridge disconnected")
        if obs_age_s is None:
            reasons.append("no observation yet")
        elif not obs_age_s <= self.watchdog_s:
            reasons.append(f"observation stale: {obs_age_s * 1e3:.0f} ms > watchdog {self.watchdog_s * 1e3:.0f} ms")
        if inference_s is not None and inference_s > self.inference_budget_s:
            reasons.append(
                f"inference overran: {inference_s * 1e3:.0f} ms > budget {self.inference_budget_s * 1e3:.0f} ms"
            )
        return reasons

    def hold_action(self, current: np.ndarray | None = None) -> np.ndarray | None:
        """The command that holds the robot: see `action.hold`. None if no position to hold is known yet."""
        if self.hold_mode == "zero":
            target = np.zeros(self.dim)
        elif self.hold_mode == "current":
            target = current if current is not None else self.last_sent
        else:  # last
            target = self.last_sent if self.last_sent is not None else current
        if target is None:
            return None
        return np.clip(np.asarray(target, dtype=np.float64), self.low, self.high)

    def filter(
        self,
        action: np.ndarray | None,
        *,
        obs_age_s: float | None,
        inference_s: float | None = None,
        connected: bool = True,
        current: np.ndarray | None = None,
        state: np.ndarray | None = None,
    ) -> SafetyDecision:
        """Apply every rule to one policy action (None: no action was computed, e.g. the watchdog skipped inference).

        current: measured positions of `action.joints` (hold=current, first step-limit reference).
        state: the proprio vector (workspace velocity mode reads the end-effector position from it).
        """
        reasons = self.watchdog_reasons(obs_age_s, inference_s, connected)
        if not reasons:
            if action is None:
                reasons.append("no action computed")
            else:
                action = np.asarray(action, dtype=np.float64)
                if action.shape != (self.dim,):
                    reasons.append(f"action rejected: shape {action.shape}, expected ({self.dim},)")
                elif not np.all(np.isfinite(action)):
                    bad = np.flatnonzero(~np.isfinite(action)).tolist()
                    reasons.append(f"action rejected: non-finite values at components {bad}")
        if reasons:
            return self._hold(reasons, current)
        self._log_transition(())

        adjustments = []
        safe = np.clip(action, self.low, self.high)
        if not np.array_equal(safe, action):
            adjustments.append("limits")
        reference = self.last_sent
        if reference is None:
            reference = current if self.action_cfg.kind == "position" else np.zeros(self.dim)
        if self.max_delta is not None and reference is not None:
            stepped = np.clip(safe, reference - self.max_delta, reference + self.max_delta)
            if not np.array_equal(stepped, safe):
                adjustments.append("max_delta")
            safe = stepped
        workspace = self.cfg.workspace
        if workspace is not None:
            boxed = self._apply_workspace(safe, state)
            if boxed is None:
                return self._hold(["workspace: no end-effector position in proprio"], current)
            if not np.array_equal(boxed, safe):
                adjustments.append("workspace")
            safe = boxed
        final = np.clip(safe, self.low, self.high)
        return SafetyDecision(action=final, held=False, adjustments=adjustments)

    def _apply_workspace(self, action: np.ndarray, state: np.ndarray | None) -> np.ndarray | None:
        ws = self.cfg.workspace
        dims = np.asarray(ws.action_dims)
        low, high = np.asarray(ws.low, dtype=np.float64), np.asarray(ws.high, dtype=np.float64)
        out = action.copy()
        if ws.mode == "position":
            out[dims] = np.clip(action[dims], low, high)
            return out
        if state is None or len(state) <= max(ws.state_dims):
            return None
        position = np.asarray(state, dtype=np.float64)[np.asarray(ws.state_dims)]
        predicted = position + action[dims] * self.period_s
        out[dims] = (np.clip(predicted, low, high) - position) / self.period_s
        return out

    def _hold(self, reasons: list[str], current: np.ndarray | None) -> SafetyDecision:
        self._log_transition(tuple(reasons))
        return SafetyDecision(action=self.hold_action(current), held=True, reasons=reasons)

    def _log_transition(self, reasons: tuple[str, ...]) -> None:
        # Log when a hold starts, when its cause changes kind, and when it ends: not every tick.
        kinds = tuple(r.split(":")[0].split(" (")[0] for r in reasons)
        if kinds != tuple(r.split(":")[0].split(" (")[0] for r in self._holding):
            if reasons:
                log.warning("holding: %s", "; ".join(reasons))
            else:
                log.info("resuming policy actions")
        self._holding = reasons

    def commit(self, sent: np.ndarray | None) -> None:
        """Record the command that actually reached the bridge (the step limit is relative to it)."""
        if sent is not None:
            self.last_sent = np.asarray(sent, dtype=np.float64).copy()


class StopOnSignals:
    """Within this context SIGINT/SIGTERM set `stop` instead of killing the process.

    The server loop waits on `stop` between ticks, so a signal wakes it at once; it then leaves through its clean-up,
    which sends a final hold. The handler does nothing else on purpose: sending from inside a signal handler could
    deadlock on a lock that the interrupted code holds. Handlers can only be installed from the main thread;
    elsewhere this context only provides the event.
    """

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.stop = threading.Event()
        self.signum: int | None = None
        self._signals = signals
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.signum = signum
        self.stop.set()
        log.warning("received %s: holding and stopping", signal.Signals(signum).name)

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
