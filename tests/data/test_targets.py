"""Targets: the vectorised generators equal literal transcriptions of the official loops, incl. every DEKR quirk."""
import numpy as np
import pytest

from reference_targets import dekr_heatmap_loop, dekr_offset_loop, udp_loop
from regpose.data.targets import dekr_heatmaps, dekr_joints, dekr_offsets, gaussian_heatmaps, udp_heatmaps


def _people(rng, p, k, res, integer=False):
    j = np.zeros((p, k + 1, 3))
    c = rng.uniform(-4, res + 4, (p, 1, 2))
    j[..., :2] = c + rng.normal(0, res / 12, (p, k + 1, 2))
    if integer:
        j[..., :2] = np.round(j[..., :2])
    j[..., 2] = rng.integers(0, 3, (p, k + 1))
    j[:, -1, 2] = rng.integers(0, 2, p)
    return j


@pytest.mark.parametrize("k", [17, 14])
def test_dekr_heatmaps_equal_the_official_loop(k):
    rng = np.random.default_rng(k)
    for trial in range(12):
        j = _people(rng, int(rng.integers(0, 9)), k, 64, integer=trial % 3 == 0)
        hm, w = dekr_heatmaps(j, 64, sigma=2, center_sigma=4, bg_weight=0.1)
        rh, rw = dekr_heatmap_loop(j, 64, 2, 4, 0.1)
        assert np.array_equal(hm, rh) and np.array_equal(w, rw)
    # CrowdPose quirk: the centre (index 14 < 17) uses the keypoint sigma.
    j = np.zeros((1, 15, 3))
    j[0, 14] = [30, 30, 1]
    hm, _ = dekr_heatmaps(j, 64, sigma=2, center_sigma=4)
    assert hm[14, 30, 32] == pytest.approx(np.exp(-4 / 8), rel=1e-6)
    _, w = dekr_heatmaps(j, 64)
    # weight 1 on the whole box [floor(x - 3σ - 1), ceil(x + 3σ + 2)) = [23, 38), BG_WEIGHT outside
    assert w[14, 30, 23] == 1 and w[14, 30, 37] == 1 and w[14, 23, 30] == 1 and w[14, 37, 30] == 1
    assert w[14, 30, 22] == pytest.approx(0.1) and w[14, 30, 38] == pytest.approx(0.1)
    assert w[0, 5, 5] == pytest.approx(0.1)


@pytest.mark.parametrize("k", [17, 14])
def test_dekr_offsets_equal_the_official_loop(k):
    rng = np.random.default_rng(10 + k)
    for trial in range(15):
        p = int(rng.integers(0, 10))
        j = _people(rng, p, k, 48, integer=trial % 3 == 0)
        j[:, -1, :2] = rng.uniform(-2, 50, (p, 2))                        # centres crowd together
        area = rng.uniform(50, 4000, p)
        if p > 3:
            area[2] = area[1]                                             # ties resolved as the loop does
        off, w = dekr_offsets(j, area, 48)
        ro, rw = dekr_offset_loop(j, area, 48, 48)
        assert np.array_equal(off, ro) and np.array_equal(w, rw), trial


def test_dekr_offset_window_is_asymmetric_8x8_and_smaller_person_wins():
    j = np.zeros((2, 2, 3))
    j[0] = [[20.5, 20.5, 2], [20.2, 20.7, 1]]
    j[1] = [[21.5, 22.5, 2], [21.0, 21.0, 1]]
    off, w = dekr_offsets(j, np.array([400.0, 100.0]), 40)
    ys, xs = np.nonzero(w[0])
    assert xs.min() == 16 and xs.max() == 24 and ys.min() == 16 and ys.max() == 24      # union of both windows
    assert w[0, 18, 18] == pytest.approx(1 / np.sqrt(100.0))            # overlap: the smaller person
    assert off[0, 18, 18] == pytest.approx(18 - 21.5) and off[1, 18, 18] == pytest.approx(18 - 22.5)
    assert w[0, 16, 16] == pytest.approx(1 / np.sqrt(400.0))            # only the first person's window


def test_dekr_joints_area_and_centre_quirks():
    kp = np.zeros((3, 17, 3))
    kp[0, :2] = [[100, 50, 2], [140, 150, 1]]                           # spec §2.1 example: area 42100, not 11600
    kp[1, 5] = [10, 10, 2]
    joints, area, keep = dekr_joints(kp, np.array([5000.0, 500.0, 5000.0]), np.array([False, False, True]),
                                     np.array([2, 1, 0]))
    assert keep.tolist() == [0, 1]                                      # crowd with 0 keypoints dropped
    assert area[0] == 42100
    assert np.allclose(joints[0, 17], [120, 100, 1])                    # mean of the labelled keypoints
    assert np.all(joints[1, 17] == 0)                                   # area < 32^2: no centre
    j, _, _ = dekr_joints(kp, np.array([5000.0, 500.0, 5000.0]), np.zeros(3, bool), np.array([2, 1, 0]))
    assert np.allclose(j[2, 17], [0, 0, 1])                             # QUIRK: no keypoints, centre (0,0) v=1
    j, _, _ = dekr_joints(kp, np.array([5000.0, 500.0, 5000.0]), np.zeros(3, bool), np.array([2, 1, 0]),
                          area_check=False)
    assert j[1, 17, 2] == 1                                             # CrowdPose: no area check


def test_udp_heatmaps_equal_mmposes_loop():
    rng = np.random.default_rng(3)
    for _ in range(10):
        kp = np.zeros((17, 3))
        kp[:, :2] = rng.uniform(-30, 290, (17, 2))
        kp[:, 2] = rng.integers(0, 3, 17)
        hm, w = udp_heatmaps(kp, (192, 256), (48, 64), 2)
        rh, rw = udp_loop(kp, (192, 256), (48, 64), 2)
        assert np.abs(hm - rh).max() < 1e-6 and np.array_equal(w, rw)
    two = np.stack([kp, kp + [[5, 5, 0]]])
    hm2, _ = udp_heatmaps(two, (192, 256), (48, 64), 2)
    assert np.array_equal(hm2, np.maximum(udp_heatmaps(two[0], (192, 256), (48, 64))[0],
                                          udp_heatmaps(two[1], (192, 256), (48, 64))[0]))


def test_gaussian_heatmaps():
    hm = gaussian_heatmaps(np.array([[[10.0, 20.0, 1]], [[12.0, 20.0, 1]], [[5.0, 5.0, 0]]]), (32, 24), 2.0)
    assert hm.shape == (1, 24, 32) and hm[0, 20, 10] == pytest.approx(1) and hm[0, 20, 12] == pytest.approx(1)
    assert hm[0, 5, 5] == 0 and hm[0, 20, 19] == 0 and hm[0, 20, 18] > 0                       # beyond 3 sigma of both
