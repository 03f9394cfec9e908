"""Stage 1 as a Dask job: plan the tasks of ``pipeline/job/tasks.py``, submit, track, summarise.

Two kinds of task, linked by dependencies so that workers never idle at a wave barrier:
``detect_chunk`` per (sequence, camera, chunk of frames), then ``label_subject`` per subject
(fit its geometry on all its sequences, label them, write shards) as soon as that subject's
detections are on disk. The run folder (``pipeline.store.run_folder.RunFolder``) owns every path.
"""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from pipeline.store import shards as S
from pipeline.job import tasks as T
from pipeline.detect.consistency import run_consistency
from pipeline.detect.registry import DETECTORS, DetectorChoice, resolve_detector
from pipeline.geometry.noise import REPROJ_FLOOR_PX
from pipeline.geometry.triangulation import reference_lengths
from pipeline.job.config import JobConfig, check_same_configuration, run_record
from pipeline.store.manifest import Manifest, ManifestError
from pipeline.job.tasks import selected_sequences


@dataclass
class JobSummary:
    """Counts and seconds of one run (``summary.json``).

    Counts: ``frames`` the frames (instants) of the selected sequences, each counted once
    whatever the number of cameras; ``detection_rows`` the detection rows written (one per
    frame and camera, one per person and frame and camera with a detector of several people);
    ``failed_frames`` those rows that give no label, frame-views (an unreadable frame, too few
    confident joints, nobody where one person was expected); ``empty_views`` the views where a
    detector of several people found nobody, a fact of the footage that is neither a failure
    nor a reason for exit 2; ``rows`` the shard rows; ``uncertain_pairs`` the camera pairs
    labelled although their rotation is uncertain, because no other pair labels one of their
    cameras (``pipeline.geometry.loops.label_last_uncertain``; a warning in failures.parquet,
    not a failure: exit 0).

    ``seconds``: ``detect_wall`` and ``subjects_wall`` are the job's wall time in detection and
    after it; each step's ``<step>_cpu`` is the sum over its tasks of the step's *wall* seconds
    in the task (the name predates the CPU figures; on a busy machine it counts waiting for a
    core), ``<step>_thread_cpu`` the sum of the CPU seconds of the task's thread in the step
    (``pipeline.job.tasks.Clock``): what the step itself costs, whatever else the machine runs.
    Steps: read, detector, crops (encoding + crop part), detector_setup (the model load of a
    worker's first task), detections_write, detect_tasks (whole detection tasks),
    geometry_fit, label (triangulation + shards), pack_crops. The client's own: preflight
    (resolving the detector and every check of :func:`preflight`, a detector build included),
    client_waiting (submitting and collecting results), run_tables (geometry, consistency,
    failures and cameras files).

    ``thresholds``: subject -> its measured 2D noise and the pixel thresholds used
    (``pipeline.geometry.noise.Thresholds.to_json``: per camera ``noise_px``,
    ``ransac_threshold_px``, ``reproj_threshold_px``; per pair ``noise_px`` and
    ``ransac_threshold_px``; whether each threshold was ``given`` or ``auto``)."""

    frames: int = 0
    detection_rows: int = 0
    failed_frames: int = 0
    empty_views: int = 0
    failed_pairs: int = 0
    pairs_losing_labels: int = 0
    uncertain_pairs: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    inconsistent: bool = False
    consistency: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    refused_geometry: str = ""

    @property
    def exit_code(self) -> int:
        """3 when the detections disagree across views (``inconsistent``,
        pipeline/detect/consistency.py: the labels are written but should not be trained on without a
        look; 3 outranks 2); else 2 when frames lost their labels: failed frames, or failed pairs
        (or cameras left out of a rig) whose cameras got no labels through another pair; else 0.
        A run without any label because its geometry refused every camera pair (or rig) is a 2,
        not a 3: ``refused_geometry`` names each refused pair and why
        (:func:`geometry_refusal`), and nothing judges the detections.
        A failed pair whose cameras are labelled through other pairs is a warning
        (``failed_pairs`` counts every failed pair, ``pairs_losing_labels`` those that cost
        labels; failures.parquet has each row's ``severity``)."""
        if self.inconsistent:
            return 3
        return 2 if (self.failed_frames or self.pairs_losing_labels) else 0

    def inconsistency_warning(self, cfg: JobConfig) -> str:
        """The stderr warning of an inconsistent run ('' when consistent)."""
        if not self.inconsistent:
            return ""
        reasons = "; ".join(self.consistency.get("reasons", []))
        return (f"WARNING: the 2D detections of {cfg.out} disagree across views ({reasons}); "
                f"detector {cfg.detector!r} is probably wrong on this footage. The labels are "
                "written, but check the detector first: make detector-check "
                f"MANIFEST={cfg.manifest} DETECTOR=... (summary.json: 'consistency').")


