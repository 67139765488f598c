"""Codecs per family (mmpose 1.x's idea, without a registry): how a family's targets are encoded from transformed
keypoints, how a test image is resized (or cropped) for the network, and how predictions are decoded back to the
original image - kept together so the three agree, and apart from the networks. A method's ``transform.py`` picks
its family's codec with plain function calls:

  * :mod:`.topdown_regression` - top-down regression (Poseur, RLE, TFPose): person crops, normalised coordinates
    (x / W, or x / (W - 1) under UDP), crop -> image decoding;
  * :mod:`.heatmap_offset` - DEKR: heatmap + offset targets, the official test resize, base-image -> image decoding;
  * :mod:`.onestage` - one-stage (DirectPose, QueryPose): short-side resize, box-relative targets in continuous
    (+0.5) coordinates, input -> image decoding;
  * :mod:`.multiscale` - the one multi-scale test step every family honours or refuses alike.

Layer 1 (CONTRIBUTING.md): codecs import only the base layer and :mod:`regpose.data`, never models.
"""
