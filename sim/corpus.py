"""The sim-made video-language corpus: scripted-expert clips of 45 MetaWorld tasks in Something-Something-v2 layout.

Layout: DIR/videos/<id>.webm (VP9, 12 fps, 240 px high), DIR/labels/{train,validation}.json (lists of id, label,
template, placeholders), DIR/labels/labels.json (template -> class index) and DIR/corpus.json (generator settings).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from voltron.io import atomic_write_json
from voltron.sim.tasks import CORPUS_TASKS, EVAL_TASKS, get_task, task_names

FPS = 12  # Something-Something-v2's frame rate
FRAME_HEIGHT = 240  # Something-Something-v2 clips are exactly 240 px high
FRAME_WIDTH = 320
# Sim steps per video frame. MetaWorld steps at 80 Hz and experts finish in 0.4-2 s of sim time, so every 2nd step
# played at 12 fps gives 2-5 s clips of 25-60 frames (Something-Something-v2 averages about 45), in slow motion.
FRAME_STRIDE = 2
POST_SUCCESS_STEPS = 16  # keep showing the finished task for a moment (8 frames)
MAX_STEPS = 400  # the slowest experts (push-back, peg-insert-side) need up to about 350 steps
MAX_ATTEMPTS = 5  # fresh placements tried before a clip is given up
VALIDATION_EVERY = 10  # clip indices 1, 11, 21, ... of every task go to labels/validation.json

# Camera variety: the four corner views and the top view (`behindGripper` is left out: the arm often fills it).
# Each clip also nudges the chosen camera's position (up to CAMERA_JITTER_M per axis) and field of view (up to
# CAMERA_JITTER_FOVY degrees).
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview")
CAMERA_JITTER_M = 0.04
CAMERA_JITTER_FOVY = 4.0
MULTISAMPLES = 4  # anti-aliasing on: these frames are kept as pretraining data, worth ~2x the render time
MAX_ACTION_NOISE = 0.15  # each clip draws its expert's Gaussian action noise from [0, MAX_ACTION_NOISE]


@dataclass(frozen=True)
class Caption:
    """A Something-Something-style caption: a template with [placeholders] and the words that fill them."""

    template: str  # e.g. "Putting [something] onto [something]"
    placeholders: tuple[str, ...]  # e.g. ("lid", "box")

    @property
    def label(self) -> str:
        """The filled, lower-cased caption, as in the `label` field: "putting lid onto box"."""
        words = iter(self.placeholders)
        return re.sub(r"\[[^\]]+\]", lambda _: next(words), self.template).lower()

    @property
    def class_name(self) -> str:
        """The template without brackets, the key of labels.json: "Putting something onto something"."""
        return self.template.replace("[", "").replace("]", "")


def _c(template: str, *placeholders: str) -> Caption:
    return Caption(template, placeholders)


# Several phrasings per task. Directions such as "left to right" are avoided because the camera varies per clip.
CAPTIONS: dict[str, tuple[Caption, ...]] = {
    "basketball": (
        _c("Putting [something] into [something]", "ball", "hoop"),
        _c("Dropping [something] into [something]", "ball", "basket"),
        _c("Lifting [something] and dunking it into [something]", "basketball", "hoop"),
    ),
    "box-close": (
        _c("Putting [something] onto [something]", "lid", "box"),
        _c("Covering [something] with [something]", "box", "lid"),
        _c("Closing [something]", "box"),
    ),
    "button-press": (
        _c("Pushing [something] so that it slightly moves", "button"),
        _c("Pressing [something]", "red button"),
        _c("Pushing [something] with [something]", "button", "gripper"),
    ),
    "button-press-topdown-wall": (
        _c("Pressing [something] behind [something]", "button", "wall"),
        _c("Pushing [something] down", "button"),
        _c("Reaching over [something] to press [something]", "wall", "button"),
    ),
    "button-press-wall": (
        _c("Pressing [something] behind [something]", "button", "wall"),
        _c("Pushing [something] with [something]", "button", "gripper"),
        _c("Pushing [something] so that it slightly moves", "button"),
    ),
    "coffee-button": (
        _c("Pressing [something] on [something]", "button", "coffee machine"),
        _c("Pushing [something] so that it slightly moves", "coffee machine button"),
        _c("Touching [part] of [something]", "button", "coffee maker"),
    ),
    "coffee-pull": (
        _c("Pulling [something] out of [something]", "mug", "coffee machine"),
        _c("Pulling [something] away from [something]", "cup", "coffee machine"),
        _c("Moving [something] away from [something]", "mug", "coffee maker"),
    ),
    "coffee-push": (
        _c("Pushing [something] into [something]", "mug", "coffee machine"),
        _c("Pushing [something] towards [something]", "cup", "coffee maker"),
        _c("Moving [something] closer to [something]", "mug", "coffee machine"),
    ),
    "dial-turn": (
        _c("Turning [something]", "dial"),
        _c("Twisting [something]", "knob"),
        _c("Rotating [something]", "dial"),
    ),
    "disassemble": (
        _c("Taking [something] off [something]", "nut", "peg"),
        _c("Lifting [something] off of [something]", "ring", "peg"),
        _c("Pulling [something] out of [something]", "peg", "nut"),
    ),
    "door-close": (
        _c("Closing [something]", "door"),
        _c("Pushing [something] shut", "cabinet door"),
        _c("Swinging [something] closed", "door"),
    ),
    "door-lock": (
        _c("Locking [something]", "door"),
        _c("Turning [something]", "door lock"),
        _c("Pushing [something] down", "lock"),
    ),
    "door-open": (
        _c("Opening [something]", "door"),
        _c("Pulling [something] open", "cabinet door"),
        _c("Pulling [something] by [something]", "door", "handle"),
    ),
    "door-unlock": (
        _c("Unlocking [something]", "door"),
        _c("Turning [something]", "door lock"),
        _c("Twisting [something]", "lock"),
    ),
    "drawer-close": (
        _c("Closing [something]", "drawer"),
        _c("Pushing [something] shut", "drawer"),
        _c("Pushing [something] into [something]", "drawer", "cabinet"),
    ),
    "faucet-close": (
        _c("Turning [something] off", "faucet"),
        _c("Twisting [something]", "faucet handle"),
        _c("Closing [something]", "tap"),
    ),
    "faucet-open": (
        _c("Turning [something] on", "faucet"),
        _c("Twisting [something]", "faucet handle"),
        _c("Opening [something]", "tap"),
    ),
    "hand-insert": (
        _c("Putting [something] into [something]", "gripper", "hole"),
        _c("Moving [something] down into [something]", "hand", "hole"),
        _c("Sticking [something] into [something]", "gripper", "hole"),
    ),
    "handle-press": (
        _c("Pushing [something] down", "handle"),
        _c("Pressing [something]", "handle"),
        _c("Pushing [something] with [something]", "handle", "gripper"),
    ),
    "handle-press-side": (
        _c("Pushing [something] down from the side", "handle"),
        _c("Pressing [something]", "side handle"),
        _c("Moving [something] down", "handle"),
    ),
    "handle-pull": (
        _c("Pulling [something] up", "handle"),
        _c("Lifting [something] up", "handle"),
        _c("Moving [something] up", "handle"),
    ),
    "handle-pull-side": (
        _c("Pulling [something] up from the side", "handle"),
        _c("Lifting [something] up", "side handle"),
        _c("Moving [something] up", "handle"),
    ),
    "lever-pull": (
        _c("Pulling [something] up", "lever"),
        _c("Lifting [something] up", "lever"),
        _c("Moving [part] of [something]", "lever", "machine"),
    ),
    "peg-insert-side": (
        _c("Putting [something] into [something]", "peg", "hole"),
        _c("Plugging [something] into [something]", "peg", "box"),
        _c("Pushing [something] into [something]", "stick", "hole"),
    ),
    "peg-unplug-side": (
        _c("Pulling [something] out of [something]", "peg", "hole"),
        _c("Unplugging [something] from [something]", "peg", "box"),
        _c("Taking [something] out of [something]", "plug", "socket"),
    ),
    "pick-out-of-hole": (
        _c("Taking [something] out of [something]", "puck", "hole"),
        _c("Pulling [something] out of [something]", "puck", "hole"),
        _c("Picking [something] up", "puck"),
    ),
    "pick-place": (
        _c("Picking [something] up", "puck"),
        _c("Lifting [something] up completely without letting it drop down", "puck"),
        _c("Moving [something] up", "block"),
    ),
    "pick-place-wall": (
        _c("Putting [something] behind [something]", "puck", "wall"),
        _c("Lifting [something] over [something]", "puck", "wall"),
        _c("Picking [something] up", "block"),
    ),
    "plate-slide": (
        _c("Pushing [something] into [something]", "plate", "goal"),
        _c("Sliding [something] across [something]", "plate", "table"),
        _c("Pushing [something] so that it slightly moves", "plate"),
    ),
    "plate-slide-back": (
        _c("Pulling [something] out of [something]", "plate", "goal"),
        _c("Pulling [something] across [something]", "plate", "table"),
        _c("Sliding [something] back", "plate"),
    ),
    "plate-slide-back-side": (
        _c("Sliding [something] sideways out of [something]", "plate", "goal"),
        _c("Pushing [something] sideways", "plate"),
        _c("Pulling [something] across [something]", "plate", "table"),
    ),
    "plate-slide-side": (
        _c("Sliding [something] sideways into [something]", "plate", "goal"),
        _c("Pushing [something] sideways", "plate"),
        _c("Pushing [something] across [something]", "plate", "table"),
    ),
    "push": (
        _c("Pushing [something] across [something]", "puck", "table"),
        _c("Moving [something] across a surface without it falling down", "puck"),
        _c("Pushing [something] with [something]", "puck", "gripper"),
    ),
    "push-back": (
        _c("Pulling [something] back", "puck"),
        _c("Dragging [something] across [something]", "puck", "table"),
        _c("Moving [something] closer to [something]", "puck", "robot"),
    ),
    "push-wall": (
        _c("Pushing [something] around [something]", "puck", "wall"),
        _c("Pushing [something] past [something]", "block", "wall"),
        _c("Moving [something] across a surface without it falling down", "puck"),
    ),
    "reach": (
        _c("Moving [something] towards [something]", "gripper", "target"),
        _c("Reaching for [something]", "target"),
        _c("Approaching [something] with [something]", "target", "gripper"),
    ),
    "reach-wall": (
        _c("Reaching over [something]", "wall"),
        _c("Moving [something] over [something]", "gripper", "wall"),
        _c("Approaching [something] with [something]", "target", "gripper"),
    ),
    "shelf-place": (
        _c("Putting [something] onto [something]", "puck", "shelf"),
        _c("Lifting [something] onto [something]", "block", "shelf"),
        _c("Moving [something] onto [something]", "puck", "shelf"),
    ),
    "soccer": (
        _c("Pushing [something] into [something]", "ball", "goal"),
        _c("Kicking [something] into [something]", "ball", "net"),
        _c("Rolling [something] on a flat surface", "ball"),
    ),
    "stick-pull": (
        _c("Pulling [something] with [something]", "bottle", "stick"),
        _c("Pulling [something] with [something]", "thermos", "stick"),
        _c("Using [something] to pull [something]", "stick", "bottle"),
    ),
    "stick-push": (
        _c("Pushing [something] with [something]", "bottle", "stick"),
        _c("Pushing [something] with [something]", "thermos", "stick"),
        _c("Using [something] to push [something]", "stick", "bottle"),
    ),
    "sweep": (
        _c("Pushing [something] off of [something]", "puck", "table"),
        _c("Sweeping [something] off [something]", "puck", "table"),
        _c("Pushing [something] so that it falls off the table", "puck"),
    ),
    "sweep-into": (
        _c("Pushing [something] into [something]", "puck", "hole"),
        _c("Sweeping [something] into [something]", "puck", "hole"),
        _c("Moving [something] into [something]", "block", "hole"),
    ),
    "window-close": (
        _c("Closing [something]", "window"),
        _c("Sliding [something] closed", "window"),
        _c("Pushing [something] shut", "window"),
    ),
    "window-open": (
        _c("Opening [something]", "window"),
        _c("Sliding [something] open", "window"),
        _c("Pulling [something] open", "window"),
    ),
}


@dataclass(frozen=True)
class ClipSpec:
    """Everything that decides one clip; a pure function of (task, clip index, corpus seed)."""

    id: str
    task: str
    clip_index: int
    split: str  # "train" or "validation"
    reset_seed: int
    camera: str
    camera_offset: tuple[float, float, float]  # metres added to the camera position
    fovy_offset: float  # degrees added to the camera's field of view
    action_noise: float
    caption: Caption

    def label_record(self) -> dict[str, Any]:
        """The Something-Something-v2 label entry: id, label, template, placeholders."""
        return {
            "id": self.id,
            "label": self.caption.label,
            "template": self.caption.template,
            "placeholders": list(self.caption.placeholders),
        }


def clip_id(task: str, clip_index: int) -> str:
    """A numeric id like Something-Something's: 1-based task number (in `task_names()` order) then clip index."""
    return str((task_names().index(task) + 1) * 100_000 + clip_index)