def plan_chunks(cfg: JobConfig) -> list[tuple[str, str, list[int]]]:
    """(sequence key, camera, frames) of every detection task."""
    out = []
    for seq in selected_sequences(cfg):
        idx = [int(i) for i in T.frame_indices(cfg, seq)]
        for cam in seq.cameras:
            for s in range(0, len(idx), cfg.chunk_frames):
                out.append((seq.key, cam, idx[s: s + cfg.chunk_frames]))
    return out


def preflight(cfg: JobConfig) -> Manifest:
    """Every check that can fail before any work starts (nothing is written): the manifest, the
    requested subjects, every sequence's frame source, the extrinsics a mode needs, the size of
    the joint set's labels (up-to-scale modes: :func:`reference_lengths`), the
    configuration of an existing run folder, the detector. Returns the manifest."""
    m = T.manifest_of(cfg)
    if cfg.subjects:
        unknown = sorted(set(cfg.subjects) - {s.subject for s in m.sequences})
        if unknown:
            raise ManifestError(f"{m.path}: subjects {unknown} have no sequence (known: "
                                f"{sorted({s.subject for s in m.sequences})})")
    seqs = selected_sequences(cfg)
    check_frames(cfg, m, seqs)
    if cfg.mode.needs_extrinsics:
        for s in seqs:
            if not m.has_extrinsics(s.subject, tuple(s.cameras)):
                raise ManifestError(f"{m.path}: GEOMETRY={cfg.geometry} needs extrinsics of "
                                    f"subject {s.subject} cameras {list(s.cameras)}")
    if not cfg.mode.metric:  # labels up to scale need a size: declared, or H36M-17's bones
        try:
            reference_lengths(m.joint_set)
        except ValueError as e:
            raise ManifestError(f"{m.path}: joint_set.bone_lengths_mm: {e}") from None
    check_same_configuration(cfg, m)
    detector = T.detector_of(cfg)  # missing checkpoint, optional package
    check_keys = getattr(detector, "check_keys", None)  # precomputed detections: the keys match
    if check_keys is not None:
        check_keys([(m.dataset, s.subject, s.action, str(s.subaction), c)
                    for s in seqs for c in s.cameras])
    given = detector.num_joints
    if given != m.joint_set.num_joints:
        raise ManifestError(f"{m.path}: joint_set {m.joint_set.name} has "
                            f"{m.joint_set.num_joints} joints, detector {cfg.detector} gives "
                            f"{given}: use precomputed detections in your joint order "
                            "(--detector file) or a detector trained on this joint set")
    return m


def check_frames(cfg: JobConfig, m: Manifest, seqs: list) -> None:
    """Every frame the run will read exists (each file, or each video and its length), the
    first missing one named; none is checked when the run reads no frame
    (``JobConfig.reads_frames``), but then each sequence needs ``num_frames``."""
    if not cfg.reads_frames:
        for s in seqs:  # the frame count: num_frames, else the files (when they are there)
            if s.num_frames is None and not len(_counted_frames(cfg, s)):
                raise ManifestError(f"{m.path}: sequence {s.key}: num_frames is needed when no "
                                    "frame is read (--no-crops with a detector without images) "
                                    "and the frame source cannot be counted")
        return
    try:
        m.check_sources(seqs, frames=lambda s: T.frame_indices(cfg, s))
    except ManifestError as e:
        spec = DETECTORS.get(cfg.detector)
        if spec is None or spec.needs_images:
            raise
        raise ManifestError(f"{e} (with --detector {cfg.detector}, --no-crops labels from the "
                                   "detections alone, reading no frame)") from None


