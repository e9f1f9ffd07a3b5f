"""Self-contained, verified policy folders: a policy on a frozen pretrained encoder records the encoder's config and
SHA-256 and refuses a swapped one; bundled (train-policy --bundle-encoder, policy export) it runs from anywhere."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

import voltron
from voltron.cli import main
from voltron.datasets.demos import DemoFile
from voltron.errors import UserError
from voltron.io import sha256_file
from voltron.models.checkpoints import ENCODER_FORMAT
from voltron.policy import load_policy
from voltron.policy.base import Policy, export_policy
from voltron.policy.train import train_policy

TASK = "drawer-open"


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A "pretrained" V-Cond-tiny encoder folder at 64 px (seeded random weights, as `voltron pretrain` writes)."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("pretrained") / "v-cond-tiny-run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        voltron.load("v-cond-tiny", pretrained=False, image_size=64)[0].save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def referencing_policy(encoder_dir, sim_demos, bc_config, tmp_path_factory):
    """A policy trained on the frozen encoder in `encoder_dir`, which it references (not bundled)."""
    out = tmp_path_factory.mktemp("referencing") / "policy"
    config = bc_config(f"--policy.encoder={encoder_dir}", steps=20, random_encoder=False)
    train_policy(config, sim_demos, out, progress=False)
    return out


@pytest.fixture(scope="module")
def demo_obs(sim_demos):
    """A batch of real demo observations in the policy schema."""
    with DemoFile(sim_demos, split="train") as demo_file:
        episode = demo_file[0]
    camera = sorted(episode.images)[0]
    frames = episode.images[camera][::5]
    return {"images": {camera: frames}, "proprio": episode.proprio[::5], "language": [episode.language] * len(frames)}


def actions(policy: Policy, obs: dict) -> np.ndarray:
    policy.reset()
    return policy.select_action(obs)


def test_the_policy_records_its_encoders_config_and_digest(referencing_policy, encoder_dir):
    meta = json.loads((referencing_policy / "config.json").read_text())
    record = meta["encoder_weights"]
    assert record["sha256"] == sha256_file(encoder_dir / "model.safetensors") and not record["bundled"]
    assert record["source"] == str(encoder_dir.resolve()) and meta["encoder_config"]["image_size"] == 64
    assert meta["module"] == "voltron.policy.model" and not (referencing_policy / "encoder").exists()
    assert json.loads((encoder_dir / "config.json").read_text())["format"] == ENCODER_FORMAT
    policy = load_policy(referencing_policy)
    assert isinstance(policy, Policy) and policy.cameras == (policy.camera,) and policy.action_dim == 4


def test_a_swapped_encoder_is_refused_naming_both_digests(referencing_policy, encoder_dir):
    weights = encoder_dir / "model.safetensors"
    original, trained_on = weights.read_bytes(), sha256_file(weights)
    try:
        torch.manual_seed(2)  # what a resumed pretraining does: other weights, same folder
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            voltron.load("v-cond-tiny", pretrained=False, image_size=64)[0].save_pretrained(encoder_dir)
        swapped = sha256_file(weights)
        with pytest.raises(UserError) as caught:
            load_policy(referencing_policy)
        message = str(caught.value)
        assert swapped != trained_on and swapped in message and trained_on in message and str(weights) in message
        assert "\n" not in message
        with pytest.raises(UserError, match=trained_on):  # nor can it be exported with the wrong encoder
            export_policy(referencing_policy, encoder_dir.parent / "never", bundle_encoder=True)
        assert not (encoder_dir.parent / "never").exists()
    finally:
        weights.write_bytes(original)


@pytest.mark.slow  # over ~3.5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_a_bundled_copy_elsewhere_acts_and_evaluates_identically(referencing_policy, encoder_dir, demo_obs, tmp_path):
    from voltron.policy.evaluate import evaluate

    def run_eval(folder, name):
        return evaluate(
            folder, TASK, episodes=2, num_envs=1, horizon=8, out_dir=tmp_path / name, videos=0, progress=False
        )

    reference = load_policy(referencing_policy)
    expected, original = actions(reference, demo_obs), run_eval(referencing_policy, "eval-original")
    assert main(["policy", "export", str(referencing_policy), str(tmp_path / "export"), "--bundle-encoder"]) == 0
    robot = tmp_path / "robot-machine" / "policy"
    shutil.copytree(tmp_path / "export", robot)
    hidden = encoder_dir.with_name("moved-away")
    encoder_dir.rename(hidden)  # the other machine has no encoder at the trained-on path
    try:
        with pytest.raises(UserError, match="encoder is missing .*no such directory.*--bundle-encoder"):
            load_policy(referencing_policy)
        copied = load_policy(robot)
        assert copied.encoder_folder == robot / "encoder"
        assert np.array_equal(actions(copied, demo_obs), expected)
        # the policy's own weights are byte-identical, so evaluation records the same weights digest
        assert sha256_file(robot / "model.safetensors") == sha256_file(referencing_policy / "model.safetensors")
        moved = run_eval(robot, "eval-robot")
        assert moved.per_episode == original.per_episode
        assert moved.settings["weights_sha256"] == original.settings["weights_sha256"]
    finally:
        hidden.rename(encoder_dir)


def test_train_policy_bundle_encoder_and_a_tampered_bundle(encoder_dir, sim_demos, bc_config, tmp_path):
    out = tmp_path / "run"
    argv = ["train-policy", "--demos", str(sim_demos), "--encoder", str(encoder_dir), "--out", str(out)]
    argv += ["--bundle-encoder", "--train.steps=3", "--policy.hidden_dims=[16,16]", "--no-progress"]
    assert main(argv) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["encoder_weights"]["bundled"] == "encoder" and meta["config"]["train"]["bundle_encoder"] is True
    bundled = out / "encoder" / "model.safetensors"
    assert bundled.read_bytes() == (encoder_dir / "model.safetensors").read_bytes()
    assert load_policy(out).encoder_folder == out / "encoder"
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        voltron.load("v-cond-tiny", pretrained=False, image_size=64)[0].save_pretrained(out / "encoder")
    with pytest.raises(UserError, match=f"{bundled}.*sha256 {sha256_file(bundled)}.*trained on sha256"):
        load_policy(out)


def test_export_never_overwrites_and_names_what_is_wrong(referencing_policy, encoder_dir, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="taken: already exists"):
        export_policy(referencing_policy, taken)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is fine: nothing in it to lose
    assert (export_policy(referencing_policy, empty) / "config.json").is_file()
    assert not (empty / "encoder").exists()  # no bundle asked for: the export still references the encoder
    with pytest.raises(UserError, match="policy checkpoint.*voltron.policy.load_policy"):
        voltron.load(referencing_policy)
    with pytest.raises(UserError, match="encoder checkpoint: load it with voltron.load"):
        load_policy(encoder_dir)
    meta = json.loads((empty / "config.json").read_text())
    (empty / "config.json").write_text(json.dumps({**meta, "module": "os"}))
    with pytest.raises(UserError, match="module='os'.*a module of voltron.policy"):
        load_policy(empty)


def test_policies_saved_before_digests_load_with_a_warning(referencing_policy, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(referencing_policy, old)
    meta = json.loads((old / "config.json").read_text())
    for key in ("encoder_weights", "module"):
        del meta[key]
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="records no digest of its encoder"):
        policy = load_policy(old)
    assert (
        policy.encoder_record["sha256"]
        == json.loads((referencing_policy / "config.json").read_text())["encoder_weights"]["sha256"]
    )


def test_encoder_folders_load_with_or_without_the_format_tag_and_give_random_inits(encoder_dir, tmp_path):
    untagged = tmp_path / "untagged"
    shutil.copytree(encoder_dir, untagged)
    config = json.loads((untagged / "config.json").read_text())
    del config["format"]
    (untagged / "config.json").write_text(json.dumps(config))
    tagged, _ = voltron.load(encoder_dir)
    old, _ = voltron.load(untagged)
    assert torch.equal(old.patch2embed.proj.weight, tagged.patch2embed.proj.weight)
    with pytest.warns(UserWarning, match="randomly initialised"):
        random, _ = voltron.load(encoder_dir, pretrained=False)
    assert random.config == tagged.config and not torch.equal(
        random.patch2embed.proj.weight, tagged.patch2embed.proj.weight
    )
    with pytest.raises(ValueError, match="overrides only apply to pretrained=False"):
        voltron.load(encoder_dir, image_size=32)


def test_encoders_return_their_key_mask_and_the_policy_leaves_the_encoder_alone(referencing_policy, demo_obs):
    policy = load_policy(referencing_policy)
    encoder = policy.encoder
    captions = ["open the drawer", "open the top drawer of the cabinet please"]
    images = encoder.preprocess(demo_obs["images"][policy.camera][:2])
    tokens, mask = encoder.forward_with_mask(images, captions)
    _, lang_mask = encoder.lm.tokenize(captions)
    assert tokens.shape[:2] == mask.shape and torch.equal(mask[:, encoder.num_patches :], lang_mask)
    assert mask[:, : encoder.num_patches].all() and torch.equal(tokens, encoder(images, captions))
    visual, visual_mask = encoder.forward_with_mask(images, captions, mode="visual")
    assert visual.shape[1] == encoder.num_patches and visual_mask.all()
    policy.select_action(demo_obs)
    policy.select_action(demo_obs)
    assert encoder.lm.cache_size == encoder.config.lang_cache_size == 0  # the policy did not reconfigure it
