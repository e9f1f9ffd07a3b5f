"""Policy evaluation in MuJoCo: batched rollouts over vectorised envs, success with a 95% interval, files to look at."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from voltron.io import atomic_write_bytes, atomic_write_json


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (well behaved at 0% and 100%, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denom = 1 + z**2 / trials
    centre = (rate + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(rate * (1 - rate) / trials + z**2 / (4 * trials**2)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EvalResult:
    task: str
    policy: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    mean_length: float
    seed: int
    horizon: int
    seconds: float
    env_steps_per_s: float
    per_episode: list[dict[str, Any]] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.task}: success {self.success_rate:.0%} ({self.successes}/{self.episodes}, "
            f"95% CI {self.ci_low:.0%}-{self.ci_high:.0%}), mean episode length {self.mean_length:.0f}"
        )


def check_policy_fits_env(policy: Any, env_proprio_dim: int, env_action_dim: int, task: str) -> None:
    if policy.proprio_dim != env_proprio_dim or policy.action_dim != env_action_dim:
        raise ValueError(
            f"policy expects proprio {policy.proprio_dim}-d and acts {policy.action_dim}-d, but task {task!r} "
            f"gives proprio {env_proprio_dim}-d and takes {env_action_dim}-d actions"
        )


def caption_frames(frames: list[np.ndarray], text: str, success: bool) -> list[np.ndarray]:
    """Burn a success/fail caption into the top of each frame."""
    from PIL import Image, ImageDraw

    colour = (40, 200, 60) if success else (220, 40, 40)
    out = []
    for frame in frames:
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, image.width, 14], fill=(0, 0, 0))
        draw.text((3, 2), text, fill=colour)
        out.append(np.asarray(image))
    return out


def plot_success(results: list[EvalResult], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(3, 1.2 * len(results) + 1), 3))
    rates = [r.success_rate for r in results]
    errors = [[r.success_rate - r.ci_low for r in results], [r.ci_high - r.success_rate for r in results]]
    ax.bar([r.task for r in results], rates, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("success rate (95% CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def rollout(
    policy: Any,
    task: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 2,
    horizon: int | None = None,
    image_size: int = 224,
    record: int = 0,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[list[np.ndarray]], float, int]:
    """Run `episodes` episodes (seeds seed, seed+1, ...) with the policy batched across `num_envs` envs.

    Returns per-episode records, the frames of the first `record` episodes, the rollout's wall seconds (after the
    environments started) and the env steps taken.
    """
    from voltron.sim.env import SimEnv
    from voltron.sim.tasks import get_task
    from voltron.sim.vector import VectorSimEnv

    spec = get_task(task)
    check_policy_fits_env(policy, len(spec.proprio_keys), 4, task)
    horizon = int(horizon or spec.horizon)
    num_envs = max(1, min(num_envs, episodes))
    env_kwargs = dict(horizon=horizon, image_size=image_size, camera=policy.camera, terminate_on_success=True)
    records: list[dict[str, Any]] = []
    videos: list[list[np.ndarray]] = [[] for _ in range(min(record, episodes))]
    steps_taken = 0
    bar = tqdm(total=episodes, desc=f"eval {task}", unit="episode", disable=not progress)
    if num_envs == 1:  # in-process: no worker to start (the serial baseline of bench/eval.py)
        env = SimEnv(task, **env_kwargs)
        step_fn, reset_fn, closer = (lambda a: _batched_step(env, a)), (lambda s: _batched_reset(env, s[0])), env.close
    else:
        vec = VectorSimEnv.from_task(task, num_envs, **env_kwargs)
        step_fn, reset_fn, closer = vec.step, vec.reset, vec.close
    start = time.perf_counter()  # rollouts only: worker start-up is not what steps/s measures
    try:
        for first in range(0, episodes, num_envs):
            ids = list(range(first, min(first + num_envs, episodes)))
            seeds = [seed + i for i in ids] + [seed + ids[-1]] * (num_envs - len(ids))  # pad the last round
            obs, _ = reset_fn(seeds)
            policy.reset()
            success = np.zeros(num_envs, dtype=bool)
            length = np.full(num_envs, horizon)
            done = np.zeros(num_envs, dtype=bool)
            for t in range(horizon):
                for slot, episode in enumerate(ids):
                    if episode < len(videos) and not done[slot]:
                        videos[episode].append(obs["image"][slot])
                actions = policy.select_action(obs)
                obs, _, terminated, truncated, info = step_fn(actions)
                steps_taken += int((~done[: len(ids)]).sum())
                newly = np.asarray(info["success"], dtype=bool) & ~success & ~done
                length[newly] = t + 1
                success |= newly
                done |= np.asarray(terminated) | np.asarray(truncated)
                if done[: len(ids)].all():
                    break
            for slot, episode in enumerate(ids):
                records.append(
                    {
                        "episode": episode,
                        "seed": seed + episode,
                        "success": bool(success[slot]),
                        "length": int(length[slot]),
                    }
                )
            bar.update(len(ids))
    finally:
        bar.close()
        closer()
    return records, videos, time.perf_counter() - start, steps_taken


def _batch_of_one(obs: dict) -> dict:
    return {"image": obs["image"][None], "proprio": obs["proprio"][None], "language": [obs["language"]]}


def _batched_reset(env: Any, seed: int) -> tuple[dict, dict]:
    obs, info = env.reset(seed=seed)
    return _batch_of_one(obs), {"success": np.array([bool(info.get("success", False))])}


def _batched_step(env: Any, actions: np.ndarray) -> tuple:
    obs, reward, terminated, truncated, info = env.step(actions[0])
    info = {"success": np.array([bool(info["success"])])}
    return _batch_of_one(obs), np.array([reward]), np.array([terminated]), np.array([truncated]), info


def evaluate(
    policy_dir: str | Path,
    task: str,
    episodes: int = 50,
    seed: int = 0,
    num_envs: int = 2,
    horizon: int | None = None,
    out_dir: str | Path | None = None,
    videos: int = 3,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a saved policy on one task; writes results.json/.csv, a bar chart and captioned MP4s to `out_dir`."""
    from voltron.datasets.video import write_video
    from voltron.policy.model import load_policy

    policy = load_policy(policy_dir)
    out = Path(out_dir) if out_dir else Path(policy_dir) / "eval" / task
    image_size = int(policy.image_size or 224)
    records, frames, seconds, steps = rollout(
        policy, task, episodes, seed, num_envs, horizon, image_size, record=videos, progress=progress
    )
    successes = sum(r["success"] for r in records)
    low, high = wilson_interval(successes, len(records))
    result = EvalResult(
        task=task,
        policy=str(policy_dir),
        episodes=len(records),
        successes=successes,
        success_rate=successes / len(records),
        ci_low=low,
        ci_high=high,
        mean_length=float(np.mean([r["length"] for r in records])),
        seed=seed,
        horizon=int(horizon or _task_horizon(task)),
        seconds=round(seconds, 2),
        env_steps_per_s=round(steps / max(seconds, 1e-9), 2),
        per_episode=records,
    )
    for index, episode_frames in enumerate(frames):
        ok = records[index]["success"]
        text = f"{task} ep{index} seed {seed + index}: {'SUCCESS' if ok else 'FAIL'}"
        path = write_video(out / f"episode_{index:03d}.mp4", caption_frames(episode_frames, text, ok), fps=20)
        result.videos.append(str(path))
    write_results([result], out)
    plot_success([result], out / "success.png", f"{Path(policy_dir).name}: {task}")
    return result


def _task_horizon(task: str) -> int:
    from voltron.sim.tasks import get_task

    return int(get_task(task).horizon)


def write_results(results: list[EvalResult], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", [asdict(r) for r in results])
    rows = [{"task": r.task, "policy": r.policy, **e} for r in results for e in r.per_episode]
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["task", "policy", "episode", "seed", "success", "length"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
