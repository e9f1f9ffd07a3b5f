"""Renders, imports and compiles may come in any order in one process (Mesa's LLVM vs Triton's; see
voltron/llvm_isolation.py). Each order runs in a fresh interpreter, because the failure is a SIGSEGV."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from voltron.sim import render  # picks MUJOCO_GL for this process and the children below

SCENE = "<mujoco><worldbody><light pos='0 0 2'/><geom size='0.2' rgba='1 0 0 1'/></worldbody></mujoco>"

# Each step is a snippet; a case runs its steps in order in one child interpreter.
STEPS = {
    "mujoco render": f"""
import mujoco
model = mujoco.MjModel.from_xml_string("{SCENE}")
data = mujoco.MjData(model)
renderer = mujoco.Renderer(model, 32, 32)
renderer.update_scene(data)
assert renderer.render().shape == (32, 32, 3)
renderer.close()
""",
    "gymnasium render": f"""
import mujoco
from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer
model = mujoco.MjModel.from_xml_string("{SCENE}")
gym_renderer = MujocoRenderer(model, mujoco.MjData(model), width=32, height=32)
assert gym_renderer.render("rgb_array").shape == (32, 32, 3)
gym_renderer.close()
""",
    "import voltron": "import voltron",
    "voltron render": """
from voltron.sim.env import SimEnv
env = SimEnv("drawer-open", image_size=32)
obs, _ = env.reset(seed=0)
assert obs["image"].shape == (32, 32, 3) and obs["image"].any()
env.close()
""",
    "import triton": "import triton",
    "torch.compile": """
import torch
try:
    compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1)
    result = compiled(torch.linspace(0, 1, 8))
except Exception as err:  # no C++ compiler, unsupported Python, ...: not what this test is about
    print("COMPILE-UNAVAILABLE:", f"{type(err).__name__}: {err}".splitlines()[0])
    raise SystemExit(3)
assert torch.allclose(result, torch.sin(torch.linspace(0, 1, 8)) * 2 + 1)
""",
}

CASES = {
    # the smallest reproduction of the crash, with voltron imported in between
    "mujoco-render/voltron-render/triton": ["mujoco render", "import voltron", "voltron render", "import triton"],
    # bench/render.py's order: Gymnasium's renderer first, then voltron's, then a compile
    "gym-render/voltron-render/compile": ["gymnasium render", "import voltron", "voltron render", "torch.compile"],
    "voltron-render/compile": ["voltron render", "torch.compile"],
    # voltron imported but its renderer never used: the guard must not depend on voltron.sim
    "voltron/mujoco-render/triton": ["import voltron", "mujoco render", "import triton"],
}


def run_steps(steps: list[str], cwd) -> subprocess.CompletedProcess:
    code = "\n".join(STEPS[step] for step in steps) + "\nprint('ok')\n"
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", code],
        cwd=cwd,  # not the repo root, whose top-level datasets/ would shadow Hugging Face's
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow  # over ~5 s on 2 cores: `make test` runs it, `make test-fast` leaves it out
@pytest.mark.parametrize("case", list(CASES))
def test_render_import_compile_orders_do_not_crash(case, tmp_path):
    if os.environ.get("MUJOCO_GL") is None:
        pytest.skip(f"no headless GL backend here:\n{render.gl_help()}")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (CPU-only torch build): no second LLVM to clash with")
    result = run_steps(CASES[case], tmp_path)
    if result.returncode == 3 and "COMPILE-UNAVAILABLE" in result.stdout:
        pytest.skip(f"torch.compile cannot run here: {result.stdout.split('COMPILE-UNAVAILABLE:')[1].strip()}")
    assert result.returncode == 0, f"{case}: exit code {result.returncode}\n{result.stderr[-3000:]}"
    assert result.stdout.strip().endswith("ok")
