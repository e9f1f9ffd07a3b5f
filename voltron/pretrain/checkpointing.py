"""Training checkpoints: atomic step directories (weights, optimizer, every rank's RNG, data position), keep-last-K,
and resume from the newest checkpoint that verifies.

Layout of `<run_dir>/checkpoints/step-00001500/`:
    config.json, model.safetensors   the model, exactly as `save_pretrained` writes it (`voltron.load` reads it)
    optimizer.pt                     the full (unsharded) optimizer state, keyed by parameter name
    trainer_state.pt                 step, data position, RNG states of every rank, resolved pretraining config
    manifest.json                    size and SHA-256 of every file above; written last
A checkpoint is assembled in a hidden temporary directory and renamed into place, so a killed run never
leaves a half-written `step-*` directory; a damaged one (disk error, manual edit) fails verification and
resume falls back to the previous one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from voltron.io import atomic_write_bytes, atomic_write_json
from voltron.models.checkpoints import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_json, read_weights

CHECKPOINTS_DIR = "checkpoints"
OPTIMIZER_NAME = "optimizer.pt"
STATE_NAME = "trainer_state.pt"
MANIFEST_NAME = "manifest.json"
STEP_PATTERN = re.compile(r"^step-(\d{8})$")
OBJECTIVE_PREFIX = "model."  # the Objective wrapper's attribute holding the VoltronModel
FROZEN_PREFIX = "lm."  # the frozen language model: rebuilt from its name, never saved


class CorruptCheckpointError(CheckpointError):
    """A checkpoint directory whose files are missing, truncated or do not match their manifest."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class TrainerState:
    """Where training stands after `step` optimizer steps. (epoch, step_in_epoch) is the data position."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    samples_seen: int = 0
    n_examples: int = 0  # examples per epoch when saved: a resume on a resized dataset would not replay the data
    train_seconds: float = 0.0  # optimizer-step wall time summed over every invocation of the run
    world_size: int = 1
    rng: list[dict[str, Any]] = field(default_factory=list)  # one entry per rank
    config: dict[str, Any] = field(default_factory=dict)  # the resolved pretraining config
    last_metrics: dict[str, float] = field(default_factory=dict)
    val_step: int = 0  # the optimizer step of the last validation (0: none yet)
    val_metrics: dict[str, float] = field(default_factory=dict)  # its result: val_loss and the val_* components

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or "step" not in data:
            raise CorruptCheckpointError(f"{source}: not a trainer state (expected a dict with a 'step' key)")
        return cls(**{k: v for k, v in data.items() if k in known})


# === RNG states (stored as tensors and plain values so `torch.load(weights_only=True)` reads them) ===
def capture_rng(device: torch.device) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# === Full (unsharded) state dicts of the wrapped objective; collective under FSDP, so call on every rank ===
def _dcp():
    from torch.distributed.checkpoint import state_dict as dcp_state_dict

    return dcp_state_dict


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The model's trainable weights as CPU tensors named as in `VoltronModel.state_dict()` (no lm.*)."""
    dcp = _dcp()
    state = dcp.get_model_state_dict(module, options=dcp.StateDictOptions(full_state_dict=True, cpu_offload=True))
    out = {}
    for key, value in state.items():
        key = key.removeprefix(OBJECTIVE_PREFIX)
        if not key.startswith(FROZEN_PREFIX):
            out[key] = value.detach().to("cpu").contiguous()
    return out


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    dcp = _dcp()
    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dcp.get_optimizer_state_dict(module, optimizer, options=options)


def load_full_state(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    weights: dict[str, torch.Tensor],
    optim_state: dict,
    source: str,
) -> None:
    """Load full state dicts into the (possibly wrapped, possibly sharded) objective and its optimizer."""
    dcp = _dcp()
    expected = {
        key.removeprefix(OBJECTIVE_PREFIX)
        for key in dcp.get_model_state_dict(module, options=dcp.StateDictOptions(full_state_dict=False)).keys()
    }
    expected = {key for key in expected if not key.startswith(FROZEN_PREFIX)}
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit the model being trained; missing {missing[:6]}, unexpected {unexpected[:6]}"
        )
    # Under FSDP every tensor is a scatter, so every rank must visit them in one order; safetensors returns its
    # tensors in a per-process hash order, hence the sort.
    ordered = {OBJECTIVE_PREFIX + key: weights[key] for key in sorted(weights)}
    options = dcp.StateDictOptions(full_state_dict=True, strict=False)
    dcp.set_model_state_dict(module, ordered, options=options)
    dcp.set_optimizer_state_dict(module, optimizer, optim_state, options=dcp.StateDictOptions(full_state_dict=True))


# === Files ===
def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torch_load(path: Path, what: str) -> Any:
    try:
        return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CorruptCheckpointError(f"{path}: {what} is missing") from None
    except Exception as err:  # torch raises several types for truncated or garbled pickles
        raise CorruptCheckpointError(f"{path}: cannot read the {what} ({type(err).__name__}: {err})") from err


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    state: TrainerState
    model_config: dict[str, Any]


