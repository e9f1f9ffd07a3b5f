"""One entry point for household demonstrations in any supported format: `load_episodes` and `describe_episodes`.

Sources (`load_episodes(source)`):
- a native robomimic-style HDF5 file (`*.hdf5`, `*.h5`, see `voltron.datasets.demos`); `split` selects `mask/<split>`;
- a raw DROID episode folder (`trajectory.h5` + `recordings/MP4/<serial>.mp4`, see `voltron.datasets.droid`), or
  its `trajectory.h5`; `split` is `train`/`valid` from a hash of the episode id (`droid.droid_split`);
- a LeRobot dataset folder (v3.0 or v2.1: `meta/info.json`, see `voltron.datasets.lerobot`); `split` is one of its
  info.json splits ("train" is every episode when it names none);
- a directory, searched recursively for all of these (DROID and LeRobot folders are not searched further; names
  starting with "." are skipped), in sorted path order, so one directory may mix formats;
- a list of any of these, read in the order given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voltron.datasets.demos import DemoFile, DemoFormatError, Episode
from voltron.datasets.droid import (
    ACTION_MODES,
    DEFAULT_LANGUAGE_FILE,
    DROID_SPLITS,
    FRAME_MISMATCH_RULES,
    PROPRIO_MODES,
    TRAJECTORY_FILE,
    DroidFolder,
    droid_split,
    is_droid_folder,
    parse_image_size,
    resize_frame,
)
from voltron.datasets.lerobot import DEFAULT_TOLERANCE_S, VIDEO_BACKENDS, LeRobotFolder, is_lerobot_dataset

NATIVE_SUFFIXES = (".hdf5", ".h5")
EXPECTED_SOURCES = (
    f"a native demo file ({', '.join('*' + s for s in NATIVE_SUFFIXES)}), a DROID episode folder "
    f"({TRAJECTORY_FILE} + recordings/MP4/<serial>.mp4), a LeRobot dataset folder (meta/info.json), a directory "
    "holding them, or a list of those"
)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class EpisodeSource:
    """One resolved source: its format (a key of `SOURCE_READERS`) and path."""

    kind: str
    path: Path


@dataclass
class LoadOptions:
    """What `load_episodes` passes to every reader."""

    split: str | None = None
    cameras: list[str] | None = None
    image_size: tuple[int, int] | None = None
    droid_action: str = "cartesian_velocity"
    droid_proprio: str = "cartesian"
    droid_language_file: PathLike | None = DEFAULT_LANGUAGE_FILE
    droid_frame_mismatch: str = "error"
    droid_valid_percent: float = 10.0
    lerobot_episodes: list[int] | None = None
    lerobot_tolerance_s: float = DEFAULT_TOLERANCE_S
    lerobot_video_backend: str = "auto"

    def __post_init__(self) -> None:
        # Checked up front, so a bad option fails before any decoding, even for sources without DROID folders.
        for name, value, allowed in (
            ("droid_action", self.droid_action, sorted(ACTION_MODES)),
            ("droid_proprio", self.droid_proprio, sorted(PROPRIO_MODES)),
            ("droid_frame_mismatch", self.droid_frame_mismatch, list(FRAME_MISMATCH_RULES)),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; expected one of {allowed}")
        if not 0.0 <= self.droid_valid_percent <= 100.0:
            raise ValueError(f"droid_valid_percent={self.droid_valid_percent}; expected a percentage in [0, 100]")
        if self.lerobot_video_backend not in VIDEO_BACKENDS:
            raise ValueError(
                f"lerobot_video_backend={self.lerobot_video_backend!r}; expected one of {list(VIDEO_BACKENDS)}"
            )


def _read_native(path: Path, options: LoadOptions) -> list[Episode]:
    episodes: list[Episode] = []
    with DemoFile(path, split=options.split) as demos:
        if options.cameras is not None:
            missing = [c for c in options.cameras if c not in demos.cameras]
            if missing:
                raise DemoFormatError(f"{path}: no camera(s) {missing}; the file has cameras {demos.cameras}")
            # DemoFile reads the cameras listed in its `cameras` attribute: narrowing it skips the others' frames.
            demos.cameras = list(options.cameras)
        for episode in demos:  # resized one episode at a time, so only one is ever held at the stored size
            if options.image_size is not None:
                episode.images = {
                    name: np.stack([resize_frame(frame, options.image_size) for frame in frames])
                    for name, frames in episode.images.items()
                }
            episodes.append(episode)
    return episodes


def _read_droid(path: Path, options: LoadOptions) -> list[Episode]:
    folder = DroidFolder(path)
    if options.split is not None:
        if options.split not in DROID_SPLITS:
            raise DemoFormatError(
                f"{path}: unknown split {options.split!r} for a DROID episode folder; DROID folders have splits "
                f"{list(DROID_SPLITS)} (a hash of the episode id, {options.droid_valid_percent}% valid)"
            )
        if droid_split(folder.episode_id, options.droid_valid_percent) != options.split:
            return []
    return [
        folder.read(
            cameras=options.cameras,
            image_size=options.image_size,
            action=options.droid_action,
            proprio=options.droid_proprio,
            language_file=options.droid_language_file,
            frame_mismatch=options.droid_frame_mismatch,
        )
    ]


def _read_lerobot(path: Path, options: LoadOptions) -> Iterator[Episode]:
    folder = LeRobotFolder(path, tolerance_s=options.lerobot_tolerance_s, video_backend=options.lerobot_video_backend)
    return folder.iter_episodes(
        options.split, episodes=options.lerobot_episodes, cameras=options.cameras, image_size=options.image_size
    )


# Format -> reader of one source into episodes (a list, or an iterator that decodes one episode at a time). A new
# format registers here and in `_classify`/`_search`.
SOURCE_READERS: dict[str, Callable[[Path, LoadOptions], Iterable[Episode]]] = {
    "native": _read_native,
    "droid": _read_droid,
    "lerobot": _read_lerobot,
}


def _classify(path: Path) -> EpisodeSource | None:
    """The source `path` is by itself (None for a plain directory, to be searched)."""
    if is_droid_folder(path):
        return EpisodeSource("droid", path)
    if path.is_dir() and is_lerobot_dataset(path):
        return EpisodeSource("lerobot", path)
    if path.is_file() and path.name == TRAJECTORY_FILE:
        return EpisodeSource("droid", path.parent)
    if path.is_file() and path.suffix.lower() in NATIVE_SUFFIXES:
        return EpisodeSource("native", path)
    return None


def _search(root: Path) -> list[EpisodeSource]:
    found: list[EpisodeSource] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if is_droid_folder(here):  # `root` itself is never one: `_classify` took those
            found.append(EpisodeSource("droid", here))
            dirnames.clear()  # the folder's own files (trajectory.h5) are not separate sources
            continue
        if is_lerobot_dataset(here):
            found.append(EpisodeSource("lerobot", here))
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in NATIVE_SUFFIXES:
                found.append(EpisodeSource("native", here / name))
    return sorted(found, key=lambda source: source.path.relative_to(root).parts)


def resolve_sources(source: PathLike | Sequence[PathLike]) -> list[EpisodeSource]:
    """Every episode source that `source` names, in reading order (directories searched; see the module doc)."""
    if isinstance(source, str | os.PathLike):
        items = [Path(source)]
    else:
        items = [Path(item) for item in source]
        if not items:
            raise ValueError(f"an empty list of demo sources; expected {EXPECTED_SOURCES}")
    resolved: list[EpisodeSource] = []
    for path in items:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory; expected {EXPECTED_SOURCES}")
        single = _classify(path)
        if single is not None:
            resolved.append(single)
        elif path.is_dir():
            found = _search(path)
            if not found:
                raise ValueError(f"{path}: no demo files or DROID episode folders found; expected {EXPECTED_SOURCES}")
            resolved.extend(found)
        else:
            raise ValueError(f"{path}: not a demo source; expected {EXPECTED_SOURCES}")
    return resolved


def load_episodes(
    source: PathLike | Sequence[PathLike], split: str | None = None, *, progress: bool = False, **options: Any
) -> list[Episode]:
    """Every episode of `source` (a native file, a DROID folder, a LeRobot dataset, a directory or a list; see the
    module doc). The keyword options are `LoadOptions`' fields, with the defaults given there:

    - `split`: None for all episodes; for native files `mask/<split>` (an unknown split is an error listing the
      file's splits); for DROID folders `train`/`valid` by `droid_split(episode_id, droid_valid_percent)`; for
      LeRobot datasets a split of info.json (one it does not name gives a warning and no episodes).
    - `cameras`: image keys to keep (native camera names; DROID roles or serials; LeRobot camera names, DROID roles
      or feature keys); None keeps every camera.
    - `image_size`: None keeps the stored size; an int resizes to a square, a pair to (height, width).
    - `droid_*`: the DROID reader's action mode, proprio mode, language side file and frame-count rule
      (`voltron.datasets.droid.DroidFolder.read`).
    - `lerobot_*`: the LeRobot episode indices to read (None: all), the frame-time tolerance in seconds, and the
      video backend (auto, pyav, decord); see `voltron.datasets.lerobot`.
    Bad files raise `DemoFormatError` naming the file and the HDF5 path (or the MP4 and camera serial, or the
    LeRobot file and key).
    """
    return list(iter_episodes(source, split, progress=progress, **options))


def iter_episodes(
    source: PathLike | Sequence[PathLike], split: str | None = None, *, progress: bool = False, **options: Any
) -> Iterator[Episode]:
    """`load_episodes` one episode at a time (same arguments): a converter holds one source's episodes at most,
    and a LeRobot dataset's or DROID folder's only one."""
    image_size = options.pop("image_size", None)
    cameras = options.pop("cameras", None)
    load_options = LoadOptions(
        split=split,
        cameras=None if cameras is None else list(cameras),
        image_size=parse_image_size(image_size),
        **options,
    )
    sources = resolve_sources(source)
    if progress:
        from tqdm.auto import tqdm

        sources = tqdm(sources, desc="loading demos", unit="source")
    for item in sources:
        yield from SOURCE_READERS[item.kind](item.path, load_options)


def source_splits(source: EpisodeSource) -> list[str] | None:
    """The splits a source can be read with: a native file's masks, a LeRobot dataset's info.json splits, None for
    a DROID folder (any split: a hash of the episode id)."""
    if source.kind == "native":
        with DemoFile(source.path) as demos:
            return demos.splits
    if source.kind == "lerobot":
        return sorted(LeRobotFolder(source.path).splits)
    return None


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "max": 0, "mean": 0.0}
    return {"min": int(min(values)), "max": int(max(values)), "mean": float(np.mean(values))}


def describe_episodes(episodes: Sequence[Episode]) -> dict[str, Any]:
    """A JSON-able summary for CLIs: counts, lengths, cameras with their frame sizes, action/proprio sizes, language.

    Dimension entries list every distinct value, so a mixed set (e.g. 7-d and 8-d actions) is visible at a glance.
    """
    lengths = [len(episode) for episode in episodes]
    cameras: dict[str, dict[str, Any]] = {}
    for episode in episodes:
        for name, frames in episode.images.items():
            entry = cameras.setdefault(name, {"episodes": 0, "sizes": set()})
            entry["episodes"] += 1
            entry["sizes"].add(tuple(int(d) for d in np.shape(frames)[1:3]))
    instructions = [episode.language for episode in episodes if episode.language.strip()]
    formats: dict[str, int] = {}
    for episode in episodes:
        kind = str(episode.attrs.get("source_format", "native"))
        formats[kind] = formats.get(kind, 0) + 1
    return {
        "episodes": len(episodes),
        "steps": int(sum(lengths)),
        "length": _stats(lengths),
        "formats": dict(sorted(formats.items())),
        "cameras": {
            name: {"episodes": entry["episodes"], "sizes_hw": [list(size) for size in sorted(entry["sizes"])]}
            for name, entry in sorted(cameras.items())
        },
        "action_dims": sorted({int(np.shape(episode.actions)[1]) for episode in episodes}),
        "proprio_dims": sorted({int(np.shape(episode.proprio)[1]) for episode in episodes}),
        "instructions": len(set(instructions)),
        "without_language": len(episodes) - len(instructions),
    }