def _counted_frames(cfg: JobConfig, seq) -> np.ndarray:
    """The sequence's frame indices counted from its source, or none where it cannot be read."""
    try:
        return T.frame_indices(cfg, seq)
    except (ManifestError, OSError, ValueError):
        return np.zeros(0, np.int64)


def _progress(futures: list, desc: str, show: bool) -> Iterator[Any]:
    """Yield results as tasks finish, with a progress bar."""
    from distributed import as_completed
    from tqdm import tqdm

    with tqdm(total=len(futures), desc=desc, unit="task", disable=not show) as bar:
        for fut in as_completed(futures):
            yield fut.result()
            bar.update()


def submit(cfg: JobConfig, client: Any) -> tuple[list, list]:
    """Submit every task; returns (detection futures, the subject and crop-packing futures
    that follow them). Task keys are unique to
    this call: a client reused for another run must not hand back results the scheduler still
    holds under the same key."""
    run = uuid.uuid4().hex[:8]
    seq_subject = {s.key: s.subject for s in selected_sequences(cfg)}
    det_futs, by_subject, by_view = [], {}, {}
    for k, c, f in plan_chunks(cfg):
        fut = client.submit(T.detect_chunk, cfg, k, c, f, key=f"detect-{run}-{k}-{c}-{f[0]}",
                            retries=2, pure=False)
        det_futs.append(fut)
        by_subject.setdefault(seq_subject[k], []).append(fut)
        by_view.setdefault((k, c), []).append(fut)
    subject_futs = [client.submit(T.label_subject, cfg, s, by_subject[s], key=f"subject-{run}-{s}",
                                  retries=2, pure=False) for s in sorted(by_subject)]
    # Crop parts -> one crop shard per (sequence, camera), beside the subjects' labelling.
    pack_futs = [client.submit(T.pack_crops, cfg, k, c, futs, key=f"pack-{run}-{k}-{c}",
                               retries=2, pure=False)
                 for (k, c), futs in by_view.items()] if cfg.write_crops else []
    return det_futs, subject_futs + pack_futs


def resolve_job(cfg: JobConfig) -> tuple[JobConfig, DetectorChoice]:
    """The configuration with its detector resolved once (``auto`` -> a back-end, by
    ``pipeline.detect.registry.resolve_detector``; ``detector_requested`` keeps what was asked), so
    that every worker builds the same detector and config.json names both."""
    choice = resolve_detector(cfg.detector, T.manifest_of(cfg), cfg.detector_options())
    if choice.name != cfg.detector:
        cfg = dataclasses.replace(cfg, detector=choice.name, detector_requested=choice.requested)
    return cfg, choice


def run_job(cfg: JobConfig, client: Any, progress: bool = True) -> JobSummary:
    """Run stage 1 on a Dask ``client``; returns counts and wall times.

    Fails before any work if the manifest's sources are missing or the detector cannot run here.
    """
    client_clock = T.Clock()  # the client's own CPU by phase (its main thread)
    cfg, _ = resolve_job(cfg)
    m = preflight(cfg)
    preflight_wall, preflight_cpu = client_clock.lap()
    run = cfg.run
    run.path.mkdir(parents=True, exist_ok=True)
    S.write_json_atomic(run.config_file, run_record(cfg, m))
    summary = JobSummary(frames=sum(len(T.frame_indices(cfg, s))
                                    for s in selected_sequences(cfg)))
    t0 = time.perf_counter()
    det_futs, subject_futs = submit(cfg, client)
    steps = ("read", "detect", "crops", "setup", "write", "task")
    names = dict(zip(steps, ("read", "detector", "crops", "detector_setup", "detections_write",
                             "detect_tasks")))
    cpu = {f"{names[k]}_{kind}": 0.0 for k in steps for kind in ("cpu", "thread_cpu")}
    for r in _progress(det_futs, "detect 2D", progress):
        summary.detection_rows += r.rows
        summary.failed_frames += r.failed
        summary.empty_views += r.empty
        for k in steps:
            cpu[f"{names[k]}_cpu"] += getattr(r, f"t_{k}")
            cpu[f"{names[k]}_thread_cpu"] += getattr(r, f"c_{k}")
    summary.seconds.update(detect_wall=time.perf_counter() - t0, **cpu)
    t0 = time.perf_counter()
    finished = list(_progress(subject_futs, "fit + label subjects, pack crops", progress))
    results = sorted((r for r in finished if isinstance(r, T.SubjectResult)),
                     key=lambda r: r.subject)
    packs = [r for r in finished if isinstance(r, T.PackResult)]
    summary.seconds.update(
        subjects_wall=time.perf_counter() - t0,  # beyond detection
        geometry_fit_cpu=sum(r.t_fit for r in results),
        label_cpu=sum(r.t_label for r in results),
        pack_crops_cpu=sum(r.wall for r in packs),
        geometry_fit_thread_cpu=sum(r.c_fit for r in results),
        label_thread_cpu=sum(r.c_label for r in results),
        pack_crops_thread_cpu=sum(r.cpu for r in packs))
    for r in results:
        summary.shards_written += r.written
        summary.shards_skipped += r.skipped
        summary.rows += r.rows
    waiting_wall, waiting_cpu = client_clock.lap()
    summary.seconds.update(preflight_wall=preflight_wall, preflight_thread_cpu=preflight_cpu,
                           client_waiting_thread_cpu=waiting_cpu)
    # the run tables' seconds are measured before summary.json is written (its last step)
    _write_run_tables(cfg, results, summary, client_clock)
    return summary


