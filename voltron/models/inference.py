"""Fast inference paths for a frozen encoder: bf16 autocast, int8 dynamic quantisation, torch.compile, ONNX Runtime.

One choice, `precision` x `backend`, wraps an encoder in an `InferenceEncoder` with the encoder's own forward
contract, `(images, lang=None, mode) -> (B, N, D)` tokens:

| backend       | precisions         | what runs                                                                  |
|---------------|--------------------|----------------------------------------------------------------------------|
| `eager`       | fp32, bf16, int8   | the module; bf16 under autocast; int8 through torch.ao `quantize_dynamic`   |
| `compile`     | fp32, bf16         | `torch.compile` (inductor, weights frozen into the graph)                  |
| `onnxruntime` | fp32, int8         | a `torch.onnx` export run by ONNX Runtime; int8 through ORT's dynamic quant |

What is accelerated is the vision trunk (patch embedding, transformer blocks, final norm). The frozen language model
stays fp32 eager outside the graph and keeps its cache: int8 ruins it (v-cond-tiny's tokens move by ~40% with MiniLM
quantised, ~0.2% with the trunk alone), and a policy sees one instruction per episode, so its cost is paid once.

Accuracy is part of the contract. Every path is built with a check: fp32 eager and the path encode the same
seeded probe images, and the token error (max-abs and relative Frobenius) is kept in `report`. A path whose relative
token error exceeds `TOKEN_REL_TOL[precision]` warns when asked for by name and is skipped by `auto`.
`ACTION_TOL` is the most a fast path may move a BC policy's actions (in the policy's [-1, 1] action units) on
demonstration frames; tests/test_inference.py and bench/encoder.py measure it.

`auto` picks, in the order `auto_candidates` gives for the detected hardware, the first path that is installed and
passes the token check. bf16 is a candidate only where the hardware computes in bf16 natively (AMX or AVX512-bf16
CPUs, CUDA devices that report bf16 support): elsewhere autocast emulates it. A path whose measured action deviation
(MEASURED_ACTION_DEV) exceeds ACTION_TOL is not a candidate: today int8 and bf16, which moved a V-Cond-small BC
policy's actions by 0.05-0.19 although its tokens moved only 0.3-0.5%. torch.compile is never a candidate: it costs
minutes of compilation at start-up on a small robot computer.

Measured on a 2-core AVX2 CPU (bench/encoder.py, V-Cond small, 224 px, against fp32 eager SDPA, side by side):
int8/onnxruntime 1.77x images/s at batch 32 and 1.94x at batch 1; int8/eager 1.36x and 1.62x; fp32/onnxruntime
0.99x and 1.69x with tokens equal to 5e-7. So `auto` gives fp32/onnxruntime there: the batch-1 latency of the
control loop at no cost in accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from voltron.errors import UserError
from voltron.models.inference_options import AUTO, BACKEND_PRECISIONS, BACKENDS, PRECISIONS

# Relative Frobenius error of the encoder tokens against fp32 eager on the probe, per precision.
TOKEN_REL_TOL = {"fp32": 1e-3, "bf16": 3e-2, "int8": 3e-2}
# Max deviation of a BC policy's actions from fp32 eager, in the policy's [-1, 1] action units (Tanh output).
ACTION_TOL = 0.05
# Measured max action deviation from fp32 eager of a V-Cond-small BC policy (random-init encoder, 300 steps on 3
# drawer-open demos at 224 px) on ~50 of its demo frames (bench/encoder.py --policy). A path over ACTION_TOL is
# offered by name only, never by `auto`; a path not listed has not been measured over it.
MEASURED_ACTION_DEV = {"fp32/onnxruntime": 2.3e-5, "int8/eager": 0.054, "int8/onnxruntime": 0.103, "bf16/eager": 0.193}
PROBE_BATCH = 1  # the control loop's batch: a compiled graph is specialised to it once, at build time
PROBE_SEED = 0


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """One inference path: a precision on a backend, e.g. `int8/onnxruntime`."""

    precision: str = "fp32"
    backend: str = "eager"

    def __str__(self) -> str:
        return f"{self.precision}/{self.backend}"

    @property
    def is_reference(self) -> bool:
        return self.precision == "fp32" and self.backend == "eager"

    def validate(self) -> InferenceSpec:
        if self.precision not in PRECISIONS:
            raise UserError(key="precision", value=self.precision, expected=f"one of {(AUTO, *PRECISIONS)}")
        if self.backend not in BACKENDS:
            raise UserError(key="backend", value=self.backend, expected=f"one of {(AUTO, *BACKENDS)}")
        if self.precision not in BACKEND_PRECISIONS[self.backend]:
            raise UserError(
                f"the {self.backend} backend has no {self.precision} path",
                key="precision",
                value=self.precision,
                expected=f"one of {BACKEND_PRECISIONS[self.backend]} with backend={self.backend!r}",
            )
        return self


REFERENCE = InferenceSpec()


# === What this machine can do ===
@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX tiles or AVX512-bf16), where bf16 autocast pays off."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None:
            with contextlib.suppress(Exception):
                if check():
                    return True
    try:  # private torch probes may go away: the kernel's flags say the same
        with open("/proc/cpuinfo") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_native(device: str | torch.device) -> bool:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_native()


def backend_unavailable(backend: str, device: str | torch.device = "cpu") -> str | None:
    """Why `backend` cannot run on `device` here, or None when it can."""
    device = torch.device(device)
    if backend == "onnxruntime":
        if device.type != "cpu":
            return "the onnxruntime backend runs on CPU only (pip install onnxruntime)"
        for module in ("onnxruntime", "onnx", "onnxscript"):
            try:
                __import__(module)
            except ImportError:
                return f"{module} is not installed: pip install 'voltron[fast]'"
    return None


def precision_unavailable(precision: str, device: str | torch.device = "cpu") -> str | None:
    device = torch.device(device)
    if precision == "int8" and device.type != "cpu":
        return "int8 dynamic quantisation runs on CPU only"
    if precision == "bf16" and device.type == "cuda" and not bf16_native(device):
        return "this GPU has no bf16 support"
    return None


def auto_candidates(device: str | torch.device = "cpu", bf16: bool | None = None) -> list[InferenceSpec]:
    """The paths `auto` tries, fastest first, for a device (and whether it computes bf16 natively; detected when
    None). Never bf16 without native bf16; never compile on CPU (start-up cost); always ends in fp32 eager."""
    device = torch.device(device)
    bf16 = bf16_native(device) if bf16 is None else bf16
    order = [InferenceSpec("bf16", "eager")] if bf16 else []
    if device.type == "cpu":  # int8 and ONNX Runtime are CPU paths
        order += [InferenceSpec("int8", "onnxruntime"), InferenceSpec("fp32", "onnxruntime"), InferenceSpec("int8")]
    accurate = [spec for spec in order if MEASURED_ACTION_DEV.get(str(spec), ACTION_TOL) <= ACTION_TOL]
    return [*accurate, REFERENCE]


def resolve_choices(
    precision: str = "fp32", backend: str = "eager", device: str | torch.device = "cpu"
) -> list[InferenceSpec]:
    """The specs a (precision, backend) request stands for, in the order to try them: one for a named pair;
    `auto` in either place expands to the `auto_candidates` that fit the other."""
    if precision != AUTO and backend != AUTO:
        return [InferenceSpec(precision, backend).validate()]
    if precision != AUTO and precision not in PRECISIONS:
        raise UserError(key="precision", value=precision, expected=f"one of {(AUTO, *PRECISIONS)}")
    if backend != AUTO and backend not in BACKENDS:
        raise UserError(key="backend", value=backend, expected=f"one of {(AUTO, *BACKENDS)}")
    candidates = [
        spec
        for spec in auto_candidates(device)
        if precision in (AUTO, spec.precision) and backend in (AUTO, spec.backend)
    ]
    if precision != AUTO and backend == AUTO and not candidates:
        candidates = [InferenceSpec(precision, "eager").validate()]  # e.g. bf16 asked for by name on an AVX2 CPU
    if precision == AUTO and backend != AUTO and not candidates:
        candidates = [InferenceSpec(BACKEND_PRECISIONS[backend][0], backend)]
    return candidates


# === The trunk: the part of a forward pass that a graph compiler sees ===
class _GivenHiddenStates(nn.Module):
    """Stands in for the frozen language model inside the trunk: the trunk's language input already holds the
    language model's hidden states (B, L, H), computed (and cached) outside any graph."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return hidden


