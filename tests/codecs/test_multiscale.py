"""The one multi-scale test step: every family honours ``test.scales`` or refuses it with the same one-line error,
when its test transform is built (config time: evaluation, Predictor, infer) and when it predicts."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from regpose.codecs.multiscale import resolve_test_scales
from regpose.config import ConfigError, load_config
from regpose.data.collate import collate
from regpose.models import build_model
from regpose.models.registry import get_method

SMALL_RESNET = {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}}
TINY = {  # small networks: predict must refuse before it runs them
    "querypose": {"model": {"backbone": {"name": "resnet50", "kwargs": {"channels": [4, 8, 16, 32], "stem_width": 16}},
                            "hidden_dim": 32, "num_proposals": 8, "num_stages": 1, "num_heads": 4,
                            "dim_feedforward": 64, "dim_dynamic": 8, "part_dim": 16, "num_convs": 1}},
    "poseur": {"model": {"backbone": SMALL_RESNET, "embed_dim": 64, "num_decoder_layers": 1, "self_attn_heads": 4,
                         "num_points": 2, "ffn_dim": 128}},
    "rle": {"model": {"backbone": SMALL_RESNET}},
    "tfpose": {"model": {"backbone": SMALL_RESNET, "embed_dim": 32, "num_heads": 4, "num_points": 2,
                         "num_encoder_layers": 1, "num_decoder_layers": 1, "aux_channels": 16}},
}
ONE_SCALE = sorted(TINY)
MULTI_SCALE = ["dekr", "directpose"]
REFUSAL = (r"^test\.scales: '\w+' has no multi-scale test \(it predicts at one scale\); "
           r"expected \[1\.0\], got \[0\.5, 1\.0\]$")


def _cfg(method: str, scales=(0.5, 1.0)):
    raw = {"method": method, **TINY.get(method, {})}
    cfg = load_config(raw)
    cfg.test.scales = list(scales)
    return cfg


@pytest.mark.parametrize("method", ONE_SCALE)
def test_one_scale_families_refuse_other_scales_when_the_test_transform_is_built(method):
    with pytest.raises(ConfigError, match=REFUSAL) as e:
        get_method(method).transform(_cfg(method), False)
    assert f"'{method}'" in str(e.value) and "\n" not in str(e.value)
    get_method(method).transform(_cfg(method, [1.0]), False)           # the default is fine
    get_method(method).transform(_cfg(method), True)                   # training never looks at test.scales


@pytest.mark.parametrize("method", ONE_SCALE)
def test_one_scale_families_refuse_other_scales_at_predict_time(method):
    cfg = _cfg(method, [1.0])
    model = build_model(cfg).eval()
    transform = get_method(method).transform(cfg, False)
    raw = {"image": np.zeros((96, 96, 3), np.uint8), "image_id": 1, "sample_index": 0, "file_name": "x",
           "orig_size": (96, 96), "keypoints": np.zeros((0, 17, 3)), "boxes": np.zeros((0, 4)),
           "box": np.array([10.0, 10.0, 60.0, 80.0]), "box_score": 1.0, "person_index": -1}
    batch = collate([transform(raw)])
    with pytest.raises(ConfigError, match=r"^test\.scales: '\w+' has no multi-scale test"):
        model.predict(batch, dataclasses.replace(cfg.test, scales=[0.5, 1.0]))
    assert len(model.predict(batch, cfg.test)) == 1                    # one scale: predicts


@pytest.mark.parametrize("method", MULTI_SCALE)
def test_multi_scale_families_accept_other_scales(method):
    get_method(method).transform(_cfg(method), False)
    assert resolve_test_scales(_cfg(method).test, method, True) == [0.5, 1.0]


def test_dekr_test_sample_carries_the_original_image_only_for_a_multi_scale_test():
    raw = {"image": np.zeros((100, 120, 3), np.uint8), "image_id": 1, "sample_index": 0, "file_name": "x",
           "orig_size": (100, 120), "keypoints": np.zeros((0, 17, 3)), "boxes": np.zeros((0, 4))}
    assert "image_raw" in get_method("dekr").transform(_cfg("dekr"), False)(dict(raw))["meta"]
    assert "image_raw" not in get_method("dekr").transform(_cfg("dekr", [1.0]), False)(dict(raw))["meta"]
