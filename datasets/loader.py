"""The pretraining Dataset: sampled frames (uint8, channels-first) + caption tokens per example.

The batch contract (what the models and the trainer consume) for `VideoLanguageDataset.__getitem__`:
- "frames": uint8 at the training size, (3, H, W) for `state` / `state+language`, (2, 3, H, W) for
  `state+ok`, (5, 3, H, W) for `quintet+language`. No normalisation here: the model normalises on device
  (uint8 moves 4x fewer bytes host->device than float32).
- "input_ids", "attention_mask": int64 (L,), except for `state`, which has no language.
- "seed": int64 scalar derived from (seed, epoch, index); models derive their random MAE masks from it, so
  1-process and 2-process runs see the same masks.
- "index": int64 scalar (the dataset index); "frame_indices": int64 (n_frames,).
Everything an example holds is a pure function of (seed, epoch, index), so any order of examples can be replayed:
the trainer's loader (`voltron.pretrain.data.ResumableLoader`) takes its order from `StepBatchSampler`, and a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from voltron.datasets.corpus import ClipEntry
from voltron.datasets.sampling import MIN_CLIP_FRAMES, example_seed, frame_indices, get_scheme
from voltron.datasets.store import StoreSplit, center_square_resize
from voltron.datasets.video import FrameReader, VideoError, probe_video


class FrameSource(Protocol):
    """Where a dataset's clips come from: the preprocessed store, or raw videos decoded on the fly."""

    n_frames: np.ndarray  # (n_clips,) frames per clip
    size: int  # side of the square frames `read` returns

    def __len__(self) -> int: ...

    def read(self, clip: int, frames: Sequence[int]) -> torch.Tensor: ...  # uint8 (n, 3, size, size)

    def tokens(self, clip: int) -> tuple[np.ndarray, np.ndarray]: ...  # int64 (L,), int64 (L,)


class RawVideoSource:
    """Clips read straight from their video files through decord's verified random access (no store).

    Slower than the store (see bench/dataloader.py) but needs no preprocessing: useful for small corpora and as
    the benchmark's baseline. Clips that cannot be probed or are shorter than the samplers need are left out
    and listed in `skipped`. Frames get the store's transform: central square, bicubic resize to `size`.
    """

    def __init__(
        self,
        clips: Sequence[ClipEntry],
        size: int = 224,
        *,
        tokenizer: str = "minilm",
        max_lang_len: int = 20,
        verify: str = "first",
    ):
        from voltron.models.language import tokenize

        self.size, self.verify = size, verify
        self.clips, frames, self.skipped = [], [], {}
        for clip in clips:
            try:
                info = probe_video(clip.path)
            except VideoError as err:
                self.skipped[clip.clip_id] = err.reason
                continue
            if info.n_frames < MIN_CLIP_FRAMES:
                self.skipped[clip.clip_id] = f"too short: {info.n_frames} frames, sampling needs {MIN_CLIP_FRAMES}"
                continue
            self.clips.append(clip)
            frames.append(info.n_frames)
        self.n_frames = np.array(frames, dtype=np.int64)
        if self.clips:
            ids, mask = tokenize([c.caption for c in self.clips], max_length=max_lang_len, name=tokenizer)
            self.input_ids, self.attention_mask = ids.numpy(), mask.numpy()
        else:
            self.input_ids = self.attention_mask = np.zeros((0, max_lang_len), dtype=np.int64)
        self._reader: FrameReader | None = None  # made lazily in each process: it caches per-file checks

    def __len__(self) -> int:
        return len(self.clips)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    def tokens(self, clip: int) -> tuple[np.ndarray, np.ndarray]:
        return self.input_ids[clip], self.attention_mask[clip]

    def read(self, clip: int, frames: Sequence[int]) -> torch.Tensor:
        from PIL import Image

        if self._reader is None:
            self._reader = FrameReader(self.verify)
        decoded = self._reader.read(self.clips[clip].path, frames)  # (n, H, W, 3)
        resized = [np.asarray(center_square_resize(Image.fromarray(f), self.size)) for f in decoded]
        return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).contiguous()


# --- Augmentation (off by default) -------------------------------------------------------------------------------


