"""Sampling schemes and the loader: shapes per the batch contract, upstream's frame windows, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voltron.datasets.loader import open_store
from voltron.datasets.sampling import SCHEMES, example_seed, frame_indices, get_scheme, sample_quintet

UPSTREAM = {
    "state": (5, 1, False),
    "state+language": (5, 1, True),
    "state+ok": (4, 2, True),
    "quintet+language": (1, 5, True),
}


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store  # the standard corpus's store, shared with the other data tests (conftest.py)


def test_registry_holds_upstream_modalities():
    assert set(UPSTREAM) <= set(SCHEMES)
    for name, (per_clip, n_frames, language) in UPSTREAM.items():
        scheme = get_scheme(name)
        assert (scheme.examples_per_clip, scheme.frames_per_example, scheme.has_language) == (
            per_clip,
            n_frames,
            language,
        )
    with pytest.raises(KeyError, match="registered sampling schemes"):
        get_scheme("state+language+ok")


@pytest.mark.parametrize("n_frames", [5, 6, 7, 9, 12, 45, 250, 1001])
def test_quintet_respects_initial_and_final_windows(n_frames):
    initial_end, final_start = round(0.2 * n_frames), round(0.8 * n_frames)
    initials, finals = set(), set()
    for seed in range(3):
        for epoch in range(4):
            for clip in range(60):
                quintet = sample_quintet(n_frames, seed, epoch, clip)
                assert quintet.dtype == np.int64 and quintet.shape == (5,)
                assert np.all(np.diff(quintet) > 0), quintet  # sorted, distinct
                assert (
                    0 <= quintet[0] < max(1, initial_end) and min(final_start, n_frames - 1) <= quintet[-1] < n_frames
                )
                initials.add(int(quintet[0]))
                finals.add(int(quintet[-1]))
    if n_frames <= 45:  # 720 draws cover every allowed initial and final frame
        assert initials == set(range(max(1, initial_end)))
        assert finals == set(range(min(final_start, n_frames - 1), n_frames))


def test_sampling_is_a_pure_function_of_seed_epoch_index():
    for name in UPSTREAM:
        a = [frame_indices(name, 45, 7, 3, i).tolist() for i in range(50)]
        assert a == [frame_indices(name, 45, 7, 3, i).tolist() for i in reversed(range(50))][::-1]
        assert a != [frame_indices(name, 45, 7, 4, i).tolist() for i in range(50)]
        assert a != [frame_indices(name, 45, 8, 3, i).tolist() for i in range(50)]
    seeds = {example_seed(0, 0, i) for i in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(ValueError, match="at least 5"):
        sample_quintet(4, 0, 0, 0)


def test_examples_of_a_clip_share_its_quintet():
    quintet = sample_quintet(45, 1, 2, 3).tolist()
    assert [frame_indices("state", 45, 1, 2, 15 + j).tolist()[0] for j in range(5)] == quintet
    pairs = [frame_indices("state+ok", 45, 1, 2, 12 + j).tolist() for j in range(4)]
    assert pairs == [[quintet[0], quintet[j]] for j in range(1, 5)]
    assert frame_indices("quintet+language", 45, 1, 2, 3).tolist() == quintet


@pytest.mark.parametrize("modality", list(UPSTREAM))
def test_dataset_examples_follow_the_batch_contract(store, modality, clips):
    root, expected = store
    dataset = open_store(root, "train", modality, seed=5)
    per_clip, n_frames, language = UPSTREAM[modality]
    clip_ids = [dataset.source.clip_id(c) for c in range(len(dataset.source))]
    assert len(dataset) == per_clip * len(clip_ids)
    frame_shape = (3, 32, 32) if n_frames == 1 else (n_frames, 3, 32, 32)
    for index in range(len(dataset)):
        example = dataset[index]
        assert set(example) == {"frames", "seed", "index", "frame_indices"} | (
            {"input_ids", "attention_mask"} if language else set()
        )
        assert example["frames"].shape == frame_shape and example["frames"].dtype == torch.uint8
        assert example["frame_indices"].shape == (n_frames,) and example["frame_indices"].dtype == torch.int64
        assert example["seed"].dtype == example["index"].dtype == torch.int64 and int(example["index"]) == index
        if language:
            assert example["input_ids"].shape == example["attention_mask"].shape == (20,)
            assert example["input_ids"].dtype == example["attention_mask"].dtype == torch.int64
        # The pixels are the frames the indices name (each generated frame encodes its own number).
        frames = example["frames"].reshape(-1, 3, 32, 32)
        assert [clips.frame_number(f.numpy()) for f in frames] == example["frame_indices"].tolist()
        total = expected["frames"][clip_ids[index // per_clip]]
        indices = example["frame_indices"].tolist()
        assert indices == sorted(indices) and 0 <= indices[0] and indices[-1] < total
        if n_frames == 5:
            assert indices[0] < round(0.2 * total) and indices[-1] >= round(0.8 * total)


def trainer_loader(dataset, global_batch: int, *, workers: int = 0, rank: int = 0, world_size: int = 1):
    """The trainer's loader (`ResumableLoader`, ordered by `StepBatchSampler`) over `dataset`, seeded as it."""
    from voltron.pretrain.config import PretrainConfig, replace
    from voltron.pretrain.data import ResumableLoader

    train = {"global_batch": global_batch, "device_batch": global_batch // world_size, "seed": dataset.seed}
    config = replace(PretrainConfig(), train=train, data={"num_workers": workers, "prefetch_factor": 2})
    return ResumableLoader(dataset, config, rank, world_size)


def test_batches_collate_to_the_contract(store):
    batch = next(trainer_loader(open_store(store[0], "train", "state+ok"), 4).epoch(0))
    assert batch["frames"].shape == (4, 2, 3, 32, 32) and batch["frames"].dtype == torch.uint8
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 20)
    assert batch["seed"].shape == batch["index"].shape == (4,) and batch["frame_indices"].shape == (4, 2)


