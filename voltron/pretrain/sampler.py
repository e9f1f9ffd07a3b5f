"""The batch sampler: optimizer step s of an epoch always sees the same global batch, for any world size and
accumulation, and a resumed run starts at any step without decoding the examples it skips."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

_PERMUTATION_TAG = 0x51EB  # keeps this stream apart from the data pipeline's (seed, epoch, index) hashes


def epoch_permutation(n_examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's example order: a pure function of (seed, epoch), independent of ranks and workers."""
    if not shuffle:
        return np.arange(n_examples, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([_PERMUTATION_TAG, seed, epoch])))
    return rng.permutation(n_examples).astype(np.int64)


class StepBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches of one epoch, in the order the trainer consumes them.

    With G = global batch, W = world size, b = device batch and A = G / (W b) accumulation steps, rank r's
    micro-batch a of optimizer step s holds perm[s G + (a W + r) b : ... + b]. The union over ranks and
    micro-batches of step s is perm[s G : (s + 1) G] whatever W and A are, which is what makes a 2-process run
    equal to a 1-process run with the same global batch. The tail of the epoch that does not fill a whole
    global batch is dropped (as upstream's drop_last). `start_step` resumes mid-epoch.
    """

    def __init__(
        self,
        n_examples: int,
        global_batch: int,
        device_batch: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_step: int = 0,
        shuffle: bool = True,
    ):
        if global_batch % (device_batch * world_size):
            raise ValueError(
                f"global batch {global_batch} is not a multiple of device batch {device_batch} x world size "
                f"{world_size}; pick train.device_batch so that it divides train.global_batch / world size"
            )
        if n_examples < global_batch:
            raise ValueError(
                f"the dataset has {n_examples} examples, fewer than one global batch of {global_batch}; "
                "lower train.global_batch or use more data"
            )
        self.n_examples, self.global_batch, self.device_batch = n_examples, global_batch, device_batch
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.accumulation = global_batch // (device_batch * world_size)
        self.steps_per_epoch = n_examples // global_batch
        self.shuffle = shuffle
        self.set_position(epoch, start_step)

    def set_position(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from optimizer step `start_step` next time (takes effect at the next iter())."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is outside the epoch's {self.steps_per_epoch} steps")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulation

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n_examples, self.seed, self.epoch, self.shuffle)
        b, world = self.device_batch, self.world_size
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.global_batch
            for micro in range(self.accumulation):
                start = base + (micro * world + self.rank) * b
                yield order[start : start + b].tolist()
