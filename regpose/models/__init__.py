"""Networks, one file per method, plus shared backbones and layers."""
from .registry import MethodSpec, get_method, method_names, register_method

__all__ = ["MethodSpec", "get_method", "method_names", "register_method", "build_model"]


def build_model(cfg):
    """Build the network a config describes (``cfg.method`` picks the builder)."""
    return get_method(cfg.method).build(cfg)
