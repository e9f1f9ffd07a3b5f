"""Household demonstrations in robomimic-style HDF5: the `Episode` record, an atomic writer and a checked reader.

Layout (one file):

    data/                       attrs: env_args (JSON string), total (sum of num_samples)
      demo_<i>/                 attrs: num_samples, language, plus the episode's own attrs (e.g. seed)
        obs/<camera>_image      (T, H, W, 3) uint8, one frame per chunk, compressed
        obs/proprio             (T, P) float32
        obs/state               (T, S) float32, optional: the simulator's privileged low-dim state (state oracles)
        actions                 (T, A) float32
        rewards                 (T,) float32
        dones                   (T,) uint8, 1 on the last step
    mask/train, mask/valid      arrays of demo names (bytes), a deterministic split
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from voltron.io import remove_stale_partials

IMAGE_SUFFIX = "_image"
FORMAT_NAME = "voltron-demos"
FORMAT_VERSION = 1


class DemoFormatError(KeyError, ValueError):
    """A demo file lacks a group, dataset or attribute, or holds it with the wrong shape."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass
class Episode:
    """One demonstration; every array has the same length T along its first axis."""

    images: dict[str, np.ndarray]  # camera name -> (T, H, W, 3) uint8
    proprio: np.ndarray  # (T, P) float32
    actions: np.ndarray  # (T, A) float32
    language: str
    rewards: np.ndarray | None = None  # (T,) float32
    dones: np.ndarray | None = None  # (T,) bool/uint8
    attrs: dict = field(default_factory=dict)  # extra per-episode attributes, e.g. {"seed": 3}
    state: np.ndarray | None = None  # (T, S) float32 privileged simulator state, when the source has one

    def __len__(self) -> int:
        return int(len(self.actions))


