"""The Hungarian matcher (models/layers/matcher.py): each cost term by hand, the assignment is the minimum-cost
one-to-one matching (brute force over permutations), extra costs change it, and images without people match
nothing."""
from __future__ import annotations

import itertools
import math

import torch

from regpose.models.layers.matcher import HungarianMatcher, focal_class_cost


def _target(boxes, size=(100.0, 80.0)):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    w, h = size
    return {"labels": torch.zeros(len(boxes), dtype=torch.int64), "boxes": boxes,
            "image_size_xyxy": torch.tensor([w, h, w, h])}


def _brute_force(cost: torch.Tensor) -> float:
    """The smallest total cost over every one-to-one assignment of min(N, M) pairs."""
    n, m = cost.shape
    if n >= m:
        return min(sum(float(cost[r, c]) for c, r in enumerate(rows)) for rows in itertools.permutations(range(n), m))
    return min(sum(float(cost[r, c]) for r, c in enumerate(cols)) for cols in itertools.permutations(range(m), n))


def test_focal_class_cost_hand_computed():
    logit = torch.tensor([[0.3]])
    p = 1 / (1 + math.exp(-0.3))
    pos = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
    neg = 0.75 * p ** 2 * -math.log(1 - p + 1e-8)
    assert abs(float(focal_class_cost(logit, torch.tensor([0]))) - (pos - neg)) < 1e-7
    # the cost falls as the logit of the true class rises
    costs = focal_class_cost(torch.tensor([[-2.0], [0.0], [2.0]]), torch.tensor([0]))[:, 0]
    assert costs[0] > costs[1] > costs[2]


def test_cost_matrix_is_the_weighted_sum_of_its_terms():
    """L1 on boxes divided by the image size, -GIoU and the focal cost, with the configured weights."""
    matcher = HungarianMatcher(cost_class=2.0, cost_bbox=5.0, cost_giou=3.0)
    logits = torch.tensor([[1.0], [-1.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 40.0, 60.0, 60.0]])
    target = _target([[0.0, 0.0, 10.0, 20.0]])
    cost = matcher.cost_matrix(logits, boxes, target)
    # prediction 0: L1 = |20-10| / 80 on y2; IoU = 100/200, enclosing box = union -> GIoU = 0.5
    l1_0, giou_0 = 10 / 80, 0.5
    # prediction 1: L1 = (50 + 40 + 50 + 40) / sizes; no overlap, enclosing box 60x60, union 200 + 200
    l1_1 = 50 / 100 + 40 / 80 + 50 / 100 + 40 / 80
    giou_1 = 0 - (3600 - 400) / 3600
    expected = torch.tensor([[5 * l1_0 + 2 * float(focal_class_cost(logits[:1], torch.tensor([0]))) - 3 * giou_0],
                             [5 * l1_1 + 2 * float(focal_class_cost(logits[1:], torch.tensor([0]))) - 3 * giou_1]])
    torch.testing.assert_close(cost, expected)
    softmax = HungarianMatcher(use_focal=False).cost_matrix(torch.tensor([[2.0, 0.0]]), boxes[:1], target)
    giou = -HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=1).cost_matrix(logits[:1], boxes[:1], target)
    torch.testing.assert_close(softmax, 5 * torch.tensor([[l1_0]]) - 2 * torch.softmax(torch.tensor([2.0, 0.0]), 0)[0]
                               - 2 * giou)


def test_assignment_is_the_minimum_cost_matching():
    """Random images with more, equal and fewer predictions than people: the matched pairs' total cost equals the
    brute-force optimum, every person and every prediction is used at most once, predictions in ascending order."""
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher()
    for n, m in ((5, 3), (4, 4), (2, 4)):
        xy = torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 30], 1)
        gxy = torch.rand(m, 2, generator=g) * 60
        target = _target(torch.cat([gxy, gxy + 5 + torch.rand(m, 2, generator=g) * 30], 1).tolist())
        logits = torch.randn(1, n, 1, generator=g)
        (rows, cols), = matcher(logits, boxes[None], [target])
        cost = matcher.cost_matrix(logits[0], boxes, target)
        assert len(rows) == min(n, m) and len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert rows.tolist() == sorted(rows.tolist())
        assert abs(float(cost[rows, cols].sum()) - _brute_force(cost)) < 1e-5


def test_extra_costs_change_the_assignment_and_empty_images_match_nothing():
    """Two identical predictions on two people: the extra (e.g. keypoint) cost decides who goes where."""
    matcher = HungarianMatcher()
    boxes = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [10.0, 10.0, 30.0, 30.0]]])
    target = _target([[10.0, 10.0, 30.0, 30.0], [12.0, 10.0, 32.0, 30.0]])
    logits = torch.zeros(1, 2, 1)
    for extra, expected in ((torch.tensor([[0.0, 9.0], [9.0, 0.0]]), [0, 1]),
                            (torch.tensor([[9.0, 0.0], [0.0, 9.0]]), [1, 0])):
        (rows, cols), = matcher(logits, boxes, [target], extra_costs=[extra])
        assert rows.tolist() == [0, 1] and cols.tolist() == expected
    (rows, cols), = matcher(logits, boxes, [_target([])])
    assert rows.dtype == cols.dtype == torch.int64 and len(rows) == len(cols) == 0
