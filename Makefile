# The two commands: `make test` and `make demo`. Each creates .venv and installs what it needs by itself.
# `make test` runs every test (CI runs it); `make test-fast` leaves out the tests marked slow (subprocess and
# end-to-end runs) for the inner loop; `make lint` is ruff's lint and format check, as CI runs it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The ROS peer (rclpy stub robot + rosbridge server) lives in its own venv: the ROS wheels' start-up hook would
# otherwise re-exec every Python process in .venv. If it cannot be installed, the ROS integration tests skip
# with that reason; they never pass silently.
ROS_VENV := .venv-ros
ROS_STAMP := $(ROS_VENV)/.installed
# The LeRobot peer (the real `lerobot-dataset` reader/writer and `lerobot-doctor`) lives in its own venv too: its
# pins (av<16, huggingface-hub<0.36) clash with .venv. If it cannot be installed, its tests skip with that reason.
LEROBOT_VENV := .venv-lerobot
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed

.PHONY: test test-fast demo lint bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $(STAMP)

$(ROS_STAMP): scripts/setup_ros_peer.sh
	PYTHON=$(PYTHON) scripts/setup_ros_peer.sh || echo "ROS peer setup failed: ROS integration tests will skip"

LINT_PATHS := voltron datasets sim tests bench

$(LEROBOT_STAMP): scripts/setup_lerobot_peer.sh $(STAMP)
	PYTHON=$(PYTHON) scripts/setup_lerobot_peer.sh || echo "LeRobot peer setup failed: LeRobot peer tests will skip"

test: $(STAMP) $(ROS_STAMP) $(LEROBOT_STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/pytest -q tests

test-fast: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/pytest -q -m "not slow" tests

demo: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/voltron demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

clean-venv:
	rm -rf $(VENV)
