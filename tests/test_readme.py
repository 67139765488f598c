"""Every shell command of the README is one the code accepts: each ```bash line's regpose subcommand and flags
parse (argparse, as `regpose` would), make targets exist, and every command either runs as written on the
synthetic data (``python -m bench.run_readme_commands`` runs those) or is in bench/readme_commands.NOT_RUN with its
reason. The model-zoo commands parse too. (The README's Python example runs in
tests/inference/test_predictor_api.py.)"""
from __future__ import annotations

import re

import pytest

from bench.readme_commands import NOT_RUN, readme_commands
from regpose.cli import build_parser
from regpose.compat import zoo
from conftest import REPO

COMMANDS = readme_commands()


def _parses(argv: list[str]) -> None:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"regpose {' '.join(argv)}: rejected by the argument parser")
    assert getattr(args, "fn", None), f"regpose {' '.join(argv)}: no such command"
    assert all("=" in e and not e.startswith("-") for e in extra) and (not extra or hasattr(args, "overrides")), \
        f"regpose {' '.join(argv)}: unknown arguments {extra}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"README:{c.line}")
def test_readme_command_is_accepted(command):
    argv = command.regpose_argv()
    if argv is not None:
        _parses(argv)
    elif command.argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M)
        assert set(command.argv[1:]) <= set(targets), command.text
    else:
        pytest.fail(f"README line {command.line}: neither regpose nor make: {command.text}")


def test_every_readme_command_runs_or_says_why_not():
    runnable = [c for c in COMMANDS if c.not_run_reason() is None]
    assert runnable and all(c.regpose_argv() for c in runnable)
    assert all(any(key in c.text for c in COMMANDS) for key in NOT_RUN), "a NOT_RUN reason matches no command"


@pytest.mark.parametrize("ckpt", zoo.OFFICIAL_CHECKPOINTS, ids=lambda c: c.file)
def test_model_zoo_commands_are_accepted(ckpt):
    for command in (zoo.infer_command(ckpt), zoo.test_command(ckpt)):
        _parses(command.split()[1:])