def _check_episode(index: int, episode: Episode) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Validated (obs datasets by key, actions) of episode `index`; raises ValueError naming the bad field."""
    where = f"episode {index}"
    actions = np.asarray(episode.actions, dtype=np.float32)
    if actions.ndim != 2 or len(actions) == 0:
        raise ValueError(f"{where}: actions has shape {actions.shape}; expected (T, A) with T >= 1")
    length = len(actions)
    proprio = np.asarray(episode.proprio, dtype=np.float32)
    if proprio.ndim != 2 or len(proprio) != length:
        raise ValueError(f"{where}: proprio has shape {proprio.shape}; expected ({length}, P)")
    if not episode.images:
        raise ValueError(f"{where}: no camera images; expected images={{camera: (T, H, W, 3) uint8}}")
    obs = {"proprio": proprio}
    if episode.state is not None:
        state = np.asarray(episode.state, dtype=np.float32)
        if state.ndim != 2 or len(state) != length:
            raise ValueError(f"{where}: state has shape {state.shape}; expected ({length}, S)")
        obs["state"] = state
    for camera, frames in episode.images.items():
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[0] != length or frames.shape[-1] != 3:
            raise ValueError(
                f"{where}: images[{camera!r}] is {frames.dtype} {frames.shape}; expected uint8 ({length}, H, W, 3)"
            )
        obs[f"{camera}{IMAGE_SUFFIX}"] = frames
    if not isinstance(episode.language, str):
        raise ValueError(f"{where}: language is {type(episode.language).__name__}; expected a string")
    return obs, actions


def _attr_value(name: str, value: Any) -> Any:
    if isinstance(value, str | bool | int | float | np.generic | np.ndarray):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, int | float | bool | np.generic) for v in value):
        return np.asarray(value)
    raise TypeError(f"episode attribute {name!r} is {type(value).__name__}; expected a string, number or number list")


def split_names(names: list[str], valid_fraction: float, seed: int) -> dict[str, list[str]]:
    """A deterministic train/valid split of `names` (the same names, fraction and seed give the same split)."""
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction={valid_fraction}: expected a value in [0, 1)")
    n_valid = int(round(valid_fraction * len(names)))
    if valid_fraction > 0 and len(names) >= 2:
        n_valid = max(1, n_valid)
    order = np.random.default_rng(seed).permutation(len(names))
    valid = sorted(order[:n_valid].tolist())
    train = sorted(order[n_valid:].tolist())
    return {"train": [names[i] for i in train], "valid": [names[i] for i in valid]}


def write_demos(
    path: str | os.PathLike,
    episodes: Iterable[Episode],
    env_args: dict,
    *,
    valid_fraction: float = 0.1,
    seed: int = 0,
    compression: str | None = "gzip",
) -> Path:
    """Write `episodes` (any iterable, consumed once, so a generator keeps memory to one episode) to `path`.

    The file is built under a temporary name in the same directory and renamed only when complete, so a killed
    writer never leaves a file under `path` (its leftover `.<name>.<pid>-*.partial` is removed by the next write). `compression` is "gzip", "lzf" or None; images are chunked one frame
    per chunk so readers can fetch single frames. Returns the final path.
    """
    path = Path(path)
    if compression not in ("gzip", "lzf", None):
        raise ValueError(f"compression={compression!r}: expected 'gzip', 'lzf' or None")
    env_args_json = json.dumps(env_args, sort_keys=True)  # fail before any work if env_args is not JSON-able
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)  # what killed writers of `path` left (.<name>.<pid>-*.partial)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    gzip_opts = 4 if compression == "gzip" else None
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            names: list[str] = []
            total = 0
            for index, episode in enumerate(episodes):
                obs, actions = _check_episode(index, episode)
                length = len(actions)
                demo = data.create_group(f"demo_{index}")
                obs_group = demo.create_group("obs")
                for key, array in obs.items():
                    if key.endswith(IMAGE_SUFFIX):
                        obs_group.create_dataset(
                            key,
                            data=array,
                            chunks=(1, *array.shape[1:]),
                            compression=compression,
                            compression_opts=gzip_opts,
                        )
                    else:
                        obs_group.create_dataset(key, data=array)
                rewards = np.zeros(length, np.float32) if episode.rewards is None else episode.rewards
                dones = episode.dones
                if dones is None:
                    dones = np.zeros(length, np.uint8)
                    dones[-1] = 1
                for key, array, dtype in (("rewards", rewards, np.float32), ("dones", dones, np.uint8)):
                    array = np.asarray(array).astype(dtype)
                    if array.shape != (length,):
                        raise ValueError(f"episode {index}: {key} has shape {array.shape}; expected ({length},)")
                    demo.create_dataset(key, data=array)
                demo.create_dataset("actions", data=actions)
                demo.attrs["num_samples"] = length
                demo.attrs["language"] = episode.language
                for key, value in episode.attrs.items():
                    if key in ("num_samples", "language"):
                        raise ValueError(f"episode {index}: attribute {key!r} is reserved by the format")
                    demo.attrs[key] = _attr_value(key, value)
                names.append(demo.name.rsplit("/", 1)[-1])
                total += length
            data.attrs["env_args"] = env_args_json
            data.attrs["total"] = total
            data.attrs["format"] = FORMAT_NAME
            data.attrs["format_version"] = FORMAT_VERSION
            mask = f.create_group("mask")
            for split, members in split_names(names, valid_fraction, seed).items():
                mask.create_dataset(split, data=np.array(members, dtype="S"))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _python_value(value: Any) -> Any:
    """HDF5 attribute -> plain Python (bytes -> str, numpy scalar -> int/float/bool); arrays stay arrays."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _demo_index(name: str) -> int:
    try:
        return int(name.rsplit("_", 1)[-1])
    except ValueError:
        return -1


