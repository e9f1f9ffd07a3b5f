"""Frame sampling schemes for pretraining, one per model family, as pure functions of (seed, epoch, index).

Upstream Voltron draws, for every clip and epoch, one sorted "quintet" of frame indices: an initial frame from
the first 20% of the clip, a final frame from the last 20%, and three distinct frames strictly in between
(`voltron/preprocessing/core.py: serialize_epoch`). Each sampling scheme then turns that quintet into examples:

| `sampling_scheme`  | family        | examples per clip | frames per example                    | language |
|--------------------|---------------|-------------------|---------------------------------------|----------|
| `state`            | R-MVP         | 5                 | quintet[j]                            | no       |
| `state+language`   | V-Cond        | 5                 | quintet[j]                            | yes      |
| `state+ok`         | V-Dual, V-Gen | 4                 | (quintet[0], quintet[j + 1])          | yes      |
| `quintet+language` | R-R3M         | 1                 | the whole quintet                     | yes      |

A dataset index `i` means clip `i // examples_per_clip`, slot `i % examples_per_clip`, so an epoch has
`n_clips * examples_per_clip` examples, as upstream (about 824 steps of 1024 for `state` on Sth-Sth-v2).
Randomness comes from `numpy.random.SeedSequence`, a documented, version-stable hash of integer keys, so the
frames of an example never depend on worker count, process count or visit order, and a resumed run sees the
same samples. New schemes register in `SCHEMES` through `register_scheme`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from voltron.registries import register_once

INITIAL_FINAL_ALPHA = 0.2  # upstream `initial_final_alpha`: initial/final frames come from the first/last 20%
N_INTERIOR = 3  # upstream `n_int`
QUINTET = 2 + N_INTERIOR
MIN_CLIP_FRAMES = QUINTET  # the fewest frames for which upstream's quintet draw is always possible

# Stream tags keep the frame draw and the per-example seed independent although both hash (seed, epoch, ...).
_FRAMES_TAG, _EXAMPLE_TAG = 0x5F3A, 0x7E11


@dataclass(frozen=True)
class SamplingScheme:
    """How a model family's examples are cut from a clip's per-epoch quintet of frame indices."""

    name: str
    examples_per_clip: int
    frames_per_example: int  # 1 gives frames (3, H, W) per example, more give (n, 3, H, W)
    has_language: bool
    select: Callable[[np.ndarray, int], np.ndarray]  # (quintet (5,), slot) -> frame indices (frames_per_example,)


SCHEMES: dict[str, SamplingScheme] = {}


def register_scheme(scheme: SamplingScheme) -> SamplingScheme:
    return register_once(SCHEMES, scheme.name, scheme, "sampling scheme")


def get_scheme(name: str) -> SamplingScheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise KeyError(f"unknown sampling scheme {name!r}; registered sampling schemes: {sorted(SCHEMES)}") from None


# Selectors are module-level functions (not lambdas) so that datasets pickle into spawned DataLoader workers.
def one_of_quintet(quintet: np.ndarray, slot: int) -> np.ndarray:
    return quintet[slot : slot + 1]


def initial_and_later(quintet: np.ndarray, slot: int) -> np.ndarray:
    return quintet[[0, slot + 1]]


def whole_quintet(quintet: np.ndarray, slot: int) -> np.ndarray:
    return quintet.copy()


register_scheme(SamplingScheme("state", 5, 1, False, one_of_quintet))
register_scheme(SamplingScheme("state+language", 5, 1, True, one_of_quintet))
register_scheme(SamplingScheme("state+ok", 4, 2, True, initial_and_later))
register_scheme(SamplingScheme("quintet+language", 1, QUINTET, True, whole_quintet))


def _words(tag: int, seed: int, epoch: int, key: int, n: int) -> list[int]:
    if min(seed, epoch, key) < 0:
        raise ValueError(f"seed, epoch and index must be non-negative; got seed={seed}, epoch={epoch}, index={key}")
    return [int(w) for w in np.random.SeedSequence([tag, seed, epoch, key]).generate_state(n, np.uint64)]


def sample_quintet(n_frames: int, seed: int, epoch: int, clip: int, alpha: float = INITIAL_FINAL_ALPHA) -> np.ndarray:
    """Upstream's per-clip draw: sorted int64 (5,) = initial, three distinct interior frames, final.

    initial ~ U[0, round(alpha * n)), final ~ U[round((1 - alpha) * n), n), interior drawn without replacement
    from (initial, final). 64-bit words reduced modulo a range below 2**32 have negligible bias.
    """
    if n_frames < MIN_CLIP_FRAMES:
        raise ValueError(f"clip {clip} has {n_frames} frames; sampling needs at least {MIN_CLIP_FRAMES}")
    words = _words(_FRAMES_TAG, seed, epoch, clip, 2 + N_INTERIOR)
    initial_end = max(1, int(round(n_frames * alpha)))
    final_start = min(n_frames - 1, int(round(n_frames * (1 - alpha))))
    initial = words[0] % initial_end
    final = final_start + words[1] % (n_frames - final_start)
    lo, n_between = initial + 1, final - initial - 1
    if n_between < N_INTERIOR:  # cannot happen for n_frames >= 5 with alpha = 0.2; kept for other alphas
        raise ValueError(f"clip {clip}: initial {initial} and final {final} leave fewer than {N_INTERIOR} frames")
    # Partial Fisher-Yates over range(lo, final): distinct interior frames without materialising the range.
    swapped: dict[int, int] = {}
    interior = []
    for k in range(N_INTERIOR):
        j = k + words[2 + k] % (n_between - k)
        interior.append(swapped.get(j, j))
        swapped[j] = swapped.get(k, k)
    return np.array([initial, *sorted(lo + i for i in interior), final], dtype=np.int64)


def frame_indices(scheme: SamplingScheme | str, n_frames: int, seed: int, epoch: int, index: int) -> np.ndarray:
    """Frame indices (frames_per_example,) int64 of dataset example `index` for a clip of `n_frames` frames.

    `n_frames` must be the length of clip `index // scheme.examples_per_clip`.
    """
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    clip, slot = divmod(index, scheme.examples_per_clip)
    return scheme.select(sample_quintet(n_frames, seed, epoch, clip), slot)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A non-negative int64 seed for example `index` in `epoch` (the models derive their MAE masks from it)."""
    return _words(_EXAMPLE_TAG, seed, epoch, index, 1)[0] >> 1
