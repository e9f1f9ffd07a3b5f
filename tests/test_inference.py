"""Fast inference paths: every installed backend runs, keeps the encoder's contract and a trained policy's actions
within the stated tolerance, and `auto` never picks bf16 where the hardware has no bf16."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import voltron
from voltron.datasets.demos import DemoFile
from voltron.models.inference import (
    ACTION_TOL,
    BACKEND_PRECISIONS,
    MEASURED_ACTION_DEV,
    TOKEN_REL_TOL,
    InferenceSpec,
    accelerate,
    action_deviation,
    auto_candidates,
    backend_unavailable,
    cpu_bf16_native,
    resolve_choices,
)

FAST_PATHS = [
    pytest.param(InferenceSpec(precision, backend), id=f"{precision}-{backend}", marks=_marks)
    for backend, precisions in BACKEND_PRECISIONS.items()
    for precision in precisions
    if (precision, backend) != ("fp32", "eager")
    # torch.compile costs ~40 s per graph on 2 cores: its runs are slow tests
    for _marks in [[pytest.mark.slow] if backend in ("compile", "onnxruntime") else []]
]


def skip_unless_installed(spec: InferenceSpec) -> None:
    reason = backend_unavailable(spec.backend, "cpu")
    if reason:
        pytest.skip(f"{spec}: {reason}")


@pytest.fixture(scope="module")
def encoder():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model, _ = voltron.load("v-cond-tiny", pretrained=False, image_size=64)
    return model


@pytest.fixture(scope="module")
def policy_and_obs(tiny_policy, sim_demos):
    """The tiny V-Cond policy trained on three real drawer-open demos at 64 px (conftest.py), and a batch of its
    demo frames."""
    from voltron.policy.model import load_policy

    policy = load_policy(tiny_policy[0])
    with DemoFile(sim_demos, split="train") as demo_file:
        episode = demo_file[0]
    frames = episode.images[sorted(episode.images)[0]][::4]  # every 4th frame of a whole episode
    obs = {
        "images": {policy.camera: frames},
        "proprio": episode.proprio[::4],
        "language": [episode.language] * len(frames),
    }
    return policy, obs


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_auto_never_picks_bf16_without_native_bf16(encoder):
    assert all(spec.precision != "bf16" for spec in auto_candidates("cpu", bf16=False))
    for bf16 in (False, True):  # a path measured past ACTION_TOL on a V-Cond-small policy is never a default
        for spec in auto_candidates("cpu", bf16=bf16):
            assert MEASURED_ACTION_DEV.get(str(spec), 0.0) <= ACTION_TOL and spec.backend != "compile", spec
    assert auto_candidates("cpu", bf16=False)[-1] == InferenceSpec()  # fp32 eager always closes the list
    chosen = accelerate(encoder, "auto", "auto")
    if not cpu_bf16_native():
        assert chosen.spec.precision != "bf16", chosen.report
        assert all(spec.precision != "bf16" for spec in resolve_choices("auto", "eager", "cpu"))
    assert chosen.report["token_rel_err"] <= TOKEN_REL_TOL[chosen.spec.precision]


def test_choices_name_the_bad_value():
    assert resolve_choices("int8", "onnxruntime") == [InferenceSpec("int8", "onnxruntime")]
    with pytest.raises(ValueError, match="the compile backend has no int8 path"):
        resolve_choices("int8", "compile")
    with pytest.raises(ValueError, match="precision='fp16'"):
        resolve_choices("fp16", "eager")
    with pytest.raises(ValueError, match="backend='tensorrt'"):
        resolve_choices("auto", "tensorrt")


@pytest.mark.parametrize("spec", FAST_PATHS)
def test_each_installed_backend_keeps_the_encoder_contract(encoder, spec):
    skip_unless_installed(spec)
    fast = accelerate(encoder, spec.precision, spec.backend)
    assert fast.spec == spec and fast.report["token_rel_err"] <= TOKEN_REL_TOL[spec.precision], fast.report
    images = torch.randn(3, *encoder.image_shape(), generator=torch.Generator().manual_seed(1))
    captions = ["open the drawer", "press the button", "hammer the nail"]
    with torch.inference_mode():
        for lang, mode in ((captions, "multimodal"), (None, "visual"), (None, "multimodal")):
            reference, tokens = encoder(images, lang, mode=mode), fast(images, lang, mode=mode)
            assert tokens.shape == reference.shape and tokens.dtype == torch.float32
            error = float((tokens - reference).norm() / reference.norm())
            assert error <= TOKEN_REL_TOL[spec.precision], (mode, error)
    assert fast.embed_dim == encoder.embed_dim and fast.model is encoder  # the encoder's attributes stay reachable


@pytest.mark.parametrize("spec", FAST_PATHS)
@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
def test_policy_actions_stay_within_tolerance(policy_and_obs, spec):
    skip_unless_installed(spec)
    policy, obs = policy_and_obs
    try:
        result = action_deviation(policy, obs, spec.precision, spec.backend)
    finally:
        policy.use_inference("fp32", "eager")
    assert result["path"] == str(spec)
    assert result["action_max_dev"] <= ACTION_TOL, result
    assert policy.inference == "fp32/eager"


def test_voltron_load_returns_the_fast_path_and_the_reference_by_default():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, _ = voltron.load("v-cond-tiny", pretrained=False, image_size=64)
        fast, preprocess = voltron.load("v-cond-tiny", pretrained=False, image_size=64, precision="int8")
    assert isinstance(plain, torch.nn.Module) and str(fast) == "int8/eager"
    assert preprocess(np.zeros((64, 64, 3), np.uint8)).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="frozen encoder"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            voltron.load("v-cond-tiny", pretrained=False, image_size=64, freeze=False, precision="int8")


@pytest.mark.parametrize("model_id", ["r-mvp-tiny", "v-dual-tiny", "r-r3m-vit-tiny"])
def test_int8_serves_other_families(model_id):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        model, _ = voltron.load(model_id, pretrained=False, image_size=32)
    fast = accelerate(model, "int8", "eager")
    images = torch.randn(2, *model.image_shape())
    lang = ["open the drawer"] * 2 if model.uses_language else None
    with torch.inference_mode():
        reference, tokens = model(images, lang), fast(images, lang)
    assert tokens.shape == reference.shape
    assert float((tokens - reference).norm() / reference.norm()) <= TOKEN_REL_TOL["int8"]


def load_feed_bridge():
    """tests/test_ros_server.py's in-process bridge: real codecs, buffer, safety and server loop, no ROS peer."""
    import importlib.util

    path = Path(__file__).with_name("test_ros_server.py")
    spec = importlib.util.spec_from_file_location("voltron_test_ros_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ros_server_logs_the_inference_path_that_served(encoder, tmp_path):
    from voltron.ros.server import ServeOptions, serve

    feed = load_feed_bridge()

    class FastEncoderPolicy(feed.ScriptedPolicy):
        """A 2-joint policy on an int8 encoder: the mean token, squashed into a tiny action on every joint."""

        def __init__(self, encoder):
            super().__init__()
            self.fast_encoder = accelerate(encoder, "int8", "eager")

        @property
        def inference(self) -> str:
            return str(self.fast_encoder.spec)

        def select_action(self, obs: dict) -> np.ndarray:
            image = self.fast_encoder.preprocess(obs["images"]["front"])[None]  # (1, 3, S, S)
            with torch.inference_mode():
                tokens = self.fast_encoder(image, [obs["language"]])
            return np.full(2, 1e-3 * float(torch.tanh(tokens.mean())))

    log = tmp_path / "serve.jsonl"
    summary = serve(FastEncoderPolicy(encoder), feed.FeedBridge(feed.config()), ServeOptions(max_steps=3, log_path=log))
    assert summary.steps == 3 and summary.inference == "int8/eager"
    _, events = feed.records(log)
    assert [(e["event"], e["inference"]) for e in events] == [("start", "int8/eager"), ("stop", "int8/eager")]