class DemoFile:
    """Read-only access to a demo file written by `write_demos` (or by robomimic, for the shared keys).

    `DemoFile(path, split="train")` restricts the episodes to `mask/train`. Indexing returns whole `Episode`s.
    A missing group, dataset or attribute raises `DemoFormatError` naming the file, the HDF5 path and what was
    expected.
    """

    def __init__(self, path: str | os.PathLike, split: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such demo file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise DemoFormatError(f"{self.path}: not a readable HDF5 file ({error})") from error
        try:
            data = self._group("data", "the group of demo_<i> episodes")
            self.env_args: dict = json.loads(self._attr(data, "env_args", "a JSON string describing the env"))
            all_keys = sorted((k for k in data.keys() if k.startswith("demo_")), key=_demo_index)
            self.split = split
            if split is None:
                self.demo_keys: list[str] = all_keys
            else:
                self.demo_keys = self._split_keys(split, set(all_keys))
            self.cameras: list[str] = self._cameras(all_keys)
        except BaseException:
            self._file.close()
            raise

    # -- checked access ---------------------------------------------------------------------------------------
    def _group(self, key: str, expected: str) -> h5py.Group:
        node = self._file.get(key)
        if not isinstance(node, h5py.Group):
            found = "nothing" if node is None else "a dataset"
            raise DemoFormatError(f"{self.path}: /{key} holds {found}; expected a group ({expected})")
        return node

    def _dataset(self, key: str, expected: str) -> np.ndarray:
        node = self._file.get(key)
        if not isinstance(node, h5py.Dataset):
            found = "nothing" if node is None else "a group"
            raise DemoFormatError(f"{self.path}: /{key} holds {found}; expected a dataset ({expected})")
        return node[()]

    def _attr(self, node: h5py.Group, key: str, expected: str) -> Any:
        if key not in node.attrs:
            raise DemoFormatError(f"{self.path}: {node.name} has no attribute {key!r}; expected {expected}")
        value = node.attrs[key]
        return value.decode() if isinstance(value, bytes) else value

    def _split_keys(self, split: str, existing: set[str]) -> list[str]:
        mask = self._file.get("mask")
        splits = sorted(mask.keys()) if isinstance(mask, h5py.Group) else []
        if split not in splits:
            raise DemoFormatError(
                f"{self.path}: unknown split {split!r} (no dataset /mask/{split}); the file has splits {splits}"
            )
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in mask[split][()]]
        missing = [k for k in keys if k not in existing]
        if missing:
            raise DemoFormatError(f"{self.path}: /mask/{split} names {missing}, which are not groups under /data")
        return keys

    def _cameras(self, keys: list[str]) -> list[str]:
        if not keys:
            return []
        obs = self._group(f"data/{keys[0]}/obs", "observations: <camera>_image and proprio datasets")
        return sorted(k[: -len(IMAGE_SUFFIX)] for k in obs.keys() if k.endswith(IMAGE_SUFFIX))

    # -- public API -------------------------------------------------------------------------------------------
    @property
    def splits(self) -> list[str]:
        mask = self._file.get("mask")
        return sorted(mask.keys()) if isinstance(mask, h5py.Group) else []

    @property
    def lengths(self) -> list[int]:
        """num_samples of each episode, in `demo_keys` order (read from attributes only)."""
        return [
            int(self._attr(self._group(f"data/{k}", "an episode"), "num_samples", "the episode length"))
            for k in self.demo_keys
        ]

    def __len__(self) -> int:
        return len(self.demo_keys)

    def __getitem__(self, index: int) -> Episode:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.path}: episode index {index} out of range for {len(self)} episodes")
        key = self.demo_keys[index]
        base = f"data/{key}"
        group = self._group(base, "an episode")
        length = int(self._attr(group, "num_samples", "the episode length T"))
        language = str(self._attr(group, "language", "the episode's instruction string"))
        images = {
            camera: self._dataset(f"{base}/obs/{camera}{IMAGE_SUFFIX}", "(T, H, W, 3) uint8 frames")
            for camera in self.cameras
        }
        proprio = self._dataset(f"{base}/obs/proprio", "(T, P) float32 proprioception")
        actions = self._dataset(f"{base}/actions", "(T, A) float32 actions")
        rewards = self._dataset(f"{base}/rewards", "(T,) float32 rewards")
        dones = self._dataset(f"{base}/dones", "(T,) uint8 done flags")
        state = None
        if "state" in group["obs"]:
            state = self._dataset(f"{base}/obs/state", "(T, S) float32 simulator state")
        named = {"actions": actions, "obs/proprio": proprio, "rewards": rewards, "dones": dones}
        if state is not None:
            named["obs/state"] = state
        named.update({f"obs/{camera}{IMAGE_SUFFIX}": frames for camera, frames in images.items()})
        for name, array in named.items():
            if array.shape[:1] != (length,):
                raise DemoFormatError(
                    f"{self.path}: /{base}/{name} has shape {array.shape}; expected {length} steps (num_samples)"
                )
        extra = {k: _python_value(v) for k, v in group.attrs.items() if k not in ("num_samples", "language")}
        return Episode(
            images=images,
            proprio=proprio.astype(np.float32, copy=False),
            actions=actions.astype(np.float32, copy=False),
            language=language,
            rewards=rewards.astype(np.float32, copy=False),
            dones=dones.astype(np.uint8, copy=False),
            attrs=extra,
            state=None if state is None else state.astype(np.float32, copy=False),
        )

    def __iter__(self) -> Iterator[Episode]:
        for index in range(len(self)):
            yield self[index]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> DemoFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        split = f", split={self.split!r}" if self.split else ""
        return f"DemoFile({str(self.path)!r}{split}: {len(self)} episodes, cameras={self.cameras})"