def plan_clip(task: str, clip_index: int, seed: int = 0) -> ClipSpec:
    rng = np.random.default_rng([seed, task_names().index(task), clip_index])
    captions = CAPTIONS[task]
    return ClipSpec(
        id=clip_id(task, clip_index),
        task=task,
        clip_index=clip_index,
        split="validation" if clip_index % VALIDATION_EVERY == 1 else "train",
        reset_seed=int(rng.integers(2**31 - 1)),
        camera=str(rng.choice(CAMERAS)),
        camera_offset=tuple(float(v) for v in rng.uniform(-CAMERA_JITTER_M, CAMERA_JITTER_M, size=3)),
        fovy_offset=float(rng.uniform(-CAMERA_JITTER_FOVY, CAMERA_JITTER_FOVY)),
        action_noise=float(rng.uniform(0.0, MAX_ACTION_NOISE)),
        caption=captions[int(rng.integers(len(captions)))],
    )


def resolve_tasks(tasks: int | str | Sequence[str]) -> list[str]:
    """`45` -> the first 45 corpus tasks; "reach,push" or ["reach", "push"] -> those tasks (never eval tasks)."""
    if isinstance(tasks, int) or (isinstance(tasks, str) and tasks.strip().isdigit()):
        count = int(tasks)
        if not 1 <= count <= len(CORPUS_TASKS):
            raise ValueError(f"--tasks {count}: expected a count from 1 to {len(CORPUS_TASKS)} or task names")
        return list(CORPUS_TASKS[:count])
    names = [n for n in (tasks.split(",") if isinstance(tasks, str) else tasks) if n.strip()]
    resolved = [get_task(n).name for n in names]
    held_out = [n for n in resolved if n in EVAL_TASKS]
    if held_out:
        raise ValueError(
            f"{held_out} are evaluation tasks and must stay unseen in pretraining; corpus tasks are {list(CORPUS_TASKS)}"
        )
    return list(dict.fromkeys(resolved))


