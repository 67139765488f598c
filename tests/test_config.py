"""Typed configs: inheritance, overrides, and one-line errors that name the key and suggest the right one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regpose.config import ConfigError, load_config, parse_overrides, save_config

sys.path.insert(0, str(Path(__file__).resolve().parent / "engine"))
import tiny_method  # noqa: E402,F401 - importing registers the "tiny" method


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_base_inheritance_and_dotted_overrides(tmp_path):
    _write(tmp_path / "base.yaml", {"method": "tiny", "train": {"lr": 0.1, "iters": 5, "steps": [3]},
                                    "model": {"width": 4}})
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "train": {"iters": 7}})
    cfg = load_config(child, ["train.lr=1e-4", "model.dropout=0.5", "test.scales=[0.5, 1, 2]"])
    assert cfg.train.lr == 1e-4 and cfg.train.iters == 7 and cfg.train.steps == [3]
    assert cfg.model.width == 4 and cfg.model.dropout == 0.5
    assert cfg.test.scales == [0.5, 1.0, 2.0]
    assert cfg.name == "child" and cfg.output_dir == str(Path("runs") / "child")
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


def test_unknown_key_names_it_and_suggests_nearest(tmp_path):
    p = _write(tmp_path / "c.yaml", {"method": "tiny", "train": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr' \(did you mean 'train.lr'\?\)"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"'model.widht'.*'model.width'"):
        load_config({"method": "tiny", "model": {"widht": 3}})
    with pytest.raises(ConfigError, match=r"unknown config key 'trian' \(did you mean 'train'\?\)"):
        load_config({"method": "tiny", "trian": {}})


def test_wrong_types_and_values_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"train.iters: expected int, got str 'many'"):
        load_config({"method": "tiny", "train": {"iters": "many"}})
    with pytest.raises(ConfigError, match=r"train.optimizer: expected one of .*got 'sgdd' \(did you mean 'sgd'\?\)"):
        load_config({"method": "tiny", "train": {"optimizer": "sgdd"}})
    with pytest.raises(ConfigError, match=r"model.dropout: expected float, got bool"):
        load_config({"method": "tiny", "model": {"dropout": True}})
    with pytest.raises(ConfigError, match=r"method: unknown method 'tinny' \(did you mean 'tiny'\?\)"):
        load_config({"method": "tinny"})
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["train.lr"])


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size: expected a value >= 1, got 0"),
    ("train.batch_size=-1", "train.batch_size: expected a value >= 1, got -1"),
    ("train.lr=nan", "train.lr: expected a finite number, got 'nan'"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("model.dropout=.nan", "model.dropout: expected a finite number, got nan"),   # every float, method's too
    ("train.betas=[0.9, 1.0]", "train.betas[1]: expected a value >= 0 and < 1, got 1.0"),
    ("test.scales=[1, 0]", "test.scales[1]: expected a value > 0, got 0.0"),
    ("data.augment.topdown.flip_prob=1.5", "data.augment.topdown.flip_prob: expected a value >= 0 and <= 1, got 1.5"),
    ("data.input_size=[0, 64]", "data.input_size[0]: expected a value >= 1, got 0"),
    ("train.freeze=['backbone(']", "train.freeze[0]: invalid regular expression 'backbone(' (missing ), "
                                   "unterminated subpattern at position 8)"),
    ("train.lr_rules=[{pattern: '*x'}]", "train.lr_rules[0].pattern: invalid regular expression '*x' (nothing to "
                                         "repeat at position 0)"),
])
def test_numeric_fields_are_range_checked_and_finite_and_patterns_compile(override, message):
    with pytest.raises(ConfigError) as e:
        load_config({"method": "tiny"}, [override])
    assert str(e.value) == message
    load_config({"method": "tiny"}, ["train.batch_size=1", "train.lr=0", "test.scales=[0.5]"])   # bounds included


def test_dataset_files_stay_with_their_format_through_base_lists(tmp_path):
    """A dataset base listed before a model config whose own base is another dataset loses its files (later bases
    win) while a restated data.format survives: COCO files read as CrowdPose. The config layer refuses that."""
    def split(name):
        return {"ann_files": [f"{name}.json"], "image_dir": name}

    _write(tmp_path / "coco.yaml", {"data": {"format": "coco", "train": split("coco_train"), "val": split("coco_val")}})
    _write(tmp_path / "crowd.yaml", {"data": {"format": "crowdpose", "train": split("crowd_trainval"),
                                              "val": split("crowd_test")}})
    _write(tmp_path / "model.yaml", {"base": "coco.yaml", "method": "tiny", "train": {"lr": 0.5}})
    bad = _write(tmp_path / "bad.yaml", {"base": ["crowd.yaml", "model.yaml"], "data": {"format": "crowdpose"}})
    with pytest.raises(ConfigError, match=r"data.train: its files were set in coco.yaml for data.format 'coco', "
                                          r"but the resolved data.format is 'crowdpose'"):
        load_config(bad)
    good = load_config(_write(tmp_path / "good.yaml", {"base": ["model.yaml", "crowd.yaml"]}))
    assert good.data.format == "crowdpose" and good.train.lr == 0.5
    assert good.data.train.ann_files == ["crowd_trainval.json"] and good.data.val.ann_files == ["crowd_test.json"]
    # the same through overrides: the format alone is refused, format and files together are fine
    with pytest.raises(ConfigError, match=r"data.train: its files were set in coco.yaml"):
        load_config(tmp_path / "model.yaml", ["data.format=crowdpose"])
    moved = load_config(tmp_path / "model.yaml", ["data.format=crowdpose", "data.train.ann_files=[a.json]",
                                                   "data.val.ann_files=[b.json]"])
    assert moved.data.train.ann_files == ["a.json"]
    # files set without a format (a user's own dataset) carry no claim; the resolved config saves without marks
    mine = load_config(_write(tmp_path / "mine.yaml", {"base": "model.yaml", "data": {"train": split("mine")}}))
    assert mine.data.train.ann_files == ["mine.json"]
    save_config(mine, tmp_path / "resolved.yaml")
    assert "_files_format_" not in (tmp_path / "resolved.yaml").read_text()


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regpose", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("case", ["unknown_key", "wrong_type", "nan_value", "missing_file", "bad_checkpoint",
                                  "mismatch"])
def test_cli_errors_are_one_line_without_traceback(tmp_path, case):
    import torch

    cfg = tmp_path / "c.yaml"
    base = {"method": "rle", "data": {"input_size": [64, 64]}}
    if case == "unknown_key":
        _write(cfg, {**base, "train": {"bacth_size": 2}})
        r = _cli("train", str(cfg))
        expect = "unknown config key 'train.bacth_size' (did you mean 'train.batch_size'?)"
    elif case == "wrong_type":
        _write(cfg, base)
        r = _cli("train", str(cfg), "train.lr=fast")
        expect = "train.lr: expected float, got str 'fast'"
    elif case == "nan_value":
        _write(cfg, base)
        r = _cli("train", str(cfg), "train.lr=nan")
        expect = "train.lr: expected a finite number, got 'nan'"
    elif case == "missing_file":
        r = _cli("train", str(tmp_path / "missing.yaml"))
        expect = "config file not found"
    else:
        _write(cfg, base)
        w = tmp_path / "w.pth"
        if case == "bad_checkpoint":
            w.write_bytes(b"not a checkpoint")
            expect = "cannot read checkpoint"
        else:
            torch.save({"model": {"backbone.nope": torch.zeros(3)}}, w)
            expect = "does not fit the model"
        r = _cli("test", str(cfg), "--weights", str(w))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr[-1500:]
    assert "Traceback" not in r.stderr
