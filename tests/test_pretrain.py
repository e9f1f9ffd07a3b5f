"""Pretraining: schedule, optimizer, sampler and config units; every objective learning; and end-to-end runs on a
generated Sth-Sth-layout corpus: exact resume after SIGKILL, 2-process torchrun equivalence, corrupt-checkpoint
recovery, NaN stops, time budgets and the final `save_pretrained` export."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import voltron
from voltron.datasets.loader import open_store
from voltron.errors import UserError
from voltron.models.blocks import set_attention_impl
from voltron.models.language import load_tokenizer
from voltron.models.registry import FAMILIES, build_model, default_config
from voltron.pretrain import checkpointing as ckpt
from voltron.pretrain.config import PretrainConfig, PretrainError, load_config, replace, validate
from voltron.pretrain.data import (
    check_store_matches_model,
    collate,
)
from voltron.pretrain.distributed import DistEnv
from voltron.pretrain.optim import build_optimizer, decays, peak_lr
from voltron.pretrain.sampler import StepBatchSampler
from voltron.pretrain.schedule import LRSchedule
from voltron.pretrain.tracking import (
    count_flops,
    device_peak_flops,
    peak_flops,
    read_metrics,
    training_flops,
)
from voltron.pretrain.trainer import (
    STEP_DELAY_ENV,
    NonFiniteLossError,
    Objective,
    Plan,
    Trainer,
    pretrain,
    train_step,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "pretrain"
PAPER_CONFIGS = (*sorted(FAMILIES), "v-cond-base")  # every registered family has its paper config
N_CLIPS = 6  # x 5 examples per clip = 30 examples; global batch 4 -> 7 steps per epoch, so runs cross epochs


# === Fixtures: a real store from a generated corpus, and one uninterrupted 10-step reference run ===
@pytest.fixture(scope="module")
def store(tmp_path_factory, clips) -> Path:
    from voltron.datasets.preprocess import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("pretrain-corpus")
    clips.make_sthsth_corpus(root / "raw", {f"clip{i:02d}": 10 + i % 7 for i in range(N_CLIPS)}, {"val0": 10}, {})
    config = PreprocessConfig(
        corpus="sth-sth-v2", root=root / "raw", out=root / "store", size=64, workers=1, n_val=1, progress=False
    )
    preprocess(config)
    return root / "store"


def write_config(path: Path, store: Path, run_dir: Path, **sections) -> Path:
    """A tiny V-Cond run: 1 process x 2 examples x 2 accumulation = global batch 4, checkpoints every 5 steps;
    10 steps cross from epoch 0 (steps 1-7) into epoch 1. Validation every 3 steps and at epoch ends: 3, 6, 7, 9."""
    data = {
        "run_dir": str(run_dir),
        "model": {"name": "v-cond-tiny", "image_size": 64, "lang_cache_size": 512},
        "data": {"root": str(store), "num_workers": 0},
        "train": {"global_batch": 4, "device_batch": 2, "epochs": 3, "max_steps": 10, "seed": 3},
        "optim": {"lr": 1e-3, "warmup_epochs": 0.1},
        "log": {"every_steps": 1, "progress": False},
        "checkpoint": {"every_steps": 5, "keep_last": 2},
        "val": {"every_steps": 3},
    }
    for name, values in sections.items():
        data[name].update(values)
    path.write_text(yaml.safe_dump(data))
    return path


def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    records = read_metrics(run_dir)
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), f"{run_dir}: a step was logged twice: {steps}"
    return {r["step"]: r[key] for r in records if key in r}


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory) -> tuple[Path, Path]:
    """(config file, run dir) of an uninterrupted 10-step run."""
    tmp = tmp_path_factory.mktemp("reference")
    config_path = write_config(tmp / "config.yaml", store, tmp / "run")
    result = pretrain(load_config(config_path))
    assert result.step == 10 and result.stopped_by == "max_steps"
    return config_path, tmp / "run"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env.pop("PYTHONPATH", None)
    return env


# === Units ===
def test_schedule_is_warmup_then_cosine_to_zero():
    schedule = LRSchedule("warmup-cosine", peak_lr=6e-4, warmup_steps=20, total_steps=400)
    values = [schedule(step) for step in range(401)]
    assert values[0] == pytest.approx(6e-4 / 20) and values[19] == pytest.approx(6e-4)
    assert all(a < b for a, b in zip(values[:20], values[1:20]))  # linear warm-up
    assert all(a >= b for a, b in zip(values[19:], values[20:]))  # then never rises
    assert values[210] == pytest.approx(3e-4, rel=1e-2)  # halfway down the cosine
    assert values[399] < 1e-7 and values[400] == 0.0
    assert schedule(123) == LRSchedule("warmup-cosine", 6e-4, 20, 400)(123)  # a pure function of the step
    constant = LRSchedule("warmup-constant", peak_lr=1e-4, warmup_steps=0, total_steps=10)
    assert {constant(s) for s in range(50)} == {1e-4}
    with pytest.raises(ValueError, match="unknown LR schedule"):
        LRSchedule("linear", 1.0, 1, 2)


def test_optimizer_decays_as_upstream_and_skips_the_frozen_language_model():
    assert peak_lr(1.5e-4, 1024) == pytest.approx(6e-4)
    model = build_model("v-dual-tiny", image_size=32)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}

    def groups(**kwargs) -> dict[str, set[str]]:
        optimizer = build_optimizer(model.named_parameters(), lr=1e-3, **kwargs)
        assert optimizer.defaults["betas"] == (0.9, 0.95)
        assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {"decay": 0.05, "no_decay": 0.0}
        out = {g["name"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
        assert out["decay"] | out["no_decay"] == trainable  # the frozen language model (lm.*) is in neither
        return out

    # upstream Voltron: every non-bias parameter with ndim >= 2 decays, learned tokens and context embeddings too
    upstream = groups()
    embeddings = ("mask_token", "img_token", "lang_token", "ctx_enc_pe", "ctx_dec_pe")
    for name in embeddings + ("encoder_blocks.0.attn.qkv.weight", "patch2embed.proj.weight"):
        assert name in upstream["decay"], name
    assert all(n.endswith(".bias") or model.get_parameter(n).ndim < 2 for n in upstream["no_decay"])
    assert "encoder_norm.g" in upstream["no_decay"] and any("layer_scale" in n for n in upstream["no_decay"])
    assert decays("cls_token", torch.zeros(1, 1, 8)) and not decays("head.bias", torch.zeros(4, 4))

    # the option: tokens and *_pe embeddings keep their scale
    exempt = groups(decay_rule="exempt-embeddings")
    assert exempt["no_decay"] - upstream["no_decay"] == set(embeddings)
    assert not decays("cls_token", torch.zeros(1, 1, 8), "exempt-embeddings")
    with pytest.raises(ValueError, match="optim.decay_rule='none'; expected one of upstream, exempt-embeddings"):
        decays("w", torch.zeros(2, 2), "none")


@pytest.mark.parametrize("world_size, device_batch", [(1, 8), (1, 2), (2, 4), (2, 1), (4, 2)])
def test_sampler_gives_each_step_the_same_global_batch_for_any_world_size(world_size, device_batch):
    def step_sets(world: int, batch: int, start: int = 0) -> list[set[int]]:
        samplers = [
            StepBatchSampler(50, 8, batch, rank, world, seed=5, epoch=2, start_step=start) for rank in range(world)
        ]
        per_rank = [list(s) for s in samplers]
        accumulation = samplers[0].accumulation
        return [
            {i for rank in per_rank for micro in rank[s * accumulation : (s + 1) * accumulation] for i in micro}
            for s in range(len(per_rank[0]) // accumulation)
        ]

    expected = step_sets(1, 8)
    assert len(expected) == 6 and all(len(s) == 8 for s in expected)  # 50 // 8 steps, the tail dropped
    assert step_sets(world_size, device_batch) == expected
    assert step_sets(world_size, device_batch, start=4) == expected[4:]  # mid-epoch resume skips ahead
    assert step_sets(1, 8) != [set(s) for s in [range(8 * i, 8 * i + 8) for i in range(6)]]  # shuffled
    with pytest.raises(ValueError, match="not a multiple"):
        StepBatchSampler(50, 8, 3, 0, 1)


def test_configs_parse_with_paper_hyperparameters_and_dotted_overrides():
    for name in PAPER_CONFIGS:
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.model.name == name
        default_config(config.model.name, **config.model.config_overrides())  # fields exist in ModelConfig
        assert config.train.global_batch == 1024 and config.train.epochs == 400
        assert 1024 % config.train.device_batch == 0
        plan = Plan.make(config, n_examples=844_565, world_size=8)  # Sth-Sth-v2 train clips x 5
        assert plan.steps_per_epoch == 824 and plan.total_steps == 400 * 824
        if name.startswith("r-r3m"):
            assert config.optim.lr == 1e-4 and config.optim.weight_decay == 0.0
        else:
            assert plan.peak_lr == pytest.approx(6e-4) and plan.warmup_steps == 20 * 824
            assert config.optim.betas == (0.9, 0.95) and config.optim.weight_decay == 0.05
    demo = load_config(CONFIGS / "demo.yaml")
    build_model(default_config(demo.model.name, **demo.model.config_overrides()))
    config = load_config(
        CONFIGS / "v-cond.yaml", ["--optim.lr=3e-4", "--train.max_minutes", "5", "--model.image_size=64"]
    )
    assert (config.optim.lr, config.train.max_minutes, config.model.config_overrides()["image_size"]) == (3e-4, 5, 64)
    assert isinstance(load_config(None, ["--run_dir=x"]), PretrainConfig)
    with pytest.raises((SystemExit, ValueError)):  # draccus's exit, or the shared config path's one-line error
        load_config(CONFIGS / "v-cond.yaml", ["--optim.learning_rate=1"])
    with pytest.raises(PretrainError, match="train.strategy='zero3'; expected one of ddp, fsdp"):
        validate(replace(config, train={"strategy": "zero3"}))
    with pytest.raises(PretrainError, match="model.name='v-cond-huge'"):
        validate(replace(config, model={"name": "v-cond-huge"}))


def test_a_model_key_of_another_family_is_refused_naming_both():
    config = load_config(CONFIGS / "r-r3m-vit.yaml", ["--model.mask_ratio=0.5"])  # MAEConfig's, not R3MConfig's
    with pytest.raises(UserError, match=r"mask_ratio=0.5: a key of v-cond, .*which r-r3m-vit does not have"):
        default_config(config.model.name, **config.model.config_overrides())
    config = load_config(CONFIGS / "v-cond.yaml", ["--model.overrides={reward_hidden: 64}"])
    with pytest.raises(UserError, match=r"reward_hidden=64: a key of r-r3m-vit, r-r3m-rn50, which v-cond does not"):
        default_config(config.model.name, **config.model.config_overrides())


def test_cli_lists_config_keys(capsys):
    from voltron.cli import main

    with pytest.raises(SystemExit) as exit:  # argparse's help exit
        main(["pretrain", "--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: voltron pretrain")
    assert "--optim.lr" in out and "--train.max_minutes" in out and "--checkpoint.keep_last" in out
    # each key with its type, default and the description from the dataclass's comment
    assert re.search(r"--train\.max_steps +int \| None \(default: None\) +stop \(checkpoint \+ export\)", out)
    assert main(["pretrain", "--config", "no/such/file.yaml"]) == 2


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[pytest.mark.slow] if f == "r-r3m-rn50" else []) for f in sorted(FAMILIES)]
)  # every registered objective; ResNet-50 is a slow one
def test_each_objective_learns_a_repeated_batch(family, store):
    # 32 px keeps the ViTs fast; a family that sets its own tiny size keeps it (R-R3M's ResNet-50: 64 px, since at 32 px
    # its last feature map is 1x1 and the time-contrastive term sits saturated at -log(eps) from the first step)
    size = FAMILIES[family].size_overrides.get("tiny", {}).get("image_size", 32)
    torch.manual_seed(0)
    model = build_model(f"{family}-tiny", image_size=size)
    dataset = open_store(store, "train", model.sampling_scheme, seed=0, size=size)
    batch = collate([dataset[i * 7 % len(dataset)] for i in range(4)])  # four different clips
    objective = Objective(model)
    optimizer = build_optimizer(objective.named_parameters(), lr=1e-3)
    values = [train_step(objective, optimizer, [batch], 1e-3).loss for _ in range(8)]
    assert all(math.isfinite(v) for v in values)
    assert values[-1] < values[0] and min(values[-3:]) < 0.95 * values[0], values


def test_nonfinite_loss_raises_before_the_update(store):
    model = build_model("v-cond-tiny", image_size=32)
    batch = collate([open_store(store, "train", model.sampling_scheme, size=32)[i] for i in range(2)])
    objective = Objective(model)
    optimizer = build_optimizer(objective.named_parameters(), lr=1e-3)
    with torch.no_grad():
        model.decoder_prediction.weight[0, 0] = float("nan")
    before = model.encoder2decoder.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="the loss is nan"):
        train_step(objective, optimizer, [batch], 1e-3)
    assert torch.equal(model.encoder2decoder.weight, before) and not optimizer.state


# === End to end ===
@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
def test_resume_after_sigkill_continues_exactly(reference, store, tmp_path):
    config_path, reference_run = reference
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", store, run_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "voltron.pretrain", "--config", str(config)],
        cwd=tmp_path,
        env=subprocess_env(**{STEP_DELAY_ENV: "0.4"}),  # gives the watcher a window after step 5's checkpoint
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    checkpoint_5 = run_dir / "checkpoints" / ckpt.step_dir_name(5)
    deadline = time.monotonic() + 180
    while not checkpoint_5.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0].decode()
    assert process.returncode == -signal.SIGKILL, output
    assert checkpoint_5.is_dir() and not (run_dir / "checkpoints" / ckpt.step_dir_name(10)).exists(), output

    result = pretrain(load_config(config))
    assert result.step == 10
    expected, resumed = losses(reference_run), losses(run_dir)
    assert sorted(resumed) == list(range(1, 11))
    assert [resumed[s] for s in range(6, 11)] == [expected[s] for s in range(6, 11)]  # identical, not close
    assert len(set(expected.values())) == 10  # the losses move, so equality means something
    expected_val, resumed_val = losses(reference_run, "val_loss"), losses(run_dir, "val_loss")
    assert sorted(expected_val) == sorted(resumed_val) == [3, 6, 7, 9]  # every 3 steps, and the epoch end at 7
    assert [resumed_val[s] for s in (6, 7, 9)] == [expected_val[s] for s in (6, 7, 9)]
    state = ckpt.CheckpointManager(run_dir).read(run_dir / "checkpoints" / ckpt.step_dir_name(10)).state
    assert state.val_step == 9 and state.val_metrics["val_loss"] == expected_val[9]


@pytest.mark.slow  # a subprocess or end-to-end run: `make test` runs it, `make test-fast` leaves it out
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(strategy, reference, store, tmp_path):
    _, reference_run = reference
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", store, run_dir, train={"max_steps": 5, "strategy": strategy})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "voltron.pretrain", "--config", str(config)]  # 2 processes x 2 examples, no accumulation
    completed = subprocess.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "2 process(es) x 2 x 1 accumulation" in completed.stdout
    one, two = losses(reference_run), losses(run_dir)
    assert sorted(two) == [1, 2, 3, 4, 5]
    for step in range(1, 6):
        assert abs(one[step] - two[step]) < 1e-5, (step, one[step], two[step])
    # the validation loss at step 3, all-reduced over two ranks' halves of the split, is the one-process value
    assert abs(losses(reference_run, "val_loss")[3] - losses(run_dir, "val_loss")[3]) < 1e-5
    model, _ = voltron.load(run_dir)
    assert model.family == "v-cond" and model.config.image_size == 64


def test_corrupt_latest_checkpoint_is_skipped_for_the_previous_one(reference, tmp_path):
    config_path, reference_run = reference
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    latest = run_dir / "checkpoints" / ckpt.step_dir_name(10)
    weights = latest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # same size, damaged content: only the manifest's SHA-256 notices
    weights.write_bytes(bytes(data))
    config = load_config(config_path, [f"--run_dir={run_dir}"])
    with pytest.warns(UserWarning, match="corrupt checkpoint"):
        result = pretrain(config)
    assert result.step == 10 and (run_dir / "checkpoints" / f"corrupt-{latest.name}").is_dir()
    expected, rerun = losses(reference_run), losses(run_dir)
    assert [rerun[s] for s in range(6, 11)] == [expected[s] for s in range(6, 11)]
    ckpt.CheckpointManager(run_dir, keep_last=1).prune()
    assert [step for step, _ in ckpt.CheckpointManager(run_dir).steps()] == [10]
    manager = ckpt.CheckpointManager(run_dir)
    (latest / ckpt.OPTIMIZER_NAME).write_bytes((latest / ckpt.OPTIMIZER_NAME).read_bytes()[:50])  # truncated
    with pytest.raises(ckpt.CorruptCheckpointError, match="truncated"):
        manager.read(latest)


def test_export_and_checkpoints_load_as_models(reference):
    config_path, run_dir = reference
    exported, _ = voltron.load(run_dir)
    from_checkpoint, _ = voltron.load(run_dir / "checkpoints" / ckpt.step_dir_name(10))
    for key, value in exported.trainable_state_dict().items():
        assert torch.equal(value, from_checkpoint.trainable_state_dict()[key]), key
    initial = build_model(exported.config)  # a fresh init differs: the export holds trained weights
    assert not torch.equal(initial.encoder2decoder.weight, exported.encoder2decoder.weight)
    saved = load_config(run_dir / "pretrain.yaml")
    assert saved.optim.lr == 1e-3 and saved.train.global_batch == 4
    assert sorted(p.name for _, p in ckpt.CheckpointManager(run_dir).steps()) == ["step-00000005", "step-00000010"]


def test_time_budget_and_nan_stop_with_a_checkpoint(store, tmp_path, capsys):
    from voltron.cli import main

    budget = {"train": {"max_minutes": 1e-6}, "log": {"peak_tflops": 0.05}}  # a peak turns on MFU on CPU too
    result = pretrain(load_config(write_config(tmp_path / "a.yaml", store, tmp_path / "budget", **budget)))
    assert (result.step, result.stopped_by) == (1, "time_budget")
    assert (result.checkpoint.name, voltron.load(tmp_path / "budget")[0].family) == ("step-00000001", "v-cond")
    (record,) = read_metrics(tmp_path / "budget")
    assert 0 < record["mfu"] < 1 and record["samples_per_s"] > 0 and record["grad_norm"] > 0

    config = write_config(tmp_path / "b.yaml", store, tmp_path / "nan", checkpoint={"every_steps": 1})
    assert main(["pretrain", "--config", str(config), "--optim.lr=1e12"]) == 1  # a dotted override diverges it
    assert re.search(r"the loss is (nan|inf).*last good checkpoint is .*step-0000000\d", capsys.readouterr().err)
    assert ckpt.CheckpointManager(tmp_path / "nan").steps()
    assert all(math.isfinite(r["loss"]) for r in read_metrics(tmp_path / "nan"))


# === Validation, store/model consistency, FLOPs and MFU ===
def test_validation_is_deterministic_and_leaves_training_untouched(reference, store, tmp_path):
    _, reference_run = reference
    run_dir = tmp_path / "no-val"
    config = write_config(tmp_path / "c.yaml", store, run_dir, train={"max_steps": 7}, val={"enabled": False})
    pretrain(load_config(config))
    without, with_val = losses(run_dir), losses(reference_run)
    assert [without[s] for s in range(1, 8)] == [with_val[s] for s in range(1, 8)]  # training RNG untouched
    assert not losses(run_dir, "val_loss")

    trainer = Trainer(load_config(config, ["--val.enabled=true", "--val.batch_size=3"]), DistEnv())
    first, second = trainer.run_validation(), trainer.run_validation()
    assert first == second and math.isfinite(first["val_loss"]) and "val_reconstruction_loss" in first
    assert len(trainer.val_sampler) == 2  # 1 clip x 5 examples in batches of 3: sizes 3 and 2, weighted by size


def test_store_and_model_must_agree(store, tmp_path, capsys):
    from voltron.cli import main

    config = write_config(tmp_path / "c.yaml", store, tmp_path / "run")
    with pytest.raises(PretrainError, match=r"frames are 64 px but the model's image_size is 32; set --model.image"):
        pretrain(load_config(config, ["--model.image_size=32"]))
    assert main(["pretrain", "--config", str(config), "--model.max_lang_len=32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "store.json" in err and "max_lang_len=20" in err and "is 32" in err and "--model.max_lang_len=20" in err
    assert not (tmp_path / "run").exists()  # failed before the first step

    settings = {"size": 64, "max_lang_len": 20, "tokenizer": "minilm"}
    model_config = default_config("v-cond-tiny", image_size=64)
    check_store_matches_model(settings, model_config, store)
    check_store_matches_model({**settings, "size": 80}, model_config, store, augment="random-resized-crop")
    check_store_matches_model({**settings, "max_lang_len": 7}, default_config("r-mvp-tiny", image_size=64), store,
                              language=False)  # fmt: skip
    # another name with the same vocabulary gives the same ids: accepted
    same = tmp_path / "minilm-tokenizer"
    load_tokenizer("minilm").save_pretrained(same)
    check_store_matches_model({**settings, "tokenizer": str(same)}, model_config, store)
    # a different vocabulary is not
    from transformers import BertTokenizer

    other = tmp_path / "other-tokenizer"
    other.mkdir()
    (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "put", "cup"]) + "\n")
    BertTokenizer(str(other / "vocab.txt")).save_pretrained(other)
    with pytest.raises(PretrainError, match="tokenised with .*other-tokenizer.* --model.language_model="):
        check_store_matches_model({**settings, "tokenizer": str(other)}, model_config, store)


def test_flops_leave_out_the_cached_language_model_and_peaks_follow_precision(store):
    model = build_model("v-cond-tiny", image_size=32, lang_cache_size=64)
    batch = collate([open_store(store, "train", model.sampling_scheme, size=32)[i] for i in range(2)])
    total, language = training_flops(model, batch)
    assert 0 < language < total
    model.lm(batch["input_ids"], batch["attention_mask"])  # warm the cache: now the language model is skipped

    def fwd_bwd() -> None:
        model.pretrain_loss(batch)[0].backward()

    set_attention_impl(model, "eager")
    assert count_flops(fwd_bwd) == total - language

    assert device_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert device_peak_flops("NVIDIA H100 80GB HBM3", "fp32") == 495e12  # TF32 tensor cores, not the bf16 peak
    assert device_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert device_peak_flops("Tesla V100-SXM2-32GB", "bf16") is None  # Volta has no bf16
    assert device_peak_flops("Tesla V100-SXM2-32GB", "fp32") == 15.7e12
    assert device_peak_flops("Some Future GPU", "bf16") is None
    assert peak_flops(torch.device("cpu"), None, "fp32") is None and peak_flops(torch.device("cpu"), 2.0) == 2e12
