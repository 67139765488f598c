"""The ``regpose`` command line (the surface layer): ``main`` parses and runs a command, one module per command
group (``main``: the parser and the training / evaluation commands; ``inference``: infer and export; ``types``: the
argparse value types)."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
