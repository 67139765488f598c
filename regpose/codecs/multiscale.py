"""The multi-scale test step every family goes through: a method states whether it has a multi-scale test, and
``test.scales`` is honoured or refused here, the same way for all of them, when the method's test transform is
built (config time: evaluation, ``Predictor``, ``regpose infer``) and again when it predicts (a ``test_cfg`` handed
to ``predict`` directly)."""
from __future__ import annotations

from ..errors import ConfigError

__all__ = ["resolve_test_scales"]


def resolve_test_scales(test_cfg, method: str, multi_scale: bool) -> list[float]:
    """``test_cfg.scales`` as floats; a method without a multi-scale test (``multi_scale`` False) accepts only
    [1.0] and raises the one-line :class:`ConfigError` otherwise (instead of silently predicting at one scale)."""
    scales = [float(s) for s in getattr(test_cfg, "scales", [1.0])]     # predict() accepts partial test configs
    if not multi_scale and scales != [1.0]:
        raise ConfigError(f"test.scales: '{method}' has no multi-scale test (it predicts at one scale); "
                          f"expected [1.0], got {scales}")
    return scales