class Trunk(nn.Module):
    """(frames (B, F, 3, S, S), language hidden states (B, L, H), language mask (B, L)) -> the encoder's token
    sequence, tensors only: what bf16, int8, torch.compile and the ONNX export act on.

    It shares the encoder's parameters: a shallow copy of the module whose language model is `_GivenHiddenStates`.
    Encoders without language (R-MVP, R3M) take only frames and return their forward's output directly.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        body = copy.copy(model)
        body._modules = dict(model._modules)  # share every submodule, but swap the language model in this copy only
        if "lm" in body._modules:
            body._modules["lm"] = _GivenHiddenStates()
        self.body = body
        self.takes_language = takes_language(model)

    def forward(
        self, frames: torch.Tensor, hidden: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.takes_language:
            return self.body.encode(frames, hidden, mask)  # (B, F*N + L, D)
        return self.body(frames if self.body.n_frames > 1 else frames[:, 0], None, mode="visual")


def takes_language(model: nn.Module) -> bool:
    """Whether the encoder's forward feeds language through `encode` (the masked-autoencoder V-* families)."""
    from voltron.models.mae import MaskedAutoencoder

    return isinstance(model, MaskedAutoencoder) and bool(model.uses_language)


# === Executors: (frames, hidden, mask) -> tokens, one per backend ===
def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Linear layers that stay fp32 under int8: the projection of the language model's hidden states, whose outlier
# channels (BERT-style) make per-tensor activation scales coarse for everything else (4.8% token error with it
# quantised, 0.1% without, on v-cond-tiny).
FP32_LINEARS = ("lang2encoder",)


