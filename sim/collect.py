"""Scripted-expert demonstration collection: successful MetaWorld rollouts written as household-demo HDF5.

Two kinds of noise: `action_noise` perturbs the expert's action, which is then both executed and recorded (noisy
demos); `dart_noise` (DART, Laskey et al. 2017) perturbs only the executed action, and the demo records the expert's
clean action there, so the demos show how the expert recovers from the small misses a cloned policy makes.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from voltron.datasets.demos import Episode, write_demos
from voltron.errors import UserError
from voltron.sim.env import SimEnv
from voltron.sim.experts import expert_name, make_expert, rollout
from voltron.sim.tasks import get_task

GIVE_UP_AFTER = 10  # attempts without a single success before collection stops
DART_STREAM = 1  # an attempt's DART noise is drawn from the seed (seed, attempt, DART_STREAM): apart from the expert's


@dataclass
class CollectStats:
    """What a collection run did; `success_rate` is the expert's, over every attempted episode."""

    attempts: int = 0
    successes: int = 0

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# What each action dimension is, per task family (the kitchen's are joint velocities, named like its proprio).
ACTION_KEYS = {"metaworld": ["dx", "dy", "dz", "gripper"]}


def check_noise(name: str, value: float) -> float:
    """`value` as a float if it is a usable noise standard deviation (finite, >= 0); a one-line UserError if not."""
    try:
        sigma = float(value)
    except (TypeError, ValueError):
        sigma = math.nan
    if not (math.isfinite(sigma) and sigma >= 0):
        raise UserError(key=name, value=value, expected="a finite standard deviation >= 0 (in action units), e.g. 0.1")
    return sigma


class DartExecution:
    """`env` whose `step` executes the action plus zero-mean Gaussian noise of std `sigma` (clipped to the action
    range [-1, 1]); every other attribute is the env's. `rollout` records the action it was given (the expert's
    clean one), so the demo's labels stay clean while the trajectory drifts as a cloned policy's would."""

    def __init__(self, env: SimEnv, sigma: float, rng: np.random.Generator) -> None:
        self.env, self.sigma, self.rng = env, sigma, rng

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        noise = self.rng.normal(0.0, self.sigma, size=np.shape(action))
        return self.env.step(np.clip(action + noise, -1.0, 1.0).astype(np.float32))

    def __getattr__(self, name: str):
        return getattr(self.env, name)


def env_args_for(env: SimEnv, *, action_noise: float, seed: int, dart_noise: float = 0.0) -> dict:
    """The `data` attribute `env_args`: enough to rebuild the environment the demos came from."""
    env_kwargs = {
        "camera": env.camera,
        "image_size": list(env.image_shape),
        "horizon": env.horizon,
        "multisamples": env.multisamples,
        "mesh_cell": env.mesh_cell,
    }
    return {
        "env_name": env.task.env_id,
        "env_type": env.task.family,
        "env_kwargs": env_kwargs,
        "task": env.task.name,
        **env_kwargs,
        "language": env.task.language,
        "fps": env.metadata.get("render_fps"),  # steps per second, for formats that store a frame rate (LeRobot)
        "proprio_keys": list(env.task.proprio_keys),
        "action_space": {
            "shape": [env.task.action_dim],
            "low": -1.0,
            "high": 1.0,
            "keys": ACTION_KEYS.get(env.task.family, [f"{key}_velocity" for key in env.task.proprio_keys]),
        },  # fmt: skip
        "cameras": [env.camera, *(view for view in env.task.views if view != env.camera)],
        "expert": expert_name(env.task),
        "action_noise": action_noise,
        "dart_noise": dart_noise,  # std of the noise executed but not recorded (DART); 0: the expert ran clean
        "seed": seed,
        "metaworld_version": _version("metaworld"),
        "mujoco_version": _version("mujoco"),
        **({"gymnasium_robotics_version": _version("gymnasium-robotics")} if env.task.family == "kitchen" else {}),
    }


def iter_successful_episodes(
    env: SimEnv,
    n_episodes: int,
    stats: CollectStats,
    *,
    action_noise: float = 0.0,
    dart_noise: float = 0.0,
    seed: int = 0,
    max_attempts: int | None = None,
    post_success_steps: int = 10,
    progress: bool = True,
) -> Iterator[Episode]:
    """Roll out the expert until `n_episodes` succeed (or `max_attempts` run out, or the first `GIVE_UP_AFTER`
    all fail), yielding only the successes.

    Attempt k resets the env with seed `seed + k` and seeds the action noise from (seed, k) and the DART noise from
    (seed, k, DART_STREAM), so a run is reproducible; each yielded episode records its reset seed in `attrs["seed"]`.
    With `dart_noise > 0` the env executes the expert's action plus noise of that std and the episode records the
    expert's action (`DartExecution`).
    """
    max_attempts = max_attempts or 4 * n_episodes
    dart_noise = check_noise("dart_noise", dart_noise)
    expert = make_expert(env.task, action_noise=check_noise("action_noise", action_noise), env=env)
    views = [view for view in env.task.views if view != env.camera]  # every view a suite reports, in one file
    bar = tqdm(total=n_episodes, desc=f"collect {env.task.name}", unit="demo", disable=not progress)
    try:
        while stats.successes < n_episodes and stats.attempts < max_attempts:
            if stats.successes == 0 and stats.attempts >= GIVE_UP_AFTER:
                break  # an expert that never succeeds would render every remaining attempt for nothing
            episode_seed = seed + stats.attempts
            expert.reset(seed=[seed, stats.attempts])
            runner = env
            if dart_noise > 0:
                runner = DartExecution(env, dart_noise, np.random.default_rng([seed, stats.attempts, DART_STREAM]))
            record = rollout(runner, expert, seed=episode_seed, post_success_steps=post_success_steps, views=views)
            stats.attempts += 1
            bar.set_postfix(expert_success=f"{stats.successes + record.success}/{stats.attempts}")
            if not record.success:
                continue
            stats.successes += 1
            bar.update(1)
            dones = np.zeros(len(record), np.uint8)
            dones[-1] = 1
            yield Episode(
                images={env.camera: np.stack(record.images), **{c: np.stack(f) for c, f in record.views.items()}},
                proprio=np.stack(record.proprio),
                state=np.stack(record.states),
                actions=np.stack(record.actions),
                language=env.task.language,
                rewards=np.asarray(record.rewards, np.float32),
                dones=dones,
                attrs={"seed": episode_seed, "success": True, "task": env.task.name},
            )
    finally:
        bar.close()


