"""Raw DROID episode folders (`trajectory.h5` plus `recordings/MP4/<serial>.mp4`) read as `Episode`s.

One folder is one episode, as DROID's raw release ships it:

    <episode>/
      metadata_<uuid>.json        uuid, success, current_task, {wrist,ext1,ext2}_cam_serial, ... (optional here)
      trajectory.h5               observation/robot_state/{cartesian_position, gripper_position, joint_positions, ...}
                                  observation/camera_type/<serial>   (T,) 0 = hand (wrist) camera, 1 = varied (exterior)
                                  action/{cartesian_velocity, joint_velocity, joint_position, gripper_position, ...}
      recordings/MP4/<serial>.mp4 the left view of each ZED camera, one frame per control step (15 Hz)
      <language side file>        optional, e.g. language_instruction.txt (see `DroidFolder.language`)

Rules this reader documents (and tests):
- **Cameras** are picked by role (`wrist`, `ext1`, `ext2`: the metadata's `<role>_cam_serial`) or by serial (the MP4's
  stem). Without metadata, roles come from `observation/camera_type`: the hand camera is `wrist`, the varied cameras
  sorted by serial are `ext1`, `ext2` (DROID's own ext1/ext2 order). Images are keyed by the name asked for.
- **Actions** are one arm command from `ACTION_MODES` plus `action/gripper_position` as the last column, as in
  DROID's RLDS `action` and its policy-learning configs. **Proprioception** is one entry of `PROPRIO_MODES` plus
  `observation/robot_state/gripper_position`.
- **Frames**: frame i of every MP4 is step i (DROID's `load_trajectory` reads them in lock step). A frame count that
  differs from the trajectory length is an error by default; `frame_mismatch="truncate"` cuts every stream to the
  shortest instead, which is what DROID's own loader ends up doing when a camera runs out.
- **Language**: the side file if it exists and names an instruction for this episode, else the metadata's
  `current_task`; neither is an error naming both places.
- **Splits**: raw DROID has no split lists, so `droid_split` assigns an episode to `valid` when a hash of its id
  (the metadata uuid, else the folder name) falls below `valid_percent`, and to `train` otherwise.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from voltron.datasets.demos import DemoFormatError, Episode

TRAJECTORY_FILE = "trajectory.h5"
MP4_DIR = Path("recordings") / "MP4"
METADATA_GLOB = "metadata_*.json"
DEFAULT_LANGUAGE_FILE = "language_instruction.txt"
GRIPPER_ACTION_KEY = "action/gripper_position"  # (T,) commanded gripper closure in [0, 1]
GRIPPER_STATE_KEY = "observation/robot_state/gripper_position"  # (T,) measured gripper closure in [0, 1]
CAMERA_TYPE_GROUP = "observation/camera_type"
HAND_CAMERA, VARIED_CAMERA = 0, 1  # droid/camera_utils/info.py: camera_type_to_string_dict

# Action mode -> the arm command's dataset; the gripper column (GRIPPER_ACTION_KEY) is appended to each.
ACTION_MODES: dict[str, str] = {
    "cartesian_velocity": "action/cartesian_velocity",  # (T, 6) end-effector linear + angular velocity
    "joint_velocity": "action/joint_velocity",  # (T, 7)
    "joint_position": "action/joint_position",  # (T, 7) absolute joint targets
    "cartesian_position": "action/cartesian_position",  # (T, 6) absolute pose targets (xyz + euler)
}

# Proprio mode -> the robot-state dataset; the gripper state (GRIPPER_STATE_KEY) is appended to each.
PROPRIO_MODES: dict[str, str] = {
    "cartesian": "observation/robot_state/cartesian_position",  # (T, 6): + gripper = 7, as droid_policy_learning
    "joint": "observation/robot_state/joint_positions",  # (T, 7): + gripper = 8
}

# Camera role -> the metadata key holding that camera's serial.
CAMERA_ROLES: dict[str, str] = {"ext1": "ext1_cam_serial", "ext2": "ext2_cam_serial", "wrist": "wrist_cam_serial"}

FRAME_MISMATCH_RULES = ("error", "truncate")
DROID_SPLITS = ("train", "valid")

# JSON side files: keys tried, in order, for an episode's instruction (DROID RLDS / annotation release names).
LANGUAGE_KEYS = ("language_instruction", "language_instruction1", "language_instruction_1", "current_task")


def is_droid_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a directory holding a DROID `trajectory.h5`."""
    path = Path(path)
    return path.is_dir() and (path / TRAJECTORY_FILE).is_file()


def droid_split(episode_id: str, valid_percent: float = 10.0) -> str:
    """`valid` or `train` for an episode id, from a hash: stable across machines, runs and folder orders."""
    if not 0.0 <= valid_percent <= 100.0:
        raise ValueError(f"valid_percent={valid_percent}: expected a percentage in [0, 100]")
    bucket = int.from_bytes(hashlib.sha1(episode_id.encode()).digest()[:8], "big") % 10_000  # 0.01 % resolution
    return "valid" if bucket < valid_percent * 100 else "train"


