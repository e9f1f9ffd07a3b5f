"""Video files: encoding with PyAV (VP9 webm, H.264 mp4) and frame access through decord."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

# PyAV must be loaded before decord: decord's wheel bundles an older libvpx/libavcodec, and once those are
# in the process PyAV's VP9 encoder fails to open ("avcodec_open2(libvpx-vp9) returned 22").
# Import decord only through `load_decord()` below.
import av  # noqa: E402,I001

# Container suffix -> (encoder, pixel format). VP9 in webm is what Something-Something-v2 ships;
# H.264 in mp4 is what DROID and most robot recorders write.
ENCODERS = {".webm": ("libvpx-vp9", "yuv420p"), ".mp4": ("libx264", "yuv420p")}


def load_decord():
    """The decord module, imported after PyAV (see the note at the top of this file)."""
    import decord

    decord.bridge.set_bridge("native")
    return decord


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float,
    *,
    crf: int = 30,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode uint8 RGB frames (T, H, W, 3) to `path`; the codec follows the suffix (.webm: VP9, .mp4: H.264).

    The file is written under a temporary name and renamed, so a killed writer never leaves a partial video
    under the final name. Odd heights/widths are rejected because yuv420p needs even sizes.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ENCODERS:
        raise ValueError(f"{path}: unsupported video suffix {suffix!r}; expected one of {sorted(ENCODERS)}")
    frames = [np.asarray(frame) for frame in frames]
    if not frames:
        raise ValueError(f"{path}: no frames to write")
    height, width = frames[0].shape[:2]
    for index, frame in enumerate(frames):
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape != (height, width, 3):
            raise ValueError(
                f"{path}: frame {index} has shape {frame.shape} and dtype {frame.dtype}; "
                f"expected uint8 ({height}, {width}, 3) like frame 0"
            )
    if height % 2 or width % 2:
        raise ValueError(f"{path}: frame size {width}x{height} must be even for yuv420p")

    codec, pix_fmt = ENCODERS[suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{suffix}")
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        speed = {"deadline": "realtime", "cpu-used": "8"} if codec == "libvpx-vp9" else {"preset": "veryfast"}
        stream.options = {"crf": str(crf), **speed, **(options or {})}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    return path
