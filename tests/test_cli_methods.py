"""The command surface asks each method's MethodSpec for its official converter and extra commands (nothing in
cli/ or compat/ lists methods by hand), and commands that are built in never import the methods to find them."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys

import pytest

from regpose.cli import build_parser, main
from regpose.compat import official, poseur
from regpose.errors import RegposeError
from regpose.models.registry import MethodSpec, official_converter, official_methods, register_method


@dataclasses.dataclass
class _Cfg:
    width: int = 4


# A method that only exists in this test: its command module is DEKR's train-rescore, reused under a new name.
register_method(MethodSpec("_cli_test", _Cfg, None, "bottomup", lambda cfg, train: None,
                           commands={"_cli-test-cmd": "regpose.cli.rescore"}))


def _commands(parser: argparse.ArgumentParser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_method_commands_come_from_method_specs():
    from regpose.cli import rescore

    full, builtin = _commands(build_parser()), _commands(build_parser(method_commands=False))
    assert {"train-rescore", "_cli-test-cmd"} <= set(full)
    assert not {"train-rescore", "_cli-test-cmd"} & set(builtin)
    assert full["_cli-test-cmd"].get_default("fn") is rescore.run
    args = build_parser().parse_args(["train-rescore", "c.yaml", "a.b=1", "--weights", "w.pth", "--out", "r.pth"])
    assert args.fn is rescore.run and args.overrides == ["a.b=1"]


def test_converter_is_the_module_the_spec_names():
    assert official._converter("poseur") is poseur
    assert official_methods() == ["dekr", "poseur", "querypose"]          # the test method has no converter
    assert official_converter("_cli_test") is None and official_converter("openpose") is None
    with pytest.raises(RegposeError, match=r"no official converter for method '_cli_test' \(known: dekr, poseur, "
                                           r"querypose\)"):
        official._converter("_cli_test")


def test_unknown_converter_is_one_line(tmp_path, capsys):
    code = main(["convert", "--from-official", "openpose", "--checkpoint", str(tmp_path / "c.pth"),
                 "--out", str(tmp_path / "o.pth")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no official converter for method 'openpose'") and err.count("\n") == 1


def test_builtin_commands_do_not_import_the_methods():
    script = ("import sys\nfrom regpose.cli import main\n"
              "try:\n    main(['evaluate', '--help'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.startswith('regpose.models.')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
