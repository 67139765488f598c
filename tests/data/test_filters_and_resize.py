"""Training-image filters of each family; the bottom-up test resize policy."""
import numpy as np

from regpose.data.datasets import ImageRecord, filter_records


def _record(kps_visible: list[int], crowd: list[bool]) -> ImageRecord:
    n = len(kps_visible)
    kp = np.zeros((n, 17, 3), np.float32)
    for i, v in enumerate(kps_visible):
        kp[i, :v, 2] = 2
    return ImageRecord(image_id=1, file_name="x.jpg", width=10, height=10, boxes=np.zeros((n, 4), np.float32),
                       keypoints=kp, areas=np.ones(n, np.float32), iscrowd=np.array(crowd, bool),
                       num_keypoints=np.array(kps_visible), ann_ids=np.arange(n), segmentations=[[]] * n)


def test_min_keypoints_filter_counts_labelled_keypoints_of_non_crowd_people():
    no_kp = _record([0, 0], [False, False])
    crowd_only_kp = _record([0, 5], [False, True])
    ok = _record([0, 2], [False, False])
    only_crowd = _record([3], [True])
    recs = [no_kp, crowd_only_kp, ok, only_crowd]
    assert filter_records(recs, "onestage") == [no_kp, crowd_only_kp, ok]
    assert filter_records(recs, "onestage", min_keypoints=1) == [ok]
    assert filter_records(recs, "onestage", min_keypoints=3) == []