class ClipRenderer:
    """One MetaWorld env, one renderer and one expert for one task, reused for all of that task's clips."""

    def __init__(self, task: str) -> None:
        from voltron.sim.experts import ScriptedExpert
        from voltron.sim.render import OffscreenRenderer

        self.task = get_task(task)
        self.env = self.task.metaworld_env(horizon=MAX_STEPS)
        model = self.env.model
        self.renderer = OffscreenRenderer(
            model, width=FRAME_WIDTH, height=FRAME_HEIGHT, camera=CAMERAS[0], multisamples=MULTISAMPLES
        )
        self.expert = ScriptedExpert(self.task)
        self._camera_pose = {
            name: (model.camera(name).pos.copy(), float(model.camera(name).fovy[0])) for name in CAMERAS
        }

    def _place_camera(self, name: str, offset: Sequence[float], fovy_offset: float) -> None:
        pos, fovy = self._camera_pose[name]
        camera = self.env.model.camera(name)
        camera.pos[:] = pos + np.asarray(offset)
        camera.fovy[0] = fovy + fovy_offset

    def render_clip(self, spec: ClipSpec) -> list[np.ndarray] | None:
        """The clip's frames (T, 240, 320, 3) for the first successful attempt, or None if every attempt failed."""
        self.expert.action_noise = spec.action_noise
        self._place_camera(spec.camera, spec.camera_offset, spec.fovy_offset)
        try:
            for attempt in range(MAX_ATTEMPTS):
                frames = self._attempt(spec, attempt)
                if frames is not None:
                    return frames
            return None
        finally:
            self._place_camera(spec.camera, (0.0, 0.0, 0.0), 0.0)

    def _attempt(self, spec: ClipSpec, attempt: int) -> list[np.ndarray] | None:
        env = self.env
        env.seed(spec.reset_seed + 7919 * attempt)
        self.expert.reset(seed=[spec.reset_seed, attempt])
        state, _ = env.reset()
        frames = [self.renderer.render(env.data, spec.camera)]
        success_step = None
        for step in range(1, MAX_STEPS + 1):
            state, _, _, _, info = env.step(self.expert(state))
            if step % FRAME_STRIDE == 0:
                frames.append(self.renderer.render(env.data, spec.camera))
            if info["success"] and success_step is None:
                success_step = step
            if success_step is not None and step - success_step >= POST_SUCCESS_STEPS:
                return frames
        return None

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


