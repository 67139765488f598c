"""Literal (loop) transcriptions of the official target generators, used only to check the vectorised versions.

Written from the behaviour described in reference/dekr/spec.md §2.3–2.4 (DEKR HeatmapGenerator / OffsetGenerator)
and mmpose's UDP GaussianHeatmap target; deliberately naive so they are easy to audit.
"""
import numpy as np


def dekr_heatmap_loop(joints, res, sgm, ct_sgm, bg_weight):
    j = joints.shape[1]
    hms = np.zeros((j, res, res), dtype=np.float32)
    ignored = 2 * np.ones((j, res, res), dtype=np.float32)
    for p in joints:
        for idx, pt in enumerate(p):
            sigma = sgm if idx < 17 else ct_sgm
            if pt[2] > 0:
                x, y = pt[0], pt[1]
                if x < 0 or y < 0 or x >= res or y >= res:
                    continue
                ul = int(np.floor(x - 3 * sigma - 1)), int(np.floor(y - 3 * sigma - 1))
                br = int(np.ceil(x + 3 * sigma + 2)), int(np.ceil(y + 3 * sigma + 2))
                cc, dd = max(0, ul[0]), min(br[0], res)
                aa, bb = max(0, ul[1]), min(br[1], res)
                rg = np.zeros((bb - aa, dd - cc))
                for sy in range(aa, bb):
                    for sx in range(cc, dd):
                        rg[sy - aa, sx - cc] = np.exp(-((sx - x) ** 2 + (sy - y) ** 2) / (2 * sigma ** 2))
                hms[idx, aa:bb, cc:dd] = np.maximum(hms[idx, aa:bb, cc:dd], rg)
                ignored[idx, aa:bb, cc:dd] = 1.0
    ignored[ignored == 2] = bg_weight
    return hms, ignored


def dekr_offset_loop(joints, area, h, w, radius=4):
    k = joints.shape[1] - 1
    off = np.zeros((k * 2, h, w), dtype=np.float32)
    wt = np.zeros((k * 2, h, w), dtype=np.float32)
    area_map = np.zeros((h, w), dtype=np.float32)
    for pid, p in enumerate(joints):
        ct_x, ct_y, ct_v = int(p[-1, 0]), int(p[-1, 1]), int(p[-1, 2])
        if ct_v < 1 or ct_x < 0 or ct_y < 0 or ct_x >= w or ct_y >= h:
            continue
        for idx, pt in enumerate(p[:-1]):
            if pt[2] > 0:
                x, y = pt[0], pt[1]
                if x < 0 or y < 0 or x >= w or y >= h:
                    continue
                sx, sy = max(int(ct_x - radius), 0), max(int(ct_y - radius), 0)
                ex, ey = min(int(ct_x + radius), w), min(int(ct_y + radius), h)
                for px in range(sx, ex):
                    for py in range(sy, ey):
                        if off[idx * 2, py, px] != 0 or off[idx * 2 + 1, py, px] != 0:
                            if area_map[py, px] < area[pid]:
                                continue
                        off[idx * 2, py, px] = px - x
                        off[idx * 2 + 1, py, px] = py - y
                        wt[idx * 2, py, px] = 1.0 / np.sqrt(area[pid])
                        wt[idx * 2 + 1, py, px] = 1.0 / np.sqrt(area[pid])
                        area_map[py, px] = area[pid]
    return off, wt


def udp_loop(joints, image_size, heatmap_size, sigma):
    k = len(joints)
    w, h = heatmap_size
    weight = np.ones((k,), np.float32)
    weight[:] = joints[:, 2] > 0
    target = np.zeros((k, h, w), np.float32)
    tmp = sigma * 3
    stride = (np.array(image_size, np.float64) - 1.0) / (np.array(heatmap_size, np.float64) - 1.0)
    for j in range(k):
        mu_x = int(joints[j][0] / stride[0] + 0.5)
        mu_y = int(joints[j][1] / stride[1] + 0.5)
        ul = [int(mu_x - tmp), int(mu_y - tmp)]
        br = [int(mu_x + tmp + 1), int(mu_y + tmp + 1)]
        if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, None]
        x0 = y0 = size // 2
        x0 += joints[j][0] / stride[0] - mu_x
        y0 += joints[j][1] / stride[1] - mu_y
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma ** 2))
        gx = max(0, -ul[0]), min(br[0], w) - ul[0]
        gy = max(0, -ul[1]), min(br[1], h) - ul[1]
        ix = max(0, ul[0]), min(br[0], w)
        iy = max(0, ul[1]), min(br[1], h)
        if weight[j] > 0.5:
            target[j][iy[0]:iy[1], ix[0]:ix[1]] = g[gy[0]:gy[1], gx[0]:gx[1]]
    return target, weight
