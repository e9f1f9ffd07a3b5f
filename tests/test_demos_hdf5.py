"""Tests for the household-demo HDF5 format: write/read round trip, splits, atomic writes and readable errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from voltron.datasets.demos import DemoFile, DemoFormatError, Episode, split_names, write_demos

ENV_ARGS = {"env_name": "drawer-open-v3", "env_type": "metaworld", "camera": "corner", "image_size": [16, 16]}


def make_episode(length: int, seed: int, cameras: tuple[str, ...] = ("corner",)) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(
        images={c: rng.integers(0, 256, size=(length, 16, 16, 3), dtype=np.uint8) for c in cameras},
        proprio=rng.normal(size=(length, 4)).astype(np.float32),
        actions=rng.uniform(-1, 1, size=(length, 4)).astype(np.float32),
        language=f"open the drawer {seed}",
        rewards=rng.uniform(size=length).astype(np.float32),
        attrs={"seed": seed, "success": True, "task": "drawer-open"},
    )


@pytest.fixture
def demo_path(tmp_path):
    episodes = [make_episode(5 + i, seed=i, cameras=("corner", "wrist")) for i in range(6)]
    path = write_demos(tmp_path / "demos.hdf5", iter(episodes), ENV_ARGS, valid_fraction=0.34, seed=3)
    return path, episodes


def test_round_trip_preserves_every_field(demo_path):
    path, episodes = demo_path
    with DemoFile(path) as demos:
        assert len(demos) == 6
        assert demos.env_args == ENV_ARGS
        assert demos.cameras == ["corner", "wrist"]
        assert demos.demo_keys == [f"demo_{i}" for i in range(6)]
        assert demos.lengths == [5, 6, 7, 8, 9, 10]
        for written, read in zip(episodes, demos):
            assert len(read) == len(written)
            for camera in ("corner", "wrist"):
                assert read.images[camera].dtype == np.uint8
                np.testing.assert_array_equal(read.images[camera], written.images[camera])
            np.testing.assert_array_equal(read.proprio, written.proprio)
            np.testing.assert_array_equal(read.actions, written.actions)
            np.testing.assert_array_equal(read.rewards, written.rewards)
            assert read.dones.tolist() == [0] * (len(written) - 1) + [1]  # default: done on the last step
            assert read.language == written.language
            assert read.attrs == {"seed": written.attrs["seed"], "success": True, "task": "drawer-open"}
        assert demos[-1].language == episodes[-1].language


def test_robomimic_layout_chunking_and_totals(demo_path):
    path, episodes = demo_path
    with h5py.File(path, "r") as f:
        image = f["data/demo_2/obs/corner_image"]
        assert image.shape == (7, 16, 16, 3) and image.chunks == (1, 16, 16, 3) and image.compression == "gzip"
        assert f["data/demo_2/obs/proprio"].dtype == np.float32
        assert f["data/demo_2/actions"].shape == (7, 4)
        assert f["data/demo_2"].attrs["num_samples"] == 7
        assert f["data"].attrs["total"] == sum(len(e) for e in episodes)
        names = sorted(n.decode() for split in ("train", "valid") for n in f[f"mask/{split}"][()])
        assert names == sorted(f"demo_{i}" for i in range(6))


def test_split_is_deterministic_and_honoured(demo_path):
    path, _ = demo_path
    with DemoFile(path, split="train") as train, DemoFile(path, split="valid") as valid:
        assert len(valid) == 2 and len(train) == 4
        assert not set(train.demo_keys) & set(valid.demo_keys)
        assert valid.demo_keys == split_names([f"demo_{i}" for i in range(6)], 0.34, seed=3)["valid"]
        assert valid[0].language == f"open the drawer {int(valid.demo_keys[0].split('_')[1])}"
    assert split_names(list("abcdefghij"), 0.2, seed=1) == split_names(list("abcdefghij"), 0.2, seed=1)
    assert split_names(list("abcdefghij"), 0.2, seed=1) != split_names(list("abcdefghij"), 0.2, seed=2)


def test_unknown_split_lists_the_splits(demo_path):
    path, _ = demo_path
    with pytest.raises(DemoFormatError, match=r"unknown split 'test'.*\['train', 'valid'\]"):
        DemoFile(path, split="test")


def test_missing_dataset_error_names_file_and_hdf5_path(demo_path):
    path, _ = demo_path
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/proprio"]
    with DemoFile(path) as demos:
        demos[0]  # intact episodes still load
        with pytest.raises(KeyError) as info:
            demos[1]
    message = str(info.value)
    assert str(path) in message and "/data/demo_1/obs/proprio" in message and "(T, P) float32" in message


def test_missing_group_and_attribute_errors(tmp_path, demo_path):
    path, _ = demo_path
    with h5py.File(path, "a") as f:
        del f["data"].attrs["env_args"]
    with pytest.raises(DemoFormatError, match=r"/data has no attribute 'env_args'") as info:
        DemoFile(path)
    assert str(path) in str(info.value)

    empty = tmp_path / "empty.hdf5"
    h5py.File(empty, "w").close()
    with pytest.raises(ValueError, match=r"empty\.hdf5: /data holds nothing; expected a group"):
        DemoFile(empty)

    not_hdf5 = tmp_path / "notes.hdf5"
    not_hdf5.write_text("not an HDF5 file")
    with pytest.raises(DemoFormatError, match="not a readable HDF5 file"):
        DemoFile(not_hdf5)
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        DemoFile(tmp_path / "missing.hdf5")


def test_failed_write_leaves_no_file(tmp_path):
    def episodes():
        yield make_episode(4, seed=0)
        raise RuntimeError("collector crashed")

    with pytest.raises(RuntimeError, match="collector crashed"):
        write_demos(tmp_path / "out.hdf5", episodes(), ENV_ARGS)
    assert list(tmp_path.iterdir()) == []  # neither the final file nor the temporary one


def test_invalid_episodes_are_rejected_with_the_field_named(tmp_path):
    bad = make_episode(4, seed=0)
    bad.proprio = bad.proprio[:3]
    with pytest.raises(ValueError, match=r"episode 1: proprio has shape \(3, 4\); expected \(4, P\)"):
        write_demos(tmp_path / "out.hdf5", [make_episode(4, seed=1), bad], ENV_ARGS)
    bad = make_episode(4, seed=0)
    bad.images["corner"] = bad.images["corner"].astype(np.float32)
    with pytest.raises(ValueError, match=r"images\['corner'\] is float32"):
        write_demos(tmp_path / "out.hdf5", [bad], ENV_ARGS)
    assert not (tmp_path / "out.hdf5").exists()