@dataclass
class CorpusReport:
    """The outcome of a `make_corpus` run."""

    out: Path
    planned: int = 0
    rendered: int = 0
    skipped_existing: int = 0
    failed: list[str] | None = None
    seconds: float = 0.0
    frames_rendered: int = 0


def _settings(tasks: list[str], clips_per_task: int, seed: int) -> dict[str, Any]:
    return {
        "generator": "voltron sim make-corpus",
        "seed": seed,
        "fps": FPS,
        "frame_size": [FRAME_HEIGHT, FRAME_WIDTH],
        "frame_stride": FRAME_STRIDE,
        "multisamples": MULTISAMPLES,
        "cameras": list(CAMERAS),
        "tasks": tasks,
        "clips_per_task": clips_per_task,
    }


def make_corpus(
    out: str | os.PathLike,
    *,
    tasks: int | str | Sequence[str] = len(CORPUS_TASKS),
    clips_per_task: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> CorpusReport:
    """Render the corpus into `out`; clips whose video already exists are skipped, so a rerun resumes.

    Labels cover every planned clip whose video exists (captions are deterministic, so skipped clips get the same
    label they were made with). `corpus.json` records the settings; resuming with a different seed is refused.
    """
    from voltron.datasets.video import write_video

    started = time.perf_counter()
    out = Path(out)
    names = resolve_tasks(tasks)
    if clips_per_task < 1:
        raise ValueError(f"clips_per_task={clips_per_task}: expected at least 1")
    manifest = out / "corpus.json"
    settings = _settings(names, clips_per_task, seed)
    if manifest.exists():
        previous = json.loads(manifest.read_text())
        if previous.get("seed") != seed or previous.get("frame_size") != settings["frame_size"]:
            raise ValueError(
                f"{manifest}: this directory was made with seed={previous.get('seed')} and frame size "
                f"{previous.get('frame_size')}; resuming with seed={seed} would mix corpora. Use a new --out."
            )
        settings["tasks"] = list(dict.fromkeys(previous.get("tasks", []) + names))
        settings["clips_per_task"] = max(clips_per_task, int(previous.get("clips_per_task", 0)))
    atomic_write_json(manifest, settings)

    videos = out / "videos"
    plan = [plan_clip(task, index, seed) for task in names for index in range(clips_per_task)]
    report = CorpusReport(out=out, planned=len(plan), failed=[])
    todo = [spec for spec in plan if not (videos / f"{spec.id}.webm").exists()]
    report.skipped_existing = len(plan) - len(todo)

    renderer: ClipRenderer | None = None
    bar = tqdm(total=len(plan), initial=report.skipped_existing, desc="make-corpus", unit="clip", disable=not progress)
    try:
        for spec in todo:
            if renderer is None or renderer.task.name != spec.task:
                if renderer is not None:
                    renderer.close()
                renderer = ClipRenderer(spec.task)
            bar.set_postfix(task=spec.task)
            frames = renderer.render_clip(spec)
            if frames is None:
                report.failed.append(spec.id)
            else:
                write_video(videos / f"{spec.id}.webm", frames, FPS)
                report.rendered += 1
                report.frames_rendered += len(frames)
            bar.update(1)
    finally:
        bar.close()
        if renderer is not None:
            renderer.close()

    _write_labels(out, settings)
    report.seconds = time.perf_counter() - started
    return report


def _write_labels(out: Path, settings: dict[str, Any]) -> None:
    """labels/train.json, labels/validation.json and labels/labels.json for every clip whose video exists."""
    records: dict[str, list[dict]] = {"train": [], "validation": []}
    templates: set[str] = set()
    for task in settings["tasks"]:
        for index in range(settings["clips_per_task"]):
            spec = plan_clip(task, index, settings["seed"])
            if (out / "videos" / f"{spec.id}.webm").exists():
                records[spec.split].append(spec.label_record())
                templates.add(spec.caption.class_name)
    atomic_write_json(out / "labels" / "train.json", records["train"])
    atomic_write_json(out / "labels" / "validation.json", records["validation"])
    # Something-Something's labels.json maps each bracket-free template to a class index string.
    atomic_write_json(out / "labels" / "labels.json", {name: str(i) for i, name in enumerate(sorted(templates))})


def main(args) -> int:
    """Handler for `voltron sim make-corpus`."""
    from voltron.sim.tasks import UnknownTaskError

    try:
        report = make_corpus(
            args.out,
            tasks=args.tasks,
            clips_per_task=args.clips_per_task,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except (UnknownTaskError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    per_clip = report.seconds / report.rendered if report.rendered else 0.0
    print(
        f"{report.out}: {report.rendered} clips rendered, {report.skipped_existing} already present, "
        f"{len(report.failed)} failed, in {report.seconds:.1f} s ({per_clip:.2f} s per rendered clip, "
        f"{report.frames_rendered} frames)"
    )
    if report.failed:
        print(f"warning: the expert failed every attempt for clips {report.failed}", file=sys.stderr)
    return 0
