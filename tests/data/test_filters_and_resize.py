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


def test_bottom_up_test_resize_rounds_the_long_side_up_to_64():
    from regpose.data.transforms import BottomUpTestResize

    # 425x640 image, input 128: short side -> 128, long side 128/425*640 = 192.8 -> 256 (DEKR spec §3.1)
    wr, hr, _ = BottomUpTestResize(128, 1.0).size(425, 640)
    assert (wr, hr) == (256, 128)
    wr, hr, _ = BottomUpTestResize(512, 0.5).size(480, 640)
    assert (wr, hr) == (352, 256)   # ceil64(512 / 480 * 640 = 682.7) = 704, times the scale 0.5