def _batches(loader, epoch: int) -> list[dict[str, torch.Tensor]]:
    return list(loader.epoch(epoch))


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_two_loaders_same_seed_and_epoch_yield_identical_batches(store):
    root = store[0]
    in_process = trainer_loader(open_store(root, "train", "state+language", seed=11), 3)
    workers = trainer_loader(open_store(root, "train", "state+language", seed=11), 3, workers=2)
    epoch0, epoch1 = _batches(in_process, 0), _batches(in_process, 1)
    _assert_same(epoch0, _batches(workers, 0))
    _assert_same(epoch1, _batches(workers, 1))  # the epoch reaches the persistent workers
    # A loader that starts at epoch 1 (a resumed run) sees exactly epoch 1.
    _assert_same(epoch1, _batches(trainer_loader(open_store(root, "train", "state+language", seed=11), 3), 1))
    assert not torch.equal(epoch0[0]["index"], epoch1[0]["index"])
    other_seed = _batches(trainer_loader(open_store(root, "train", "state+language", seed=12), 3), 0)
    assert any(not torch.equal(a["frame_indices"], b["frame_indices"]) for a, b in zip(epoch0, other_seed))


def test_distributed_ranks_split_the_single_process_epoch(store):
    root = store[0]
    single = _batches(trainer_loader(open_store(root, "train", "state+ok", seed=3), 2), 2)
    by_index = {int(i): (b, row) for b in single for row, i in enumerate(b["index"])}
    seen = []
    for rank in range(2):
        loader = trainer_loader(open_store(root, "train", "state+ok", seed=3), 2, rank=rank, world_size=2)
        for batch in _batches(loader, 2):
            index = int(batch["index"][0])
            seen.append(index)
            expected, row = by_index[index]
            for key in ("seed", "frame_indices", "frames"):  # same example, whichever process loads it
                assert torch.equal(batch[key][0], expected[key][row])
    assert len(seen) == len(set(seen)) == len(by_index)  # 20 examples split 10 / 10, none twice


def test_validation_sampling_is_pinned(store):
    dataset = open_store(store[0], "val", "quintet+language")
    assert len(dataset) == 2
    first = [dataset[i]["frame_indices"].tolist() for i in range(2)]
    dataset.set_epoch(7)
    assert [dataset[i]["frame_indices"].tolist() for i in range(2)] == first


def test_resize_and_augmentation(store):
    root = store[0]
    small = open_store(root, "train", "state", size=24)
    assert small[0]["frames"].shape == (3, 24, 24)
    augmented = open_store(root, "train", "quintet+language", augment="random-resized-crop")
    a, b = augmented[1], augmented[1]
    assert a["frames"].shape == (5, 3, 32, 32) and torch.equal(a["frames"], b["frames"])
    plain = open_store(root, "train", "quintet+language")[1]
    assert torch.equal(a["frame_indices"], plain["frame_indices"]) and not torch.equal(a["frames"], plain["frames"])
    subset = open_store(root, "train", "state+ok", max_examples=6)
    assert len(subset) == 6 and subset[5]["index"] == 5
    with pytest.raises(IndexError):
        subset[6]
    with pytest.raises(KeyError, match="unknown augmentation"):
        open_store(root, "train", "state", augment="flip")


def test_dataset_pickles_without_open_files(store):
    """spawn/forkserver workers receive the dataset pickled: it must carry no descriptors and sample the same."""
    import pickle

    dataset = open_store(store[0], "train", "state+ok", seed=4)
    dataset.set_epoch(3)
    before = dataset[5]  # opens a shard descriptor in this process
    assert dataset.source._fds
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.source._fds == {} and copy.epoch == 3
    after = copy[5]
    assert all(torch.equal(before[key], after[key]) for key in before)
