"""The model zoo: every listed official checkpoint has a shipped config that loads (with its overrides) for the
right method, the README table is the zoo's, and ``regpose models`` lists every method, config and file."""
from __future__ import annotations

import pytest

from regpose.cli import main
from regpose.compat.zoo import OFFICIAL_CHECKPOINTS, format_zoo_table, method_configs
from regpose.config import load_config
from regpose.models.registry import method_names, official_methods
from conftest import REPO


@pytest.mark.parametrize("ckpt", OFFICIAL_CHECKPOINTS, ids=lambda c: c.file)
def test_zoo_entry_config_builds_that_method(ckpt):
    cfg = load_config(REPO / "configs" / ckpt.config, list(ckpt.overrides))
    assert cfg.method == ckpt.method in official_methods()
    for override in ckpt.overrides:
        key, value = override.split("=")
        section, field = key.split(".")
        assert str(getattr(getattr(cfg, section), field)) == value


def test_each_config_folder_holds_its_method():
    folders = {p.name for p in (REPO / "configs").iterdir() if p.is_dir() and p.name != "_base_"}
    assert set(official_methods()) <= folders <= set(method_names())
    for method in folders:
        for c in method_configs(method, REPO / "configs"):
            assert load_config(REPO / "configs" / c).method == method, c


def test_readme_zoo_table_is_the_zoo():
    assert format_zoo_table() in (REPO / "README.md").read_text()


def test_models_command_lists_methods_configs_and_official_files(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for method in method_names():
        assert f"\n{method} (" in f"\n{out}"
        assert all(c.split("/", 1)[1] in out for c in method_configs(method, REPO / "configs"))
    assert all(c.file in out and c.page in out for c in OFFICIAL_CHECKPOINTS)
    assert main(["models", "poseur"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("poseur (topdown)") and "dekr" not in out
    assert main(["models", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
