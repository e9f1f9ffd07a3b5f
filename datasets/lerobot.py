"""LeRobot datasets as household demos: read v3.0 and v2.1 into `Episode`s, write v3.0, and convert between formats.

Layout (v3.0, what LeRobot >= 0.4 writes; facts in shared/reference/formats-and-protocols.md, LeRobot section):

    meta/info.json                               codebase_version, fps, features {key: {dtype, shape, names, info}},
                                                 data_path / video_path templates, splits {"train": "0:N"}, totals
    meta/episodes/chunk-XXX/file-YYY.parquet     a row per episode: episode_index, tasks, length,
                                                 dataset_from_index/to_index, data/{chunk,file}_index,
                                                 videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
                                                 stats/<feature>/<stat> (that episode's statistics)
    meta/tasks.parquet                           task string (the pandas index) -> task_index
    meta/stats.json                              {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    data/chunk-XXX/file-YYY.parquet              a row per frame: the non-video features plus timestamp,
                                                 frame_index, episode_index, index, task_index
    videos/<key>/chunk-XXX/file-YYY.mp4          several episodes back to back; episode e's frame at time t is the
                                                 one shown at from_timestamp + t (within tolerance_s)

v2.1 keeps one parquet and one mp4 per episode (`data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet`,
`videos/chunk-XXX/<key>/episode_XXXXXX.mp4`) with `meta/episodes.jsonl` and `meta/tasks.jsonl`.

Mapping to `Episode`: `observation.images.<name>` -> images[name] (DROID-in-LeRobot names map to our DROID roles:
exterior_1_left -> ext1, exterior_2_left -> ext2, wrist_left -> wrist), `observation.state` -> proprio,
`observation.environment_state` -> state, `action` -> actions, `next.reward` -> rewards, the frame's task string ->
language. The writer does the reverse and keeps an episode's own attributes (e.g. its reset seed) as JSON in the
episodes table's `voltron/attrs` column, which LeRobot's loaders carry along untouched.

Frames are decoded from the video at `from_timestamp + timestamp`: decord where it opens the file (H.264, HEVC,
VP9) and its frames agree with PyAV's on the file's first read, PyAV otherwise (AV1 through libdav1d). A frame
farther than `tolerance_s` (LeRobot's default 1e-4 s) from every decoded frame is an error naming the video, key
and time. Statistics are computed as LeRobot 0.4 does (its `compute_stats`), including the histogram quantiles.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av  # before decord (see voltron.datasets.video)
import numpy as np

from voltron.datasets.demos import DemoFormatError, Episode
from voltron.datasets.droid import parse_image_size, resize_frame
from voltron.errors import UserError
from voltron.io import atomic_write_bytes, atomic_write_json, partial_path

READ_VERSIONS = ("v3.0", "v2.1")
WRITE_VERSION = "v3.0"
INFO_PATH = Path("meta/info.json")
STATS_PATH = Path("meta/stats.json")
TASKS_PATH = Path("meta/tasks.parquet")
EPISODES_DIR = Path("meta/episodes")
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
LEGACY_EPISODES = Path("meta/episodes.jsonl")
LEGACY_TASKS = Path("meta/tasks.jsonl")

IMAGE_PREFIX = "observation.images."
STATE_KEY, ENV_STATE_KEY, ACTION_KEY, REWARD_KEY = (
    "observation.state",
    "observation.environment_state",
    "action",
    "next.reward",
)
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
ATTRS_COLUMN = "voltron/attrs"
DEFAULT_TOLERANCE_S = 1e-4  # LeRobotDataset's tolerance_s
VIDEO_BACKENDS = ("auto", "pyav", "decord")
VIDEO_CODECS = ("libsvtav1", "h264", "hevc")  # what LeRobot's encode_video_frames accepts
ENCODERS = {"libsvtav1": "libsvtav1", "h264": "libx264", "hevc": "libx265"}
# yuv420p is LeRobot's default; yuv444p (h264 only, as LeRobot allows) keeps full-resolution colour, which matters for
# small frames: at 64 px, 4:2:0 chroma alone costs ~2.4/255 of mean pixel error even at crf 0, 4:4:4 crf 0 ~0.2/255.
PIXEL_FORMATS = ("yuv420p", "yuv444p")

# DROID-in-LeRobot camera names (port_droid.py) <-> the camera roles of our DROID reader (voltron.datasets.droid).
CAMERA_ROLES = {"exterior_1_left": "ext1", "exterior_2_left": "ext2", "wrist_left": "wrist"}
ROLE_CAMERAS = {role: name for name, role in CAMERA_ROLES.items()}

DROID_FPS = 15  # raw DROID's control and camera rate
ENV_TYPE_FPS = {"metaworld": 80}  # for demo files that predate env_args["fps"]: MetaWorld steps at 80 Hz


class LeRobotFormatError(DemoFormatError, UserError):
    """A LeRobot dataset that cannot be read as given: one line naming the file, the key and what was expected."""

    def __init__(self, message: str, *, source: Any, key: str | None = None, expected: str | None = None) -> None:
        UserError.__init__(self, message, source=source, key=key, expected=expected)


def is_lerobot_dataset(path: str | os.PathLike) -> bool:
    """True for a folder that is a LeRobot dataset: `meta/info.json`, or `meta/` beside `data/` (info.json lost)."""
    path = Path(path)
    return (path / INFO_PATH).is_file() or ((path / "meta").is_dir() and (path / "data").is_dir())


# === Statistics, as LeRobot computes them (lerobot/datasets/compute_stats.py, Apache-2.0) ==========================
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)
QUANTILE_BINS = 5000


def _histogram_quantile(hist: np.ndarray, edges: np.ndarray, target: float) -> float:
    cumsum = np.cumsum(hist)
    idx = int(np.searchsorted(cumsum, target))
    if idx == 0:
        return float(edges[0])
    if idx >= len(cumsum):
        return float(edges[-1])
    before = cumsum[idx - 1]
    in_bin = cumsum[idx] - before
    if in_bin == 0:
        return float(edges[idx])
    return float(edges[idx] + (target - before) / in_bin * (edges[idx + 1] - edges[idx]))


def _vector_stats(values: np.ndarray, count: int) -> dict[str, np.ndarray]:
    """Stats over the rows of `values` (N, D): LeRobot's RunningQuantileStats fed one batch (5000-bin histograms
    between the min and max, linear interpolation inside a bin), or mean-valued quantiles below 2 rows."""
    if len(values) < 2:
        stats = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
        stats.update({key: stats["mean"].copy() for key in QUANTILE_KEYS})
    else:
        minimum, maximum = values.min(0), values.max(0)
        mean, mean_of_squares = values.mean(0), (values**2).mean(0)
        stats = {"min": minimum, "max": maximum, "mean": mean, "std": np.sqrt(np.maximum(0, mean_of_squares - mean**2))}
        quantiles: list[list[float]] = [[] for _ in QUANTILES]
        for dim in range(values.shape[1]):
            edges = np.linspace(minimum[dim] - 1e-10, maximum[dim] + 1e-10, QUANTILE_BINS + 1)
            hist, _ = np.histogram(values[:, dim], bins=edges)
            for i, q in enumerate(QUANTILES):
                quantiles[i].append(_histogram_quantile(hist, edges, q * len(values)))
        stats.update({key: np.asarray(qs) for key, qs in zip(QUANTILE_KEYS, quantiles)})
    stats["count"] = np.array([count])
    return stats


def sample_indices(length: int) -> np.ndarray:
    """The frames LeRobot samples for image statistics: 100 (or all) up to ~500 frames, then length**0.75."""
    n = max(min(100, length), min(int(length**0.75), 10_000))
    return np.round(np.linspace(0, length - 1, n)).astype(int)


def feature_stats(values: np.ndarray, *, image: bool = False) -> dict[str, np.ndarray]:
    """One feature's stats over one episode, shaped as LeRobot stores them.

    Images (T, H, W, 3) uint8: sampled frames (`sample_indices`), every 2nd/3rd/... pixel past 300 px (LeRobot's
    auto-downsampling to ~150 px), per-channel stats scaled to [0, 1] with shape (3, 1, 1) and count = frames used.
    They are computed in float64: LeRobot 0.4 squares uint8 pixels in place, which wraps and zeroes its image std.
    Vectors (T, D): per-dimension stats (D,). Scalars (T,): stats of shape (1,).
    """
    values = np.asarray(values)
    if image:
        frames = values[sample_indices(len(values))]
        height, width = frames.shape[1:3]
        if max(height, width) >= 300:
            step = int(width / 150) if width > height else int(height / 150)
            frames = frames[:, ::step, ::step]
        stats = _vector_stats(frames.reshape(-1, 3).astype(np.float64), len(frames))
        return {k: v if k == "count" else (v / 255.0).reshape(3, 1, 1) for k, v in stats.items()}
    if values.ndim == 1:
        values = values[:, None]
    return _vector_stats(values, len(values))


def aggregate_stats(per_episode: Sequence[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset stats from per-episode stats, as LeRobot's `aggregate_stats`: count-weighted means and quantiles,
    the pooled variance, and the extreme min/max."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted({k for stats in per_episode for k in stats}):
        items = [stats[key] for stats in per_episode if key in stats]
        counts = np.stack([np.asarray(s["count"]) for s in items]).astype(np.float64)
        means = np.stack([s["mean"] for s in items])
        weights = counts.reshape(counts.shape[0], *([1] * (means.ndim - 1)))
        total = counts.sum(0)
        mean = (means * weights).sum(0) / total
        variance = ((np.stack([s["std"] for s in items]) ** 2 + (means - mean) ** 2) * weights).sum(0) / total
        out[key] = {
            "min": np.min(np.stack([s["min"] for s in items]), 0),
            "max": np.max(np.stack([s["max"] for s in items]), 0),
            "mean": mean,
            "std": np.sqrt(variance),
            "count": total.astype(np.int64),
        }
        for q in QUANTILE_KEYS:
            if all(q in s for s in items):
                out[key][q] = (np.stack([s[q] for s in items]) * weights).sum(0) / total
    return out


def _jsonable(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    return {key: {name: np.asarray(v).tolist() for name, v in d.items()} for key, d in stats.items()}


# === Frames at timestamps ===========================================================================================
@dataclass
class LeRobotDecodeStats:
    """Per-process counters of how LeRobot video segments (one episode of one camera) were decoded."""

    decord_segments: int = 0
    pyav_segments: int = 0
    verified_files: int = 0  # files where decord's frames matched PyAV's on the first read
    pyav_files: int = 0  # files read by PyAV: decord cannot open them (e.g. AV1) or disagreed with PyAV

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


DECODE_STATS = LeRobotDecodeStats()
VERIFY_TOLERANCE = 1.0  # mean absolute difference (0-255) between decord's and PyAV's frames; see video.py


def _pyav_segment(
    path: Path, first_s: float, last_s: float, tolerance_s: float
) -> tuple[list[np.ndarray], np.ndarray, bool]:
    """Frames shown from `first_s` to `last_s` (seconds) with their times, and whether the stream ended before
    `last_s`: a seek to the keyframe before `first_s`, then sequential decoding (exact: times come from pts)."""
    from voltron.datasets.video import VideoError, _open_container

    try:
        container = _open_container(path)
    except VideoError as err:
        raise LeRobotFormatError(err.reason, source=path, expected="a readable video file") from err
    frames, times, ended = [], [], True
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # dav1d and h264 decode in parallel; the result does not depend on it
        time_base = stream.time_base
        try:
            if first_s - tolerance_s > 0:
                container.seek(int((first_s - tolerance_s) / time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * time_base)
                if t < first_s - tolerance_s:
                    continue  # decoded from the keyframe before the segment
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
                if t >= last_s - tolerance_s:
                    ended = False
                    break
        except (av.FFmpegError, OSError, ValueError) as err:
            raise LeRobotFormatError(f"decoding failed: {type(err).__name__}: {err}", source=path) from err
    return frames, np.asarray(times, np.float64), ended


def _nearest(times: np.ndarray, queries: np.ndarray) -> np.ndarray:
    right = np.clip(np.searchsorted(times, queries), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    return np.where(np.abs(times[left] - queries) <= np.abs(times[right] - queries), left, right)


class FrameDecoder:
    """Frames of a LeRobot video at given times, from decord or PyAV (`backend`: auto, pyav or decord), checked
    against `tolerance_s`. decord is used for a file only once its frames match PyAV's on that file's first read."""

    def __init__(self, backend: str = "auto", tolerance_s: float = DEFAULT_TOLERANCE_S) -> None:
        if backend not in VIDEO_BACKENDS:
            raise ValueError(f"video backend {backend!r}; expected one of {VIDEO_BACKENDS}")
        if not tolerance_s > 0:
            raise ValueError(f"tolerance_s={tolerance_s}; expected a positive number of seconds")
        self.backend, self.tolerance_s = backend, tolerance_s
        self._decord: dict[str, tuple[Any, np.ndarray] | None] = {}  # path -> (reader, frame times), None: PyAV
        self._verified: set[str] = set()

    def frames_at(self, path: Path, queries: np.ndarray, *, key: str, episode: int, offset: float) -> np.ndarray:
        """uint8 (T, H, W, 3): the frame shown at each query time (seconds into the file, increasing)."""
        queries = np.asarray(queries, np.float64)
        reader = self._decord_reader(path)
        if reader is not None:
            video, times = reader
            indices = self._match(times, queries, True, path, key, episode, offset)
            frames = video.get_batch(indices.tolist()).asnumpy()
            if str(path) in self._verified:
                DECODE_STATS.decord_segments += 1
                return frames
            reference = self._pyav(path, queries, key, episode, offset)
            diff = np.abs(frames.astype(np.int16) - reference.astype(np.int16)).reshape(len(frames), -1).mean(1)
            if frames.shape == reference.shape and float(diff.max()) <= VERIFY_TOLERANCE:
                self._verified.add(str(path))
                DECODE_STATS.verified_files += 1
                DECODE_STATS.decord_segments += 1
                return frames
            self._decord[str(path)] = None  # decord disagrees with the sequential decode: PyAV from now on
            DECODE_STATS.pyav_files += 1
            return reference
        return self._pyav(path, queries, key, episode, offset)

    def _decord_reader(self, path: Path):
        if self.backend == "pyav":
            return None
        if str(path) not in self._decord:
            from voltron.datasets.video import load_decord

            if len(self._decord) >= 8:  # keep a few files open (a v3 video holds many episodes)
                self._decord.pop(next(iter(self._decord)))
            try:
                video = load_decord().VideoReader(str(path), num_threads=1)
                times = video.get_frame_timestamp(range(len(video)))[:, 0].astype(np.float64)
                self._decord[str(path)] = (video, times)
            except Exception as err:  # decord raises its own DECORDError, e.g. for AV1 it cannot decode
                if self.backend == "decord":
                    raise LeRobotFormatError(
                        f"decord cannot open it ({str(err).splitlines()[0][:120]})", source=path
                    ) from err
                self._decord[str(path)] = None
                DECODE_STATS.pyav_files += 1
        return self._decord[str(path)]

    def _pyav(self, path: Path, queries: np.ndarray, key: str, episode: int, offset: float) -> np.ndarray:
        frames, times, ended = _pyav_segment(path, float(queries[0]), float(queries[-1]), self.tolerance_s)
        indices = self._match(times, queries, ended, path, key, episode, offset)
        DECODE_STATS.pyav_segments += 1
        return np.stack([frames[i] for i in indices])

    def _match(self, times, queries, ended: bool, path: Path, key: str, episode: int, offset: float) -> np.ndarray:
        where = f"episode {episode} (from_timestamp {offset:.6g} s)"
        if len(times) == 0:
            raise LeRobotFormatError(
                f"{where} has no video frames at or after {queries[0]:.6g} s", source=path, key=key,
                expected=f"{len(queries)} frames from {queries[0]:.6g} s to {queries[-1]:.6g} s",
            )  # fmt: skip
        nearest = _nearest(times, queries)
        gaps = np.abs(times[nearest] - queries)
        bad = np.flatnonzero(gaps > self.tolerance_s)
        if len(bad):
            i = int(bad[0])
            if ended and queries[i] > times[-1] + self.tolerance_s:
                raise LeRobotFormatError(
                    f"{where} has {len(queries)} frames up to {queries[-1]:.6g} s, but the video ends at "
                    f"{times[-1]:.6g} s (frame {i} of the episode is missing)", source=path, key=key,
                    expected="a video at least as long as its episodes",
                )  # fmt: skip
            raise LeRobotFormatError(
                f"{where} frame {i} at {queries[i] - offset:.6g} s (video time {queries[i]:.6g} s): the nearest "
                f"decoded frame is at {times[nearest[i]]:.6g} s, {gaps[i]:.3g} s away", source=path, key=key,
                expected=f"a frame within tolerance_s={self.tolerance_s:g} (lerobot_tolerance_s raises it)",
            )  # fmt: skip
        return nearest


# === Reader =========================================================================================================
def _read_parquet(path: Path, what: str, columns: list[str] | None = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LeRobotFormatError("missing file", source=path, expected=what)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise LeRobotFormatError(
            f"not a readable parquet file ({one_line_error(err)})", source=path, expected=what
        ) from err


def one_line_error(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _column(table, key: str, shape: Sequence[int], path: Path) -> np.ndarray:
    """A feature column as (T, *shape) numpy (scalar features: (T,))."""
    import pyarrow as pa

    column = table.column(key).combine_chunks()
    n = len(column)
    size = int(np.prod(shape)) if shape else 1
    while (
        pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type) or pa.types.is_large_list(column.type)
    ):
        column = column.flatten()
    values = column.to_numpy(zero_copy_only=False)
    if values.size != n * size:
        raise LeRobotFormatError(
            f"holds {values.size} values for {n} frames", source=path, key=key,
            expected=f"shape {list(shape)} per frame, as meta/info.json says",
        )  # fmt: skip
    return values.reshape(n) if size == 1 and tuple(shape) in ((), (1,)) else values.reshape(n, *shape)


def _decode_image_column(table, key: str, path: Path) -> np.ndarray:
    """An `image` feature (PNG/JPEG bytes in the parquet, as HF datasets' Image) as uint8 (T, H, W, 3)."""
    import io

    from PIL import Image

    frames = []
    for index, cell in enumerate(table.column(key).to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if not data:
            raise LeRobotFormatError(
                f"row {index} holds no image bytes", source=path, key=key, expected="encoded images"
            )
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(frames)


@dataclass
class _EpisodeRow:
    index: int
    length: int
    tasks: list[str]
    data_path: Path
    videos: dict[str, tuple[Path, float]]  # key -> (file, from_timestamp)
    attrs: dict = field(default_factory=dict)


class LeRobotFolder:
    """A LeRobot dataset folder (v3.0 or v2.1): metadata on open, `read(episode_index)` for a decoded `Episode`.

    Every problem is a `LeRobotFormatError` naming the file and the key: a missing meta/info.json, an unsupported
    codebase_version, a feature missing from a parquet file, a video shorter than its episode, a frame time outside
    `tolerance_s`.
    """

    def __init__(
        self, root: str | os.PathLike, *, tolerance_s: float = DEFAULT_TOLERANCE_S, video_backend: str = "auto"
    ) -> None:
        self.root = Path(root)
        info_path = self.root / INFO_PATH
        if not info_path.is_file():
            raise LeRobotFormatError(
                "missing", source=info_path, expected="a LeRobot dataset's meta/info.json (fps, features, paths)"
            )
        try:
            self.info: dict = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise LeRobotFormatError(f"not valid JSON ({err})", source=info_path) from err
        self.version = self.info.get("codebase_version")
        if self.version not in READ_VERSIONS:
            raise LeRobotFormatError(
                f"unsupported codebase_version {self.version!r}", source=info_path, key="codebase_version",
                expected=f"one of {list(READ_VERSIONS)} (older datasets convert with LeRobot's v2.1/v3.0 converters)",
            )  # fmt: skip
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise LeRobotFormatError("missing", source=info_path, key=key, expected="every LeRobot info.json key")
        self.fps = float(self.info["fps"])
        self.features: dict[str, dict] = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.image_keys = [k for k, f in self.features.items() if f.get("dtype") == "image"]
        for key in (ACTION_KEY, STATE_KEY):
            if key not in self.features:
                raise LeRobotFormatError(
                    f"no feature {key!r}", source=info_path, key="features",
                    expected=f"{ACTION_KEY!r} and {STATE_KEY!r} (actions and proprioception); it has {sorted(self.features)}",
                )  # fmt: skip
        self.decoder = FrameDecoder(video_backend, tolerance_s)
        self.tasks = self._load_tasks()
        self.episodes = self._load_episodes()
        self._by_index = {row.index: row for row in self.episodes}
        self._table_cache: tuple[Path, Any] | None = None

    def __repr__(self) -> str:
        return f"LeRobotFolder({str(self.root)!r}: {self.version}, {len(self.episodes)} episodes, cameras={self.cameras()})"

    def __len__(self) -> int:
        return len(self.episodes)

    # -- metadata ----------------------------------------------------------------------------------------------------
    def _load_tasks(self) -> dict[int, str]:
        if self.version == "v2.1":
            rows = self._jsonl(self.root / LEGACY_TASKS, "task_index and task per line")
            return {int(row["task_index"]): str(row["task"]) for row in rows}
        table = _read_parquet(self.root / TASKS_PATH, "the task strings with their task_index")
        names = table.column_names
        text_column = next((n for n in ("task", "__index_level_0__") if n in names), None)
        if "task_index" not in names or text_column is None:
            raise LeRobotFormatError(
                f"columns {names}", source=self.root / TASKS_PATH, key="task_index",
                expected="task_index plus the task string (the pandas index, __index_level_0__, or task)",
            )  # fmt: skip
        return dict(
            zip(
                (int(i) for i in table.column("task_index").to_pylist()),
                map(str, table.column(text_column).to_pylist()),
            )
        )

    def _jsonl(self, path: Path, expected: str) -> list[dict]:
        if not path.is_file():
            raise LeRobotFormatError("missing file", source=path, expected=expected)
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise LeRobotFormatError(
                        f"line {number} is not JSON ({err})", source=path, expected=expected
                    ) from err
        return rows

    def _load_episodes(self) -> list[_EpisodeRow]:
        if self.version == "v2.1":
            return self._load_legacy_episodes()
        files = sorted((self.root / EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not files:
            raise LeRobotFormatError(
                "no chunk-*/file-*.parquet files", source=self.root / EPISODES_DIR, expected="the episodes table (v3.0)"
            )
        rows: list[_EpisodeRow] = []
        for path in files:
            import pyarrow.parquet as pq

            names = [n for n in pq.read_schema(path).names if not n.startswith("stats/")]
            table = _read_parquet(path, "the episodes table", names)
            required = ["episode_index", "length", "data/chunk_index", "data/file_index"]
            for key in self.video_keys:
                required += [f"videos/{key}/chunk_index", f"videos/{key}/file_index", f"videos/{key}/from_timestamp"]
            for key in required:
                if key not in names:
                    raise LeRobotFormatError(
                        "column missing", source=path, key=key, expected=f"the v3.0 episodes columns {required}"
                    )
            for record in table.to_pylist():
                data = self.root / self.info["data_path"].format(
                    chunk_index=record["data/chunk_index"], file_index=record["data/file_index"]
                )
                videos = {
                    key: (
                        self.root / self.info["video_path"].format(
                            video_key=key, chunk_index=record[f"videos/{key}/chunk_index"],
                            file_index=record[f"videos/{key}/file_index"],
                        ),
                        float(record[f"videos/{key}/from_timestamp"]),
                    )
                    for key in self.video_keys
                }  # fmt: skip
                attrs = json.loads(record[ATTRS_COLUMN]) if record.get(ATTRS_COLUMN) else {}
                tasks = [str(t) for t in (record.get("tasks") or [])]
                rows.append(
                    _EpisodeRow(int(record["episode_index"]), int(record["length"]), tasks, data, videos, attrs)
                )
        return sorted(rows, key=lambda row: row.index)

    def _load_legacy_episodes(self) -> list[_EpisodeRow]:
        chunks_size = int(self.info.get("chunks_size", 1000))
        rows = []
        for record in self._jsonl(self.root / LEGACY_EPISODES, "episode_index, tasks and length per line"):
            index = int(record["episode_index"])
            chunk = index // chunks_size
            data = self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=index)
            videos = {
                key: (
                    self.root / self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=index),
                    0.0,
                )
                for key in self.video_keys
            }
            rows.append(
                _EpisodeRow(index, int(record["length"]), [str(t) for t in record.get("tasks", [])], data, videos)
            )
        return sorted(rows, key=lambda row: row.index)

    @property
    def splits(self) -> dict[str, list[int]]:
        """Split name -> episode indices, from info.json's "start:end" ranges; LeRobot's "train" is every episode."""
        splits: dict[str, list[int]] = {}
        for name, spec in (self.info.get("splits") or {}).items():
            try:
                start, end = (int(part) for part in str(spec).split(":"))
            except ValueError as err:
                raise LeRobotFormatError(
                    f"split {name!r} is {spec!r}", source=self.root / INFO_PATH, key="splits", expected="'start:end'"
                ) from err
            splits[name] = [row.index for row in self.episodes if start <= row.index < end]
        splits.setdefault("train", [row.index for row in self.episodes])
        return splits

    def select(self, split: str | None = None, episodes: Sequence[int] | None = None) -> list[int]:
        """Episode indices of `split` (None: all), narrowed to `episodes` when given (unknown indices are errors).
        A split other than "train" that the dataset does not name gives a warning and no episodes, as a native file
        without that mask does when training asks for its validation split."""
        chosen = [row.index for row in self.episodes]
        if split is not None:
            splits = self.splits
            if split not in splits:
                warnings.warn(
                    f"{self.root / INFO_PATH}: no {split!r} split (splits {sorted(splits)}); no episodes from it",
                    stacklevel=3,
                )
                return []
            chosen = splits[split]
        if episodes is not None:
            unknown = sorted(set(episodes) - set(self._by_index))
            if unknown:
                raise LeRobotFormatError(
                    f"no episode(s) {unknown}", source=self.root, key="episodes",
                    expected=f"indices in 0..{len(self.episodes) - 1}",
                )  # fmt: skip
            wanted = set(episodes)
            chosen = [index for index in chosen if index in wanted]
        return chosen

    def cameras(self) -> dict[str, str]:
        """Our camera name -> LeRobot feature key: the DROID role when the name is a DROID-in-LeRobot one, else the
        key without `observation.images.` (a lone `observation.image` is `image`)."""
        names = {}
        for key in [*self.video_keys, *self.image_keys]:
            short = key[len(IMAGE_PREFIX) :] if key.startswith(IMAGE_PREFIX) else key.rsplit(".", 1)[-1]
            names[CAMERA_ROLES.get(short, short)] = key
        return names

    def resolve_cameras(self, cameras: Sequence[str] | None) -> dict[str, str]:
        """Image name -> feature key for the requested cameras (roles, short names or full keys); None: all."""
        known = self.cameras()
        if cameras is None:
            return known
        aliases = {
            **{key: key for key in known.values()},
            **{ROLE_CAMERAS.get(n, n): k for n, k in known.items()},
            **known,
        }
        aliases.update({key[len(IMAGE_PREFIX) :]: key for key in known.values() if key.startswith(IMAGE_PREFIX)})
        missing = [name for name in cameras if name not in aliases]
        if missing:
            raise LeRobotFormatError(
                f"no camera(s) {missing}", source=self.root / INFO_PATH, key="features",
                expected=f"one of {sorted(known)} (or their feature keys {sorted(known.values())})",
            )  # fmt: skip
        return {name: aliases[name] for name in cameras}

    # -- one episode ---------------------------------------------------------------------------------------------------
    def _table(self, path: Path):
        if self._table_cache is None or self._table_cache[0] != path:
            table = _read_parquet(path, "the frames' data (one row per frame)")
            needed = [k for k, f in self.features.items() if f.get("dtype") != "video"]
            for key in needed:
                if key not in table.column_names:
                    raise LeRobotFormatError(
                        "feature named in meta/info.json is absent from the parquet", source=path, key=key,
                        expected=f"a column per non-video feature; the file has {table.column_names}",
                    )  # fmt: skip
            self._table_cache = (path, table)
        return self._table_cache[1]

    def read(self, episode_index: int, *, cameras: Sequence[str] | None = None, image_size=None) -> Episode:
        """Episode `episode_index`, frames decoded (and resized to `image_size`, None: as stored)."""
        import pyarrow.compute as pc

        if episode_index not in self._by_index:
            raise LeRobotFormatError(f"no episode {episode_index}", source=self.root, key="episode_index")
        row = self._by_index[episode_index]
        selected = self.resolve_cameras(cameras)
        size = parse_image_size(image_size)
        table = self._table(row.data_path)
        if "episode_index" in table.column_names:
            table = table.filter(pc.equal(table.column("episode_index"), episode_index))
        if "frame_index" in table.column_names:
            table = table.sort_by("frame_index")
        if table.num_rows != row.length:
            raise LeRobotFormatError(
                f"episode {episode_index} has {table.num_rows} rows", source=row.data_path, key="episode_index",
                expected=f"{row.length} (its length in the episodes table)",
            )  # fmt: skip

        def feature(key: str) -> np.ndarray:
            return _column(table, key, self.features[key].get("shape") or [1], row.data_path)

        timestamps = feature("timestamp").astype(np.float64)
        images = {}
        for name, key in selected.items():
            if key in self.image_keys:
                frames = _decode_image_column(table, key, row.data_path)
            else:
                path, offset = row.videos[key]
                if not path.is_file():
                    raise LeRobotFormatError(f"missing video of episode {episode_index}", source=path, key=key)
                frames = self.decoder.frames_at(
                    path, offset + timestamps, key=key, episode=episode_index, offset=offset
                )
            if size is not None:
                frames = np.stack([resize_frame(frame, size) for frame in frames])
            images[name] = np.ascontiguousarray(frames)
        task_index = feature("task_index") if "task_index" in table.column_names else np.zeros(row.length, int)
        instruction = self.tasks.get(int(task_index[0]), row.tasks[0] if row.tasks else "")
        dones = np.zeros(row.length, np.uint8)
        dones[-1] = 1
        attrs = {
            **{k: v for k, v in row.attrs.items() if k != "_split"},
            "source_format": "lerobot",
            "source": f"{self.root} episode {episode_index}",
            "lerobot_root": str(self.root),
            "lerobot_episode_index": episode_index,
            "fps": self.fps,
        }
        return Episode(
            images=images,
            proprio=feature(STATE_KEY).astype(np.float32).reshape(row.length, -1),
            actions=feature(ACTION_KEY).astype(np.float32).reshape(row.length, -1),
            language=instruction,
            rewards=feature(REWARD_KEY).astype(np.float32).reshape(row.length) if REWARD_KEY in self.features else None,
            dones=dones,
            attrs=attrs,
            state=feature(ENV_STATE_KEY).astype(np.float32).reshape(row.length, -1)
            if ENV_STATE_KEY in self.features
            else None,
        )

    def iter_episodes(
        self, split: str | None = None, *, episodes: Sequence[int] | None = None, cameras=None, image_size=None
    ) -> Iterator[Episode]:
        for index in self.select(split, episodes):
            yield self.read(index, cameras=cameras, image_size=image_size)


# === Writer =========================================================================================================
PROGRESS_NAME = "voltron_write.json"  # inside the staging folder only: the settings a resumed write must match


def _nested_type(ndim: int, base):
    import pyarrow as pa

    for _ in range(ndim):
        base = pa.list_(base)
    return base


def _stat_array(values: list[np.ndarray]):
    import pyarrow as pa

    first = np.asarray(values[0])
    base = pa.int64() if np.issubdtype(first.dtype, np.integer) else pa.float64()
    return pa.array([np.asarray(v).tolist() for v in values], type=_nested_type(first.ndim, base))


def _hf_features(features: dict[str, dict]) -> dict:
    """The `huggingface` schema metadata LeRobot's data files carry (datasets' Value / fixed-length List)."""
    out = {}
    for key, feature in features.items():
        if feature["dtype"] == "video":
            continue
        value = {"dtype": feature["dtype"], "_type": "Value"}
        out[key] = (
            value
            if list(feature["shape"]) == [1]
            else {"feature": value, "length": feature["shape"][0], "_type": "List"}
        )
    return {"info": {"features": out}}


def _video_info(path: Path) -> dict:
    """What LeRobot's get_video_info records about a video feature."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec.canonical_name,
            "video.pix_fmt": stream.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": int(stream.base_rate),
            "video.channels": 3,
            "has_audio": bool(container.streams.audio),
        }


class LeRobotWriter:
    """Write episodes as a LeRobot v3.0 dataset at `root`, atomically and resumably.

    Everything is written into the hidden sibling `.<name>.partial/`, each file under a temporary name first; the
    folder becomes `root` only in `finalize()`, so `root` is always a complete dataset. Episodes go into groups of
    files (data parquet, one mp4 per camera, episodes parquet) that roll over at the LeRobot size limits; a group
    counts as written once its episodes parquet is in place. A killed writer leaves the staging folder: the next
    writer with the same settings resumes after its last complete group (`episodes_done` says how many episodes to
    skip), and one with `resume=False` starts over. An existing `root` is replaced only with `overwrite=True`, and
    only once the new dataset is complete.

        with LeRobotWriter("demos/drawer-open-lerobot", fps=80) as writer:
            for episode in episodes[writer.episodes_done:]:
                writer.add(episode)
            writer.finalize()
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        fps: float,
        robot_type: str | None = None,
        vcodec: str = "libsvtav1",
        crf: int = 30,
        gop: int = 2,
        pix_fmt: str = "yuv420p",
        overwrite: bool = False,
        resume: bool = True,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
        chunks_size: int = 1000,
    ) -> None:
        if vcodec not in VIDEO_CODECS:
            raise UserError(
                "unsupported video codec", key="vcodec", value=vcodec, expected=f"one of {list(VIDEO_CODECS)}"
            )
        if not fps > 0:
            raise UserError("not a frame rate", key="fps", value=fps, expected="a positive number of frames per second")
        if pix_fmt not in PIXEL_FORMATS or (pix_fmt != "yuv420p" and vcodec != "h264"):
            raise UserError(
                f"not available with vcodec={vcodec!r}", key="pix_fmt", value=pix_fmt,
                expected="yuv420p, or yuv444p with h264 (LeRobot encodes AV1 and HEVC as yuv420p only)",
            )  # fmt: skip
        self.root = Path(root)
        if self.root.exists() and not overwrite:
            raise UserError(
                "already exists; pass --overwrite to replace it (the old dataset stays until the new one is complete), "
                "or choose another output", source=self.root,
            )  # fmt: skip
        self.fps = int(fps) if float(fps).is_integer() else float(fps)
        self.settings = {
            "codebase_version": WRITE_VERSION, "fps": self.fps, "robot_type": robot_type, "vcodec": vcodec,
            "crf": crf, "gop": gop, "chunks_size": chunks_size, "data_files_size_in_mb": data_files_size_in_mb,
            "video_files_size_in_mb": video_files_size_in_mb, "pix_fmt": pix_fmt,
        }  # fmt: skip
        self.staging = partial_path(self.root)
        self.features: dict[str, dict] | None = None
        self.cameras: dict[str, str] = {}  # our camera name -> feature key
        self.rows: list[dict] = []  # episodes-table rows of the committed groups (stats included)
        self.tasks: dict[str, int] = {}
        self.splits: list[tuple[str, int, int]] = []  # (name, start, end)
        self.group = 0  # index of the next group of files
        self._open: dict | None = None  # the group being written
        self._finalized = False
        self._check_lock()  # before anything in the staging folder is touched
        if self.staging.exists() and not resume:
            shutil.rmtree(self.staging)
        if self.staging.exists():
            self._resume()
        self.staging.mkdir(parents=True, exist_ok=True)
        (self.staging / ".lock").write_text(str(os.getpid()))

    # -- resume and lock ---------------------------------------------------------------------------------------------
    def _check_lock(self) -> None:
        """Refuse while another live process writes the staging folder (a killed writer's lock is stale)."""
        lock = self.staging / ".lock"
        if not lock.exists():
            return
        try:
            pid = int(lock.read_text().strip() or 0)
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except PermissionError:  # alive, another user's
            raise UserError(f"another user's writer (pid {pid}) is writing it", source=self.staging) from None
        except (ValueError, OSError):
            return
        if pid != os.getpid():
            raise UserError(f"another writer (pid {pid}) is writing it", source=self.staging)

    def _resume(self) -> None:
        progress_path = self.staging / "meta" / PROGRESS_NAME
        if not progress_path.is_file():
            shutil.rmtree(self.staging)  # killed before its first group: nothing worth keeping
            return
        progress = json.loads(progress_path.read_text())
        if progress["settings"] != self.settings:
            old = progress["settings"]
            changed = ", ".join(f"{k}={old.get(k)!r}" for k in sorted(self.settings) if old.get(k) != self.settings[k])
            raise UserError(
                f"holds a killed write with other settings ({changed}); "
                "rerun with those settings to resume it, or delete the folder to start over", source=self.staging,
            )  # fmt: skip
        self.features, self.cameras = progress["features"], progress["cameras"]
        import pyarrow.parquet as pq

        for path in sorted((self.staging / EPISODES_DIR).glob("chunk-*/file-*.parquet")):
            self.rows.extend(pq.read_table(path).to_pylist())
            self.group += 1
        for row in self.rows:
            for task in row["tasks"]:
                self.tasks.setdefault(task, len(self.tasks))
            name = json.loads(row[ATTRS_COLUMN]).get("_split", "train")
            self._note_split(name, int(row["episode_index"]))
        # Files of the group that was being written when the writer died (and its temporary files) start over.
        for path in self.staging.rglob("*"):
            if path.is_file() and (path.name.endswith(".partial") or self._group_of(path) >= self.group):
                path.unlink()

    def _group_of(self, path: Path) -> int:
        try:
            chunk, file = path.parent.name, path.stem
            if not (chunk.startswith("chunk-") and file.startswith("file-")):
                return -1
            return int(chunk[6:]) * int(self.settings["chunks_size"]) + int(file[5:])
        except ValueError:
            return -1

    @property
    def episodes_done(self) -> int:
        """Episodes already written (resumed from a killed write): the caller skips that many."""
        return len(self.rows)

    # -- adding episodes -----------------------------------------------------------------------------------------------
    def _note_split(self, name: str, index: int) -> None:
        if self.splits and self.splits[-1][0] == name:
            self.splits[-1] = (name, self.splits[-1][1], index + 1)
            return
        if any(existing == name for existing, _, _ in self.splits):
            raise UserError(
                f"episode {index} is in split {name!r}, but that split's episodes already ended", source=self.root,
                expected="each split's episodes one after another (LeRobot splits are 'start:end' ranges)",
            )  # fmt: skip
        self.splits.append((name, index, index + 1))

    def _define_features(self, episode: Episode) -> None:
        features: dict[str, dict] = {}
        for name, frames in episode.images.items():
            key = IMAGE_PREFIX + ROLE_CAMERAS.get(name, name)
            self.cameras[name] = key
            features[key] = {
                "dtype": "video",
                "shape": list(np.shape(frames)[1:]),
                "names": ["height", "width", "channels"],
            }
        features[STATE_KEY] = {"dtype": "float32", "shape": [int(np.shape(episode.proprio)[1])], "names": None}
        if episode.state is not None:
            features[ENV_STATE_KEY] = {"dtype": "float32", "shape": [int(np.shape(episode.state)[1])], "names": None}
        features[ACTION_KEY] = {"dtype": "float32", "shape": [int(np.shape(episode.actions)[1])], "names": None}
        if episode.rewards is not None:
            features[REWARD_KEY] = {"dtype": "float32", "shape": [1], "names": None}
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for key in INDEX_KEYS[1:]:
            features[key] = {"dtype": "int64", "shape": [1], "names": None}
        self.features = features
        self.staging.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.staging / "meta" / PROGRESS_NAME,
            {"settings": self.settings, "features": features, "cameras": self.cameras},
        )

    def _check(self, episode: Episode, index: int) -> dict[str, np.ndarray]:
        """The episode's arrays by feature key, checked against the features the first episode set."""
        where = f"episode {index}"
        length = len(episode)
        if set(episode.images) != set(self.cameras):
            raise UserError(
                f"{where} has cameras {sorted(episode.images)}",
                source=self.root,
                expected=f"the first episode's {sorted(self.cameras)}",
            )
        arrays = {self.cameras[name]: np.asarray(frames) for name, frames in episode.images.items()}
        arrays[STATE_KEY] = np.asarray(episode.proprio, np.float32)
        arrays[ACTION_KEY] = np.asarray(episode.actions, np.float32)
        if ENV_STATE_KEY in self.features:
            if episode.state is None:
                raise UserError(
                    f"{where} has no simulator state",
                    source=self.root,
                    expected="state in every episode, as the first had",
                )
            arrays[ENV_STATE_KEY] = np.asarray(episode.state, np.float32)
        if REWARD_KEY in self.features:
            if episode.rewards is None:
                raise UserError(
                    f"{where} has no rewards", source=self.root, expected="rewards in every episode, as the first had"
                )
            arrays[REWARD_KEY] = np.asarray(episode.rewards, np.float32).reshape(length)
        for key, array in arrays.items():
            feature = self.features[key]
            expected = (length, *feature["shape"]) if feature["shape"] != [1] else (length,)
            if array.shape != expected or (feature["dtype"] == "video" and array.dtype != np.uint8):
                raise UserError(
                    f"{where}: {key} is {array.dtype} {array.shape}", source=self.root,
                    expected=f"{'uint8' if feature['dtype'] == 'video' else 'float32'} {expected}",
                )  # fmt: skip
        return arrays

    def add(self, episode: Episode, split: str = "train") -> None:
        """Append one episode (frames encoded now); `split` names its split (each split's episodes consecutive)."""
        if self._finalized:
            raise RuntimeError("add() after finalize()")
        index = self.episodes_done + (0 if self._open is None else len(self._open["rows"]))
        if len(episode) == 0:
            raise UserError(f"episode {index} has no steps", source=self.root)
        if self.features is None:
            self._define_features(episode)
        arrays = self._check(episode, index)
        self._note_split(split, index)
        if self._open is None:
            self._open_group()
        group = self._open
        length = len(episode)
        task = episode.language
        task_index = self.tasks.setdefault(task, len(self.tasks))
        start_frame = self._frames_written() + group["frames"]
        columns = {
            **{k: v for k, v in arrays.items() if self.features[k]["dtype"] != "video"},
            "timestamp": np.arange(length) / self.fps,  # float64 in LeRobot's episode buffer; stored as float32
            "frame_index": np.arange(length, dtype=np.int64),
            "episode_index": np.full(length, index, np.int64),
            "index": np.arange(start_frame, start_frame + length, dtype=np.int64),
            "task_index": np.full(length, task_index, np.int64),
        }
        row: dict[str, Any] = {"episode_index": index, "tasks": [task], "length": length}
        row.update({"data/chunk_index": group["chunk"], "data/file_index": group["file"]})
        row.update({"dataset_from_index": start_frame, "dataset_to_index": start_frame + length})
        offset = group["frames"] / self.fps
        for key in self.cameras.values():
            self._encode(key, arrays[key])
            row.update({
                f"videos/{key}/chunk_index": group["chunk"], f"videos/{key}/file_index": group["file"],
                f"videos/{key}/from_timestamp": offset, f"videos/{key}/to_timestamp": offset + length / self.fps,
            })  # fmt: skip
        stats = {key: feature_stats(arrays[key], image=True) for key in self.cameras.values()}
        stats.update({key: feature_stats(values) for key, values in columns.items()})
        for key, feature in stats.items():
            row.update({f"stats/{key}/{name}": value for name, value in feature.items()})
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = group["chunk"], group["file"]
        row[ATTRS_COLUMN] = json.dumps({**_plain_attrs(episode.attrs), "_split": split}, sort_keys=True)
        group["rows"].append(row)
        for key, values in columns.items():
            group["columns"].setdefault(key, []).append(values)
        group["frames"] += length
        group["bytes"] += sum(v.nbytes for v in columns.values())
        video_mb = max((p.stat().st_size for p in group["videos_tmp"].values() if p.exists()), default=0) / 2**20
        if (
            group["bytes"] / 2**20 >= self.settings["data_files_size_in_mb"]
            or video_mb >= self.settings["video_files_size_in_mb"]
        ):
            self._close_group()

    def _frames_written(self) -> int:
        return int(self.rows[-1]["dataset_to_index"]) if self.rows else 0

    def _path(self, template: str, **keys) -> Path:
        return self.staging / template.format(**keys)

    def _open_group(self) -> None:
        chunks = int(self.settings["chunks_size"])
        chunk, file = divmod(self.group, chunks)
        videos_final = {
            key: self._path(VIDEO_PATH, video_key=key, chunk_index=chunk, file_index=file)
            for key in self.cameras.values()
        }
        self._open = {
            "chunk": chunk, "file": file, "rows": [], "columns": {}, "frames": 0, "bytes": 0,
            "videos_final": videos_final, "videos_tmp": {k: partial_path(p) for k, p in videos_final.items()},
            "containers": {},
        }  # fmt: skip

    def _encode(self, key: str, frames: np.ndarray) -> None:
        group = self._open
        container_stream = group["containers"].get(key)
        if container_stream is None:
            height, width = frames.shape[1:3]
            if height % 2 or width % 2:
                raise UserError(
                    f"{key} frames are {width}x{height}", source=self.root, expected="even sizes (yuv420p video)"
                )
            tmp = group["videos_tmp"][key]
            tmp.parent.mkdir(parents=True, exist_ok=True)
            container = av.open(str(tmp), "w", format="mp4")
            options = {"g": str(self.settings["gop"]), "crf": str(self.settings["crf"])}
            if self.settings["vcodec"] == "libsvtav1":
                options["preset"] = "12"  # LeRobot's encode_video_frames default
                os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at info level
            rate = Fraction(self.fps).limit_denominator(1000)
            stream = container.add_stream(ENCODERS[self.settings["vcodec"]], rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, self.settings["pix_fmt"]
            container_stream = group["containers"][key] = [container, stream, 0]
        container, stream, count = container_stream
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = count  # one tick of 1/fps per frame: frame k of the file shows at k / fps
            count += 1
            for packet in stream.encode(video_frame):
                container.mux(packet)
        container_stream[2] = count

    def _close_group(self) -> None:
        """Finish the open group: videos, then data, then its episodes table (the group's commit marker)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        group, self._open = self._open, None
        if group is None:
            return
        for key, (container, stream, _) in group["containers"].items():
            for packet in stream.encode():
                container.mux(packet)
            container.close()
            os.replace(group["videos_tmp"][key], group["videos_final"][key])
        columns = {}
        for key, parts in group["columns"].items():
            values = np.concatenate(parts)
            shape = self.features[key]["shape"]
            if key == "timestamp":
                values = values.astype(np.float32)
            if shape == [1]:
                columns[key] = pa.array(values)
            else:
                columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(shape[0]))
        order = [k for k in self.features if k in columns]
        table = pa.table({k: columns[k] for k in order})
        table = table.replace_schema_metadata(
            {"huggingface": json.dumps(_hf_features({k: self.features[k] for k in order}))}
        )
        self._write_parquet(self._path(DATA_PATH, chunk_index=group["chunk"], file_index=group["file"]), table)
        rows = group["rows"]
        names = list(rows[0])
        episodes = {}
        for name in names:
            values = [r[name] for r in rows]
            episodes[name] = _stat_array(values) if name.startswith("stats/") else pa.array(values)
        episodes_path = (
            self.staging
            / EPISODES_DIR
            / f"{CHUNK_FILE.format(chunk_index=group['chunk'], file_index=group['file'])}.parquet"
        )
        self._write_parquet(episodes_path, pa.table(episodes))
        self.rows.extend(pq.read_table(episodes_path).to_pylist())
        self.group += 1

    @staticmethod
    def _write_parquet(path: Path, table) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        atomic_write_bytes(path, sink.getvalue().to_pybytes())

    # -- finishing ---------------------------------------------------------------------------------------------------
    def finalize(self) -> Path:
        """Write the dataset-level metadata and move the finished dataset to `root`; returns `root`."""
        import pyarrow as pa

        self._close_group()
        if not self.rows:
            raise UserError("no episodes to write", source=self.root, expected="at least one episode")
        features = json.loads(json.dumps(self.features))
        for key in self.cameras.values():
            features[key]["info"] = _video_info(self._path(VIDEO_PATH, video_key=key, chunk_index=0, file_index=0))
        per_episode = []
        for row in self.rows:
            stats: dict[str, dict[str, np.ndarray]] = {}
            for column, value in row.items():
                if column.startswith("stats/"):
                    key, stat = column[len("stats/") :].rsplit("/", 1)
                    stats.setdefault(key, {})[stat] = np.asarray(value)
            per_episode.append(stats)
        atomic_write_json(self.staging / STATS_PATH, _jsonable(aggregate_stats(per_episode)), indent=4)
        tasks = sorted(self.tasks.items(), key=lambda item: item[1])
        table = pa.table(
            {
                "task_index": pa.array([i for _, i in tasks], pa.int64()),
                "__index_level_0__": pa.array([t for t, _ in tasks], pa.large_string()),
            }
        )
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [
                {
                    "name": None,
                    "field_name": None,
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": {"encoding": "UTF-8"},
                }
            ],
            "columns": [
                {
                    "name": "task_index",
                    "field_name": "task_index",
                    "pandas_type": "int64",
                    "numpy_type": "int64",
                    "metadata": None,
                },
                {
                    "name": None,
                    "field_name": "__index_level_0__",
                    "pandas_type": "unicode",
                    "numpy_type": "object",
                    "metadata": None,
                },
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": __import__("pyarrow").__version__},
            "pandas_version": "2.2.0",
        }  # fmt: skip — what pandas writes for DataFrame({"task_index": ...}, index=tasks), which LeRobot reads
        self._write_parquet(
            self.staging / TASKS_PATH, table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
        )
        info = {
            "codebase_version": WRITE_VERSION,
            "robot_type": self.settings["robot_type"],
            "total_episodes": len(self.rows),
            "total_frames": self._frames_written(),
            "total_tasks": len(self.tasks),
            "chunks_size": self.settings["chunks_size"],
            "data_files_size_in_mb": self.settings["data_files_size_in_mb"],
            "video_files_size_in_mb": self.settings["video_files_size_in_mb"],
            "fps": self.fps,
            "splits": {name: f"{start}:{end}" for name, start, end in self.splits},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self.cameras else None,
            "features": features,
        }
        atomic_write_json(self.staging / INFO_PATH, info, indent=4)
        (self.staging / "meta" / PROGRESS_NAME).unlink()
        (self.staging / ".lock").unlink(missing_ok=True)
        if self.root.exists():  # overwrite=True: the old dataset goes only now that the new one is complete
            old = self.root.with_name(f".{self.root.name}.{os.getpid()}-old.partial")
            os.replace(self.root, old)
            os.replace(self.staging, self.root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.staging, self.root)
        self._finalized = True
        return self.root

    def close(self) -> None:
        """Stop without finalizing: close open video files; the staging folder stays for a resume."""
        group, self._open = self._open, None
        if group is not None:
            for container, _, _ in group["containers"].values():
                try:
                    container.close()
                except Exception:  # a half-written mp4 is deleted on resume anyway
                    pass
        lock = self.staging / ".lock"
        if not self._finalized and lock.exists() and lock.read_text().strip() == str(os.getpid()):
            lock.unlink()

    def __enter__(self) -> LeRobotWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _plain_attrs(attrs: dict) -> dict:
    """Episode attributes as JSON values (numpy scalars and arrays become numbers and lists)."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, str | int | float | bool | list) or value is None:
            out[key] = value
    return out


def write_lerobot(
    root: str | os.PathLike,
    episodes: Iterable[Episode | tuple[Episode, str]],
    *,
    fps: float,
    progress: bool = False,
    total: int | None = None,
    **writer_options,
) -> Path:
    """Write `episodes` (Episodes, or (Episode, split) pairs) as a LeRobot v3.0 dataset at `root`; see
    `LeRobotWriter`. A resumed write skips the episodes its killed predecessor finished."""
    from tqdm.auto import tqdm

    with LeRobotWriter(root, fps=fps, **writer_options) as writer:
        items = itertools.islice(iter(episodes), writer.episodes_done, None)
        bar = tqdm(
            items,
            desc=f"writing {Path(root).name}",
            unit="episode",
            disable=not progress,
            total=total,
            initial=writer.episodes_done,
        )
        for item in bar:
            episode, split = item if isinstance(item, tuple) else (item, "train")
            writer.add(episode, split)
        return writer.finalize()


# === Conversion (`voltron demos convert`) ===========================================================================
def source_fps(source) -> float | None:
    """The frame rate of an `EpisodeSource`: LeRobot's info.json, DROID's 15 Hz, a demo file's env_args["fps"]."""
    if source.kind == "lerobot":
        return LeRobotFolder(source.path).fps
    if source.kind == "droid":
        return DROID_FPS
    if source.kind == "native":
        from voltron.datasets.demos import DemoFile

        with DemoFile(source.path) as demos:
            env_args = demos.env_args
        fps = env_args.get("fps") or (env_args.get("env_kwargs") or {}).get("fps")
        return float(fps) if fps else ENV_TYPE_FPS.get(str(env_args.get("env_type")))
    return None


def convert(
    source,
    out: str | os.PathLike,
    to: str,
    *,
    fps: float | None = None,
    vcodec: str = "libsvtav1",
    crf: int = 30,
    pix_fmt: str = "yuv420p",
    overwrite: bool = False,
    cameras: list[str] | None = None,
    image_size=None,
    progress: bool = True,
) -> Path:
    """Convert demos in any format `load_episodes` reads into a LeRobot v3.0 dataset (`to="lerobot"`) or a native
    HDF5 file (`to="hdf5"`). Episodes are read one source at a time. A LeRobot write keeps the train and valid
    splits when every source has both, and a killed conversion resumes where it stopped."""
    from voltron.datasets.episodes import iter_episodes, resolve_sources, source_splits

    if to not in ("lerobot", "hdf5"):
        raise UserError("unknown output format", key="--to", value=to, expected="lerobot or hdf5")
    sources = resolve_sources(source)
    options = {"cameras": cameras, "image_size": image_size}
    if to == "hdf5":
        from voltron.datasets.demos import write_demos

        out = Path(out)
        if out.exists() and not overwrite:
            raise UserError(
                "already exists; pass --overwrite to replace it (once the new file is complete)", source=out
            )
        rates = {source_fps(s) for s in sources} - {None}
        env_args = {"source": [str(s.path) for s in sources], "source_formats": sorted({s.kind for s in sources})}
        if len(rates) == 1:
            env_args["fps"] = rates.pop()
        episodes = iter_episodes(source, progress=progress, **options)
        return write_demos(out, episodes, env_args)
    if fps is None:
        rates = {source_fps(s) for s in sources}
        if None in rates or len(rates) != 1:
            names = ", ".join(f"{s.path} ({source_fps(s) or 'unknown'})" for s in sources[:3])
            raise UserError("cannot tell one frame rate for the output", source=names, key="--fps", expected="--fps N")
        fps = rates.pop()
    splits = [source_splits(s) for s in sources]
    phases: list[str | None] = (
        ["train", "valid"] if all(s is None or {"train", "valid"} <= set(s) for s in splits) else [None]
    )

    def episodes() -> Iterator[tuple[Episode, str]]:
        for phase in phases:
            for episode in iter_episodes(source, split=phase, **options):
                yield episode, phase or "train"

    robot = {"droid": "franka"}.get(sources[0].kind) if len({s.kind for s in sources}) == 1 else None
    if sources[0].kind == "lerobot" and len(sources) == 1:
        robot = LeRobotFolder(sources[0].path).info.get("robot_type")
    return write_lerobot(
        out, episodes(), fps=fps, vcodec=vcodec, crf=crf, pix_fmt=pix_fmt, overwrite=overwrite, robot_type=robot,
        progress=progress,
    )  # fmt: skip


def convert_main(args) -> int:
    """Handler for `voltron demos convert`."""
    path = convert(
        args.source, args.out, args.to, fps=args.fps, vcodec=args.vcodec, crf=args.crf, pix_fmt=args.pix_fmt,
        overwrite=args.overwrite, cameras=args.cameras, image_size=args.image_size, progress=not args.no_progress,
    )  # fmt: skip
    print(f"wrote {path}", file=sys.stdout)
    return 0


ENV_TYPE_ROBOTS = {"metaworld": "sawyer"}


def write_lerobot_demos(
    out: str | os.PathLike,
    episodes: Iterable[Episode],
    env_args: dict,
    *,
    n_episodes: int,
    valid_fraction: float = 0.1,
    seed: int = 0,
    vcodec: str = "libsvtav1",
) -> Path:
    """`write_demos`'s counterpart for a LeRobot v3.0 dataset (what `voltron sim collect --format lerobot` writes):
    the frame rate comes from env_args["fps"], and the last `valid_fraction` of the `n_episodes` expected form the
    `valid` split (LeRobot splits are ranges; the episodes are independent rollouts, so the tail is as good a
    sample as any). Like `write_demos` it replaces `out` once the new dataset is complete; it does not resume, since
    its episodes are generated anew. `seed` is unused (the split needs no draw)."""
    from voltron.datasets.demos import split_names

    fps = env_args.get("fps")
    if not fps:
        raise UserError("no frame rate", source="env_args", key="fps", expected="the demos' steps per second")
    n_valid = len(split_names([str(i) for i in range(n_episodes)], valid_fraction, seed)["valid"])
    robot = env_args.get("robot_type") or ENV_TYPE_ROBOTS.get(str(env_args.get("env_type")))
    pairs = ((episode, "valid" if i >= n_episodes - n_valid else "train") for i, episode in enumerate(episodes))
    return write_lerobot(out, pairs, fps=fps, robot_type=robot, vcodec=vcodec, overwrite=True, resume=False)
