"""The pretraining loop: one `train_step` for every objective, and a short loop around it that handles the data
position, logging, checkpoints, exact resume, time budgets and the final `save_pretrained` export.

Nothing here knows which model it trains: every model maps a loader batch to `(loss, metrics)` through
`pretrain_loss`, and declares the sampling scheme its data needs through `sampling_scheme`.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from voltron.config import save_config
from voltron.pretrain import checkpointing as ckpt
from voltron.pretrain import config as cfg_module
from voltron.pretrain.config import PretrainConfig, PretrainError, validate
from voltron.pretrain.distributed import DistEnv, Strategy, get_strategy
from voltron.pretrain.distributed import setup as setup_distributed
from voltron.pretrain.optim import build_optimizer, peak_lr
from voltron.pretrain.schedule import LRSchedule
from voltron.pretrain.tracking import Tracker, peak_flops, training_flops


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN or Inf; the weights were not updated with it."""


# A test hook: seconds to sleep after each optimizer step, so a test can SIGKILL a run part-way reliably.
STEP_DELAY_ENV = "VOLTRON_PRETRAIN_TEST_STEP_DELAY_S"


class Objective(nn.Module):
    """Exposes a model's `pretrain_loss` as `forward`, so DDP, FSDP and torch.compile hook the training pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.pretrain_loss(batch)


# === Precision ===
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto` means bf16 autocast on CUDA and plain fp32 on CPU."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}; expected auto or one of {sorted(PRECISIONS)}")
    return precision


def autocast_factory(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A context-manager factory for the forward pass at `precision` (auto, bf16, fp32)."""
    dtype = PRECISIONS[resolve_precision(device, precision)]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# === One optimizer step ===
@dataclass
class StepOutput:
    loss: float
    metrics: dict[str, float]  # the objective's components, averaged over micro-batches and ranks
    grad_norm: float
    lr: float
    examples: int  # on this rank


def _grad_norm(parameters: list[nn.Parameter], max_norm: float | None) -> float:
    grads = [p for p in parameters if p.grad is not None]
    if max_norm:
        norm = torch.nn.utils.clip_grad_norm_(grads, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in grads])
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
        norm = norm.full_tensor()
    return float(norm)


def train_step(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[dict[str, Any]],
    lr: float,
    *,
    env: DistEnv | None = None,
    strategy: Strategy | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    grad_clip: float | None = None,
    step: int = 0,
) -> StepOutput:
    """Forward and backward over the micro-batches (gradient sync only on the last), then one AdamW update.

    The loss is the mean of the micro-batch losses, so accumulating A micro-batches of b examples equals one
    batch of A b. A non-finite loss or gradient norm raises NonFiniteLossError before the update, on every rank.
    """
    env = env or DistEnv()
    for group in optimizer.param_groups:
        group["lr"] = lr
    n_micro, totals, keys, examples = len(micro_batches), None, None, 0
    for index, batch in enumerate(micro_batches):
        sync = index == n_micro - 1
        with strategy.no_sync(objective, sync) if strategy else contextlib.nullcontext():
            with autocast():
                loss, metrics = objective(batch)
            (loss / n_micro).backward()
        keys = keys or sorted(metrics)
        values = torch.stack([loss.detach().float()] + [torch.as_tensor(metrics[k]).float() for k in keys])
        totals = values if totals is None else totals + values
        examples += len(batch["frames"])
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = _grad_norm(params, grad_clip)
    means = env.all_reduce_mean(totals / n_micro).tolist()
    loss_value, metric_values = means[0], dict(zip(keys, means[1:]))
    if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"step {step + 1}: the loss is {loss_value} and the gradient norm {grad_norm} (components: "
            f"{ {k: round(v, 6) for k, v in metric_values.items()} }, lr {lr:.3g}); the weights were not updated"
        )
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss_value, metric_values, grad_norm, lr, examples)


