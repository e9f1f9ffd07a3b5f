# The two commands: `make test` and `make demo`. Each creates .venv and installs what it needs by itself.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint bench clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@touch $(STAMP)

test: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/pytest -q -m "not slow" tests

demo: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(BIN)/voltron demo

lint: $(STAMP)
	$(BIN)/ruff check voltron datasets sim tests bench

clean-venv:
	rm -rf $(VENV)
