"""Who is who over time in one camera's predictions: person boxes linked frame to frame.

``predict`` with a multi-person detector gets the people of each frame in the detector's order,
which says nothing about identity (``pipeline.detect.registry``: "any order"). :class:`BoxTracker`
gives each box a track id that follows the person: the boxes of a frame are matched to the
tracks' last boxes by the Hungarian method (``scipy.optimize.linear_sum_assignment``) on the
cost ``1 - IoU``; a match needs an IoU of at least ``min_iou``; an unmatched box opens a new
track; a track not seen for more than ``max_gap`` frames ends (its id is never reused). Pure
2D, one camera: the multi-view association of stage 1 (``pipeline.people.tracks``) is not needed here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

MIN_IOU = 0.3
"""Smallest IoU between a track's last box and a box of a later frame that continues it."""
MAX_GAP = 10
"""Frames a track may go unseen and still be continued."""


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, 4) and (N, 4) boxes [x_min, y_min, x_max, y_max] -> (M, N) intersection over union
    (0 where either box is not finite or empty)."""
    a, b = np.asarray(a, np.float64)[:, None], np.asarray(b, np.float64)[None]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1],
                                                                       0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.nan_to_num(iou, nan=0.0)


def match_boxes(previous: np.ndarray, boxes: np.ndarray, min_iou: float = MIN_IOU
                ) -> list[tuple[int, int]]:
    """Pairs (row of ``previous``, row of ``boxes``) of the assignment of least total
    ``1 - IoU``, keeping only pairs with IoU >= ``min_iou``."""
    if not len(previous) or not len(boxes):
        return []
    iou = box_iou(previous, boxes)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= min_iou]


@dataclass
class BoxTracker:
    """Track ids for the person boxes of one camera, fed frame by frame in time order."""

    min_iou: float = MIN_IOU
    max_gap: int = MAX_GAP
    boxes: dict[int, np.ndarray] = field(default_factory=dict)     # id -> last box
    last_seen: dict[int, int] = field(default_factory=dict)        # id -> frame
    next_id: int = 0

    def update(self, frame: int, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) boxes of ``frame`` -> (N,) int track ids (a new id for an unmatched box)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        for t in [t for t, f in self.last_seen.items() if frame - f - 1 > self.max_gap]:
            del self.boxes[t], self.last_seen[t]
        live = sorted(self.boxes)
        prev = np.array([self.boxes[t] for t in live]).reshape(-1, 4)
        ids = np.full(len(boxes), -1, np.int64)
        for r, c in match_boxes(prev, boxes, self.min_iou):
            ids[c] = live[r]
        for c in np.flatnonzero(ids < 0):
            ids[c], self.next_id = self.next_id, self.next_id + 1
        for c, t in enumerate(ids):
            self.boxes[int(t)], self.last_seen[int(t)] = boxes[c], frame
        return ids
