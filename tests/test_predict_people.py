"""predict with several people per frame: box tracks over time, a row per frame and person on the
rendered multi-person set, per-track smoothing and exports, people paired with labels."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline.store.bvh import load_bvh
from pipeline.synthetic.people_scene import generate_people
from tests.test_trainer import build_toy_dataset, tiny_config
from train.export import export_predictions
from train.footage import open_input
from train.predict import PredictOptions, run_predict
from train.predict_score import match_people
from train.smoothing import smooth_sequence
from train.tracking import BoxTracker, box_iou, match_boxes
from train.trainer import RunOptions, fit

FRAMES = 6
CAMS = ("54138969", "55011271")


def _box(cx: float, cy: float, half: float = 20.0) -> list[float]:
    return [cx - half, cy - half, cx + half, cy + half]


def test_box_iou_and_matching():
    a = np.array([_box(0, 0), _box(100, 0)])
    iou = box_iou(a, np.array([_box(100, 0), _box(10, 0), [np.nan] * 4]))
    assert iou[0, 0] == 0.0 and iou[1, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(30 * 40 / (2 * 1600 - 30 * 40)) and (iou[:, 2] == 0).all()
    assert match_boxes(a, np.array([_box(101, 0), _box(2, 0)])) == [(0, 1), (1, 0)]
    assert match_boxes(a, np.array([_box(50, 0)])) == []           # IoU 0 with both: no match
    assert match_boxes(a, np.zeros((0, 4))) == []


def test_tracker_follows_people_whatever_the_detector_order():
    """Two people walking towards each other, listed in a random order each frame, one of them
    missing for a few frames: ids follow the people; a person gone for longer than the gap
    gets a new id, and ids are never reused."""
    rng = np.random.default_rng(0)
    tracker = BoxTracker(max_gap=3)
    seen = {0: set(), 1: set()}
    for f in range(20):
        people = {0: _box(100 + 2 * f, 50), 1: _box(200 - 2 * f, 52)}
        if 5 <= f <= 7:
            del people[1]                                            # hidden for 3 frames
        who = rng.permutation(sorted(people))
        ids = tracker.update(f, np.array([people[w] for w in who]))
        for w, t in zip(who, ids):
            seen[int(w)].add(int(t))
    assert len(seen[0]) == len(seen[1]) == 1 and seen[0] | seen[1] == {0, 1}
    ids = tracker.update(24, np.array([_box(140, 50)]))              # 4 frames unseen
    assert ids.tolist() == [2] and tracker.next_id == 3


def test_people_are_paired_with_their_labels():
    """Per key: one prediction and one label pair as they are; several pair by 2D distance,
    whatever their order; a prediction far from every label stays unpaired."""
    J = 4
    a, b = np.zeros((J, 2)), np.full((J, 2), 100.0)
    pred_keys = np.array(["f0", "f1", "f1", "f1"])
    pred_uv = np.stack([a + 500, b + 1, a + 1, a + 300])
    ref_keys = np.array(["f0", "f1", "f1"])
    ref_uv = np.stack([a, a, b])
    p, r = match_people(pred_keys, pred_uv, ref_keys, ref_uv, np.full(3, 100.0))
    assert sorted(zip(p.tolist(), r.tolist())) == [(0, 0), (1, 2), (2, 1)]


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> dict[str, Path]:
    """Two rendered people (6 frames, shuffled detector order per frame) and a tiny 3D network
    (the trainer tests' toy set, one step: the poses are not good, their rows are the point)."""
    root = tmp_path_factory.mktemp("predict_people")
    manifest = generate_people("data_manifests/synthetic.yaml", root / "people", people=2,
                               frames=FRAMES, noise_px=0.5, progress=False)
    toy = build_toy_dataset(root / "toy", frames=4)
    run = fit(tiny_config({"manifest": toy, "shards": root / "none"}, optim={"epochs": 1}),
              RunOptions(out=root / "run3d", device="cpu", progress=False, threads=1,
                         max_steps=1))
    return {"root": root, "manifest": manifest, "ckpt": Path(run["last"]),
            "detections": root / "people" / "detections.parquet"}


def _opts(detections: Path, **kw) -> PredictOptions:
    return PredictOptions(**{"detector": "file", "detections": str(detections), "device": "cpu",
                             "progress": False, "batch_size": 8, **kw})


def _identity(df: pd.DataFrame, truth_uv: np.ndarray, cams: list[str]) -> np.ndarray:
    """The true person of each predicted row: nearest ground-truth 2D to its detector joints."""
    out = []
    for _, row in df.iterrows():
        uv = np.stack(row.detector_joints_2d)
        gt = truth_uv[cams.index(row.camera), :, row.frame]                   # (N, J, 2)
        out.append(int(np.nanmean(np.linalg.norm(gt - uv, axis=-1), axis=1).argmin()))
    return np.array(out)


def test_several_people_get_rows_tracks_pictures_and_exports(people, tmp_path):
    """Two cameras, frame 3 of the first without any detection: every other frame has one row
    per person with a pose, the track id follows the true person although the detector's
    order is shuffled, frame 3 keeps one empty row; the overlay has a frame per frame, the
    exports one BVH per camera and track, one npz pair per track, every row in the CSV."""
    det = pq.read_table(people["detections"]).to_pandas()
    drop = (det.camera == CAMS[0]) & (det.frame == 3)
    assert drop.sum() == 2
    path = tmp_path / "det.parquet"
    pq.write_table(pq.read_table(people["detections"]).filter(~drop.to_numpy()), path)
    clips = open_input(people["manifest"], cameras=CAMS)
    report = run_predict(clips, people["ckpt"], tmp_path / "pred", _opts(path))
    df = pd.read_parquet(tmp_path / "pred" / "poses.parquet")
    assert report.frames == 2 * FRAMES and report.no_person == 1 and report.people == 4
    assert report.predicted == len(df) - 1 == 2 * 2 * FRAMES - 2
    empty = df[df.status != ""]
    assert len(empty) == 1 and empty.iloc[0].status == "no person detected in frame 3"
    assert empty.iloc[0].camera == CAMS[0] and empty.iloc[0].person == -1
    assert np.isnan(np.stack(empty.iloc[0].joints_3d)).all()
    posed = df[df.status == ""]
    assert (posed.groupby(["camera", "frame"]).size() == 2).all()
    with np.load(people["root"] / "people" / "people_truth.npz") as z:
        truth_uv, cams = z["joints_2d"], [str(c) for c in z["cameras"]]
    who = _identity(posed, truth_uv, cams)
    for cam in CAMS:
        mine = (posed.camera == cam).to_numpy()
        pairs = set(zip(posed.person[mine], who[mine]))
        assert len(pairs) == 2 and len({p for p, _ in pairs}) == 2, (cam, pairs)
    assert np.isfinite(np.stack([np.stack(v) for v in posed.joints_3d])).all()

    cap = cv2.VideoCapture(str(tmp_path / "pred" / f"overlay_S1_Gestures_1_{CAMS[0]}.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    cap.release()
    assert (tmp_path / "pred" / "contact_sheet.png").stat().st_size > 0

    paths = export_predictions(tmp_path / "pred", ("bvh", "npz", "csv"))
    names = sorted(p.name for p in paths)
    bvhs = [n for n in names if n.endswith(".bvh")]
    assert len(bvhs) == 4 and all("_p" in n for n in bvhs)
    assert {n for n in names if n.endswith(".npz")} == {
        f"positions_{d}d_p{t}.npz" for d in (2, 3) for t in range(2)}     # ids are per clip
    fit = json.loads((tmp_path / "pred" / "export" / "bvh_fit.json").read_text())
    for name in bvhs:
        assert load_bvh(tmp_path / "pred" / "export" / name).num_frames == FRAMES
        assert fit["joint_distance_mm"][name]["frames"] == FRAMES
    csv = pd.read_csv(tmp_path / "pred" / "export" / "poses.csv")
    assert len(csv) == len(df) and sorted(csv.person.unique()) == [-1, 0, 1]


def test_smoothing_runs_per_track(people, tmp_path):
    """With --smooth each track is One-Euro filtered on its own: the smoothed poses of a track
    are the filter of that track's unsmoothed poses, never mixed with the other person's."""
    clips = open_input(people["manifest"], cameras=CAMS[:1])
    raw = run_predict(clips, people["ckpt"], tmp_path / "raw",
                      _opts(people["detections"], video=False))
    run_predict(clips, people["ckpt"], tmp_path / "smooth",
                _opts(people["detections"], video=False, smoothing=True, min_cutoff_hz=0.5))
    a = pd.read_parquet(tmp_path / "raw" / "poses.parquet")
    b = pd.read_parquet(tmp_path / "smooth" / "poses.parquet")
    assert raw.people == 2 and (a.person.to_numpy() == b.person.to_numpy()).all()
    fps = clips[0].fps
    for t in (0, 1):
        X = np.stack([np.stack(v) for v in a[a.person == t].sort_values("frame").joints_3d])
        Y = np.stack([np.stack(v) for v in b[b.person == t].sort_values("frame").joints_3d])
        np.testing.assert_allclose(Y, smooth_sequence(X, fps, min_cutoff_hz=0.5, beta=0.01),
                                   atol=1e-3)
        assert not np.allclose(X[1:], Y[1:], atol=1e-3)
