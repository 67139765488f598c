"""What a newcomer reads first: every option of ``synth`` / ``show-data`` / ``demo`` explains itself, ``demo
--method`` lists the methods, ``--kpt-thr`` reaches the renderer, and the demo's log names how each family finds
its people."""
from __future__ import annotations

import argparse

import pytest

from regpose.cli import build_parser
from regpose.config import load_config
from regpose.demo import SYNTHETIC_CONFIGS, configs_dir, people_source


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["synth", "show-data", "demo"])
def test_every_option_has_help(command):
    undocumented = [a.dest for a in _subparser(command)._actions
                    if not isinstance(a, argparse._HelpAction) and not a.help]
    assert undocumented == []


def test_demo_lists_its_methods_and_rejects_others(capsys):
    text = _subparser("demo").format_help()
    assert all(m in text for m in SYNTHETIC_CONFIGS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--method", "openpose"])
    assert "invalid choice" in capsys.readouterr().err


def test_kpt_thr_is_parsed_for_demo_and_infer():
    p = build_parser()
    assert p.parse_args(["demo", "--kpt-thr", "0.4"]).kpt_threshold == 0.4
    assert p.parse_args(["demo"]).kpt_threshold is None                     # None: the method's default
    infer = ["infer", "cfg.yaml", "a.jpg", "--weights", "w.pth", "--out", "o"]
    assert p.parse_args(infer + ["--kpt-thr", "0.7"]).kpt_threshold == 0.7
    assert p.parse_args(infer + ["--kpt-threshold", "0.2"]).kpt_threshold == 0.2
    assert p.parse_args(infer).kpt_threshold is None


def test_demo_log_says_how_each_family_finds_people():
    def note(method):
        return people_source(load_config(configs_dir() / SYNTHETIC_CONFIGS[method]))

    assert note("poseur").startswith("top-down: given the ground-truth person boxes")
    assert note("dekr").startswith("bottom-up") and "ground-truth" not in note("dekr")
    assert note("querypose").startswith("one-stage") and note("directpose").startswith("one-stage")