def parse_image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """None, or the (height, width) an int (square) or pair asks for."""
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(side, int | np.integer) and side > 0 for side in pair)
    ):
        raise ValueError(f"image_size={image_size}: expected a positive int or a (height, width) pair")
    return int(pair[0]), int(pair[1])


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (*size, 3): a plain antialiased bicubic resize (no crop), as DROID's policy learning."""
    from PIL import Image

    if frame.shape[:2] == size:
        return frame
    height, width = size
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


@functools.lru_cache(maxsize=8)
def _read_json(path: str, mtime_ns: int, size: int) -> Any:
    """Parsed JSON, cached per file version: a shared annotation file is read once, not once per episode."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _load_json(path: Path) -> Any:
    stat = path.stat()
    try:
        return _read_json(str(path), stat.st_mtime_ns, stat.st_size)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DemoFormatError(f"{path}: not valid JSON ({error})") from error


def _instruction(entry: Any) -> str | None:
    """The first non-empty instruction in a side-file entry (a string, or a dict of LANGUAGE_KEYS)."""
    if isinstance(entry, str):
        return entry.strip() or None
    if isinstance(entry, dict):
        for key in LANGUAGE_KEYS:
            value = entry.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


class DroidFolder:
    """One raw DROID episode folder: cheap metadata access, and `read()` for the decoded `Episode`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.trajectory_path = self.path / TRAJECTORY_FILE
        if not self.trajectory_path.is_file():
            raise DemoFormatError(
                f"{self.path}: not a DROID episode folder (no {TRAJECTORY_FILE}); expected "
                f"{TRAJECTORY_FILE} plus {MP4_DIR}/<serial>.mp4"
            )
        found = sorted(self.path.glob(METADATA_GLOB))
        if len(found) > 1:
            raise DemoFormatError(f"{self.path}: {len(found)} metadata files {[p.name for p in found]}; expected one")
        self.metadata_path: Path | None = found[0] if found else None
        self.metadata: dict = {}
        if self.metadata_path is not None:
            metadata = _load_json(self.metadata_path)
            if not isinstance(metadata, dict):
                raise DemoFormatError(f"{self.metadata_path}: holds a {type(metadata).__name__}; expected an object")
            self.metadata = metadata

    def __repr__(self) -> str:
        return f"DroidFolder({str(self.path)!r}: id={self.episode_id!r}, cameras={self.roles() or self.serials})"

    # -- identity and cameras ------------------------------------------------------------------------------------
    @property
    def episode_id(self) -> str:
        """The metadata uuid (e.g. 'AUTOLab+5d05c5aa+2023-07-07-09h-42m-23s'), else the folder name."""
        uuid = self.metadata.get("uuid")
        return str(uuid) if uuid else self.path.name

    def mp4_path(self, serial: str) -> Path:
        return self.path / MP4_DIR / f"{serial}.mp4"

    @property
    def serials(self) -> list[str]:
        """Serials with a left-view MP4 (`<serial>-stereo.mp4` side-by-side files are not camera views here)."""
        folder = self.path / MP4_DIR
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.mp4") if not p.stem.endswith("-stereo"))

    def roles(self) -> dict[str, str]:
        """Role -> serial, from the metadata, else from `observation/camera_type` (see the module docstring)."""
        roles = {role: str(self.metadata[key]) for role, key in CAMERA_ROLES.items() if self.metadata.get(key)}
        if roles:
            return roles
        with self._open() as file:
            group = file.get(CAMERA_TYPE_GROUP)
            if not isinstance(group, h5py.Group):
                return {}
            types = {serial: int(np.asarray(group[serial][()]).reshape(-1)[0]) for serial in group.keys()}
        wrist = sorted(s for s, kind in types.items() if kind == HAND_CAMERA)
        varied = sorted(s for s, kind in types.items() if kind == VARIED_CAMERA)
        roles = {f"ext{i + 1}": serial for i, serial in enumerate(varied[:2])}
        if wrist:
            roles["wrist"] = wrist[0]
        return dict(sorted(roles.items()))

    def resolve_cameras(self, cameras: list[str] | None = None) -> dict[str, str]:
        """Image key -> serial for the requested roles or serials; None means every role (else every MP4)."""
        roles = self.roles()
        if cameras is None:
            if roles:
                return roles
            if not self.serials:
                raise DemoFormatError(
                    f"{self.path}: no cameras: no roles in the metadata or {self.trajectory_path.name}:"
                    f"/{CAMERA_TYPE_GROUP}, and no {MP4_DIR}/<serial>.mp4 files"
                )
            return {serial: serial for serial in self.serials}
        known_serials = set(self.serials) | set(roles.values())
        resolved: dict[str, str] = {}
        for name in cameras:
            if name in roles:
                resolved[name] = roles[name]
            elif name in known_serials:
                resolved[name] = name
            else:
                where = self.metadata_path.name if self.metadata_path else f"{TRAJECTORY_FILE}:/{CAMERA_TYPE_GROUP}"
                raise DemoFormatError(
                    f"{self.path}: unknown camera {name!r}; expected a role {sorted(roles)} (from {where}) or a "
                    f"serial {sorted(known_serials)}"
                )
        return resolved

    # -- language ------------------------------------------------------------------------------------------------
    def language(self, language_file: str | os.PathLike | None = DEFAULT_LANGUAGE_FILE) -> str:
        """The episode's instruction: the side file first, then the metadata's `current_task`.

        `language_file` is resolved against the folder (an absolute path works too, e.g. one shared annotation
        file). A `.json` side file may map episode ids (metadata uuids) to entries, or be one entry itself; an
        entry is a string or an object with a `language_instruction`/`language_instruction1` key. Any other side
        file is text whose first non-empty line is the instruction.
        """
        side = None if language_file is None else self.path / language_file
        if side is not None and side.is_file():
            if side.suffix.lower() == ".json":
                content = _load_json(side)
                entry = content.get(self.episode_id, content) if isinstance(content, dict) else content
                text = _instruction(entry)
            else:
                lines = [line.strip() for line in side.read_text(encoding="utf-8").splitlines()]
                text = next((line for line in lines if line), None)
            if text:
                return text
        task = self.metadata.get("current_task")
        if isinstance(task, str) and task.strip():
            return task.strip()
        side_text = "no language file given" if side is None else f"{side} is missing or names no instruction"
        metadata_text = (
            f"{self.metadata_path.name} has no 'current_task'" if self.metadata_path else f"no {METADATA_GLOB} file"
        )
        raise DemoFormatError(f"{self.path}: no language instruction: {side_text}, and {metadata_text}")

    # -- low-dimensional data ------------------------------------------------------------------------------------
    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.trajectory_path, "r")
        except OSError as error:
            raise DemoFormatError(f"{self.trajectory_path}: not a readable HDF5 file ({error})") from error

    def _columns(self, file: h5py.File, key: str, expected: str) -> np.ndarray:
        """Dataset `key` as float32 (T, D); a (T,) dataset becomes (T, 1)."""
        node = file.get(key)
        if not isinstance(node, h5py.Dataset):
            found = "nothing" if node is None else "a group"
            raise DemoFormatError(f"{self.trajectory_path}: /{key} holds {found}; expected a dataset ({expected})")
        array = np.asarray(node[()], dtype=np.float32)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or len(array) == 0:
            raise DemoFormatError(f"{self.trajectory_path}: /{key} has shape {node.shape}; expected {expected}")
        return array

    def _stacked(self, file: h5py.File, keys: list[tuple[str, str]]) -> np.ndarray:
        arrays = [self._columns(file, key, expected) for key, expected in keys]
        lengths = {f"/{key}": len(array) for (key, _), array in zip(keys, arrays)}
        if len(set(lengths.values())) > 1:
            raise DemoFormatError(f"{self.trajectory_path}: step counts differ: {lengths}; expected equal lengths")
        return np.concatenate(arrays, axis=1)

    def low_dim(self, action: str = "cartesian_velocity", proprio: str = "cartesian") -> tuple[np.ndarray, np.ndarray]:
        """(actions (T, A), proprio (T, P)) float32 for the chosen modes, each with the gripper as last column."""
        if action not in ACTION_MODES:
            raise ValueError(f"droid action mode {action!r}; expected one of {sorted(ACTION_MODES)}")
        if proprio not in PROPRIO_MODES:
            raise ValueError(f"droid proprio mode {proprio!r}; expected one of {sorted(PROPRIO_MODES)}")
        with self._open() as file:
            actions = self._stacked(
                file,
                [(ACTION_MODES[action], f"(T, D) {action} commands"), (GRIPPER_ACTION_KEY, "(T,) gripper command")],
            )
            state = self._stacked(
                file, [(PROPRIO_MODES[proprio], f"(T, D) {proprio} state"), (GRIPPER_STATE_KEY, "(T,) gripper state")]
            )
        if len(actions) != len(state):
            raise DemoFormatError(
                f"{self.trajectory_path}: /{ACTION_MODES[action]} has {len(actions)} steps but "
                f"/{PROPRIO_MODES[proprio]} has {len(state)}; expected equal lengths"
            )
        return actions, state

    # -- video ---------------------------------------------------------------------------------------------------
    def decode(self, name: str, serial: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """Every frame of camera `serial` as uint8 (N, H, W, 3), each resized to `size` (H, W) as it is decoded."""
        from voltron.datasets.video import load_decord

        path = self.mp4_path(serial)
        if not path.is_file():
            raise DemoFormatError(f"{path}: missing MP4 for camera {name!r} (serial {serial}) of episode {self.path}")
        decord = load_decord()
        frames: list[np.ndarray] = []
        try:
            reader = decord.VideoReader(str(path), num_threads=1)
            n_frames = len(reader)
            # Frame by frame from the start: no seeks, so decord's seek bugs (dmlc/decord#91) cannot apply, and
            # resizing each frame keeps memory at the target size (a raw DROID camera is 1280x720).
            # decord's own resize is not used: it fails for widths such as 8, 16 or 24 (a row-alignment bug).
            for _ in range(n_frames):
                frame = reader.next().asnumpy()
                frames.append(frame if size is None else resize_frame(frame, size))
        except Exception as error:  # decord raises RuntimeError / its DECORDError for unreadable files
            first_line = (str(error).splitlines() or [type(error).__name__])[0][:200]
            raise DemoFormatError(
                f"{path}: cannot decode camera {name!r} (serial {serial}) after {len(frames)} frames: {first_line}"
            ) from error
        if not frames or frames[0].ndim != 3 or frames[0].shape[-1] != 3:
            shape = frames[0].shape if frames else "no frames"
            raise DemoFormatError(f"{path}: decoded to {shape}; expected (H, W, 3) frames")
        return np.stack(frames)

    def read(
        self,
        *,
        cameras: list[str] | None = None,
        image_size: int | tuple[int, int] | None = None,
        action: str = "cartesian_velocity",
        proprio: str = "cartesian",
        language_file: str | os.PathLike | None = DEFAULT_LANGUAGE_FILE,
        frame_mismatch: str = "error",
    ) -> Episode:
        """The whole episode as an `Episode`, images decoded.

        - `cameras`: roles (`wrist`, `ext1`, `ext2`) and/or serials; images are keyed by these names. None: every role
          the metadata (or camera_type) names, else every `<serial>.mp4` keyed by serial.
        - `image_size`: None keeps the recorded size; an int resizes to a square, a (height, width) pair to that size
          (a plain antialiased bicubic resize, no crop, as DROID's policy learning does) while decoding.
        - `action`: a key of `ACTION_MODES`; actions are (T, D + 1) with `action/gripper_position` last.
        - `proprio`: a key of `PROPRIO_MODES`; proprio is (T, D + 1) with the gripper state last.
        - `language_file`: the side file's name in the folder (or a path); see `DroidFolder.language`.
        - `frame_mismatch`: "error" (default) or "truncate"; see the module docstring.

        Errors (`DemoFormatError`) name the file and HDF5 path, or the MP4 and the camera serial.
        """
        if frame_mismatch not in FRAME_MISMATCH_RULES:
            raise ValueError(f"frame_mismatch={frame_mismatch!r}; expected one of {FRAME_MISMATCH_RULES}")
        size = parse_image_size(image_size)
        actions, state = self.low_dim(action, proprio)
        language = self.language(language_file)
        selected = self.resolve_cameras(cameras)
        images = {name: self.decode(name, serial, size) for name, serial in selected.items()}
        steps = len(actions)
        counts = {name: len(frames) for name, frames in images.items()}
        if frame_mismatch == "error":
            for name, count in counts.items():
                if count != steps:
                    raise DemoFormatError(
                        f"{self.mp4_path(selected[name])}: camera {name!r} (serial {selected[name]}) has {count} "
                        f"frames but {self.trajectory_path} has {steps} steps; expected one frame per step "
                        f"(frame_mismatch='truncate' cuts every stream to the shortest, as DROID's loader does)"
                    )
        length = min([steps, *counts.values()])
        dones = np.zeros(length, np.uint8)
        dones[-1] = 1
        attrs: dict[str, Any] = {
            "source_format": "droid",
            "droid_folder": str(self.path),
            "episode_id": self.episode_id,
            "droid_action": action,
            "droid_proprio": proprio,
            "droid_steps": steps,  # before any truncation to the shortest camera
        }
        if isinstance(self.metadata.get("success"), bool):
            attrs["success"] = self.metadata["success"]
        attrs.update({f"camera_serial_{name}": serial for name, serial in selected.items()})
        return Episode(
            images={name: np.ascontiguousarray(frames[:length]) for name, frames in images.items()},
            proprio=state[:length],
            actions=actions[:length],
            language=language,
            rewards=None,  # raw DROID records no reward
            dones=dones,
            attrs=attrs,
        )


def read_droid_episode(folder: str | os.PathLike, **options: Any) -> Episode:
    """Read one raw DROID episode folder into an `Episode`; the keyword options are `DroidFolder.read`'s."""
    return DroidFolder(folder).read(**options)
