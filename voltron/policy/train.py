"""Behaviour cloning on demonstrations: with a frozen encoder every frame is encoded once and cached, then the
extractor and head train on the cache in seconds; with fine-tuning each batch goes through the encoder."""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from voltron.datasets.windows import NormStats, WindowDataset
from voltron.io import atomic_write_bytes
from voltron.policy.config import BCConfig
from voltron.policy.model import BCPolicy, build_encoder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    from voltron.datasets.episodes import load_episodes

    try:
        return load_episodes(demos, split=split)
    except KeyError as err:  # a file without that mask/<split>
        if required:
            raise
        warnings.warn(f"{demos}: no {split!r} split ({err}); training without validation", stacklevel=2)
        return []


def lowdim_episodes(episodes: list, key: str, demos: Any) -> list:
    """The episodes with the head's low-dim input in `proprio`: unchanged for "proprio", the simulator state for
    "state" (a state oracle); every value is checked finite so bad data fails here, naming the episode and step."""
    out = []
    for index, episode in enumerate(episodes):
        if key == "state":
            if episode.state is None:
                raise ValueError(
                    f"{demos}: episode {index} has no obs/state; a state oracle (policy.lowdim=state) needs demos "
                    "collected with the simulator state (voltron sim collect writes it)"
                )
            episode = dataclasses.replace(episode, proprio=episode.state)
        for name in ("proprio", "actions"):
            bad = np.argwhere(~np.isfinite(np.asarray(getattr(episode, name))))
            if len(bad):
                raise ValueError(
                    f"{demos}: episode {index} ({episode.attrs.get('source', 'seed ' + str(episode.attrs.get('seed')))})"
                    f" has a non-finite {name} value at step {int(bad[0][0])}; expected finite numbers"
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


def train_policy(
    config: BCConfig,
    demos: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    progress: bool = True,
    token_cache: TokenCache | None = None,
) -> dict[str, Any]:
    """Train a policy on `demos` (anything `voltron.datasets.episodes.load_episodes` reads) and save it to
    `out_dir` (config.json, model.safetensors, metrics.jsonl, and checkpoints/step_*.safetensors every
    `train.checkpoint_every` steps). Returns the run summary.

    `token_cache`: a dict that keeps frozen-encoder tokens between calls (a suite trains several seeds and demo
    counts on the same demos), so each demo frame is encoded once.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policy_cfg, train_cfg = config.policy, config.train
    torch.manual_seed(policy_cfg.seed)
    device = resolve_device(train_cfg.device)
    encoder_path = Path(policy_cfg.encoder).expanduser()
    if encoder_path.is_dir():  # a run directory: record where it is, whatever the working directory later
        policy_cfg.encoder = str(encoder_path.resolve())

    train_episodes = lowdim_episodes(load_split(demos, train_cfg.train_split, True), policy_cfg.lowdim, demos)
    all_train = WindowDataset(train_episodes, policy_cfg.history, policy_cfg.camera)
    policy_cfg.camera = all_train.camera
    if train_cfg.max_episodes:
        if train_cfg.max_episodes > len(train_episodes):
            raise ValueError(
                f"train.max_episodes={train_cfg.max_episodes}, but {demos} has only {len(train_episodes)} "
                f"{train_cfg.train_split!r} episodes"
            )
        train_episodes = train_episodes[: train_cfg.max_episodes]
    train_windows = WindowDataset(train_episodes, policy_cfg.history, policy_cfg.camera)
    valid_episodes = lowdim_episodes(load_split(demos, train_cfg.valid_split, False), policy_cfg.lowdim, demos)
    valid_windows = WindowDataset(valid_episodes, policy_cfg.history, policy_cfg.camera) if valid_episodes else None

    encoder = build_encoder(policy_cfg)
    policy = BCPolicy(
        config,
        encoder,
        train_windows.proprio_dim,
        train_windows.action_dim,
        NormStats.compute(train_windows.proprio),
        NormStats.compute(train_windows.actions),
        image_size=int(train_windows.frames(0).shape[1]) if encoder is not None else None,
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

    parameters = [*policy.head.parameters(), *([] if policy.extractor is None else policy.extractor.parameters())]
    groups = [{"params": parameters, "lr": train_cfg.lr}]
    if encoder is not None and not policy_cfg.freeze_encoder:
        groups.append(
            {"params": [p for p in policy.encoder.parameters() if p.requires_grad], "lr": train_cfg.encoder_lr}
        )
    optimizer = torch.optim.AdamW(groups, weight_decay=train_cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_factor(done + 1, train_cfg.steps, train_cfg.warmup_steps, train_cfg.schedule)
    )
    generator = torch.Generator().manual_seed(policy_cfg.seed)

    def save_checkpoint(step: int) -> None:
        from safetensors.torch import save

        calibrate(policy, train_windows, train_cache, train_cfg.batch_size)
        path = out_dir / CHECKPOINTS_DIR / f"step_{step:06d}.safetensors"
        atomic_write_bytes(path, save(policy.head_state_dict(), metadata={"step": str(step)}))

    policy.train()
    history: list[dict[str, Any]] = []
    valid = None
    metrics_path = out_dir / "metrics.jsonl"
    with open(metrics_path, "w") as log:
        bar = tqdm(range(1, train_cfg.steps + 1), desc="training policy", unit="step", disable=not progress)
        for step in bar:
            index = torch.randint(
                len(train_windows), (min(train_cfg.batch_size, len(train_windows)),), generator=generator
            )
            loss, info = policy(make_batch(train_windows, index, train_cache, policy.uses_images))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"policy loss became {float(loss)} at step {step}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            record = {"step": step, "loss": float(loss), **{k: float(v) for k, v in info.items()}}
            record["lr"] = optimizer.param_groups[0]["lr"]
            if valid_windows is not None and (step % train_cfg.valid_every == 0 or step == train_cfg.steps):
                calibrate(policy, train_windows, train_cache, train_cfg.batch_size)
                valid = validation_loss(policy, valid_windows, valid_cache, train_cfg.batch_size)
                record["valid_loss"] = valid
            if train_cfg.checkpoint_every and step % train_cfg.checkpoint_every == 0 and step != train_cfg.steps:
                save_checkpoint(step)
            if step % train_cfg.log_every == 0 or step == train_cfg.steps or "valid_loss" in record:
                log.write(json.dumps(record) + "\n")
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
    policy.save_pretrained(out_dir, extra={"training": summary})
    return summary
