"""Issue 18: the 2D network refused off its training data, the ``auto`` detector choice, the
detector check (tools/detector_check.py) and stage 1's cross-view inconsistency flag, on a tiny
rendered synthetic set with real checkpoints, detectors and Dask runs."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.store import shards as S
from pipeline.detect.network import DetectorUnavailable, NetDetector
from pipeline.detect.registry import make_detector, resolve_detector
from pipeline.job.plan import JobConfig, run_job
from pipeline.store.manifest import load_manifest
from tests.conftest import SYNTHETIC_MANIFEST
from tools.detector_check import check_detector, to_markdown

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
FRAMES = 10
SUBJECTS = ("S1",)


def _manifest_copy(tmp_path, root, name, dataset="synthetic", ground_truth=True):
    """The synthetic manifest as another dataset would have it: no 'synthetic:' block (not
    renderable), another ``dataset`` name, optionally without ground truth."""
    raw = yaml.safe_load(SYNTHETIC_MANIFEST.read_text())
    raw.pop("synthetic", None)
    raw["dataset"], raw["root"] = dataset, str(root)
    if not ground_truth:
        raw.pop("ground_truth", None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _checkpoint(path, datasets=("synthetic",)):
    """A real (untrained) 2D network in the trainer's checkpoint format, recording ``datasets``
    as the trainer does (None: an old checkpoint that does not say)."""
    import torch

    from train.checkpoint import save_checkpoint
    from train.config import TrainConfig
    from train.model import NetSpec, build_model

    spec = NetSpec(depth=18, width=8, deconv_channels=16, deconv_layers=2, depth_bins=1,
                   num_joints=17, input_size=32)
    torch.manual_seed(0)
    model = build_model(spec, torch.device("cpu"))
    state = {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
             "epoch": 0, "step": 0, "rng": {}, "metrics": {},
             "config": TrainConfig(name="tiny", model=spec).to_dict()}
    if datasets is not None:
        state["datasets"] = list(datasets)
    save_checkpoint(path, state)
    return path


def _cfg(root, out, manifest=SYNTHETIC_MANIFEST, **kw):
    base = dict(manifest=str(manifest), out=str(out), root=str(root), detector="gt",
                subjects=SUBJECTS, chunk_frames=8, crop_size=32, write_crops=False)
    base.update(kw)
    return JobConfig(**base)


def test_network_refused_on_another_dataset_unless_overridden(tiny_root, tmp_path):
    ckpt = _checkpoint(tmp_path / "net.pt")
    other = load_manifest(_manifest_copy(tmp_path, tiny_root, "h36m", dataset="h36m"))
    with pytest.raises(DetectorUnavailable) as e:
        make_detector("net", other, checkpoint=str(ckpt), device="cpu")
    msg = str(e.value)
    for needle in ("['synthetic']", "'h36m'", "make train-2d MANIFEST=", "DETECTOR=mediapipe",
                   "DETECTOR=file DETECTIONS=", "--allow-foreign-detector"):
        assert needle in msg, (needle, msg)
    det = make_detector("net", other, checkpoint=str(ckpt), device="cpu", allow_foreign=True)
    assert isinstance(det, NetDetector) and det.trained_on == ("synthetic",)
    # its own dataset: accepted; an old checkpoint that does not say: refused the same way
    make_detector("net", load_manifest(SYNTHETIC_MANIFEST, root=str(tiny_root)),
                  checkpoint=str(ckpt), device="cpu")
    old = _checkpoint(tmp_path / "old.pt", datasets=None)
    with pytest.raises(DetectorUnavailable, match="does not record the dataset.*DETECTOR=mediapipe"):
        make_detector("net", load_manifest(SYNTHETIC_MANIFEST), checkpoint=str(old))


def test_auto_resolution(tiny_root, tmp_path):
    ckpt = str(_checkpoint(tmp_path / "net.pt"))
    synthetic = load_manifest(SYNTHETIC_MANIFEST, root=str(tiny_root))
    other = load_manifest(_manifest_copy(tmp_path, tiny_root, "h36m", dataset="h36m"))
    choice = resolve_detector("auto", synthetic, make_options(ckpt))
    assert (choice.requested, choice.name) == ("auto", "net")
    missing = resolve_detector("auto", synthetic, make_options(str(tmp_path / "none.pt")))
    assert missing.name == "net" and "make train-2d" in missing.reason
    assert resolve_detector("gt", other).name == "gt"
    for options in (make_options(ckpt), make_options(str(tmp_path / "none.pt"))):
        if HAS_MEDIAPIPE:
            assert resolve_detector("auto", other, options).name == "mediapipe"
        else:
            with pytest.raises(DetectorUnavailable, match="MediaPipe is not installed"):
                resolve_detector("auto", other, options)


def test_refusal_names_only_commands_that_work(tiny_root, tmp_path):
    """Without 2D ground truth (or without a 'val' split) the refusal does not send the user to
    `make train-2d`, which would fail there; it says why and names MediaPipe and a detections
    file instead. Where the manifest can train the network it is named."""
    ckpt = str(_checkpoint(tmp_path / "net.pt"))
    no_gt = load_manifest(_manifest_copy(tmp_path, tiny_root, "nogt", dataset="h36m",
                                         ground_truth=False))
    with pytest.raises(DetectorUnavailable) as e:
        make_detector("net", no_gt, checkpoint=ckpt, device="cpu")
    msg = str(e.value)
    assert "make train-2d MANIFEST=" not in msg and "has no 2D ground truth" in msg, msg
    assert "--detector mediapipe" in msg and "--detector file --detections PATH" in msg
    raw = yaml.safe_load(_manifest_copy(tmp_path, tiny_root, "noval", dataset="h36m").read_text())
    raw["splits"].pop("val")
    (tmp_path / "noval.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DetectorUnavailable, match="no 'val' split") as e:
        make_detector("net", load_manifest(tmp_path / "noval.yaml"), checkpoint=ckpt)
    assert "make train-2d MANIFEST=" not in str(e.value)
    with pytest.raises(DetectorUnavailable, match="does not exist.*make train-2d MANIFEST="):
        make_detector("net", load_manifest(_manifest_copy(tmp_path, tiny_root, "h36m", "h36m")),
                      checkpoint=str(tmp_path / "none.pt"))


def test_auto_says_why_in_one_line(tiny_root, tmp_path):
    ckpt = str(_checkpoint(tmp_path / "net.pt"))
    synthetic = load_manifest(SYNTHETIC_MANIFEST, root=str(tiny_root))
    line = resolve_detector("auto", synthetic, make_options(ckpt)).line()
    assert line == (f"detector: auto -> net: the 2D network's checkpoint {ckpt} was trained on "
                    "dataset 'synthetic'")
    assert resolve_detector("gt", synthetic).line() == "detector: gt (requested)"
    if HAS_MEDIAPIPE:
        other = load_manifest(_manifest_copy(tmp_path, tiny_root, "h36m", dataset="h36m"))
        line = resolve_detector("auto", other, make_options(ckpt)).line()
        assert line == (f"detector: auto -> mediapipe: the 2D network's checkpoint {ckpt} was "
                        "trained on ['synthetic'], not on dataset 'h36m'")
        assert "\n" not in line


def make_options(ckpt):
    from pipeline.detect.registry import DetectorOptions

    return DetectorOptions(checkpoint=ckpt, device="cpu")


def test_choice_and_override_recorded_in_config_json(tiny_root, tmp_path, client):
    ckpt = str(_checkpoint(tmp_path / "net.pt"))
    cfg = _cfg(tiny_root, tmp_path / "auto", detector="auto", checkpoint_2d=ckpt, device="cpu",
               max_frames=4)
    run_job(cfg, client, progress=False)
    rec = json.loads(cfg.run.config_file.read_text())
    assert (rec["detector"], rec["detector_requested"]) == ("net", "auto")
    assert rec["allow_foreign_detector"] is False
    other = _manifest_copy(tmp_path, tiny_root, "h36m", dataset="h36m")
    with pytest.raises(DetectorUnavailable, match="make train-2d"):
        run_job(_cfg(tiny_root, tmp_path / "foreign0", manifest=other, detector="net",
                     checkpoint_2d=ckpt, device="cpu", max_frames=4), client, progress=False)
    cfg = _cfg(tiny_root, tmp_path / "foreign", manifest=other, detector="net",
               checkpoint_2d=ckpt, device="cpu", max_frames=4, allow_foreign_detector=True)
    summary = run_job(cfg, client, progress=False)
    rec = json.loads(cfg.run.config_file.read_text())
    assert rec["allow_foreign_detector"] is True and rec["detector"] == "net"
    # an untrained network's detections disagree across views: flagged, exit status 3
    assert summary.inconsistent and summary.exit_code == 3


def test_detector_check_with_ground_truth_and_flag(tiny_root, tmp_path, client):
    clean = check_detector(_cfg(tiny_root, tmp_path / "clean", noise_px=2.0,
                                ransac_threshold_px=2.0, max_frames=FRAMES), client)
    g = clean["ground_truth"]
    assert 1.5 < g["mean_px"] < 3.5 and g["pck"] > 0.95 and g["detection_rate"] == 1.0
    assert np.isnan(g["spearman_conf_vs_error"])  # the oracle's confidence is constant
    assert clean["fit_for_labelling"] and clean["basis"] == "ground truth"
    assert clean["consistency"]["median_reproj_px"] < 5 and not clean["consistency"]["inconsistent"]
    assert clean["sampson_median_px"] and max(clean["sampson_median_px"].values()) < 3
    summary = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert summary["inconsistent"] is False and "median_reproj_px" in summary["consistency"]
    assert "FIT for labelling" in to_markdown(clean)
    assert clean["detector_reason"] == "requested" and "why gt: requested" in to_markdown(clean)

    bad_cfg = _cfg(tiny_root, tmp_path / "bad", noise_px=2.0, outlier_rate=0.6,
                   ransac_threshold_px=2.0, max_frames=FRAMES)
    bad = check_detector(bad_cfg, client)
    assert not bad["fit_for_labelling"] and "PCK" in bad["reasons"][0]
    summary = json.loads((tmp_path / "bad" / "summary.json").read_text())
    assert summary["inconsistent"] is True and summary["consistency"]["reasons"]


def test_confidence_ranking_and_label_free_proxy(tiny_root, tmp_path, client):
    """Detections whose confidence marks their outliers (replayed through DETECTOR=file): the
    ranking shows it; on a manifest without ground truth the verdict is label-free."""
    src = _cfg(tiny_root, tmp_path / "src", noise_px=1.0, outlier_rate=0.2, max_frames=FRAMES)
    run_job(src, client, progress=False)
    t = pa.concat_tables([pq.read_table(f) for f in src.run.all_detection_files()])
    m = load_manifest(SYNTHETIC_MANIFEST, root=str(tiny_root))
    from pipeline.store.ground_truth import SequenceGroundTruth

    seqs = {(s.action, s.subaction): s for s in m.sequences if s.subject == "S1"}
    joints, conf = S.column_array(t, "joints_2d"), S.column_array(t, "joints_2d_conf").copy()
    for i, (a, sa, c, f) in enumerate(zip(*(t.column(k).to_pylist()
                                            for k in ("action", "subaction", "camera", "frame")))):
        gt = SequenceGroundTruth.find(m, seqs[(a, sa)]).camera_array(c, "joints_2d")[f]
        conf[i] = np.where(np.linalg.norm(joints[i] - gt, axis=-1) > 5, 0.4, 0.9)
    t = t.set_column(t.schema.get_field_index("joints_2d_conf"), "joints_2d_conf",
                     pa.FixedSizeListArray.from_arrays(pa.array(conf.reshape(-1), pa.float32()),
                                                       17))
    pq.write_table(t, tmp_path / "replay.parquet")
    ranked = check_detector(_cfg(tiny_root, tmp_path / "ranked", detector="file",
                                 detections=str(tmp_path / "replay.parquet"),
                                 max_frames=FRAMES), client)
    g = ranked["ground_truth"]
    assert g["spearman_conf_vs_error"] < -0.3
    assert g["least_confident_third_mean_px"] > 5 * g["most_confident_third_mean_px"]

    no_gt = _manifest_copy(tmp_path, tiny_root, "nogt", ground_truth=False)
    free = check_detector(_cfg(tiny_root, tmp_path / "free", manifest=no_gt, detector="file",
                               detections=str(src.run.detections_dir), max_frames=FRAMES),
                          client)
    assert "ground_truth" not in free and free["basis"].startswith("label-free")
    assert set(free["consistency"]["per_camera"]) == set(m.camera_ids)
    assert free["sampson_median_px"]


def test_detector_check_cli_measures_thresholds_by_default(tiny_root, tmp_path):
    """`python -m tools detector-check` without pixel options uses stage 1's thresholds from
    the measured noise (as `make pseudolabels` does), records them, and judges consistency
    against the largest validity threshold a camera used; given pixels still win."""
    from click.testing import CliRunner

    from tools.detector_check import main

    args = ["--manifest", str(SYNTHETIC_MANIFEST), "--root", str(tiny_root), "--detector", "gt",
            "--noise-px", "4", "--max-frames", str(FRAMES), "--subjects", "S1", "--workers", "1"]
    auto = CliRunner().invoke(main, args + ["--out", str(tmp_path / "auto")])
    assert auto.exit_code == 0, auto.output
    report = json.loads((tmp_path / "auto" / "detector_check.json").read_text())
    measured = report["stage1_thresholds"]["S1"]
    assert measured["ransac_threshold"] == measured["reproj_threshold"] == "auto"
    used = [c["reproj_threshold_px"] for c in measured["cameras"].values()]
    assert report["reproj_threshold_px"] == pytest.approx(max(used))
    assert max(used) > 10.0  # 4 sigma of ~4 px noise, not the old fixed 10 px
    given = CliRunner().invoke(main, args + ["--out", str(tmp_path / "given"),
                                             "--reproj-threshold-px", "25"])
    assert given.exit_code == 0, given.output
    report = json.loads((tmp_path / "given" / "detector_check.json").read_text())
    assert report["reproj_threshold_px"] == 25.0
