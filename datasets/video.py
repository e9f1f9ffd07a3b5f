"""Video files: encoding with PyAV (VP9 webm, H.264 mp4), probing, and verified frame access through decord."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

# PyAV must be loaded before decord: decord's wheel bundles an older libvpx/libavcodec, and once those are
# in the process PyAV's VP9 encoder fails to open ("avcodec_open2(libvpx-vp9) returned 22").
# Import decord only through `load_decord()` below.
import av
import numpy as np

# Container suffix -> (encoder, pixel format). VP9 in webm is what Something-Something-v2 ships;
# H.264 in mp4 is what DROID and most robot recorders write.
ENCODERS = {".webm": ("libvpx-vp9", "yuv420p"), ".mp4": ("libx264", "yuv420p")}


def load_decord():
    """The decord module, imported after PyAV (see the note at the top of this file)."""
    import decord

    decord.bridge.set_bridge("native")
    # decord's bundled FFmpeg prints decoder errors to stderr on every bad seek; FrameReader detects those
    # seeks itself and counts them, so the noise only hides useful output.
    decord.logging.set_level(decord.logging.QUIET)
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


# --- Probing and sequential decoding (PyAV) -------------------------------------------------------------------------


class VideoError(Exception):
    """A clip that cannot be used; `reason` is a short phrase for reports, the message names the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass(frozen=True)
class VideoInfo:
    """What a clip declares about itself: frame count, frame rate and size (pixels)."""

    path: str
    n_frames: int  # packets in the video stream (or the container's count); a full decode may find fewer
    fps: float
    width: int
    height: int
    codec: str
    duration_s: float | None  # the container's duration, when it states one

    @property
    def expected_frames(self) -> int | None:
        """Frames implied by the declared duration and frame rate (None if the container states no duration)."""
        return None if self.duration_s is None else int(round(self.duration_s * self.fps))


