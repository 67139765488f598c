"""Networks, one file per method, plus shared backbones and layers."""
from ..data.keypoints import keypoint_layout
from .registry import MethodSpec, get_method, method_names, register_method

__all__ = ["MethodSpec", "get_method", "method_names", "register_method", "build_model"]


def build_model(cfg, init_trunk: bool = False):
    """Build the network a config describes (``cfg.method`` picks the builder) for its keypoint layout
    (``data.keypoints``, else ``data.format``'s).

    ``init_trunk``: also load each trunk's ``model.backbone.weights`` (downloading it if needed). Only the
    trainer sets it; a model built to receive a checkpoint (test, infer, export, convert, reference-check) never
    reads or downloads trunk weights."""
    model = get_method(cfg.method).build(cfg, keypoint_layout(cfg.data))
    if init_trunk:
        from .backbones import init_trunks  # lazy: loading a config imports this package, not timm

        init_trunks(model)
    return model
