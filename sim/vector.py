"""N simulation environments in worker processes: stepped in lockstep (`reset`/`step`, one batched policy call for
all of them), or one at a time (`send`/`receive`), so a policy acts on one env's frame while the others render."""

from __future__ import annotations

import faulthandler
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from multiprocessing.connection import wait as wait_for_any
from typing import Any

import numpy as np


class WorkerError(RuntimeError):
    """A worker process raised, crashed or stopped answering. The vector env is closed when this is raised."""

    def __init__(self, index: int, message: str, worker_traceback: str = "") -> None:
        self.index = index
        self.worker_traceback = worker_traceback
        text = f"worker {index}: {message}"
        if worker_traceback:
            text += f"\n--- traceback from worker {index} ---\n{worker_traceback.rstrip()}"
        super().__init__(text)


class WorkerTimeout(WorkerError, TimeoutError):
    """A worker did not answer within the timeout."""


def _worker(index: int, env_fn: Callable[[], Any], conn: Any, fault_path: str) -> None:
    # The parent handles Ctrl-C and closes us; a hard crash (segfault) leaves its Python stack in fault_path.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fault_file = open(fault_path, "w")  # noqa: SIM115  (must stay open for the life of the process)
    faulthandler.enable(file=fault_file)
    try:
        env = env_fn()
        conn.send(("ok", {"observation_space": env.observation_space, "action_space": env.action_space}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            command, argument = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        try:
            if command == "reset":
                result = env.reset(seed=argument)
            elif command == "step":
                result = env.step(argument)
            elif command == "close":
                env.close()
                conn.send(("ok", None))
                break
            else:
                raise ValueError(f"unknown command {command!r}; expected reset, step or close")
            conn.send(("ok", result))
        except BaseException:
            conn.send(("error", traceback.format_exc()))


def _stack(items: Sequence[Any]) -> Any:
    """Stack per-env values: arrays/numbers -> one (N, ...) array, anything else -> a list."""
    if all(isinstance(item, np.ndarray | np.generic | int | float | bool) for item in items):
        try:
            return np.stack([np.asarray(item) for item in items])
        except ValueError:  # ragged shapes
            return list(items)
    return list(items)


def _stack_dicts(dicts: Sequence[dict]) -> dict[str, Any]:
    keys = [key for key in dicts[0] if all(key in d for d in dicts)]
    return {key: _stack([d[key] for d in dicts]) for key in keys}


class VectorSimEnv:
    """N environments, each in its own process, reset and stepped together.

    `step(actions)` takes (N, 4) actions and returns batched results: obs {"image": (N, H, W, 3) uint8,
    "proprio": (N, 4) float32, "language": list of N str}, rewards (N,), terminated (N,), truncated (N,), and an
    info dict of (N, ...) arrays ("success", "state" and MetaWorld's metrics) plus "finished" (N,) bool.

    An environment that has terminated or truncated is not stepped again until the next `reset`: its slot repeats
    the final observation and info, with reward 0 and its done flags kept, so a batched evaluation simply steps
    until `np.all(terminated | truncated)`.

    `send(i, "reset" | "step", seed | action)` and `receive() -> (i, answer)` drive the envs one at a time instead
    (what evaluation does: no env waits for the slowest one, and a finished episode's env starts the next at once).
    Do not mix the two ways while a request is in flight.

    Failures never hang the caller: an exception in a worker is re-raised here as `WorkerError` carrying the
    worker's traceback; a worker that dies (segfault, kill) is reported with its exit signal; a worker silent for
    longer than `step_timeout_s` (or `start_timeout_s` while starting) raises `WorkerTimeout`. Either way all
    workers are shut down first, because the batch can no longer stay in lockstep.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], Any]],
        *,
        step_timeout_s: float = 60.0,
        start_timeout_s: float = 180.0,
        start_method: str = "spawn",
    ) -> None:
        if not env_fns:
            raise ValueError("VectorSimEnv needs at least one environment factory")
        # spawn (not fork): a forked child would inherit the parent's GL and MuJoCo state, which is not fork-safe.
        context = mp.get_context(start_method)
        self.num_envs = len(env_fns)
        self.step_timeout_s = step_timeout_s
        self.closed = False
        self._fault_dir = tempfile.mkdtemp(prefix="voltron-vector-")
        self._conns: list[Any] = []
        self._processes: list[Any] = []
        self._finished = np.zeros(self.num_envs, dtype=bool)
        self._last: list[tuple | None] = [None] * self.num_envs
        self._pending: dict[int, tuple[str, float]] = {}  # env index -> (command, when sent) awaiting `receive`
        for index, env_fn in enumerate(env_fns):
            parent_conn, child_conn = context.Pipe()
            process = context.Process(
                target=_worker,
                args=(index, env_fn, child_conn, self._fault_path(index)),
                name=f"voltron-sim-worker-{index}",
                daemon=True,
            )
            process.start()
            child_conn.close()  # so the parent sees EOF when the worker dies
            self._conns.append(parent_conn)
            self._processes.append(process)
        ready = self._gather(range(self.num_envs), "start", start_timeout_s)
        self.observation_space = ready[0]["observation_space"]
        self.action_space = ready[0]["action_space"]

    @classmethod
    def from_task(
        cls, task: str, num_envs: int, *, vector_kwargs: dict | None = None, **env_kwargs: Any
    ) -> VectorSimEnv:
        """`num_envs` copies of `SimEnv(task, **env_kwargs)`."""
        from voltron.sim.env import SimEnv

        return cls([partial(SimEnv, task, **env_kwargs) for _ in range(num_envs)], **(vector_kwargs or {}))

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def _fault_path(self, index: int) -> str:
        return os.path.join(self._fault_dir, f"worker-{index}.fault")

    # -- messaging --------------------------------------------------------------------------------------------
    def _fail(self, error: WorkerError) -> None:
        self.close(graceful=False)
        raise error

    def _death_report(self, index: int, what: str) -> WorkerError:
        process = self._processes[index]
        process.join(timeout=1.0)
        code = process.exitcode
        if code is not None and code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        try:
            with open(self._fault_path(index)) as f:
                fault = f.read()
        except OSError:
            fault = ""
        return WorkerError(index, f"process {process.pid} {how} during {what}", fault)

    def _send(self, index: int, command: str, argument: Any) -> None:
        try:
            self._conns[index].send((command, argument))
        except (BrokenPipeError, EOFError, OSError):
            self._fail(self._death_report(index, command))

    def _recv(self, index: int, what: str) -> Any:
        """The answer waiting on env `index`'s pipe (a worker's error or death raises, after closing every worker)."""
        try:
            status, payload = self._conns[index].recv()
        except (EOFError, OSError):
            self._fail(self._death_report(index, what))
        if status == "error":
            self._fail(WorkerError(index, f"raised during {what}", payload))
        return payload

    def _gather(self, indices: Sequence[int] | range, what: str, timeout_s: float) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        results = []
        for index in indices:
            conn, process = self._conns[index], self._processes[index]
            while True:
                if conn.poll(0.05):
                    results.append(self._recv(index, what))
                    break
                if not process.is_alive() and not conn.poll(0):
                    self._fail(self._death_report(index, what))
                if time.monotonic() > deadline:
                    self._fail(WorkerTimeout(index, f"no answer to {what} within {timeout_s:.0f} s"))
        return results

    # -- one env at a time ------------------------------------------------------------------------------------
    def send(self, index: int, command: str, argument: Any = None) -> None:
        """Ask env `index` to "reset" (argument: its seed) or "step" (argument: its action) without waiting; its
        answer, what `SimEnv.reset`/`step` returns, comes from `receive`."""
        self._check_open()
        if command not in ("reset", "step"):
            raise ValueError(f"unknown command {command!r}; expected reset or step")
        if index in self._pending:
            raise RuntimeError(f"env {index} already has a {self._pending[index][0]} in flight; receive() it first")
        self._send(index, command, np.asarray(argument, dtype=np.float32) if command == "step" else argument)
        self._pending[index] = (command, time.monotonic())

    def receive(self) -> tuple[int, Any]:
        """(index, answer) of the env, among those with a request in flight, that answered first (the oldest
        request when several have). A worker silent for `step_timeout_s` raises WorkerTimeout, a dead one
        WorkerError, after every worker is shut down."""
        self._check_open()
        if not self._pending:
            raise RuntimeError("no request in flight: send() one first")
        while True:
            ready = wait_for_any([self._conns[index] for index in self._pending], timeout=0.05)
            if ready:
                index = min((self._conns.index(conn) for conn in ready), key=lambda i: self._pending[i][1])
                command, _ = self._pending.pop(index)
                return index, self._recv(index, command)
            now = time.monotonic()
            for index, (command, sent) in self._pending.items():
                if now - sent > self.step_timeout_s:
                    self._fail(WorkerTimeout(index, f"no answer to {command} within {self.step_timeout_s:.0f} s"))

    # -- Gymnasium-style API ----------------------------------------------------------------------------------
    def reset(self, seed: int | Sequence[int | None] | None = None) -> tuple[dict, dict]:
        """Reset every env; an int seed s gives env i the seed s + i."""
        self._check_open()
        if seed is None or isinstance(seed, int | np.integer):
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} environments")
        for index, env_seed in enumerate(seeds):
            self._send(index, "reset", env_seed)
        results = self._gather(range(self.num_envs), "reset", self.step_timeout_s)
        self._finished[:] = False
        observations = [obs for obs, _ in results]
        infos = [info for _, info in results]
        self._last = [(obs, 0.0, False, False, info) for obs, info in results]
        info = _stack_dicts(infos)
        info["finished"] = self._finished.copy()
        return _stack_dicts(observations), info

    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        self._check_open()
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] != self.num_envs:
            raise ValueError(f"actions have shape {actions.shape}; expected ({self.num_envs}, action_dim)")
        if any(last is None for last in self._last):
            raise RuntimeError("call reset() before step()")
        active = [i for i in range(self.num_envs) if not self._finished[i]]
        for index in active:
            self._send(index, "step", actions[index])
        for index, result in zip(active, self._gather(active, "step", self.step_timeout_s)):
            self._last[index] = result
            if result[2] or result[3]:
                self._finished[index] = True
        results = []
        for index, (obs, reward, terminated, truncated, info) in enumerate(self._last):
            results.append((obs, reward if index in active else 0.0, terminated, truncated, info))
        info = _stack_dicts([r[4] for r in results])
        info["finished"] = self._finished.copy()
        return (
            _stack_dicts([r[0] for r in results]),
            np.asarray([r[1] for r in results], dtype=np.float32),
            np.asarray([r[2] for r in results], dtype=bool),
            np.asarray([r[3] for r in results], dtype=bool),
            info,
        )

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this VectorSimEnv is closed (a worker failed or close() was called)")

    def close(self, graceful: bool = True, timeout_s: float = 10.0) -> None:
        """Stop every worker: ask politely first (when `graceful`), then terminate, then kill."""
        if self.closed:
            return
        self.closed = True
        if graceful:
            for conn, process in zip(self._conns, self._processes):
                if process.is_alive():
                    try:
                        conn.send(("close", None))
                    except (BrokenPipeError, EOFError, OSError):
                        pass
        deadline = time.monotonic() + (timeout_s if graceful else 0.0)
        for process in self._processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.terminate()
                process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
        for conn in self._conns:
            conn.close()
        shutil.rmtree(self._fault_dir, ignore_errors=True)

    def __enter__(self) -> VectorSimEnv:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "closed", True):
            self.close(graceful=False)
