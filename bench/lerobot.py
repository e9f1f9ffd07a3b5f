"""LeRobot v3 datasets against our HDF5 demos, measured side by side in one run on the same scripted-expert demos.

`speed` (default): the same demos as native HDF5 (gzip, one chunk per frame), as LeRobot v3 with AV1 (LeRobot's
default codec, decoded by PyAV/libdav1d) and as LeRobot v3 with H.264 (decord, checked against PyAV). Reports
- random-access samples/s: one BC sample (the frame, proprio and action of a random episode step) per read, as a
  DataLoader over the dataset would fetch them; LeRobot decodes the frame at `from_timestamp + t` each time;
- whole-episode load (frames/s): what `voltron train-policy` does, reading every episode once before it encodes the
  frames into its token cache;
- bytes on disk.
Rounds are interleaved and the best is reported, so load from other processes hits every format alike.

`success`: trains the same policies (same seeds) on the HDF5 demos and on their LeRobot copy (`voltron demos
convert`, AV1), evaluates each on the same episodes, and prints both success rates with 95% Wilson intervals:
a state oracle (no camera; the LeRobot copy must give the same policy) and a frozen tiny encoder on the 64 px
frames (the codec's loss is the only difference), each on two LeRobot copies: LeRobot's defaults (AV1, yuv420p,
crf 30) and a near-lossless one (H.264, yuv444p, crf 0).

    .venv/bin/python bench/lerobot.py speed   [--demos N] [--samples 300] [--repeats 3]
    .venv/bin/python bench/lerobot.py success [--demos 20] [--episodes 30] [--steps 1000] [--seed 0] [--rows all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import av  # noqa: F401  (before decord, see voltron.datasets.video)
import numpy as np

TASK, IMAGE_SIZE = "drawer-open", 64


def ensure_demos(out: Path, n_demos: int) -> Path:
    """Scripted-expert demos (reset seeds 0, 1, ...), collected once and reused."""
    from voltron.sim.collect import collect

    path = out / f"{TASK}-{n_demos}x{IMAGE_SIZE}px.hdf5"
    if not path.exists():
        collect(TASK, n_demos, path, image_size=IMAGE_SIZE, progress=True)
    return path


def ensure_lerobot(demos: Path, out: Path, vcodec: str, **options) -> Path:
    """`voltron demos convert DEMOS OUT --to lerobot --vcodec VCODEC [--crf N --pix-fmt F]`, once."""
    from voltron.datasets.lerobot import convert

    suffix = "".join(f"-{k}{v}" for k, v in sorted(options.items()))
    path = out / f"{demos.stem}-lerobot-{vcodec}{suffix}"
    if not path.exists():
        convert(demos, path, "lerobot", vcodec=vcodec, progress=False, **options)
    return path


def folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class HDF5Samples:
    """One BC sample per read from the native file (h5py reads the frame's own gzip chunk)."""

    def __init__(self, path: Path):
        import h5py

        self.file = h5py.File(path, "r")
        self.keys = sorted(self.file["data"].keys())
        self.camera = next(k for k in self.file[f"data/{self.keys[0]}/obs"] if k.endswith("_image"))
        self.lengths = [int(self.file[f"data/{k}"].attrs["num_samples"]) for k in self.keys]

    def read(self, episode: int, step: int):
        demo = self.file[f"data/{self.keys[episode]}"]
        return demo[f"obs/{self.camera}"][step], demo["obs/proprio"][step], demo["actions"][step]


class LeRobotSamples:
    """One BC sample per read from a LeRobot dataset: the data row, and the frame decoded at from_timestamp + t."""

    def __init__(self, path: Path, backend: str):
        from voltron.datasets.lerobot import FrameDecoder, LeRobotFolder

        self.folder = LeRobotFolder(path)
        self.decoder = FrameDecoder(backend)
        self.rows = self.folder.episodes
        self.lengths = [row.length for row in self.rows]
        self.key = next(iter(self.folder.cameras().values()))
        table = self.folder._table(self.rows[0].data_path)  # one data file holds every episode here
        self.state = np.stack(table.column("observation.state").to_numpy(zero_copy_only=False))
        self.action = np.stack(table.column("action").to_numpy(zero_copy_only=False))

    def read(self, episode: int, step: int):
        row = self.rows[episode]
        path, offset = row.videos[self.key]
        frame = self.decoder.frames_at(
            path, np.array([offset + step / self.folder.fps]), key=self.key, episode=row.index, offset=offset
        )
        index = int(sum(self.lengths[:episode])) + step
        return frame[0], self.state[index], self.action[index]


def random_samples_per_s(source, n_samples: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    picks = [(e, int(rng.integers(source.lengths[e]))) for e in rng.integers(len(source.lengths), size=n_samples)]
    source.read(*picks[0])  # warm-up: open files
    start = time.perf_counter()
    for episode, step in picks:
        source.read(episode, step)
    return n_samples / (time.perf_counter() - start)


def load_frames_per_s(path: Path, backend: str) -> float:
    from voltron.datasets.episodes import load_episodes

    start = time.perf_counter()
    episodes = load_episodes(path, lerobot_video_backend=backend)
    frames = sum(len(e) for e in episodes)
    return frames / (time.perf_counter() - start)


def speed(args: argparse.Namespace) -> dict:
    from voltron.datasets.lerobot import DECODE_STATS

    demos = ensure_demos(args.out, args.demos)
    formats = {
        "native HDF5 (gzip)": (demos, "auto"),
        "LeRobot v3, AV1 (PyAV/dav1d)": (ensure_lerobot(demos, args.out, "libsvtav1"), "pyav"),
        "LeRobot v3, H.264 (decord)": (ensure_lerobot(demos, args.out, "h264"), "auto"),
        "LeRobot v3, H.264 (PyAV)": (ensure_lerobot(demos, args.out, "h264"), "pyav"),
        "LeRobot v3, H.264 4:4:4 crf 0": (ensure_lerobot(demos, args.out, "h264", crf=0, pix_fmt="yuv444p"), "auto"),
    }
    random_rounds: dict[str, list[float]] = {name: [] for name in formats}
    load_rounds: dict[str, list[float]] = {name: [] for name in formats}
    for round_index in range(args.repeats):
        for name, (path, backend) in formats.items():
            source = HDF5Samples(path) if path.suffix == ".hdf5" else LeRobotSamples(path, backend)
            random_rounds[name].append(random_samples_per_s(source, args.samples, seed=round_index))
            load_rounds[name].append(load_frames_per_s(path, backend))
    results = {
        "demos": str(demos),
        "image_size": IMAGE_SIZE,
        "random_samples_per_s": {n: round(max(r), 1) for n, r in random_rounds.items()},
        "load_frames_per_s": {n: round(max(r), 1) for n, r in load_rounds.items()},
        "bytes": {n: folder_bytes(p) for n, (p, _) in formats.items()},
        "decode_stats": DECODE_STATS.as_dict(),
    }
    native = "native HDF5 (gzip)"
    print(
        f"\n{args.demos} {TASK} demos at {IMAGE_SIZE}x{IMAGE_SIZE}, best of {args.repeats} interleaved rounds, {len(os.sched_getaffinity(0))} cores (shared, under load)"
    )
    print(f"{'format':<32}{'random samples/s':>18}{'vs HDF5':>9}{'load frames/s':>15}{'vs HDF5':>9}{'bytes':>12}")
    for name in formats:
        rate, load = results["random_samples_per_s"][name], results["load_frames_per_s"][name]
        print(
            f"{name:<32}{rate:>18}{rate / results['random_samples_per_s'][native]:>8.2f}x{load:>15}"
            f"{load / results['load_frames_per_s'][native]:>8.2f}x{results['bytes'][name]:>12,}"
        )
    return results


def success(args: argparse.Namespace) -> dict:
    from voltron.policy.config import load_bc_config
    from voltron.policy.evaluate import evaluate
    from voltron.policy.train import train_policy

    demos = ensure_demos(args.out, args.demos)
    copies = {
        "HDF5": demos,
        "LeRobot v3 (AV1)": ensure_lerobot(demos, args.out, "libsvtav1"),  # LeRobot's defaults: yuv420p, crf 30
        "LeRobot v3 (H.264 4:4:4 crf 0)": ensure_lerobot(demos, args.out, "h264", crf=0, pix_fmt="yuv444p"),
    }
    rows = {
        "state oracle": ["--policy.encoder=none", "--policy.lowdim=state"],
        "tiny encoder, 64 px": [
            "--policy.encoder=r-mvp-tiny", "--policy.pretrained=false", "--policy.encoder_overrides={image_size: 64}",
            "--policy.extractor=mean",
        ],
    }  # fmt: skip
    results: dict[str, dict] = {}
    for row, overrides in rows.items():
        if args.rows != "all" and row.split()[0] not in args.rows.split(","):
            continue
        for name, path in copies.items():
            suffix = f"-seed{args.seed}" if args.seed else ""
            label = (
                name.split("(")[-1].rstrip(")").replace(" ", "").replace(":", "").replace(".", "")
                if "(" in name
                else name
            )
            run = args.out / "runs" / f"{row.replace(' ', '-').replace(',', '')}-{name.split()[0]}{suffix}"
            if "H.264" in name:  # the runs before this copy existed keep their folder names
                run = run.with_name(f"{run.name}-{label}")
            options = [f"--train.steps={args.steps}", "--train.device=cpu", f"--policy.seed={args.seed}"]
            config = load_bc_config(None, [*overrides, *options])
            if not (run / "model.safetensors").exists():
                shutil.rmtree(run, ignore_errors=True)
                train_policy(config, path, run, progress=False)
            result = evaluate(run, TASK, args.episodes, num_envs=2, out_dir=run / "eval", videos=0, progress=False)
            results[f"{row} | {name} | seed {args.seed}"] = {
                "successes": result.successes, "episodes": result.episodes, "rate": result.success_rate,
                "ci": [round(result.ci_low, 3), round(result.ci_high, 3)],
            }  # fmt: skip
            print(f"{row:<22}{name:<32}{result.summary()}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="speed", choices=("speed", "success"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/lerobot"))
    parser.add_argument("--demos", type=int, default=20, help="scripted-expert demos of drawer-open")
    parser.add_argument("--samples", type=int, default=300, help="random samples timed per format and round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (speed); the best is reported")
    parser.add_argument("--episodes", type=int, default=30, help="evaluation episodes per policy (success)")
    parser.add_argument("--steps", type=int, default=1000, help="policy training steps (success)")
    parser.add_argument("--seed", type=int, default=0, help="policy seed (success)")
    parser.add_argument("--rows", default="all", help="success rows: all, or a comma list of state,tiny")
    args = parser.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    args.out.mkdir(parents=True, exist_ok=True)
    results = speed(args) if args.part == "speed" else success(args)
    name = args.part if args.part == "speed" or not args.seed else f"{args.part}-seed{args.seed}"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(f"results: {args.out / f'{name}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
