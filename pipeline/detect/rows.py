"""What every 2D detector back-end hands stage 1, besides its joints: the frame key's fields,
"no person" rows, and the several-people rows (:class:`PeopleRows`) of ``detect_people``.

Shared by the registry's back-ends (``pipeline/detect/registry.py``) and BlazePose's
(``pipeline/detect/blazepose.py``).
"""
from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.detect.network import FrameKey
from pipeline.joints import H36M17

J = H36M17.num_joints

GroupKey = tuple[str, str, str, str, str]  # dataset, subject, action, subaction, camera


def empty_detections(n: int, num_joints: int = J) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN joints (n, J, 2), zero confidence (n, J) and NaN boxes (n, 4): "no person"."""
    return (np.full((n, num_joints, 2), np.nan, np.float32),
            np.zeros((n, num_joints), np.float32), np.full((n, 4), np.nan, np.float32))


def key_fields(k: Any) -> tuple[GroupKey, int]:
    """A FrameKey (or any object with its attributes, or a 6-tuple) -> (group key, frame)."""
    if not hasattr(k, "camera"):
        k = FrameKey(*k)
    return (str(k.dataset), str(k.subject), str(k.action), str(k.subaction), str(k.camera)), \
        int(k.frame)


class BoxReportingDetector:
    """A back-end that also reports the person box it found (``detect_with_boxes``: joints,
    confidences and (N, 4) boxes); ``detect`` is the stage-1 interface without the boxes."""

    def detect(self, images: list[np.ndarray | None], boxes: np.ndarray | None,
               keys: Seq[Any]) -> tuple[np.ndarray, np.ndarray]:
        joints, conf, _ = self.detect_with_boxes(images, boxes, keys)
        return joints, conf


@dataclass
class PeopleRows:
    """What ``FileDetector.detect_people`` returns: one row per (key, person).

    Attributes:
        index: (M,) position of the row's key in the keys asked for. person: (M,) the
            detector's person index (-1: nobody in that frame). joints (M, J, 2), conf (M, J),
            boxes (M, 4), status (M,) "" or the reason the row is unusable.
    """

    index: np.ndarray
    person: np.ndarray
    joints: np.ndarray
    conf: np.ndarray
    boxes: np.ndarray
    status: np.ndarray

    @classmethod
    def concat(cls, parts: list["PeopleRows"], num_joints: int) -> "PeopleRows":
        if not parts:
            j, c, b = empty_detections(0, num_joints)
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), j, c, b,
                       np.zeros(0, object))
        return cls(*(np.concatenate([getattr(p, k) for p in parts])
                     for k in ("index", "person", "joints", "conf", "boxes", "status")))


NO_PERSON = "no person detected"
"""The start of a detection row's status where the detector found nobody in the frame."""


def no_person(i: int, frame: int, num_joints: int) -> PeopleRows:
    j, c, b = empty_detections(1, num_joints)
    return PeopleRows(np.array([i]), np.array([-1]), j, c, b,
                      np.array([f"{NO_PERSON} in frame {frame}"], dtype=object))
