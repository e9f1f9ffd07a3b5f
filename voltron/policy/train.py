"""Behaviour cloning on demonstrations: with a frozen encoder every frame is encoded once and cached, then the
extractor and head train on the cache in seconds; with fine-tuning each batch goes through the encoder."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from voltron.datasets.windows import NormStats, WindowDataset
from voltron.devices import resolve_device
from voltron.errors import UserError
from voltron.io import PARTIAL_SUFFIX, atomic_write_bytes, remove_stale_partials
from voltron.models.checkpoints import CONFIG_NAME, WEIGHTS_NAME
from voltron.policy.config import NO_ENCODER, BCConfig
from voltron.policy.model import BUNDLE_DIR, BCPolicy, open_encoder


@torch.inference_mode()
def encode_frames(
    policy: BCPolicy, windows: WindowDataset, batch_size: int, dtype: torch.dtype, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder tokens for every frame of every episode: (F, N, D) in `dtype` on the CPU, and key masks (F, N)."""
    policy.eval()
    tokens, masks = [], []
    bar = tqdm(total=int(windows.offsets[-1]), desc="encoding demo frames", unit="frame", disable=not progress)
    for episode in range(len(windows.episodes)):
        frames, language = windows.frames(episode), windows.language(episode)
        for start in range(0, len(frames), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size]))
            chunk_tokens, chunk_mask = policy.encode_tokens(chunk, [language] * len(chunk))
            tokens.append(chunk_tokens.to("cpu", dtype))
            masks.append(chunk_mask.cpu())
            bar.update(len(chunk))
    bar.close()
    return torch.cat(tokens), torch.cat(masks)


def make_batch(
    windows: WindowDataset,
    index: torch.Tensor,
    cache: tuple[torch.Tensor, torch.Tensor] | None,
    images: bool = True,
) -> dict[str, Any]:
    frame_ids = torch.as_tensor(windows.frame_ids[index.numpy()])  # (B, H)
    batch: dict[str, Any] = {
        "proprio": torch.as_tensor(windows.proprio[frame_ids.numpy()]),  # (B, H, P)
        "action": torch.as_tensor(windows.actions[index.numpy()]),  # (B, A)
    }
    if not images:  # a low-dim policy (state oracle, proprio-only floor)
        return batch
    if cache is not None:
        batch["tokens"], batch["token_mask"] = cache[0][frame_ids], cache[1][frame_ids]
    else:
        episodes = windows.episode_of[index.numpy()]
        steps = frame_ids.numpy() - windows.offsets[episodes][:, None]
        batch["frames"] = torch.from_numpy(
            np.stack([windows.frames(e)[s] for e, s in zip(episodes, steps)])  # (B, H, h, w, 3)
        )
        batch["language"] = [windows.language(e) for e in episodes]
    return batch


def _batches(windows: WindowDataset, batch_size: int):
    for start in range(0, len(windows), batch_size):
        yield torch.arange(start, min(start + batch_size, len(windows)))


@torch.no_grad()
def validation_loss(
    policy: BCPolicy, windows: WindowDataset, cache: tuple[torch.Tensor, torch.Tensor] | None, batch_size: int
) -> float:
    """Eval-mode MSE over every window (what the deployed policy does on these frames)."""
    was_training = policy.training
    policy.eval()
    total, count = 0.0, 0
    for index in _batches(windows, batch_size):
        loss, _ = policy(make_batch(windows, index, cache, policy.uses_images))
        total, count = total + float(loss) * len(index), count + len(index)
    policy.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def calibrate(
    policy: BCPolicy, windows: WindowDataset, cache: tuple[torch.Tensor, torch.Tensor] | None, batch_size: int
) -> None:
    """Set the head's BatchNorm statistics from the current extractor on every training window (see
    `BCPolicy.calibrate_input_norm`)."""
    was_training = policy.training
    policy.eval()

    def head_inputs():
        for index in _batches(windows, batch_size):
            batch = make_batch(windows, index, cache, policy.uses_images)
            yield policy.head_input(policy.features(batch), batch["proprio"])

    policy.calibrate_input_norm(head_inputs())
    policy.train(was_training)