def _write_run_tables(cfg: JobConfig, results: list[T.SubjectResult], summary: JobSummary,
                      clock: T.Clock | None = None) -> None:
    run = cfg.run
    geo = T.geometry_table(results)
    S.write_table_atomic(pa.Table.from_pandas(geo, preserve_index=False), run.geometry_file)
    summary.failed_pairs = int((~geo["ok"].astype(bool)).sum()) if len(geo) else 0
    summary.uncertain_pairs = len(T.uncertain_pairs(geo))
    summary.thresholds = {r.subject: r.thresholds for r in results if r.thresholds}
    fail = T.failures_table(run, geo, {r.subject: set(r.labelled) for r in results})
    c = run_consistency(run, cfg.conf_threshold, run_reproj_threshold(cfg, summary.thresholds))
    summary.refused_geometry = geometry_refusal(fail, geo) if c.label_rows == 0 else ""
    if summary.refused_geometry:  # no label to judge the detections by: not their fault
        c = dataclasses.replace(c, inconsistent=False, reasons=[summary.refused_geometry])
    summary.inconsistent, summary.consistency = c.inconsistent, c.to_dict()
    S.write_json_atomic(run.cameras_file, T.rigs_json(results))
    summary.pairs_losing_labels = int(((fail["stage"] == "geometry")
                                       & (fail["severity"] == "error")).sum()) if len(fail) else 0
    S.write_table_atomic(T.typed_failures(fail), run.failures_file)
    if clock is not None:
        summary.seconds["run_tables_wall"], summary.seconds["run_tables_thread_cpu"] = clock.lap()
    S.write_json_atomic(run.summary_file, dataclasses.asdict(summary))


def run_reproj_threshold(cfg: JobConfig, thresholds: dict[str, Any]) -> float:
    """The validity threshold the run's consistency check compares its median reprojection
    error with: the given one, else the largest any camera used (the floor when none was
    recorded)."""
    if cfg.reproj_threshold_px is not None:
        return float(cfg.reproj_threshold_px)
    used = [c["reproj_threshold_px"] for t in thresholds.values()
            for c in t.get("cameras", {}).values() if c.get("reproj_threshold_px") is not None]
    return float(max(used)) if used else REPROJ_FLOOR_PX


