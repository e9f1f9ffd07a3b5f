"""Behaviour-cloning windows over demonstration episodes: (observation history, action) pairs, and normalisation stats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from voltron.datasets.demos import DemoFormatError, Episode


@dataclass
class NormStats:
    """Per-dimension statistics of an array feature; computed once on the training demos, saved with the policy."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def compute(cls, values: np.ndarray) -> NormStats:
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError(f"statistics need a non-empty (N, D) array; got shape {values.shape}")
        return cls(values.mean(0), values.std(0), values.min(0), values.max(0))

    def to_dict(self) -> dict[str, list[float]]:
        return {k: np.asarray(getattr(self, k), dtype=np.float64).tolist() for k in ("mean", "std", "min", "max")}

    @classmethod
    def from_dict(cls, data: dict) -> NormStats:
        return cls(*(np.asarray(data[k], dtype=np.float64) for k in ("mean", "std", "min", "max")))

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.mean, self.std))
        return (x - mean) / std.clamp(min=1e-6)

    def to_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        """Map [min, max] to [-1, 1] (a constant dimension maps to 0)."""
        low, high = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.min, self.max))
        return 2 * (x - low) / (high - low).clamp(min=1e-6) - 1

    def from_unit_range(self, x: torch.Tensor) -> torch.Tensor:
        low, high = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in (self.min, self.max))
        return (x + 1) / 2 * (high - low).clamp(min=1e-6) + low


class WindowDataset(Dataset):
    """One item per episode step t: the observation window [t - history + 1, ..., t] (clamped at the episode's
    first step) and the action at t.

    Items: "frame_ids" (H,) int64 indices into the concatenation of every episode's frames (see `frames`),
    "proprio" (H, P) float32, "action" (A,) float32, "episode" int64. Images stay in the episodes, so a policy
    with a frozen encoder can encode each frame once and index the cache with `frame_ids`.
    """

    def __init__(
        self,
        episodes: Sequence[Episode],
        history: int = 1,
        camera: str | None = None,
        *,
        images: bool = True,
        source: object = None,
    ):
        """`images=False` for a low-dim policy: episodes need no camera then. `source` (the demos' file or folder)
        only names where the episodes came from in error messages."""
        where = f"{source}: " if source is not None else ""
        if not episodes:
            raise ValueError(f"{where}no episodes; WindowDataset needs at least one")
        if history < 1:
            raise ValueError(f"history must be >= 1; got {history}")
        self.episodes, self.history = list(episodes), history
        cameras = sorted(self.episodes[0].images)
        self.camera = camera or (cameras[0] if cameras else None)
        for index, episode in enumerate(self.episodes if images else []):
            if not episode.images:
                raise DemoFormatError(
                    f"{where}episode {index} has no camera images; a policy with an image encoder needs them "
                    "(a low-dim policy, --policy.encoder=none, does not)"
                )
            if self.camera not in episode.images:
                raise DemoFormatError(
                    f"{where}episode {index} has no camera {self.camera!r}; it has {sorted(episode.images)}; "
                    "expected one of those as policy.camera"
                )
        dims = {(e.proprio.shape[1], e.actions.shape[1]) for e in self.episodes}
        if len(dims) != 1:
            raise ValueError(f"episodes disagree on (proprio, action) sizes: {sorted(dims)}")
        self.proprio_dim, self.action_dim = dims.pop()
        lengths = np.array([len(e) for e in self.episodes])
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])  # episode e owns frames offsets[e]:offsets[e+1]
        episode_of = np.repeat(np.arange(len(self.episodes)), lengths)
        step_of = np.arange(self.offsets[-1]) - self.offsets[episode_of]
        lags = np.arange(history - 1, -1, -1)  # oldest first
        self.frame_ids = self.offsets[episode_of][:, None] + np.maximum(step_of[:, None] - lags, 0)  # (M, H)
        self.episode_of = episode_of
        self.proprio = np.concatenate([e.proprio for e in self.episodes]).astype(np.float32)  # (M, P)
        self.actions = np.concatenate([e.actions for e in self.episodes]).astype(np.float32)  # (M, A)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.frame_ids[index]
        return {
            "frame_ids": torch.as_tensor(ids),
            "proprio": torch.as_tensor(self.proprio[ids]),
            "action": torch.as_tensor(self.actions[index]),
            "episode": torch.as_tensor(self.episode_of[index]),
        }

    def frames(self, episode: int) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of `episode` from the chosen camera."""
        return self.episodes[episode].images[self.camera]

    def language(self, episode: int) -> str:
        return self.episodes[episode].language