class CheckpointManager:
    """Writes, lists, prunes and reads the step directories under `<run_dir>/checkpoints`."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 3, verify: bool = True):
        if keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1; got {keep_last}")
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last, self.verify = keep_last, verify

    # --- listing --------------------------------------------------------------------------------------------
    def steps(self) -> list[tuple[int, Path]]:
        """(step, path) of every finished checkpoint directory, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = STEP_PATTERN.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
        return sorted(found)

    def clean_partial(self) -> None:
        """Remove temporary directories left by a run killed while writing a checkpoint."""
        if self.root.is_dir():
            for path in self.root.glob(".tmp-*"):
                shutil.rmtree(path, ignore_errors=True)

    # --- writing (rank 0 only) ------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        weights: dict[str, torch.Tensor],
        optimizer_state: dict[str, Any],
        state: TrainerState,
        model_config: dict[str, Any],
        family: str,
    ) -> Path:
        from safetensors.torch import save as safetensors_bytes

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / step_dir_name(step)
        tmp = self.root / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        files = {
            WEIGHTS_NAME: safetensors_bytes(weights, metadata={"format": "pt", "family": family}),
            OPTIMIZER_NAME: _torch_bytes(optimizer_state),
            STATE_NAME: _torch_bytes(state.to_dict()),
        }
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        atomic_write_json(tmp / CONFIG_NAME, model_config)  # the exact format save_pretrained writes
        files[CONFIG_NAME] = (tmp / CONFIG_NAME).read_bytes()
        manifest = {
            "step": step,
            "files": {name: {"bytes": len(data), "sha256": _sha256(data)} for name, data in files.items()},
        }
        atomic_write_json(tmp / MANIFEST_NAME, manifest)  # last: a directory without it is not a checkpoint
        if final.exists():  # an older, unusable checkpoint of the same step (resume skipped it): replace it
            stale = self.root / f".tmp-stale-{final.name}-{os.getpid()}"
            os.replace(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self.prune()
        return final

    def prune(self) -> None:
        for _, path in self.steps()[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)

    # --- reading --------------------------------------------------------------------------------------------
    def verify_files(self, path: Path, hashes: bool | None = None) -> dict[str, Any]:
        """Check that every file of the manifest exists with its size (and, with `hashes`, its SHA-256)."""
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = read_json(manifest_path, "checkpoint manifest")
        except (FileNotFoundError, CheckpointError) as err:
            raise CorruptCheckpointError(f"{path}: unreadable manifest ({err})") from err
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or set(files) != {WEIGHTS_NAME, CONFIG_NAME, OPTIMIZER_NAME, STATE_NAME}:
            raise CorruptCheckpointError(
                f"{manifest_path}: expected entries for the four checkpoint files; got {files}"
            )
        for name, entry in files.items():
            file = path / name
            if not file.is_file():
                raise CorruptCheckpointError(f"{file}: missing (listed in {manifest_path})")
            size = file.stat().st_size
            if size != entry.get("bytes"):
                raise CorruptCheckpointError(
                    f"{file}: {size} bytes; the manifest says {entry.get('bytes')} (truncated?)"
                )
            if (self.verify if hashes is None else hashes) and _sha256(file.read_bytes()) != entry.get("sha256"):
                raise CorruptCheckpointError(f"{file}: SHA-256 differs from the manifest (the file was damaged)")
        return manifest

    def read(self, path: Path, hashes: bool | None = None) -> Checkpoint:
        """Read and verify one checkpoint directory; raises CorruptCheckpointError when it is not usable."""
        path = Path(path)
        self.verify_files(path, hashes)
        try:
            weights = read_weights(path / WEIGHTS_NAME)
            model_config = read_json(path / CONFIG_NAME, "model config")
        except (CheckpointError, FileNotFoundError) as err:
            raise CorruptCheckpointError(str(err)) from err
        optimizer = _torch_load(path / OPTIMIZER_NAME, "optimizer state")
        state = TrainerState.from_dict(_torch_load(path / STATE_NAME, "trainer state"), str(path / STATE_NAME))
        return Checkpoint(path, weights, optimizer, state, model_config)

    def load_latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies and reads; newer unusable ones are set aside with a warning."""
        for _, path in reversed(self.steps()):
            try:
                return self.read(path)
            except CorruptCheckpointError as err:
                self.set_aside(path, str(err))
        return None

    def set_aside(self, path: Path, reason: str) -> Path:
        """Rename an unusable checkpoint to `corrupt-step-*` (kept for inspection, never resumed from)."""
        target = path.with_name(f"corrupt-{path.name}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
        warnings.warn(f"skipping corrupt checkpoint {path} ({reason}); moved it to {target}", stacklevel=2)
        return target
