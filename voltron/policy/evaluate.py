"""Policy evaluation in MuJoCo: rollouts over parallel envs, success with a 95% interval, files to look at."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from voltron.io import atomic_write_bytes, atomic_write_json, sha256_file

# Evaluation episodes start at this reset seed by default; `voltron sim collect` and the suites' demos start at 0,
# so no evaluation episode starts in a scene a demonstration showed.
EVAL_SEED_OFFSET = 100_000
EPISODES_NAME = "episodes.jsonl"  # one line per finished episode, appended as each finishes (resume reads it)
LOWDIM_IMAGE_SIZE = 16  # the blank frame a policy without an encoder gets (nothing is rendered for it)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a success rate (well behaved at 0% and 100%, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    denom = 1 + z**2 / trials
    centre = (rate + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(rate * (1 - rate) / trials + z**2 / (4 * trials**2)) / denom
    return max(0.0, min(rate, centre - half)), min(1.0, max(rate, centre + half))  # rounding never excludes rate


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
    avg_sum_reward: float = 0.0
    avg_max_reward: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.task}: success {self.success_rate:.0%} ({self.successes}/{self.episodes}, "
            f"95% CI {self.ci_low:.0%}-{self.ci_high:.0%}), mean episode length {self.mean_length:.0f}"
        )


def policy_observation(obs: dict[str, Any], info: dict[str, Any], camera: str | None) -> dict[str, Any]:
    """A batched sim observation in the policy's observation schema (voltron/policy/base.py), with the simulator's
    privileged state (what a state oracle reads)."""
    images = {camera: obs["image"]} if camera is not None else {}
    return {"images": images, "proprio": obs["proprio"], "language": obs["language"], "state": info["state"]}


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


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, ax: Any, path: Path, ylabel: str, legend: bool = True) -> Path:
    """The shared finish of every success plot: a 0-1 y axis, the label, a legend, then a PNG at `path`."""
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the plot, never over a bar
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_success(results: list[EvalResult], path: Path, title: str) -> Path:
    fig, ax = pyplot().subplots(figsize=(max(3, 1.2 * len(results) + 1), 3))
    rates = [r.success_rate for r in results]
    errors = [[r.success_rate - r.ci_low for r in results], [r.ci_high - r.success_rate for r in results]]
    ax.bar([r.task for r in results], rates, yerr=errors, capsize=4, color="#4c72b0")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, ax, path, "success rate (95% CI)", legend=False)


def code_version() -> str:
    """voltron's version, plus the git commit when running from a checkout (e.g. "0.1.0+g1a2b3c4")."""
    import voltron

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(voltron.__file__).parent, capture_output=True,
            text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(voltron.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        return f"{voltron.__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return voltron.__version__


def run_episodes(
    policy: Any,
    task: str,
    episodes: int,
    seed: int = EVAL_SEED_OFFSET,
    num_envs: int = 2,
    horizon: int | None = None,
    image_size: int = 224,
    record: int = 0,
    progress: bool = True,
    done_episodes: set[int] | None = None,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
) -> tuple[list[dict[str, Any]], list[list[np.ndarray]], float, int]:
    """Run `episodes` episodes (episode i starts from reset seed `seed + i`) on `num_envs` envs at once.

    The envs are driven one at a time, not in lockstep: as soon as one env's frame arrives the policy acts on it
    (a batch of one) while the other envs render, and an env whose episode ended starts the next episode at once.
    On 2 cores that keeps both busy where lockstep left each idle while the other rendered, the policy ran, or
    the slowest episode of a round finished (bench/eval.py). Each env has its own `policy.fork()` for its episode
    state, so an episode's actions depend only on the policy, its seed and the torch thread count: not on
    `num_envs`, on the other episodes, or on the order they finish in.

    `done_episodes` are skipped (resume), and `on_episode(record)` is called as each episode finishes (to write it
    down before the next ends). The policy runs on `threads` torch threads (default `policy_threads`: the cores
    the render workers leave free).
    Returns the per-episode records of the episodes run here (by episode), the frames of the first `record`
    episodes, the rollout's wall seconds (after the environments started) and the env steps taken.
    """
    import torch

    from voltron.policy.base import EnvSpec, check_fits
    from voltron.sim.env import DEFAULT_MESH_CELL, SimEnv
    from voltron.sim.tasks import get_task
    from voltron.sim.vector import VectorSimEnv

    spec = get_task(task)
    horizon = int(horizon or spec.horizon)
    if horizon < 1 or episodes < 1:
        raise ValueError(f"horizon={horizon}, episodes={episodes}: both must be at least 1")
    camera = policy.cameras[0] if policy.cameras else None  # the simulator renders the one camera a policy reads
    if camera is None:
        image_size, record = LOWDIM_IMAGE_SIZE, 0
    env_kwargs = dict(
        horizon=horizon,
        image_size=image_size,
        camera=camera,
        terminate_on_success=True,
        render_images=camera is not None,
        mesh_cell=DEFAULT_MESH_CELL,  # as the demos were rendered (their env_args record it)
    )
    queue = deque(e for e in range(episodes) if e not in (done_episodes or set()))
    videos: list[list[np.ndarray]] = [[] for _ in range(min(record, episodes))]
    if not queue:
        return [], [], 0.0, 0
    num_envs = max(1, min(num_envs, len(queue)))
    bar = tqdm(total=len(queue) * horizon, desc=f"eval {task}", unit="step", disable=not progress)
    # in process for one env: no worker to start (the serial baseline of bench/eval.py)
    envs = (
        _InProcessEnv(SimEnv(task, **env_kwargs))
        if num_envs == 1
        else VectorSimEnv.from_task(task, num_envs, **env_kwargs)
    )
    streams = [policy] if num_envs == 1 else [policy.fork() for _ in range(num_envs)]
    running: dict[int, dict[str, Any]] = {}  # env slot -> the record of the episode it runs
    records: list[dict[str, Any]] = []
    steps_taken, checked = 0, False

    def start_next(slot: int) -> None:
        if not queue:
            running.pop(slot, None)
            return
        episode = queue.popleft()
        running[slot] = {"episode": episode, "seed": seed + episode, "success": False, "length": horizon,
                         "sum_reward": 0.0, "max_reward": -math.inf, "t": 0}  # fmt: skip
        envs.send(slot, "reset", seed + episode)

    start = time.perf_counter()  # rollouts only: worker start-up is not what steps/s measures
    all_threads = torch.get_num_threads()
    # The workers' renderers keep num_envs cores busy; a policy spreading its ops over every core on top of them
    # waits at every op's thread barrier for a core (bench/eval.py: 2.4x env steps/s with 1 thread of 2 here).
    torch.set_num_threads(threads or policy_threads(num_envs, all_threads))
    try:
        for slot in range(num_envs):
            start_next(slot)
        while running:
            slot, answer = envs.receive()
            episode = running[slot]
            if len(answer) == 2:  # a reset: the episode's first observation
                obs, info = answer
                streams[slot].reset()
            else:
                obs, reward, terminated, truncated, info = answer
                episode["t"] += 1
                steps_taken += 1
                bar.update(1)
                episode["sum_reward"] += float(reward)
                episode["max_reward"] = max(episode["max_reward"], float(reward))
                if info["success"] and not episode["success"]:
                    episode["success"], episode["length"] = True, episode["t"]
                if terminated or truncated or episode["t"] >= horizon:
                    bar.update(horizon - episode["t"])  # the bar counts each episode's full horizon
                    del episode["t"]
                    records.append(episode)
                    bar.set_postfix(success=f"{sum(r['success'] for r in records)}/{len(records)}")
                    if on_episode is not None:
                        on_episode(episode)
                    start_next(slot)
                    continue
            observation = policy_observation(_batch_of_one(obs), {"state": info["state"][None]}, camera)
            if not checked:  # before the first step: sizes and camera against what this env gives and takes
                check_fits(policy, EnvSpec.from_observation(f"task {task!r}", observation, envs.action_space.shape[-1]))
                checked = True
            if episode["episode"] < len(videos):
                videos[episode["episode"]].append(obs["image"])
            envs.send(slot, "step", streams[slot].select_action(observation)[0])
    finally:
        bar.close()
        envs.close()
        torch.set_num_threads(all_threads)
    return sorted(records, key=lambda r: r["episode"]), videos, time.perf_counter() - start, steps_taken


def policy_threads(num_envs: int, threads: int) -> int:
    """Torch threads for the policy while `num_envs` worker processes (one core each) render: the cores left."""
    if num_envs < 2:
        return threads  # in-process env: the policy and the env take turns on the same cores
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(threads, cores - num_envs))