# === The plan: step counts derived from the config, the dataset size and the world size ===
@dataclass(frozen=True)
class Plan:
    n_examples: int
    global_batch: int
    device_batch: int
    world_size: int
    accumulation: int
    steps_per_epoch: int
    total_steps: int  # the schedule's length (train.epochs)
    warmup_steps: int
    stop_step: int  # where this invocation stops: total_steps, or train.max_steps when smaller
    peak_lr: float

    @classmethod
    def make(cls, config: PretrainConfig, n_examples: int, world_size: int) -> Plan:
        train, optim = config.train, config.optim
        per_step = train.device_batch * world_size
        if train.global_batch % per_step:
            raise PretrainError(
                f"train.global_batch={train.global_batch} is not a multiple of train.device_batch={train.device_batch}"
                f" x {world_size} processes; change train.device_batch"
            )
        steps_per_epoch = n_examples // train.global_batch
        if steps_per_epoch < 1:
            raise PretrainError(
                f"{config.data.root}: {n_examples} examples are fewer than one global batch of {train.global_batch}"
            )
        total = max(1, round(train.epochs * steps_per_epoch))
        stop = total if train.max_steps is None else min(total, train.max_steps)
        lr = optim.lr if optim.lr is not None else peak_lr(optim.base_lr, train.global_batch)
        return cls(
            n_examples=n_examples,
            global_batch=train.global_batch,
            device_batch=train.device_batch,
            world_size=world_size,
            accumulation=train.global_batch // per_step,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
            stop_step=stop,
            peak_lr=lr,
        )

    def describe(self) -> str:
        return (
            f"{self.n_examples} examples/epoch, global batch {self.global_batch} = {self.world_size} process(es) x "
            f"{self.device_batch} x {self.accumulation} accumulation; {self.steps_per_epoch} steps/epoch, "
            f"{self.total_steps} steps in the schedule ({self.warmup_steps} warm-up), peak LR {self.peak_lr:.3g}; "
            f"this run stops at step {self.stop_step}"
        )


@dataclass
class RunResult:
    run_dir: Path
    step: int
    stopped_by: str  # "done", "max_steps", "time_budget", "signal"
    last_loss: float | None
    checkpoint: Path | None