def geometry_refusal(fail: Any, geo: Any) -> str:
    """Why a run without labels has none when its geometry is the cause: the camera pairs (or
    rig cameras) that failed with severity "error" in ``fail`` (:func:`T.failures_table`), each
    named with its subject and reason, and the cameras they left without labels; frame-views
    that failed detection are counted beside them. The geometry is the cause when every failed
    pair of ``geo`` (geometry.parquet) had a pose and was refused for it (ambiguous, its loops,
    an all-view rig that would not hold a camera: ``n_hypotheses`` > 0 or a "rig camera" row).
    '' otherwise: no geometry error, or a pair without a shared geometry at all (too few
    correspondences, RANSAC no better than chance: the detections are the suspects)."""
    if not len(fail) or not len(geo):
        return ""
    failed = geo[~geo["ok"].astype(bool) & (geo.get("kind", "pair") == "pair")]
    if len(failed) and not (failed["n_hypotheses"].fillna(0) > 0).all():
        return ""
    errors = fail[(fail["stage"] == "geometry") & (fail["severity"] == "error")]
    if not len(errors):
        return ""
    cams = sorted({f"{r.subject} {c}" for r in errors.itertuples() for c in r.camera.split("-")})
    detect = int((fail["stage"] == "detect").sum())
    return (f"no labels: the geometry refused camera pairs, leaving cameras {', '.join(cams)} "
            f"without labels ("
            + "; ".join(f"{r.subject} {r.camera}: {r.reason}" for r in errors.itertuples()) + ")"
            + (f"; {detect} frame-views also failed detection" if detect else ""))


def shards_hint(cfg: JobConfig) -> str:
    """The line that shows where a run's shards are and how to read one subject's rows with
    pandas, naming a subject the run wrote (the first in order)."""
    written = sorted(p.name.split("=", 1)[1] for p in cfg.run.shards_dir.glob("subject=*"))
    subject = written[0] if written else "<subject>"
    return (f"shards: {cfg.run.shards_dir}  (pandas.read_parquet(path, filters=[('subject', "
            f"'==', {subject!r})]))")


def local_client(workers: int, threads_per_worker: int = 1, scheduler: str | None = None,
                 dashboard: bool = False, dashboard_address: str = ":0"):
    """A Dask client: on ``scheduler`` (an existing cluster) or on a new LocalCluster (with a
    dashboard on ``dashboard_address`` when ``dashboard``; ":0" picks a free port)."""
    import dask
    from distributed import Client, LocalCluster

    # One BLAS/OpenMP thread per worker process: the workers are the parallelism, and
    # oversubscribed BLAS threads slow scipy's least squares about 4x on a loaded machine.
    # OpenCV's own thread pool likewise (OPENCV_FOR_THREADS_NUM): a task's steps then run in
    # its thread, which is what their CPU seconds (pipeline.job.tasks.Clock) measure.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "OPENCV_FOR_THREADS_NUM"):
        os.environ.setdefault(var, str(threads_per_worker))
    if scheduler:
        return Client(scheduler)
    # Without a dashboard nobody reads Dask's profiles and system graphs: QUIET_DASK samples
    # them less often (a third of the idle cluster's CPU; README, stage-1 overhead). The
    # scheduler still serves its HTTP routes (health, metrics): on a free port, not 8787, so
    # that several clusters (or a user's own) never collide.
    with dask.config.set({**WORKER_MALLOC, **({} if dashboard else QUIET_DASK)}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                               processes=True, dashboard_address=dashboard_address if dashboard
                               else None, scheduler_kwargs=None if dashboard else
                               {"dashboard_address": ":0"}, silence_logs=40)
    return Client(cluster)


WORKER_MALLOC = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
"""The worker processes keep glibc's own heap tuning: Dask sets ``MALLOC_TRIM_THRESHOLD_=65536``
in every worker it spawns (to hand freed memory back to the system at once), and setting any
malloc threshold turns off glibc's dynamic mmap threshold, so every buffer over 128 KiB (a
decoded frame, a batch's activations) is mapped and unmapped afresh, page faults included.
Measured on the 2D network detecting 100 frames in one process: 2.7 ms of CPU per frame
without the variable, 4.2 ms with Dask's setting (README, "Speed of stage 1"). A variable set in
the environment of the process that starts the cluster still wins (Dask reads it first)."""

QUIET_DASK = {
    "distributed.worker.profile.enabled": False,         # the dashboard's profile (every 10 ms)
    "distributed.admin.system-monitor.interval": "2s",   # its CPU/memory graphs (500 ms)
    "distributed.worker.memory.monitor-interval": "1s",  # memory checks (100 ms)
    "distributed.admin.tick.interval": "100ms",          # event-loop health check (20 ms)
}
"""Dask settings of a LocalCluster without a dashboard: its background sampling costs CPU for
every second a run lasts (an idle 1-worker cluster: 0.6 CPU-s per 15 s with Dask's defaults,
0.2 with these); memory is still checked every second."""
