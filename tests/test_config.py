"""The one config path (voltron/config.py): override forms, precedence, --help, save/load, and every command on it."""

from __future__ import annotations

import argparse
import re

import pytest

from voltron.cli import build_parser, main
from voltron.config import (
    describe_keys,
    import_config_class,
    load_saved_config,
    normalize_overrides,
    parse_config,
    save_config,
)
from voltron.errors import UserError
from voltron.policy.config import BCConfig

# Subcommands that take no settings (listings, a copy), so they have no config of their own.
NO_CONFIG = {"models", "convert-upstream", "config list", "config show", "policy export"}


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = _subcommands(sub, full + " ")
                found.update(nested or {full: sub})
    return found


def test_every_subcommand_takes_a_config_and_dotted_overrides():
    commands = _subcommands(build_parser())
    assert {"pretrain", "train-policy", "eval", "eval-suite", "preprocess", "sim collect", "demo", "ros serve"} <= set(
        commands
    )
    for name, sub in commands.items():
        if name in NO_CONFIG:
            continue
        config_class = sub.get_default("config_class")
        assert config_class, f"voltron {name} has no config class"
        assert describe_keys(import_config_class(config_class)), name
        assert any("--config" in action.option_strings for action in sub._actions), name


def test_the_three_override_forms_and_the_file_agree(tmp_path):
    path = tmp_path / "bc.yaml"
    path.write_text("train:\n  steps: 9\n  lr: 0.5\npolicy:\n  extractor: mean\n")
    forms = (["--train.steps=7"], ["--train.steps", "7"], ["train.steps=7"])
    for args in forms:
        config = parse_config(BCConfig, str(path), normalize_overrides(args))
        assert (config.train.steps, config.train.lr, config.policy.extractor) == (7, 0.5, "mean"), args
    assert parse_config(BCConfig, None, ["--config", str(path)]).train.steps == 9


def test_old_set_form_and_unknown_keys_are_one_line_errors():
    with pytest.raises(
        UserError, match=r"--set safety.watchdog_ms=300 is no longer accepted.*--safety.watchdog_ms=300"
    ):
        normalize_overrides(["--set", "safety.watchdog_ms=300"])
    with pytest.raises(UserError, match=r"unknown config key 'train.step'.*did you mean 'train.steps'"):
        parse_config(BCConfig, None, ["train.step=3"])


def test_help_names_the_subcommand_and_every_key(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: voltron eval")
    assert re.search(r"--episodes +int \(default: 50\)", out)
    assert re.search(r"--horizon +int \| None \(default: None\) +max steps per episode", out)


def test_saved_config_loads_back_identically(tmp_path):
    config = parse_config(BCConfig, "policy/finetune", ["--train.steps=11", "--policy.hidden_dims=[32,16]"])
    path = save_config(config, tmp_path / "config.yaml")
    assert load_saved_config(BCConfig, path) == config


def test_commands_without_a_config_refuse_stray_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["models", "--train.steps=3"])
    assert "unrecognized arguments: --train.steps=3" in capsys.readouterr().err


def test_eval_suite_flags_reach_the_options(tmp_path, monkeypatch):
    """Space-separated list flags (--tasks a b, --demos-per-task 5 10) land in SuiteOptions as lists."""
    from types import SimpleNamespace

    import voltron.policy.suite as suite

    seen = {}

    def stand_in(options: suite.SuiteOptions) -> SimpleNamespace:  # records the options instead of running
        seen["options"] = options
        return SimpleNamespace(markdown=lambda: "")

    monkeypatch.setattr(suite, "run_eval_suite", stand_in)
    args = ["eval-suite", "--tasks", "assembly", "hammer", "--demos-per-task", "5", "10", "--out", str(tmp_path)]
    assert main(args) == 0
    assert seen["options"].tasks == ["assembly", "hammer"] and seen["options"].demos_per_task == [5, 10]
    assert seen["options"].steps is None and suite.resolve_options(seen["options"]).steps == 2000  # metaworld5's

    args = ["eval-suite", "--suite", "kitchen5", "--dart-noise", "0.05", "--out", str(tmp_path / "k")]
    assert main(args) == 0
    resolved = suite.resolve_options(seen["options"])
    assert (resolved.steps, resolved.dart_noise) == (6000, 0.05)  # the suite's BC steps, the flag's noise
    assert suite.resolve_options(suite.SuiteOptions(suite="kitchen5", steps=300)).dart_noise == 0.03
