"""The trainer's data: the preprocessed store opened with the model's sampling scheme, and a resumable loader.

Examples come from `voltron.datasets.loader` (every example is a pure function of (seed, epoch, index)).
The order comes from `StepBatchSampler` rather than a `DistributedSampler`: it fixes the global batch of each
optimizer step independently of world size and accumulation, and restarts mid-epoch without decoding the
skipped examples, which is what exact resume needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, default_collate

from voltron.pretrain.config import PretrainError
from voltron.pretrain.sampler import StepBatchSampler

collate = default_collate  # examples are dicts of tensors with equal shapes
PROBE_TEXT = "Putting a Cup onto the table, then pushing it from left to right [unused] naïve 42"


def build_dataset(config: Any, model: Any) -> Any:
    """The training split of the store at `config.data.root`, sampled as `model.sampling_scheme` needs, with frames
    at the model's image size. `config.data.options` goes to `open_store` (e.g. {augment: random-resized-crop})."""
    from voltron.datasets.loader import open_store

    return open_store(
        config.data.root,
        config.data.split,
        model.sampling_scheme,
        seed=config.train.seed,
        size=model.config.image_size,
        **config.data.options,
    )


def build_val_dataset(config: Any, model: Any) -> Any:
    """The held-out split (`val.split`) sampled as for training; its sampling epoch is pinned, so every validation
    sees the same frames and per-example seeds. None when the store's split holds no examples."""
    from voltron.datasets.loader import open_store

    options = {k: v for k, v in config.data.options.items() if k != "augment"}  # validation is not augmented
    dataset = open_store(
        config.data.root,
        config.val.split,
        model.sampling_scheme,
        seed=config.train.seed,
        size=model.config.image_size,
        max_examples=config.val.max_examples,
        **options,
    )
    return dataset if len(dataset) else None


def store_settings(dataset: Any) -> dict[str, Any] | None:
    """The preprocessing settings of the store a dataset reads (store.json), or None for other datasets."""
    meta = getattr(getattr(dataset, "source", None), "meta", None)
    return meta.get("settings") if isinstance(meta, dict) else None


def _same_tokenizer(store_name: str, model_name: str) -> bool:
    """Whether two tokenizers give the same ids: equal names, or the same vocabulary, special tokens and output on
    a probe sentence (minilm and distilbert-base-uncased share BERT-uncased's vocabulary, for instance)."""
    from voltron.models.language import load_tokenizer, resolve_language_model

    if store_name == model_name or resolve_language_model(store_name) == resolve_language_model(model_name):
        return True
    try:
        store, model = load_tokenizer(store_name), load_tokenizer(model_name)
    except OSError as err:
        raise PretrainError(
            f"cannot compare the store's tokenizer {store_name!r} with the model's language model {model_name!r}: "
            f"{str(err).splitlines()[0]}"
        ) from None
    return (
        store.get_vocab() == model.get_vocab()
        and (store.cls_token_id, store.pad_token_id) == (model.cls_token_id, model.pad_token_id)
        and store(PROBE_TEXT)["input_ids"] == model(PROBE_TEXT)["input_ids"]
    )


def check_store_matches_model(
    settings: dict[str, Any],
    model_config: Any,
    root: str | os.PathLike,
    augment: str | None = None,
    language: bool = True,
) -> None:
    """Raise PretrainError (one line: both values and the key to change) when the store's frames or tokens do not
    fit the model: a different frame size (the loader would silently resample), or, when the model reads the
    store's tokens (`language`), a different caption length or tokenizer.

    A store larger than the model is accepted with an augmentation (it crops and resizes to the model's size).
    """
    where = Path(root) / "store.json"
    size, image_size = int(settings["size"]), int(model_config.image_size)
    if size != image_size and not (augment and size > image_size):
        raise PretrainError(
            f"{where}: the store's frames are {size} px but the model's image_size is {image_size}; set "
            f"--model.image_size={size} or re-run voltron preprocess with --size {image_size}"
        )
    if not language:
        return
    length = int(settings["max_lang_len"])
    if length != int(model_config.max_lang_len):
        raise PretrainError(
            f"{where}: captions were tokenised to max_lang_len={length} but the model's max_lang_len is "
            f"{model_config.max_lang_len}; set --model.max_lang_len={length} or re-run voltron preprocess with "
            f"--max-lang-len {model_config.max_lang_len}"
        )
    tokenizer = str(settings["tokenizer"])
    if not _same_tokenizer(tokenizer, model_config.language_model):
        raise PretrainError(
            f"{where}: captions were tokenised with {tokenizer!r}, whose ids differ from the model's language model "
            f"{model_config.language_model!r}; set --model.language_model={tokenizer} or re-run voltron preprocess "
            f"with --tokenizer {model_config.language_model}"
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


class ValBatchSampler(Sampler[list[int]]):
    """This rank's validation micro-batches: batch b of the split (in order) goes to rank b % world_size, and every
    rank yields the same number of batches (short ranks repeat their first batch, flagged in `padding`), so
    collectives inside the wrapped model (FSDP all-gathers, DDP buffer broadcasts) line up across ranks."""

    def __init__(self, n_examples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        starts = list(range(0, n_examples, batch_size))
        self.batches = [list(range(s, min(s + batch_size, n_examples))) for s in starts]
        mine = self.batches[rank::world_size]
        self.padding = [False] * len(mine)
        rounds = -(-len(self.batches) // world_size)
        while len(mine) < rounds:
            mine.append(self.batches[0])
            self.padding.append(True)
        self.mine = mine
        self.ids = [b * world_size + rank for b in range(len(mine))]  # global batch ids (seeds R3M's negatives)

    def __len__(self) -> int:
        return len(self.mine)

    def __iter__(self):
        return iter(self.mine)


def build_val_loader(dataset: Any, config: Any, rank: int, world_size: int, pin_memory: bool = False):
    """(loader, sampler) over the validation split for this rank; workers start per validation, not persist."""
    batch_size = config.val.batch_size or config.train.device_batch
    sampler = ValBatchSampler(len(dataset), batch_size, rank, world_size)
    workers = {}
    if config.data.num_workers > 0:
        workers = {"prefetch_factor": config.data.prefetch_factor, "worker_init_fn": _worker_init}
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.data.num_workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(config.train.seed),
        **workers,
    )
    return loader, sampler
