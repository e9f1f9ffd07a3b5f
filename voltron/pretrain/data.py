"""The trainer's data: the preprocessed store opened with the model's sampling scheme, and a resumable loader.

Examples come from `voltron.datasets.loader` (every example is a pure function of (seed, epoch, index)).
The order comes from `StepBatchSampler` rather than a `DistributedSampler`: it fixes the global batch of each
optimizer step independently of world size and accumulation, and restarts mid-epoch without decoding the
skipped examples, which is what exact resume needs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from voltron.pretrain.sampler import StepBatchSampler

collate = default_collate  # examples are dicts of tensors with equal shapes


def build_dataset(config: Any, model: Any) -> Any:
    """The training split of the store at `config.data.root`, sampled as `model.data_modality` needs, with frames
    at the model's image size. `config.data.options` goes to `open_store` (e.g. {augment: random-resized-crop})."""
    from voltron.datasets.loader import open_store

    return open_store(
        config.data.root,
        config.data.split,
        model.data_modality,
        seed=config.train.seed,
        size=model.config.image_size,
        **config.data.options,
    )


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker decodes one example at a time; more threads would fight over cores


class ResumableLoader:
    """One DataLoader for the whole run (workers persist across epochs); `epoch(e, start_step)` iterates epoch e
    from optimizer step `start_step`, yielding this rank's micro-batches in training order."""

    def __init__(self, dataset: Any, config: Any, rank: int, world_size: int, pin_memory: bool = False):
        train, data = config.train, config.data
        self.dataset = dataset
        self.sampler = StepBatchSampler(
            len(dataset), train.global_batch, train.device_batch, rank, world_size, seed=train.seed
        )
        workers = {}
        if data.num_workers > 0:
            workers = {
                "prefetch_factor": data.prefetch_factor,
                "persistent_workers": True,
                "worker_init_fn": _worker_init,
            }
        # A private generator: creating an iterator must not draw from the global RNG that checkpoints restore.
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=data.num_workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(train.seed),
            **workers,
        )

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_position(epoch, start_step)
        self.dataset.set_epoch(epoch)
        return iter(self.loader)
