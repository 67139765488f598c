"""The shared data layer: keypoint layouts (:mod:`.keypoints`), annotation readers and datasets (:mod:`.datasets`),
keypoint-aware augmentation with exact inverses (:mod:`.transforms`), training targets (:mod:`.targets`), the
synthetic crowd generator (:mod:`.synthetic`), batching (:mod:`.collate`) and sample rendering (:mod:`.show`).

Submodules are imported on use so ``import regpose`` stays light.
"""
__all__ = ["keypoints", "datasets", "transforms", "targets", "synthetic", "collate", "show", "config"]