def _batch_of_one(obs: dict) -> dict:
    return {"image": obs["image"][None], "proprio": obs["proprio"][None], "language": [obs["language"]]}


class _InProcessEnv:
    """One env behind VectorSimEnv's send/receive, in this process (each request is answered as it is sent)."""

    def __init__(self, env: Any) -> None:
        self.env, self.action_space, self._answer = env, env.action_space, None

    def send(self, index: int, command: str, argument: Any) -> None:
        self._answer = self.env.reset(seed=argument) if command == "reset" else self.env.step(argument)

    def receive(self) -> tuple[int, Any]:
        answer, self._answer = self._answer, None
        return 0, answer

    def close(self) -> None:
        self.env.close()


def check_seeds(policy_dir: Path, seed: int, episodes: int, allow_overlap: bool) -> None:
    """Refuse evaluation seeds that started one of the policy's demonstrations (the policy saw that scene)."""
    meta = json.loads((policy_dir / "config.json").read_text())
    demo_seeds = set(meta.get("training", {}).get("demo_seeds", []))
    overlap = sorted(demo_seeds & set(range(seed, seed + episodes)))
    if overlap and not allow_overlap:
        raise ValueError(
            f"evaluation seeds {seed}..{seed + episodes - 1} include {len(overlap)} seed(s) the policy's demos were "
            f"collected with (e.g. {overlap[:5]}): those episodes replay training scenes. Use --seed {EVAL_SEED_OFFSET} "
            "(the default) or pass --allow-seed-overlap"
        )