def _eager(trunk: Trunk, spec: InferenceSpec, device: torch.device) -> Callable:
    if spec.precision == "int8":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        linears = {
            name: per_channel_dynamic_qconfig
            for name, module in trunk.named_modules()
            if isinstance(module, nn.Linear) and not name.endswith(FP32_LINEARS)
        }
        with warnings.catch_warnings():  # torch.ao.quantization's deprecation notice, on every call
            warnings.simplefilter("ignore")
            trunk = quantize_dynamic(copy.deepcopy(trunk), linears, dtype=torch.qint8)

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with _autocast(device, spec.precision):
            return trunk(*inputs).float()

    return run


def _compiled(trunk: Trunk, spec: InferenceSpec, device: torch.device) -> Callable:
    # freezing: weights become graph constants, so inductor folds and prepacks them (CPU GEMMs through oneDNN)
    compiled = torch.compile(trunk, backend="inductor", dynamic=False, options={"freezing": True})

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with _autocast(device, spec.precision):
            return compiled(*inputs).float()

    return run


def _onnxruntime(trunk: Trunk, spec: InferenceSpec, example: tuple[torch.Tensor, ...]) -> Callable:
    import onnxruntime as ort

    names = ["frames", "hidden", "mask"][: len(example)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory(prefix="voltron-onnx-") as tmp:
        path = Path(tmp) / "trunk.onnx"
        with warnings.catch_warnings(), contextlib.redirect_stdout(open(os.devnull, "w")):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                trunk.eval(),
                example,
                str(path),
                dynamo=True,
                input_names=names,
                output_names=["tokens"],
                dynamic_shapes=tuple({0: batch} for _ in example),
                verbose=False,
            )
        if spec.precision == "int8":
            path = _quantize_onnx(path, Path(tmp) / "trunk-int8.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "ACTIVE":  # same reason as voltron's OMP setting
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: value.detach().cpu().contiguous().numpy() for name, value in zip(names, inputs)}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def _quantize_onnx(source: Path, target: Path) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of the trunk's weight MatMuls, with FP32_LINEARS' counterpart (the
    MatMuls that read the language hidden states input) left in fp32."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    keep_fp32 = [node.name for node in graph.node if node.op_type in ("MatMul", "Gemm") and "hidden" in node.input]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing suggestion on the root logger
    try:
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],  # Linear layers; the patch-embedding conv stays fp32
            nodes_to_exclude=keep_fp32,
            per_channel=True,
            # 7-bit weights: AVX2 without VNNI multiplies u8 x s8 pairs into int16 (vpmaddubsw), which saturates
            reduce_range=True,
            extra_options={"MatMulConstBOnly": True},  # weights only: activation x activation stays fp32
        )
    finally:
        root.setLevel(level)
    return target


