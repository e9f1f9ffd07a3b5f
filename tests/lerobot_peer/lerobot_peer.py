"""The real LeRobot peer: writes and reads LeRobot v3 datasets with the `lerobot-dataset` package from PyPI.

Runs inside `.venv-lerobot` (scripts/setup_lerobot_peer.sh), never in the main venv, and imports nothing from voltron:
tests call it as a subprocess (tests/test_lerobot.py) with a working directory outside the checkout, because the
checkout's `datasets/` folder would shadow Hugging Face's `datasets` package.

    python lerobot_peer.py write ROOT --episodes 3 --vcodec libsvtav1   # a small dataset written by LeRobot
    python lerobot_peer.py dump ROOT OUT.npz                            # every frame as LeRobotDataset returns it
    python lerobot_peer.py write ROOT --dump OUT.npz                    # both, in one process (imports are slow)

`write` fills frames with `pattern_frame` (the test recomputes it to check decoding), states and actions from a
seeded generator, and one task string per episode. `dump` saves, per item, what LeRobotDataset.__getitem__ returns:
images as uint8 HWC (its float [0, 1] CHW times 255, rounded), `observation.state`, `action`, `timestamp`,
`episode_index`, `frame_index` and the task string, plus the dataset's meta (info, stats, tasks) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local dataset never needs the Hub; fail rather than download
REPO_ID = "voltron/peer"
CAMERAS = ("exterior_1_left", "wrist_left")  # DROID-in-LeRobot names, so the reader's role mapping is exercised
IMAGE_CAMERA = "top"  # a third camera stored as PNG images inside the parquet (dtype "image"), not as video
HEIGHT, WIDTH, STATE_DIM, ACTION_DIM = 48, 64, 8, 7


def pattern_frame(camera: int, episode: int, step: int) -> np.ndarray:
    """(H, W, 3) uint8: red encodes the step, green the camera and episode, blue the quadrant (orientation)."""
    frame = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    frame[..., 0] = (16 * step + 8) % 256
    frame[..., 1] = 40 + 70 * camera + 15 * episode
    frame[: HEIGHT // 2, : WIDTH // 2, 2] = 220
    frame[: HEIGHT // 2, WIDTH // 2 :, 2] = 40
    frame[HEIGHT // 2 :, : WIDTH // 2, 2] = 130
    frame[HEIGHT // 2 :, WIDTH // 2 :, 2] = 170
    return frame


def write(root: Path, lengths: list[int], vcodec: str, fps: int) -> None:
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    features = {
        f"observation.images.{name}": {
            "dtype": "video",
            "shape": (HEIGHT, WIDTH, 3),
            "names": ["height", "width", "channels"],
        }
        for name in CAMERAS
    }
    features[f"observation.images.{IMAGE_CAMERA}"] = {
        "dtype": "image",
        "shape": (HEIGHT, WIDTH, 3),
        "names": ["height", "width", "channels"],
    }
    features["observation.state"] = {"dtype": "float32", "shape": (STATE_DIM,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (ACTION_DIM,), "names": None}
    dataset = LeRobotDataset.create(
        REPO_ID, fps, features, root=root, robot_type="franka", use_videos=True, vcodec=vcodec
    )
    rng = np.random.default_rng(0)
    for episode, length in enumerate(lengths):
        for step in range(length):
            frame = {f"observation.images.{name}": pattern_frame(c, episode, step) for c, name in enumerate(CAMERAS)}
            frame[f"observation.images.{IMAGE_CAMERA}"] = pattern_frame(len(CAMERAS), episode, step)
            frame["observation.state"] = rng.normal(size=STATE_DIM).astype(np.float32)
            frame["action"] = rng.uniform(-1, 1, size=ACTION_DIM).astype(np.float32)
            frame["task"] = f"task number {episode % 2}: put the marker in the cup"
            dataset.add_frame(frame)
        dataset.save_episode(parallel_encoding=False)
    dataset.finalize()


def dump(root: Path, out: Path, episodes: list[int] | None) -> None:
    from ledataset.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset(REPO_ID, root=root, episodes=episodes)
    columns: dict[str, list] = {}
    tasks: list[str] = []
    for index in range(len(dataset)):
        item = dataset[index]
        for key, value in item.items():
            if key == "task":
                tasks.append(value)
            elif key.startswith("observation.images."):
                array = (value.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
                columns.setdefault(key, []).append(array)
            elif hasattr(value, "numpy"):
                columns.setdefault(key, []).append(value.numpy())
    arrays = {key: np.stack(values) for key, values in columns.items()}
    np.savez(out, **arrays)
    meta = {
        "tasks": tasks,
        "info": dataset.meta.info,
        "stats": {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in dataset.meta.stats.items()},
        "video_keys": list(dataset.meta.video_keys),
        "num_episodes": dataset.num_episodes,
        "num_frames": dataset.num_frames,
        "video_backend": dataset.video_backend,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, default=list))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write_parser = commands.add_parser("write")
    write_parser.add_argument("root", type=Path)
    write_parser.add_argument("--lengths", default="12,9,15", help="frames per episode")
    write_parser.add_argument("--vcodec", default="libsvtav1", choices=("libsvtav1", "h264", "hevc"))
    write_parser.add_argument("--fps", type=int, default=15)
    write_parser.add_argument("--dump", type=Path, help="then dump the dataset as `dump` does")
    dump_parser = commands.add_parser("dump")
    dump_parser.add_argument("root", type=Path)
    dump_parser.add_argument("out", type=Path)
    dump_parser.add_argument("--episodes", default=None, help="comma-separated episode indices (default: all)")
    args = parser.parse_args(argv)
    if args.command == "write":
        write(args.root, [int(n) for n in args.lengths.split(",")], args.vcodec, args.fps)
        if args.dump:
            dump(args.root, args.dump, None)
    else:
        episodes = None if args.episodes is None else [int(e) for e in args.episodes.split(",")]
        dump(args.root, args.out, episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