def random_resized_crop(frames: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """One crop (80-100% of the area, aspect 3/4-4/3) shared by every frame of an example, resized back to size.

    No flips: Sth-Sth-v2 captions say "left" and "right".
    """
    from torchvision.transforms.v2 import functional as F

    height, width = frames.shape[-2:]
    area = height * width * (0.8 + 0.2 * torch.rand((), generator=generator).item())
    log_ratio = (torch.rand((), generator=generator).item() - 0.5) * 2 * np.log(4 / 3)
    crop_w = int(round(min(width, np.sqrt(area * np.exp(log_ratio)))))
    crop_h = int(round(min(height, np.sqrt(area / np.exp(log_ratio)))))
    top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
    left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
    return F.resized_crop(frames, top, left, crop_h, crop_w, [size, size], antialias=True)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator, int], torch.Tensor]] = {
    "random-resized-crop": random_resized_crop,
}


# --- The dataset -------------------------------------------------------------------------------------------------


class VideoLanguageDataset(Dataset):
    """Examples of one sampling scheme (`sampling_scheme`: state, state+language, state+ok, quintet+language).

    Length is `n_clips * examples_per_clip`; example `index` uses clip `index // examples_per_clip`. The epoch
    lives in shared memory, so `set_epoch` reaches DataLoader workers even when they are persistent.
    `fixed_epoch` pins the sampling (validation: upstream drew its validation frames once). `max_examples` keeps
    only the first examples (whole clips first: indices are clip-major), for small smoke-test runs.
    """

    def __init__(
        self,
        source: FrameSource,
        sampling_scheme: str = "state+language",
        *,
        seed: int = 0,
        size: int = 224,
        augment: str | None = None,
        fixed_epoch: int | None = None,
        max_examples: int | None = None,
    ):
        self.source, self.scheme, self.seed, self.size = source, get_scheme(sampling_scheme), int(seed), int(size)
        if augment is not None and augment not in AUGMENTATIONS:
            raise KeyError(f"unknown augmentation {augment!r}; available: {sorted(AUGMENTATIONS)} (or None)")
        self.augment, self.fixed_epoch = augment, fixed_epoch
        self.n_examples = len(source) * self.scheme.examples_per_clip
        if max_examples is not None:
            self.n_examples = min(self.n_examples, int(max_examples))
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        if fixed_epoch is not None:
            self._epoch.fill_(int(fixed_epoch))

    @property
    def sampling_scheme(self) -> str:
        return self.scheme.name

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Advance the sampling epoch (ignored with `fixed_epoch`). Call between epochs, not mid-iteration."""
        if self.fixed_epoch is None:
            self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return self.n_examples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        epoch, clip = self.epoch, index // self.scheme.examples_per_clip
        indices = frame_indices(self.scheme, int(self.source.n_frames[clip]), self.seed, epoch, index)
        seed = example_seed(self.seed, epoch, index)
        frames = self.source.read(clip, indices)  # (n, 3, S, S) uint8
        if self.augment is not None:
            generator = torch.Generator().manual_seed(seed)
            frames = AUGMENTATIONS[self.augment](frames, generator, self.size)
        elif frames.shape[-1] != self.size or frames.shape[-2] != self.size:
            from torchvision.transforms.v2 import functional as F

            frames = F.resize(frames, [self.size, self.size], antialias=True)
        example = {
            "frames": frames[0] if self.scheme.frames_per_example == 1 else frames,
            "seed": torch.tensor(seed, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "frame_indices": torch.from_numpy(indices),
        }
        if self.scheme.has_language:
            input_ids, attention_mask = self.source.tokens(clip)
            example["input_ids"] = torch.as_tensor(input_ids, dtype=torch.int64)
            example["attention_mask"] = torch.as_tensor(attention_mask, dtype=torch.int64)
        return example


def open_store(
    root: str | os.PathLike,
    split: str = "train",
    sampling_scheme: str = "state+language",
    *,
    seed: int = 0,
    size: int | None = None,
    augment: str | None = None,
    max_examples: int | None = None,
) -> VideoLanguageDataset:
    """A dataset over a preprocessed store. `size` defaults to the store's; validation pins its epoch to 0."""
    source = StoreSplit(Path(root), split)
    return VideoLanguageDataset(
        source,
        sampling_scheme,
        seed=seed,
        size=size or source.size,
        augment=augment,
        fixed_epoch=0 if split == "val" else None,
        max_examples=max_examples,
    )