def load_split(demos: Any, split: str, required: bool) -> list:
    """The `split` episodes of `demos`. Only a native file without `/mask/<split>` is tolerated, and only when the
    split is not `required`: a warning, and no episodes from that file. Anything else wrong with a file (a dataset
    of the wrong length, a missing group) is an error naming the file and the dataset."""
    from voltron.datasets.demos import DemoFile
    from voltron.datasets.episodes import load_episodes, resolve_sources

    if not required:
        resolved = resolve_sources(demos)
        sources, lacking = [source.path for source in resolved], []
        for source in resolved:
            if source.kind == "native":  # DROID folders have every split (a hash of the episode id)
                with DemoFile(source.path) as demo_file:
                    if split not in demo_file.splits:
                        lacking.append(source.path)
        if lacking:
            kept = [source for source in sources if source not in lacking]
            effect = "training without validation" if not kept else f"validating on the {split!r} split of the rest"
            names = ", ".join(str(path) for path in lacking)
            warnings.warn(f"{names}: no {split!r} split (/mask/{split}); {effect}", stacklevel=2)
            if not kept:
                return []
            demos = kept
    return load_episodes(demos, split=split)


def lowdim_episodes(episodes: list, key: str, demos: Any, split: str | None = None) -> list:
    """The episodes with the head's low-dim input in `proprio`: unchanged for "proprio", the simulator state for
    "state" (a state oracle); every value is checked finite so bad data fails here, naming the episode and step
    (`split`: which split `episodes` are, for the message)."""
    out = []
    for index, episode in enumerate(episodes):
        where = f"{split!r} split episode {index}" if split else f"episode {index}"
        origin = episode.attrs.get("source") or (f"seed {episode.attrs['seed']}" if "seed" in episode.attrs else "")
        where += f" ({origin})" if origin else ""
        if key == "state":
            if episode.state is None:
                raise ValueError(
                    f"{demos}: {where} has no obs/state; a state oracle (policy.lowdim=state) needs demos "
                    "collected with the simulator state (voltron sim collect writes it)"
                )
            episode = dataclasses.replace(episode, proprio=episode.state)
        for name in ("proprio", "actions"):
            bad = np.argwhere(~np.isfinite(np.asarray(getattr(episode, name))))
            if len(bad):
                raise ValueError(
                    f"{demos}: {where} has a non-finite {name} value at step {int(bad[0][0])} of {len(episode)}; "
                    "expected finite numbers"
                )
        out.append(episode)
    return out


def lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at optimiser step `step` (1-based): linear warm-up, then cosine decay to 0."""
    if warmup and step <= warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


TokenCache = dict  # (encoder key, demos, split, camera) -> (tokens, masks): frozen-encoder tokens shared by runs

CHECKPOINTS_DIR = "checkpoints"
METRICS_NAME = "metrics.jsonl"
POLICY_FILES = (CONFIG_NAME, WEIGHTS_NAME)
# What a run writes into its directory, in the order a replacing run moves it in: the policy itself last.
RUN_OUTPUTS = (CHECKPOINTS_DIR, METRICS_NAME, BUNDLE_DIR, *POLICY_FILES)


def holds_policy(out_dir: str | Path) -> bool:
    """Whether `out_dir` already holds a saved policy (its config.json or model.safetensors)."""
    return any((Path(out_dir) / name).exists() for name in POLICY_FILES)


def finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with non-finite floats as None, so metrics.jsonl and config.json stay strict JSON (no bare NaN)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def train_policy(
    config: BCConfig,
    demos: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    progress: bool = True,
    token_cache: TokenCache | None = None,
    overwrite: bool | None = None,
) -> dict[str, Any]:
    """Train a policy on `demos` (anything `voltron.datasets.episodes.load_episodes` reads) and save it to
    `out_dir` (config.json, model.safetensors, metrics.jsonl, and checkpoints/step_*.safetensors every
    `train.checkpoint_every` steps). Returns the run summary.

    `token_cache`: a dict that keeps frozen-encoder tokens between calls (a suite trains several seeds and demo
    counts on the same demos), so each demo frame is encoded once.

    `overwrite` decides what happens when `out_dir` already holds a policy. None (the default): write into it as
    it goes. False: refuse (UserError) before any work. True: train in a hidden sibling folder and move the new
    run's files in only once its policy is saved, so a run that is killed or fails leaves the old one whole;
    files the run does not own (e.g. eval/) stay.
    """
    from voltron.datasets.episodes import resolve_sources

    out_dir = Path(out_dir)
    if overwrite is None or not holds_policy(out_dir):
        return _train(config, demos, out_dir, progress, token_cache)
    resolve_sources(demos)  # a missing demo file is the first thing to report, before the output's state
    if not overwrite:
        raise UserError(
            "already holds a policy (config.json, model.safetensors); pass --overwrite to replace it "
            "(the old files stay until the new policy is saved), or choose another --out",
            source=out_dir,
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out_dir)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}-", suffix=PARTIAL_SUFFIX, dir=out_dir.parent)
    )
    try:
        summary = _train(config, demos, staging, progress, token_cache)
        _move_run(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def _move_run(staging: Path, out_dir: Path) -> None:
    """Replace the run outputs in `out_dir` with those in `staging`, the policy files last."""
    replaced = staging / ".replaced"
    replaced.mkdir()
    for name in RUN_OUTPUTS:
        new, old = staging / name, out_dir / name
        if old.is_dir() and not old.is_symlink():  # a directory cannot be renamed over a non-empty one
            os.replace(old, replaced / name)
        if new.exists():
            os.replace(new, old)
        elif old.exists() or old.is_symlink():  # e.g. no checkpoints this time: the old ones are not this run's
            os.replace(old, replaced / name)


def _train(
    config: BCConfig,
    demos: str | Path | Sequence[str | Path],
    out_dir: Path,
    progress: bool,
    token_cache: TokenCache | None,
) -> dict[str, Any]:
    policy_cfg, train_cfg = config.policy, config.train
    torch.manual_seed(policy_cfg.seed)
    device = resolve_device(train_cfg.device)
    encoder_path = Path(policy_cfg.encoder).expanduser()
    if encoder_path.is_dir():  # a run directory: record where it is, whatever the working directory later
        policy_cfg.encoder = str(encoder_path.resolve())

    train_split, valid_split = train_cfg.train_split, train_cfg.valid_split
    train_episodes = lowdim_episodes(load_split(demos, train_split, True), policy_cfg.lowdim, demos, train_split)
    images = policy_cfg.encoder != NO_ENCODER  # a low-dim policy needs no camera
    windows = functools.partial(WindowDataset, history=policy_cfg.history, images=images, source=demos)
    all_train = windows(train_episodes, camera=policy_cfg.camera)
    policy_cfg.camera = all_train.camera
    if train_cfg.max_episodes:
        if train_cfg.max_episodes > len(train_episodes):
            raise ValueError(
                f"train.max_episodes={train_cfg.max_episodes}, but {demos} has only {len(train_episodes)} "
                f"{train_cfg.train_split!r} episodes"
            )
        train_episodes = train_episodes[: train_cfg.max_episodes]
        train_windows = windows(train_episodes, camera=policy_cfg.camera)
    else:
        train_windows = all_train
    valid_episodes = lowdim_episodes(load_split(demos, valid_split, False), policy_cfg.lowdim, demos, valid_split)
    valid_windows = windows(valid_episodes, camera=policy_cfg.camera) if valid_episodes else None

    encoder, encoder_record, encoder_folder = open_encoder(policy_cfg)  # records a pretrained encoder's SHA-256
    policy = BCPolicy(
        config,
        encoder,
        train_windows.proprio_dim,
        train_windows.action_dim,
        NormStats.compute(train_windows.proprio),
        NormStats.compute(train_windows.actions),
        image_size=int(train_windows.frames(0).shape[1]) if encoder is not None else None,
        encoder_record=encoder_record,
        encoder_folder=encoder_folder,
    ).to(device)

    start = time.perf_counter()
    train_cache = valid_cache = None
    if encoder is not None and policy_cfg.freeze_encoder:
        dtype = getattr(torch, train_cfg.cache_dtype)  # validated against config.CACHE_DTYPES
        key = (
            policy_cfg.encoder, policy_cfg.pretrained, policy_cfg.encoder_seed, repr(policy_cfg.encoder_overrides),
            str(demos), train_cfg.train_split, policy_cfg.camera, train_cfg.cache_dtype,
        )  # fmt: skip
        cached = None if token_cache is None else token_cache.get(key)
        if cached is None:
            cached = encode_frames(policy, all_train, train_cfg.encode_batch_size, dtype, progress)
            if token_cache is not None:
                token_cache[key] = cached
        frames_used = int(train_windows.offsets[-1])  # the first episodes' frames are a prefix of the cache
        train_cache = (cached[0][:frames_used], cached[1][:frames_used])
        if valid_windows is not None:
            valid_cache = encode_frames(policy, valid_windows, train_cfg.encode_batch_size, dtype, progress)
    encode_s = time.perf_counter() - start

    optimizer = torch.optim.AdamW(policy.get_optim_params(), weight_decay=train_cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_factor(done + 1, train_cfg.steps, train_cfg.warmup_steps, train_cfg.schedule)
    )
    generator = torch.Generator().manual_seed(policy_cfg.seed)

    def save_checkpoint(step: int) -> None:  # the caller has just calibrated the head's input statistics
        from safetensors.torch import save

        path = out_dir / CHECKPOINTS_DIR / f"step_{step:06d}.safetensors"
        atomic_write_bytes(path, save(policy.head_state_dict(), metadata={"step": str(step)}))

    out_dir.mkdir(parents=True, exist_ok=True)  # only now: bad demos or a bad encoder leave no folder behind
    policy.train()
    history: list[dict[str, Any]] = []
    valid = None
    metrics_path = out_dir / METRICS_NAME
    with open(metrics_path, "w") as log:
        bar = tqdm(range(1, train_cfg.steps + 1), desc="training policy", unit="step", disable=not progress)
        for step in bar:
            index = torch.randint(
                len(train_windows), (min(train_cfg.batch_size, len(train_windows)),), generator=generator
            )
            loss, info = policy(make_batch(train_windows, index, train_cache, policy.uses_images))
            if not torch.isfinite(loss):
                raise UserError(  # nothing is saved: metrics.jsonl ends at the last finite step
                    f"the policy loss became {float(loss)} at step {step}; lower it",
                    key="train.lr",
                    value=train_cfg.lr,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            record = {
                "step": step,
                "loss": float(loss.detach()),
                **{k: float(torch.as_tensor(v).detach()) for k, v in info.items()},
            }
            record["lr"] = optimizer.param_groups[0]["lr"]
            if valid_windows is not None and (step % train_cfg.valid_every == 0 or step == train_cfg.steps):
                calibrate(policy, train_windows, train_cache, train_cfg.batch_size)
                valid = validation_loss(policy, valid_windows, valid_cache, train_cfg.batch_size)
                record["valid_loss"] = valid
            if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0 and step != train_cfg.steps:
                calibrate(policy, train_windows, train_cache, train_cfg.batch_size)
                save_checkpoint(step)
            if step % train_cfg.log_every == 0 or step == train_cfg.steps or "valid_loss" in record:
                log.write(json.dumps(finite_or_none(record)) + "\n")
                log.flush()
                history.append(record)
                bar.set_postfix(
                    loss=f"{record['loss']:.4f}", **({"valid": f"{valid:.4f}"} if valid is not None else {})
                )
    calibrate(policy, train_windows, train_cache, train_cfg.batch_size)
    if train_cfg.checkpoint_every:
        save_checkpoint(train_cfg.steps)
    seeds = sorted({int(e.attrs["seed"]) for e in [*train_episodes, *valid_episodes] if "seed" in e.attrs})
    summary = {
        "demos": [str(d) for d in demos] if isinstance(demos, list | tuple) else str(demos),
        "train_episodes": len(train_windows.episodes),
        "valid_episodes": len(valid_episodes),
        "train_samples": len(train_windows),
        "demo_seeds": seeds,  # the reset seeds of the demos: evaluation refuses to start an episode on one
        "encode_seconds": round(encode_s, 2),
        "train_seconds": round(time.perf_counter() - start - encode_s, 2),
        "final_loss": history[-1]["loss"] if history else None,
        # the deployed (eval-mode) policy on its own training windows: close to `final_loss` when the head's
        # normalisation matches what training optimised
        "train_loss_eval_mode": validation_loss(policy, train_windows, train_cache, train_cfg.batch_size),
        "final_valid_loss": valid,
    }
    summary = finite_or_none(summary)
    policy.save_pretrained(out_dir, extra={"training": summary}, bundle_encoder=train_cfg.bundle_encoder)
    return summary
