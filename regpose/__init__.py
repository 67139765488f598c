"""regpose: direct-regression multi-person human pose estimation."""
__version__ = "0.1.0"