def _read_finished(path: Path, settings: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Episodes already finished by an earlier (killed) run with the same settings, from its episodes.jsonl."""
    if not path.is_file():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    finished: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) - 1:
                break  # a line cut short by a kill: that episode runs again
            raise ValueError(f"{path}: line {number + 1} is not JSON; expected one episode record per line") from None
        if "settings" in entry:
            if entry["settings"] != settings:
                changed = sorted(k for k in settings if entry["settings"].get(k) != settings[k])
                raise ValueError(
                    f"{path} holds episodes of an evaluation with other settings ({', '.join(changed)} differ); "
                    "pass another --out, or delete that file to start over"
                )
            continue
        entry.pop("round", None)  # files written before episodes ran unbatched grouped them in rounds
        finished[int(entry["episode"])] = entry
    return finished


def evaluate(
    policy_dir: str | Path,
    task: str,
    episodes: int = 50,
    seed: int = EVAL_SEED_OFFSET,
    num_envs: int = 2,
    horizon: int | None = None,
    out_dir: str | Path | None = None,
    videos: int = 3,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    allow_seed_overlap: bool = False,
    precision: str = "fp32",
    backend: str = "eager",
) -> EvalResult:
    """Evaluate a saved policy on one task; writes episodes.jsonl (as it goes; a rerun resumes it), eval_info.json,
    results.json/.csv, a bar chart and captioned MP4s to `out_dir`.

    `checkpoint`: a `checkpoints/step_*.safetensors` file of the run, evaluated instead of the final weights.
    `precision`/`backend`: the encoder's inference path (voltron.models.inference); the one that served is
    recorded as settings["inference"].
    """
    from voltron.datasets.video import write_video
    from voltron.policy.model import load_head_checkpoint, load_policy

    if episodes < 1:
        raise ValueError(f"episodes={episodes}: expected at least 1")
    if horizon is not None and horizon < 1:
        raise ValueError(f"horizon={horizon}: expected at least 1 step per episode")
    policy_dir = Path(policy_dir)
    check_seeds(policy_dir, seed, episodes, allow_seed_overlap)
    policy = load_policy(policy_dir)
    weights = policy_dir / "model.safetensors"
    if checkpoint is not None:
        load_head_checkpoint(policy, checkpoint)
        weights = Path(checkpoint)
    from voltron.sim.env import DEFAULT_MESH_CELL

    inference = policy.use_inference(precision, backend)
    out = Path(out_dir) if out_dir else policy_dir / "eval" / task
    horizon = int(horizon or _task_horizon(task))
    image_size = int(policy.image_size or 224)
    num_envs = max(1, min(num_envs, episodes))
    camera = policy.cameras[0] if policy.cameras else None
    settings = {
        "task": task, "episodes": episodes, "seed": seed, "num_envs": num_envs, "horizon": horizon,
        "image_size": image_size if camera else None, "camera": camera,
        "policy": str(policy_dir), "weights_sha256": sha256_file(weights), "mode": "eval", "terminate_on_success": True,
        "inference": inference, "mesh_cell": DEFAULT_MESH_CELL if camera else None,
    }  # fmt: skip
    log_path = out / EPISODES_NAME
    finished = _read_finished(log_path, settings)
    out.mkdir(parents=True, exist_ok=True)
    if not log_path.is_file():
        atomic_write_bytes(log_path, (json.dumps({"settings": settings}) + "\n").encode())
    else:  # rewrite without a line a kill may have cut short, so appends start on a fresh line
        kept = [json.dumps({"settings": settings})] + [json.dumps(r) for r in finished.values()]
        atomic_write_bytes(log_path, ("\n".join(kept) + "\n").encode())

    def on_episode(record: dict[str, Any]) -> None:
        with open(log_path, "a") as log:  # one line per episode: a kill loses at most the episodes in flight
            log.write(json.dumps(record) + "\n")
            log.flush()

    records, frames, seconds, steps = run_episodes(
        policy, task, episodes, seed, num_envs, horizon, image_size, record=videos, progress=progress,
        done_episodes=set(finished), on_episode=on_episode,
    )  # fmt: skip
    records = sorted([*records, *finished.values()], key=lambda r: r["episode"])
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
        horizon=horizon,
        seconds=round(seconds, 2),
        env_steps_per_s=round(steps / max(seconds, 1e-9), 2),
        per_episode=records,
        avg_sum_reward=float(np.mean([r["sum_reward"] for r in records])),
        avg_max_reward=float(np.mean([r["max_reward"] for r in records])),
        settings=settings,
    )
    for index, episode_frames in enumerate(frames):
        if not episode_frames:
            continue
        ok = records[index]["success"]
        text = f"{task} ep{index} seed {seed + index}: {'SUCCESS' if ok else 'FAIL'}"
        path = write_video(out / f"episode_{index:03d}.mp4", caption_frames(episode_frames, text, ok), fps=20)
        result.videos.append(str(path))
    write_results([result], out)
    plot_success([result], out / "success.png", f"{policy_dir.name}: {task}")
    return result


def _task_horizon(task: str) -> int:
    from voltron.sim.tasks import get_task

    return int(get_task(task).horizon)


def _aggregate(results: list[EvalResult]) -> dict[str, Any]:
    episodes = [e for r in results for e in r.per_episode]
    successes = sum(e["success"] for e in episodes)
    low, high = wilson_interval(successes, len(episodes))
    seconds = sum(r.seconds for r in results)
    return {
        "pc_success": 100.0 * successes / max(len(episodes), 1),
        "avg_sum_reward": float(np.mean([e["sum_reward"] for e in episodes])) if episodes else 0.0,
        "avg_max_reward": float(np.mean([e["max_reward"] for e in episodes])) if episodes else 0.0,
        "n_episodes": len(episodes),
        "pc_success_ci95": [100.0 * low, 100.0 * high],  # Wilson score interval
        "eval_s": seconds,
        "eval_ep_s": seconds / max(len(episodes), 1),
    }


def eval_info(results: list[EvalResult]) -> dict[str, Any]:
    """LeRobot's eval_info.json shape (`per_episode`, `aggregated`/`overall`, `per_task`, `video_paths`), plus the
    Wilson interval, the code version and every evaluation setting."""
    per_episode = [
        {"episode_ix": e["episode"], "task": r.task, **{k: v for k, v in e.items() if k != "episode"}}
        for r in results
        for e in r.per_episode
    ]
    overall = _aggregate(results)
    return {
        "per_episode": per_episode,
        "per_task": [{"task": r.task, "metrics": _aggregate([r])} for r in results],
        "aggregated": overall,
        "overall": overall,
        "video_paths": [v for r in results for v in r.videos],
        "settings": [r.settings for r in results],
        "code_version": code_version(),
    }


def write_results(results: list[EvalResult], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", [asdict(r) for r in results])
    atomic_write_json(out / "eval_info.json", eval_info(results))
    rows = [{"task": r.task, "policy": r.policy, **e} for r in results for e in r.per_episode]
    import io

    buffer = io.StringIO()
    fields = ["task", "policy", "episode", "seed", "success", "length", "sum_reward", "max_reward"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "results.csv", buffer.getvalue().encode())