def collect(
    task: str,
    n_episodes: int,
    out: str | os.PathLike,
    *,
    action_noise: float = 0.0,
    dart_noise: float = 0.0,
    seed: int = 0,
    camera: str | None = None,
    image_size: int = 224,
    horizon: int | None = None,
    multisamples: int = 0,
    max_attempts: int | None = None,
    post_success_steps: int = 10,
    valid_fraction: float = 0.1,
    compression: str = "gzip",
    progress: bool = True,
    out_format: str = "hdf5",
) -> tuple[Path, CollectStats]:
    """Collect `n_episodes` successful expert demonstrations of `task` into the HDF5 file `out` (atomically), or
    with `out_format="lerobot"` into the LeRobot v3.0 dataset folder `out`. `action_noise` is executed and recorded,
    `dart_noise` only executed (see the module docstring); both are written into `env_args`."""
    action_noise, dart_noise = check_noise("action_noise", action_noise), check_noise("dart_noise", dart_noise)
    if n_episodes < 1:
        raise ValueError(f"n_episodes={n_episodes}: expected at least 1")
    if image_size < 1:  # checked here: HDF5 would only fail at the first frame, with a chunk-size error
        raise ValueError(f"image_size={image_size}: expected a positive number of pixels, e.g. 224")
    if not 0.0 <= valid_fraction < 1.0:  # checked before rendering anything, not when the file is written
        raise ValueError(f"valid_fraction={valid_fraction}: expected a value in [0, 1)")
    spec = get_task(task)
    stats = CollectStats()
    env = SimEnv(spec, camera=camera, image_size=image_size, horizon=horizon, multisamples=multisamples)
    try:
        episodes = iter_successful_episodes(
            env,
            n_episodes,
            stats,
            action_noise=action_noise,
            dart_noise=dart_noise,
            seed=seed,
            max_attempts=max_attempts,
            post_success_steps=post_success_steps,
            progress=progress,
        )
        args = env_args_for(env, action_noise=action_noise, dart_noise=dart_noise, seed=seed)
        if out_format == "lerobot":
            from voltron.datasets.lerobot import write_lerobot_demos

            path = _write_nonempty(
                out, episodes, args, stats, write_lerobot_demos, n_episodes=n_episodes, valid_fraction=valid_fraction
            )
        else:
            path = _write_nonempty(
                out, episodes, args, stats, valid_fraction=valid_fraction, seed=seed, compression=compression
            )
    finally:
        env.close()
    return path, stats


class NoSuccessfulEpisodes(RuntimeError):
    """The expert did not succeed once, so there is nothing to write."""


def _write_nonempty(
    out, episodes: Iterator[Episode], env_args: dict, stats: CollectStats, write=write_demos, **kwargs
) -> Path:
    """`write` (write_demos), but refuse (leaving no file) when the iterator yields nothing."""
    first = next(episodes, None)
    if first is None:
        raise NoSuccessfulEpisodes(
            f"{out}: the expert succeeded in 0 of {stats.attempts} attempts, so no demo file was written"
        )

    def chained() -> Iterator[Episode]:
        yield first
        yield from episodes

    return write(out, chained(), env_args, **kwargs)


def main(args) -> int:
    """Handler for `voltron sim collect`."""
    from voltron.sim.tasks import UnknownTaskError

    if Path(args.out).exists() and not getattr(args, "overwrite", False):
        print(
            f"error: {args.out} already exists; pass --overwrite to replace its demos (they stay until the new file "
            "is complete), or choose another --out",
            file=sys.stderr,
        )
        return 2
    try:
        path, stats = collect(
            args.task,
            args.episodes,
            args.out,
            action_noise=args.action_noise,
            dart_noise=getattr(args, "dart_noise", 0.0),
            seed=args.seed,
            camera=args.camera,
            image_size=args.image_size,
            horizon=args.horizon,
            multisamples=args.multisamples,
            max_attempts=args.max_attempts,
            post_success_steps=args.post_success_steps,
            valid_fraction=args.valid_fraction,
            compression=args.compression,
            progress=not args.no_progress,
            out_format=getattr(args, "format", "hdf5"),
        )
    except (UnknownTaskError, NoSuccessfulEpisodes, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"expert success rate on {args.task}: {stats.successes}/{stats.attempts} = {stats.success_rate:.1%} "
        f"(action noise {args.action_noise}, DART noise {getattr(args, 'dart_noise', 0.0)})"
    )
    print(f"wrote {stats.successes} successful episodes to {path}")
    if stats.successes < args.episodes:
        print(
            f"warning: asked for {args.episodes} episodes but only {stats.successes} succeeded within "
            f"{stats.attempts} attempts; raise --max-attempts or lower --action-noise/--dart-noise",
            file=sys.stderr,
        )
        return 1
    return 0