# === The wrapped encoder ===
class InferenceEncoder:
    """An encoder run through one inference path, with the encoder's forward contract.

    `encoder(images, lang=None, mode="multimodal"|"visual") -> (B, N, D)` float32 tokens, as `VoltronModel.forward`
    (and `forward_with_mask`, as the module's).
    Attributes it does not define (config, embed_dim, preprocess, lm, ...) are the wrapped encoder's; `model` is the
    fp32 module itself. `spec` names the path and `report` holds its build time and the probe's token error.
    """

    def __init__(self, model: nn.Module, spec: InferenceSpec, run: Callable, trunk: Trunk | None):
        self.model, self.spec, self._run, self._trunk = model, spec, run, trunk
        self.report: dict[str, Any] = {"path": str(spec)}

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (copy, unpickling): avoid recursing into ourselves
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        return f"InferenceEncoder({self.model.family}, {self.spec})"

    def __str__(self) -> str:
        return str(self.spec)

    def __call__(self, images: torch.Tensor, lang: list[str] | None = None, mode: str = "multimodal") -> torch.Tensor:
        return self.forward_with_mask(images, lang, mode)[0]

    def forward_with_mask(
        self, images: torch.Tensor, lang: list[str] | None = None, mode: str = "multimodal"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens and their key mask, as `VoltronModel.forward_with_mask` gives them."""
        model = self.model
        if self._trunk is None:  # the reference path: the module's own forward
            return model.forward_with_mask(images, lang, mode=mode)
        model.check_mode(mode)
        frames = model.check_images(images)  # (B, F, 3, S, S)
        lang = model.check_lang(lang, frames.shape[0])
        if not self._trunk.takes_language:
            tokens = self._run(frames)
            return tokens, torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        with torch.no_grad():
            ids, mask = model.language_inputs(lang, frames.shape[0], frames.device)
            hidden = model.lm(ids, mask)  # (B, L, H), fp32 and cached
        x = self._run(frames, hidden, mask).to(frames.device)  # (B, F*N + L, D)
        return model.output_tokens(x, mask, mode)

    forward = __call__


def probe_inputs(
    model: nn.Module, batch: int = PROBE_BATCH, seed: int = PROBE_SEED
) -> tuple[torch.Tensor, list | None]:
    """Seeded preprocessed images (uniform pixels, normalised as the model expects) and a caption per image."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, *model.image_shape(), generator=generator)
    mean = torch.tensor(model.config.mean).view(3, 1, 1)
    std = torch.tensor(model.config.std).view(3, 1, 1)
    images = ((pixels - mean) / std).to(model.device)
    return images, (["open the drawer"] * batch if model.uses_language else None)


def token_error(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Max-abs and relative (Frobenius) error of `candidate` tokens against `reference` tokens."""
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    diff = candidate - reference
    return {
        "token_max_abs_err": float(diff.abs().max()),
        "token_rel_err": float(diff.norm() / reference.norm().clamp(min=1e-12)),
    }


def build(model: nn.Module, spec: InferenceSpec, check: bool = True) -> InferenceEncoder:
    """`model` (a frozen encoder, eval mode) through `spec`; with `check`, the probe's token error is measured."""
    spec.validate()
    device = model.device
    for reason in (backend_unavailable(spec.backend, device), precision_unavailable(spec.precision, device)):
        if reason:
            raise RuntimeError(f"inference path {spec}: {reason}")
    start = time.perf_counter()
    trunk = None if spec.is_reference else Trunk(model).eval()
    images, lang = probe_inputs(model)
    if trunk is None:
        run = None
    elif spec.backend == "eager":
        run = _eager(trunk, spec, device)
    elif spec.backend == "compile":
        run = _compiled(trunk, spec, device)
    else:
        with torch.no_grad():
            frames = model.check_images(images)
            example = (frames,)
            if trunk.takes_language:
                ids, mask = model.language_inputs(lang, frames.shape[0], device)
                example = (frames, model.lm(ids, mask), mask)
            # export at batch 2: torch.export specialises a dimension of size 1, and the batch must stay dynamic
            example = tuple(torch.cat([t, t]) for t in example)
        run = _onnxruntime(trunk, spec, example)
    encoder = InferenceEncoder(model, spec, run, trunk)
    if check:
        with torch.inference_mode():
            reference = model(images, lang)
            candidate = encoder(images, lang)  # also compiles a compiled path for the probe's batch
        encoder.report.update(token_error(reference, candidate))
    encoder.report["build_s"] = round(time.perf_counter() - start, 2)
    return encoder


def within_tolerance(encoder: InferenceEncoder) -> bool:
    error = encoder.report.get("token_rel_err")
    return error is not None and error <= TOKEN_REL_TOL[encoder.spec.precision]


def accelerate(
    model: nn.Module, precision: str = "fp32", backend: str = "eager", check: bool = True
) -> InferenceEncoder:
    """Wrap a frozen encoder in the requested inference path; `auto` in either place picks (see the module doc).

    A path named explicitly is built even when its probe error exceeds its tolerance (with a warning); `auto`
    skips such paths, and paths whose packages are missing, and falls back to fp32 eager.
    """
    if any(p.requires_grad for p in model.parameters()) or model.training:
        raise ValueError("fast inference paths need a frozen encoder in eval mode (voltron.load(..., freeze=True))")
    choices = resolve_choices(precision, backend, model.device)
    if len(choices) == 1 and AUTO not in (precision, backend):
        encoder = build(model, choices[0], check=check)
        if check and not within_tolerance(encoder):
            warnings.warn(
                f"inference path {encoder.spec}: relative token error {encoder.report['token_rel_err']:.3g} exceeds "
                f"its tolerance {TOKEN_REL_TOL[encoder.spec.precision]:g}",
                stacklevel=2,
            )
        return encoder
    skipped: list[str] = []
    for spec in choices:
        reason = backend_unavailable(spec.backend, model.device) or precision_unavailable(spec.precision, model.device)
        if reason:
            skipped.append(f"{spec}: {reason}")
            continue
        try:
            encoder = build(model, spec, check=True)
        except Exception as err:  # a backend that fails on this model or machine is skipped, and says why
            skipped.append(f"{spec}: {type(err).__name__}: {err}")
            continue
        if within_tolerance(encoder) or spec.is_reference:
            encoder.report["skipped"] = skipped
            return encoder
        skipped.append(f"{spec}: token error {encoder.report['token_rel_err']:.3g} over tolerance")
    encoder = build(model, REFERENCE)
    encoder.report["skipped"] = skipped
    return encoder


def action_deviation(policy: Any, obs: dict[str, Any], precision: str, backend: str) -> dict[str, Any]:
    """How far a BC policy's actions move under an inference path, against fp32 eager on the same observations.

    `policy`: a `voltron.policy.BCPolicy` (anything with use_inference, reset, select_action and action_stats);
    `obs`: a batch of observations, as `select_action` takes them. Returns the path that served, the max and mean
    absolute action deviation in the policy's [-1, 1] action units (`ACTION_TOL` bounds the max), whether it is
    within `ACTION_TOL`, and the encoder's probe report. The policy is left on the path asked for. Action
    dimensions that were constant in the demonstrations are left out: the policy always outputs their constant,
    and [-1, 1] units would blow its float rounding up a million times.
    """
    stats = policy.action_stats
    varying = torch.as_tensor(stats.max, dtype=torch.float64) - torch.as_tensor(stats.min, dtype=torch.float64) > 1e-6

    def act() -> torch.Tensor:
        policy.reset()
        actions = torch.as_tensor(policy.select_action(obs), dtype=torch.float64)
        policy.reset()
        return stats.to_unit_range(actions)[..., varying]

    policy.use_inference("fp32", "eager")
    reference = act()
    path = policy.use_inference(precision, backend)
    deviation = (act() - reference).abs()
    fast = getattr(policy, "fast_encoder", None)
    return {
        "path": path,
        "action_max_dev": float(deviation.max()),
        "action_mean_dev": float(deviation.mean()),
        "within_action_tol": float(deviation.max()) <= ACTION_TOL,
        **({} if fast is None else {k: v for k, v in fast.report.items() if k != "path"}),
    }