def _open_container(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise VideoError(path, "missing file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise VideoError(path, f"cannot open: {type(err).__name__}: {err}") from err
    if not container.streams.video:
        container.close()
        raise VideoError(path, "no video stream")
    return container


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, frame rate and size of a clip without decoding it (demuxing counts packets when needed).

    Raises VideoError naming the file when it is missing, empty, unreadable or has no usable video stream.
    """
    with _open_container(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        n_frames = int(stream.frames or 0)
        if n_frames <= 0:  # webm does not store a frame count: count the packets instead (no decoding)
            try:
                n_frames = sum(1 for packet in container.demux(stream) if packet.size > 0)
            except (av.FFmpegError, OSError) as err:
                raise VideoError(path, f"cannot demux: {type(err).__name__}: {err}") from err
        if container.duration:
            duration = container.duration / 1e6  # microseconds (AV_TIME_BASE)
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = None
        codec = stream.codec_context.name
    if fps <= 0:
        raise VideoError(path, "no frame rate")
    if width <= 0 or height <= 0:
        raise VideoError(path, f"invalid frame size {width}x{height}")
    if n_frames <= 0:
        raise VideoError(path, "no frames")
    return VideoInfo(str(path), n_frames, fps, width, height, codec, duration)


def iter_frames(path: str | os.PathLike, *, stop: int | None = None) -> Iterator[av.VideoFrame]:
    """Decode frames in order with PyAV (single-threaded: callers parallelise over clips), up to `stop` frames.

    This is the reference decode: it never seeks, so it cannot suffer from a broken keyframe index.
    """
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        try:
            for index, frame in enumerate(container.decode(stream)):
                if stop is not None and index >= stop:
                    return
                yield frame
        except (av.FFmpegError, OSError, ValueError) as err:
            raise VideoError(path, f"decode failed: {type(err).__name__}: {err}") from err


def read_frames_sequential(path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
    """Frames at `indices` as uint8 (n, H, W, 3), decoding from the start with PyAV (no seeking)."""
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: no frame indices requested")
    wanted = set(indices)
    found: dict[int, np.ndarray] = {}
    n_decoded = 0
    for index, frame in enumerate(iter_frames(path, stop=max(indices) + 1)):
        n_decoded = index + 1
        if index in wanted:
            found[index] = frame.to_ndarray(format="rgb24")
    missing = sorted(wanted - found.keys())
    if missing:
        raise VideoError(path, f"frames {missing} requested but the clip decodes to {n_decoded} frames")
    return np.stack([found[i] for i in indices])


# --- Random access through decord, verified against the sequential decode --------------------------------------------


@dataclass
class DecodeStats:
    """Per-process counters of how frames were read, for logs and benchmarks."""

    random_reads: int = 0  # reads answered by decord random access
    verified_files: int = 0  # files whose decord seeks were checked against PyAV and agreed
    fallback_files: int = 0  # files where decord disagreed with PyAV (or could not open them)
    fallback_reads: int = 0  # reads answered by sequential PyAV decoding because of such a file
    fallback_reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


DECODE_STATS = DecodeStats()

# A VP9/H.264 frame decodes bit-identically through decord's bundled FFmpeg and PyAV's (both use swscale's
# default BT.601 conversion); the tolerance (mean absolute difference, 0-255 scale) only absorbs a different
# colour conversion in another build. A wrong seek lands on another frame and differs by far more.
VERIFY_TOLERANCE = 1.0
VERIFY_MODES = ("first", "always", "never")


class FrameReader:
    """Random access to clip frames through decord, checked against a sequential PyAV decode.

    decord can return the wrong frame after a seek on some files (dmlc/decord#91: seeks landing on early frames;
    files whose keyframes are mislabelled). With `verify="first"`, the first read of each file in this process
    compares decord's random access at a few probe positions (plus the requested ones) with the PyAV reference;
    a file that disagrees, or that decord cannot open, is read by sequential decoding from then on, and every such
    read is counted in `DECODE_STATS`. `verify="always"` checks every read; `"never"` trusts decord.
    Returns uint8 (n, H, W, 3) arrays in the order of the requested indices.
    """

    def __init__(self, verify: str = "first", *, n_probes: int = 6, tolerance: float = VERIFY_TOLERANCE):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify={verify!r}; expected one of {VERIFY_MODES}")
        self.verify, self.n_probes, self.tolerance = verify, n_probes, tolerance
        self._seek_ok: dict[str, bool] = {}  # path -> decord's random access agreed with PyAV

    def read(self, path: str | os.PathLike, indices: Sequence[int]) -> np.ndarray:
        path, indices = str(path), [int(i) for i in indices]
        if self._seek_ok.get(path) is False:
            return self._fallback_read(path, indices)
        try:
            reader = load_decord().VideoReader(path, num_threads=1)
        except Exception as err:  # decord raises its own DECORDError; any failure means "use PyAV"
            self._mark_broken(path, f"decord cannot open: {_decord_message(err)}")
            return self._fallback_read(path, indices)
        n_frames = len(reader)
        bad = [i for i in indices if not 0 <= i < n_frames]
        if bad:
            raise VideoError(path, f"frame indices {bad} out of range for {n_frames} frames")
        if self.verify == "always" or (self.verify == "first" and path not in self._seek_ok):
            return self._verified_read(path, reader, indices)
        DECODE_STATS.random_reads += 1
        return reader.get_batch(indices).asnumpy()

    def _verified_read(self, path: str, reader, indices: list[int]) -> np.ndarray:
        n_frames = len(reader)
        # Probes jump backwards and forwards so that each one needs a real seek, then come the requested frames.
        probes = [n_frames - 1, n_frames // 2, 1, (3 * n_frames) // 4, n_frames // 4, n_frames - 2][: self.n_probes]
        probes = [p for p in dict.fromkeys(probes) if 0 <= p < n_frames]
        checked = probes + indices
        reference = [frame.to_ndarray(format="rgb24") for frame in iter_frames(path)]
        if len(reference) != n_frames:
            self._mark_broken(path, f"decord counts {n_frames} frames, sequential decode {len(reference)}")
            return self._pick(path, reference, indices)
        decoded = [reader[i].asnumpy() for i in probes] + list(reader.get_batch(indices).asnumpy())
        for index, frame in zip(checked, decoded):
            expected = reference[index]
            if frame.shape != expected.shape or _mean_abs_diff(frame, expected) > self.tolerance:
                self._mark_broken(path, "decord random access returned a different frame than sequential decoding")
                return self._pick(path, reference, indices)
        if path not in self._seek_ok:
            DECODE_STATS.verified_files += 1
        self._seek_ok[path] = True
        DECODE_STATS.random_reads += 1
        return np.stack(decoded[len(probes) :])

    def _mark_broken(self, path: str, reason: str) -> None:
        self._seek_ok[path] = False
        DECODE_STATS.fallback_files += 1
        DECODE_STATS.fallback_reasons[reason] = DECODE_STATS.fallback_reasons.get(reason, 0) + 1

    def _pick(self, path: str, reference: list[np.ndarray], indices: list[int]) -> np.ndarray:
        DECODE_STATS.fallback_reads += 1
        bad = [i for i in indices if not 0 <= i < len(reference)]
        if bad:
            raise VideoError(path, f"frame indices {bad} out of range for {len(reference)} decoded frames")
        return np.stack([reference[i] for i in indices])

    def _fallback_read(self, path: str, indices: list[int]) -> np.ndarray:
        DECODE_STATS.fallback_reads += 1
        return read_frames_sequential(path, indices)


def _decord_message(err: Exception) -> str:
    """decord's error text without its timestamp, source location and file name: '[t] src.cc:N: [path] msg'."""
    first_line = (str(err).splitlines() or [type(err).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*(\[[^\]]*\]\s*)?", "", first_line)[:160]


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
