"""Gymnasium's own `check_env` over every env id voltron registers (`voltron/<task>`, every suite and family).

The ids come from the Gymnasium registry, so a newly registered task is checked the moment it exists. Building a
MuJoCo scene costs seconds on 2 cores, so the first MetaWorld id runs in the fast tier and every id in the slow one.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import voltron.sim.env  # noqa: F401  (registers the voltron/ ids)
from voltron.sim.tasks import get_task

ENV_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("voltron/"))


def _family(env_id: str) -> str:
    return get_task(env_id.split("/", 1)[1]).family


FAST = {next(i for i in ENV_IDS if _family(i) == "metaworld")}  # one scene in the fast tier; every id in `make test`


def test_every_task_is_registered():
    from voltron.sim.tasks import task_names

    assert {f"voltron/{name}" for name in task_names()} <= set(ENV_IDS)


@pytest.mark.parametrize("env_id", [pytest.param(i, marks=[] if i in FAST else [pytest.mark.slow]) for i in ENV_IDS])
def test_env_passes_gymnasium_check_env(env_id):
    env = gym.make(env_id, image_size=32)
    try:
        with warnings.catch_warnings():
            # the proprio/state boxes are unbounded on purpose (positions in metres); check_env warns about that
            warnings.filterwarnings("ignore", message=".*observation space (minimum|maximum) value is.*infinity")
            check_env(env.unwrapped, skip_render_check=True)
        obs, info = env.reset(seed=0)
        for _ in range(3):  # a few steps through the registered (wrapped) env as a user would make it
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and isinstance(info.get("success"), bool)
    finally:
        env.close()