class _StopSignals:
    """SIGTERM/SIGUSR1 (a SLURM pre-emption notice) ask the loop to checkpoint, export and exit cleanly."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# === The trainer ===
class Trainer:
    """Builds the model, data, optimizer and wrappers from a config; `run()` is the loop."""

    def __init__(self, config: PretrainConfig, env: DistEnv, dataset: Any = None):
        from voltron.models.blocks import set_attention_impl
        from voltron.models.registry import build_model, default_config
        from voltron.pretrain import data as data_module

        validate(config)
        self.env, self.run_dir = env, Path(config.run_dir)
        train = config.train
        torch.manual_seed(train.seed)  # identical initial weights on every rank (FSDP does not broadcast them)
        model_config = default_config(config.model.name, **config.model.config_overrides())
        self.model = set_attention_impl(build_model(model_config), train.attention).to(env.device)
        self.dataset = dataset if dataset is not None else data_module.build_dataset(config, self.model)
        self.check_data(config, model_config)
        self.plan = Plan.make(config, len(self.dataset), env.world_size)
        self.loader = data_module.ResumableLoader(
            self.dataset, config, env.rank, env.world_size, pin_memory=env.device.type == "cuda"
        )
        self.val_loader = self.val_sampler = None
        if config.val.enabled and dataset is None:  # a dataset handed in has no store to hold out a split from
            self._build_val_loader(config)
        self.config = cfg_module.replace(config, optim={"lr": self.plan.peak_lr})  # the resolved config
        self.schedule = LRSchedule(
            config.optim.schedule, self.plan.peak_lr, self.plan.warmup_steps, self.plan.total_steps, config.optim.min_lr
        )
        self.autocast = autocast_factory(env.device, train.precision)
        if env.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for whatever autocast leaves in fp32 (as upstream)
        precision = resolve_precision(env.device, train.precision)
        self.peak_flops = peak_flops(env.device, config.log.peak_tflops, precision)  # None on CPU unless given
        self.flops_per_example = self._count_flops() if self.peak_flops else None

        self.strategy = get_strategy(train.strategy)
        self.module = self.strategy.wrap(Objective(self.model), env, train.find_unused_parameters)
        self.forward = torch.compile(self.module) if train.compile else self.module
        optim = config.optim
        self.optimizer = build_optimizer(
            self.module.named_parameters(),
            self.plan.peak_lr,
            tuple(optim.betas),
            optim.weight_decay,
            optim.eps,
            decay_rule=optim.decay_rule,
        )
        torch.manual_seed(train.seed + env.rank)  # per-rank streams from here on (e.g. R3M's negatives)
        self.checkpoints = ckpt.CheckpointManager(self.run_dir, config.checkpoint.keep_last, config.checkpoint.verify)
        self.state = ckpt.TrainerState(world_size=env.world_size)
        self.last_checkpoint: Path | None = None

    # --- setup helpers --------------------------------------------------------------------------------------
    def check_data(self, config: PretrainConfig, model_config: Any) -> None:
        """Fail before the first step when the store's frame size, caption length or tokenizer do not fit the model."""
        from voltron.datasets.sampling import get_scheme
        from voltron.pretrain import data as data_module

        settings = data_module.store_settings(self.dataset)
        if settings is not None:
            data_module.check_store_matches_model(
                settings,
                model_config,
                config.data.root,
                augment=config.data.options.get("augment"),
                language=get_scheme(self.model.sampling_scheme).has_language,
            )

    def _build_val_loader(self, config: PretrainConfig) -> None:
        from voltron.pretrain import data as data_module

        try:
            val_dataset = data_module.build_val_dataset(config, self.model)
        except FileNotFoundError as err:
            if self.env.is_main:
                print(f"[voltron pretrain] no validation: {err}", flush=True)
            return
        if val_dataset is None:
            if self.env.is_main:
                print(f"[voltron pretrain] {config.data.root} has no {config.val.split!r} examples: no validation")
            return
        self.val_loader, self.val_sampler = data_module.build_val_loader(
            val_dataset, config, self.env.rank, self.env.world_size, pin_memory=self.env.device.type == "cuda"
        )

    def _count_flops(self) -> int:
        """Training FLOPs per example (forward + backward), counted once on two examples of the dataset. With the
        language cache on, the frozen language model's forward is left out: in steady state it does not run."""
        from voltron.pretrain.data import collate

        batch = to_device(collate([self.dataset[i] for i in range(min(2, len(self.dataset)))]), self.env.device)
        total, language = training_flops(self.model, batch, self.autocast)
        if self.model.config.lang_cache_size > 0:
            total -= language
        return total // len(batch["frames"])

    # --- validation -----------------------------------------------------------------------------------------
    def val_due(self, step: int) -> bool:
        """Validation runs at the end of every epoch and every `val.every_steps` optimizer steps."""
        if self.val_loader is None:
            return False
        every = self.config.val.every_steps
        return step % self.plan.steps_per_epoch == 0 or bool(every and step % every == 0)

    @torch.no_grad()
    def run_validation(self) -> dict[str, float]:
        """The objective on the validation split, averaged over its examples on every rank: {"val_loss", "val_*"}.

        Deterministic for given weights: the split's frames and per-example seeds (hence MAE masks) are pinned, and
        any other randomness (R3M's negatives) comes from the torch RNG seeded per validation batch inside a fork,
        so the training RNG streams, and with them exact resume, are untouched. Every rank runs the same number of
        forward passes through the wrapped model (padding batches weigh 0).
        """
        env, sampler = self.env, self.val_sampler
        devices = [env.device] if env.device.type == "cuda" else []
        totals, keys = None, None
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                for batch_id, padding, batch in zip(sampler.ids, sampler.padding, self.val_loader):
                    torch.manual_seed(self.config.train.seed * 1_000_003 + batch_id)
                    batch = to_device(batch, env.device)
                    with self.autocast():
                        loss, metrics = self.module(batch)
                    keys = keys or sorted(metrics)
                    weight = 0.0 if padding else float(len(batch["frames"]))
                    values = [loss.float(), *(torch.as_tensor(metrics[k]).float() for k in keys)]
                    values = torch.stack([v.to(env.device) for v in values] + [torch.ones((), device=env.device)])
                    totals = values * weight if totals is None else totals + values * weight
        finally:
            self.module.train(was_training)
        means = env.all_reduce_mean(totals).tolist()  # sums / world size: the ratios below are unaffected
        count = means[-1]
        return {"val_loss": means[0] / count, **{f"val_{k}": v / count for k, v in zip(keys, means[1:-1])}}

    def resume(self) -> bool:
        """Load the newest good checkpoint, if any; corrupt newer ones are set aside with a warning."""
        env = self.env
        checkpoint = None
        if env.is_main:
            self.checkpoints.clean_partial()
            checkpoint = self.checkpoints.load_latest()
        path = env.broadcast(str(checkpoint.path) if checkpoint else None)
        if path is None:
            return False
        if checkpoint is None:
            checkpoint = self.checkpoints.read(Path(path), hashes=False)
        saved = cfg_module.from_dict(checkpoint.state.config)
        changed = cfg_module.incompatible_changes(saved, self.config)
        if changed:
            details = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise PretrainError(
                f"{self.run_dir}: the config differs from the one its checkpoint {path} was trained with ({details}); "
                "resume with the original settings, or start a new run with another run_dir"
            )
        ckpt.load_full_state(self.module, self.optimizer, checkpoint.weights, checkpoint.optimizer, path)
        self.state = checkpoint.state
        if self.state.n_examples != self.plan.n_examples:
            raise PretrainError(
                f"{path} was trained on {self.state.n_examples} examples per epoch; {self.config.data.root} now gives "
                f"{self.plan.n_examples}, so the data position (epoch {self.state.epoch}, step "
                f"{self.state.step_in_epoch}) cannot be replayed; resume on the original data or start a new run_dir"
            )
        if len(self.state.rng) == env.world_size:
            ckpt.restore_rng(self.state.rng[env.rank], env.device)
        else:
            warnings.warn(
                f"{path} holds RNG states of {len(self.state.rng)} ranks; this run has {env.world_size}: "
                "random streams restart from the seed (data order and MAE masks are unaffected)",
                stacklevel=2,
            )
        self.last_checkpoint = Path(path)
        return True

    def epoch_batches(self, epoch: int, start_step: int) -> Iterator[dict[str, Any]]:
        for batch in self.loader.epoch(epoch, start_step):
            yield to_device(batch, self.env.device)

    # --- checkpoints and export -----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Every rank takes part (FSDP gathers shards); rank 0 writes the directory."""
        env = self.env
        weights = ckpt.full_model_state(self.module)
        optimizer_state = ckpt.full_optimizer_state(self.module, self.optimizer)
        self.state.rng = env.gather(ckpt.capture_rng(env.device))
        self.state.world_size = env.world_size
        path = None
        if env.is_main:
            path = self.checkpoints.save(
                self.state.step, weights, optimizer_state, self.state, self.model.config.to_dict(), self.model.family
            )
        self.last_checkpoint = Path(env.broadcast(str(path) if path else None))
        env.barrier()
        return self.last_checkpoint

    def export(self) -> None:
        """`save_pretrained` into the run directory, so `voltron.load(run_dir)` gives the trained encoder."""
        if self.strategy.sharded:  # gather the shards into a full copy on rank 0
            from voltron.models.checkpoints import load_state
            from voltron.models.registry import build_model

            weights = ckpt.full_model_state(self.module)
            if self.env.is_main:
                model = load_state(build_model(self.model.config), weights, "the trained FSDP model")
                model.save_pretrained(self.run_dir)
        elif self.env.is_main:
            self.model.save_pretrained(self.run_dir)
        self.env.barrier()

    # --- the loop -------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        env, plan, config = self.env, self.plan, self.config
        resumed = self.resume()  # first: a resume with an incompatible config must not overwrite pretrain.yaml
        step = self.state.step
        self.state.config = cfg_module.to_dict(config)
        if env.is_main:
            save_config(config, self.run_dir / cfg_module.CONFIG_FILE)
            print(f"[voltron pretrain] {config.model.name} -> {self.run_dir}: {plan.describe()}", flush=True)
            if resumed:
                print(f"[voltron pretrain] resumed from {self.last_checkpoint} at step {step}", flush=True)
        tracker = Tracker(
            self.run_dir,
            env.is_main,
            resume_step=step,
            tensorboard=config.log.tensorboard,
            wandb=config.log.wandb,
            wandb_project=config.log.wandb_project,
            wandb_entity=config.log.wandb_entity,
            config=self.state.config,
        )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=plan.stop_step, initial=step, unit="step", dynamic_ncols=True,
            disable=not (env.is_main and config.log.progress), desc=f"pretrain {config.model.name}",
            mininterval=0.5 if sys.stderr.isatty() else 60.0,  # batch logs (SLURM) get a line a minute
        )  # fmt: skip
        started, stopped_by, last, batches = time.monotonic(), "done", None, None
        delay = float(os.environ.get(STEP_DELAY_ENV, "0") or 0)
        window = {"examples": 0, "seconds": 0.0, "data": 0.0, "steps": 0}
        budget_s = None if config.train.max_minutes is None else config.train.max_minutes * 60.0
        try:
            with _StopSignals() as signals:
                while step < plan.stop_step:
                    epoch, in_epoch = divmod(step, plan.steps_per_epoch)
                    if batches is None or in_epoch == 0:
                        batches = self.epoch_batches(epoch, in_epoch)
                    tick = time.perf_counter()
                    micro = [next(batches) for _ in range(plan.accumulation)]
                    fetched = time.perf_counter()
                    last = train_step(
                        self.forward, self.optimizer, micro, self.schedule(step), env=env, strategy=self.strategy,
                        autocast=self.autocast, grad_clip=config.optim.grad_clip, step=step,
                    )  # fmt: skip
                    done = time.perf_counter()
                    step += 1
                    self._advance(step, last, done - tick)
                    val = None
                    if self.val_due(step):
                        val = self.run_validation()
                        self.state.val_step, self.state.val_metrics = step, val
                    window = self._log(tracker, bar, step, last, window, fetched - tick, done - tick, val)
                    if delay:
                        time.sleep(delay)
                    over_budget = budget_s is not None and time.monotonic() - started >= budget_s
                    stop = env.any(over_budget or signals.received is not None)
                    if stop:
                        stopped_by = "signal" if signals.received is not None else "time_budget"
                    if step % config.checkpoint.every_steps == 0 or step == plan.stop_step or stop:
                        self.save_checkpoint()
                    if stop:
                        break
            if stopped_by == "done" and plan.stop_step < plan.total_steps:
                stopped_by = "max_steps"
            if self.last_checkpoint is None or self.state.step != step:
                self.save_checkpoint()
            self.export()
        except NonFiniteLossError as err:
            where = self.last_checkpoint or "none yet (the run restarts from scratch)"
            raise NonFiniteLossError(
                f"{err}. Stopped. The last good checkpoint is {where}; rerunning the same command resumes from it "
                "(consider a lower optim.lr, optim.grad_clip, or train.precision=fp32)"
            ) from None
        finally:
            bar.close()
            tracker.close()
        if env.is_main:
            print(f"[voltron pretrain] stopped at step {step} ({stopped_by}); model exported to {self.run_dir}")
        return RunResult(self.run_dir, step, stopped_by, last.loss if last else None, self.last_checkpoint)

    def _advance(self, step: int, out: StepOutput, seconds: float) -> None:
        state = self.state
        state.step = step
        state.epoch, state.step_in_epoch = divmod(step, self.plan.steps_per_epoch)
        state.samples_seen += self.plan.global_batch
        state.n_examples = self.plan.n_examples
        state.train_seconds += seconds
        state.last_metrics = {"loss": out.loss, **out.metrics}

    def _log(
        self,
        tracker: Tracker,
        bar: Any,
        step: int,
        out: StepOutput,
        window: dict,
        data_s: float,
        step_s: float,
        val: dict[str, float] | None = None,
    ):
        window = {
            "examples": window["examples"] + self.plan.global_batch,
            "seconds": window["seconds"] + step_s,
            "data": window["data"] + data_s,
            "steps": window["steps"] + 1,
        }
        bar.update(1)
        postfix = {"loss": f"{out.loss:.4f}", "lr": f"{out.lr:.2e}"}
        if "val_loss" in self.state.val_metrics:
            postfix["val_loss"] = f"{self.state.val_metrics['val_loss']:.4f}"
        bar.set_postfix(postfix, refresh=False)
        if step % self.config.log.every_steps and step != self.plan.stop_step and val is None:
            return window  # a validation step always gets its record
        throughput = window["examples"] / max(window["seconds"], 1e-9)
        record = {
            "step": step,
            "epoch": step / self.plan.steps_per_epoch,
            "loss": out.loss,
            **out.metrics,
            "lr": out.lr,
            "grad_norm": out.grad_norm,
            "samples_per_s": throughput,
            "step_time_s": window["seconds"] / window["steps"],
            "data_time_s": window["data"] / window["steps"],
            **(val or {}),
        }
        if self.flops_per_example and self.peak_flops:
            record["mfu"] = throughput * self.flops_per_example / (self.peak_flops * self.env.world_size)
        tracker.log(record)
        return {"examples": 0, "seconds": 0.0, "data": 0.0, "steps": 0}


def pretrain(config: PretrainConfig, dataset: Any = None) -> RunResult:
    """Run (or resume) the pretraining described by `config`, in this process or as one torchrun rank."""
    env = setup_distributed(config.train.device)
    try:
        return Trainer(config, env, dataset=dataset).run()
    finally:
        env.close()


__all__ = [
    "NonFiniteLossError",
    "Objective",
    "Plan",
    "RunResult",
    "StepOutput",
    "PretrainError",
    "Trainer",
    "pretrain",
    "train_step",
]
