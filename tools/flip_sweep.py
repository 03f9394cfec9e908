"""Does a pooled camera pair ever flip silently? A sweep over real rigs, noise, outliers, RANSAC
thresholds and seeds (issue 12, part 2).

Motion capture (a BVH clip, e.g. CMU 131_01) is projected through every camera pair of several
Human3.6M rigs (the project's data_manifests/h36m.yaml, one rig per subject; full resolution,
distortion included), with Gaussian noise and a share of outlier joints (displaced 30-150 px,
confidence left high), and each pair is fitted twice:

* ``single``: one RANSAC hypothesis refined (:func:`pipeline.geometry.epipolar.fit_pair_pooled`, the pooled
  fit before this check existed);
* ``robust``: the job's fit (:func:`pipeline.geometry.hypotheses.fit_pair_robust`): hypotheses
  compared on all correspondences, ambiguous pairs flagged and not labelled.

The robust fits are then judged in every two-, three- and four-camera rig of the draw after the
job's loop checks (:func:`pipeline.geometry.loops.check_rig`: loop outliers refused, ambiguous
pairs that certain loops confirm labelled). A pair is *off* when its rotation is more than
``OFF_DEG`` from the truth. The claims under test: no off pair is labelled (``unflagged off`` is
0), refusals are right (``precision``: the share of refused pairs that are off), close pairs are
not refused (``false-alarm rate``: the share of pairs within ``OFF_DEG`` that are refused), and
every rig labels every camera (``rigs with a camera unlabelled``).

Run: ``python -m tools flip-sweep --bvh CLIP.bvh`` (``make flip-sweep BVH=...``).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.geometry import epipolar as epi
from eval.tables import to_markdown as eval_markdown
from pipeline.geometry.cameras import Camera, relative_pose, rotation_error_deg
from pipeline.geometry.epipolar import PairGeometry
from pipeline.geometry.hypotheses import BOOTSTRAP_RUNS, fit_pair_robust
from pipeline.geometry.loops import check_rig
from tools import docs_tables
from tools.docs_tables import docs_table_option
from tools.geometry_bench import (load_bvh_motion, load_rig_from_manifest, load_synthetic_motion,
                                  observe)

OFF_DEG = 5.0
SUBJECTS = ("S1", "S5", "S9", "S11")
NOISES_PX = (2.0, 5.0, 10.0)
THRESHOLDS_PX = (1.0, 2.0, 5.0, 10.0, 20.0)
"""RANSAC thresholds swept; 1 px is the job's default (``JobConfig.ransac_threshold_px``)."""
RIG_SIZES = (2, 3, 4)


@dataclass(frozen=True)
class SweepSpec:
    """What the sweep covers: rigs (subjects of h36m.yaml, and every two-, three- and
    four-camera rig of their cameras), noise levels (px), outlier share, RANSAC thresholds (px)
    and seeds (noise draws and RANSAC seeds); refits of the guard's bootstrap."""

    subjects: tuple[str, ...] = SUBJECTS
    noises_px: tuple[float, ...] = NOISES_PX
    outlier_rate: float = 0.1
    thresholds_px: tuple[float, ...] = THRESHOLDS_PX
    seeds: tuple[int, ...] = (0, 1, 2)
    rig_sizes: tuple[int, ...] = RIG_SIZES
    bootstrap_runs: int = BOOTSTRAP_RUNS


@dataclass
class Draw:
    """One noise draw of a rig at one RANSAC threshold: every camera pair's robust fit (and its
    single-hypothesis rotation error, seconds), the normalised 2D and masks the loops read."""

    fits: dict[tuple[str, str], PairGeometry]
    single_err_deg: dict[tuple[str, str], float]
    seconds: dict[tuple[str, str], float]
    x: dict[str, np.ndarray]
    mask: dict[str, np.ndarray]


def fit_draw(rig: dict[str, Camera], X: np.ndarray, noise_px: float, outlier_rate: float,
             thresholds_px: tuple[float, ...], seed: int,
             bootstrap_runs: int = BOOTSTRAP_RUNS) -> dict[float, Draw]:
    """Both fits of every camera pair of ``rig`` at every threshold, on one noise draw."""
    rng = np.random.default_rng(seed)
    x = {c: observe(X, cam, noise_px, outlier_rate, rng)[1] for c, cam in rig.items()}
    mask = {c: np.isfinite(v).all(-1) for c, v in x.items()}
    out = {}
    for thr in thresholds_px:
        d = Draw({}, {}, {}, x, mask)
        for a, b in itertools.combinations(rig, 2):
            f = float(np.mean([rig[c].K[0, 0] for c in (a, b)]))
            single = epi.fit_pair_pooled(x[a], x[b], mask[a] & mask[b], thr, f, seed=seed)
            R_true = true_rotation(rig, a, b)
            d.single_err_deg[(a, b)] = (float(rotation_error_deg(single.R, R_true))
                                        if single.ok else np.nan)
            t0 = time.perf_counter()
            d.fits[(a, b)] = fit_pair_robust(x[a], x[b], mask[a] & mask[b], thr, f, seed=seed,
                                             cam_a=a, cam_b=b, bootstrap_runs=bootstrap_runs)
            d.seconds[(a, b)] = time.perf_counter() - t0
        out[thr] = d
    return out


def true_rotation(rig: dict[str, Camera], a: str, b: str) -> np.ndarray:
    """The rotation from camera ``a`` to camera ``b`` of the rig."""
    return relative_pose(rig[a].R, rig[a].t, rig[b].R, rig[b].t)[0]


def pair_row(g: PairGeometry, rig: dict[str, Camera]) -> dict:
    """A fitted pair's outcome: its rotation error (NaN without a pose), labelled (``ok``),
    flagged (labelled with a warning: uncertain, the only pair of a camera), refused (a pose,
    not labelled: ambiguous or contradicted by the loops), failed (no pose)."""
    failed = not g.ok and not g.ambiguous and g.n_hypotheses == 0
    return {"pair": f"{g.cam_a}-{g.cam_b}",
            "err_deg": np.nan if failed else float(rotation_error_deg(
                g.R, true_rotation(rig, g.cam_a, g.cam_b))),
            "ok": bool(g.ok), "flagged": g.flagged,
            "refused": bool(not g.ok and not failed),
            "ambiguous": bool(g.ambiguous), "failed": failed, "reason": g.reason,
            "cost_margin": g.cost_margin, "runner_up_deg": g.runner_up_deg,
            "rotation_se_deg": g.rotation_se_deg, "loop_err_deg": g.loop_err_deg,
            "cheirality": g.cheirality, "n_hypotheses": g.n_hypotheses}


def rig_rows(d: Draw, rig: dict[str, Camera], sizes: tuple[int, ...]) -> list[dict]:
    """Every sub-rig of ``sizes`` cameras of the draw: its pairs after the job's loop checks
    (:func:`pipeline.geometry.loops.check_rig`), one row per pair, with the rig's name, size and
    whether it labels every camera (``rig_labelled``: each camera has a labelled pair)."""
    rows = []
    for k in sizes:
        for cams in itertools.combinations(rig, k):
            fits = check_rig([d.fits[p] for p in itertools.combinations(cams, 2)], d.x, d.mask)
            covered = {c for g in fits if g.ok for c in (g.cam_a, g.cam_b)}
            rows += [{"rig": "+".join(cams), "rig_cameras": k,
                      "rig_labelled": covered == set(cams), **pair_row(g, rig)} for g in fits]
    return rows


def run_sweep(X: np.ndarray, spec: SweepSpec, progress: bool = True
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fits, rigs): one row per pair fit (subject, noise, seed, threshold, pair; the guard of
    :func:`fit_pair_robust` alone), and one row per pair of every sub-rig after the loop checks.
    Each pair is fitted once per draw and threshold; its sub-rigs reuse that fit."""
    jobs = list(itertools.product(spec.subjects, spec.noises_px, spec.seeds))
    rigs = {s: load_rig_from_manifest(s) for s in spec.subjects}
    fits, rig_out = [], []
    for subject, noise, seed in tqdm(jobs, desc="flip sweep", unit="rig draw",
                                     disable=not progress):
        rig = rigs[subject]
        for thr, d in fit_draw(rig, X, noise, spec.outlier_rate, spec.thresholds_px,
                               seed, spec.bootstrap_runs).items():
            key = {"subject": subject, "noise_px": noise, "seed": seed, "threshold_px": thr}
            fits += [{**key, **pair_row(g, rig), "single_err_deg": d.single_err_deg[p],
                      "seconds": d.seconds[p]} for p, g in d.fits.items()]
            rig_out += [{**key, **r} for r in rig_rows(d, rig, spec.rig_sizes)]
    return pd.DataFrame(fits), pd.DataFrame(rig_out)


def guard_counts(g: pd.DataFrame) -> dict:
    """How the guard decided on the pairs of ``g``: pairs, off (> ``OFF_DEG`` from the truth),
    refused, labelled with a warning (``flagged``: uncertain, the only pair of a camera) and of
    those how many are off, unflagged off (labelled without a flag although off: must be 0),
    precision (share of refused pairs that are off), false-alarm rate (share of pairs within
    ``OFF_DEG`` that are refused), failed (no pose) and the worst rotation error of a pair
    labelled without a flag."""
    off = g["err_deg"] > OFF_DEG
    close = g["err_deg"] <= OFF_DEG
    refused = g["refused"].astype(bool)
    flagged = g["flagged"].astype(bool) if "flagged" in g else pd.Series(False, index=g.index)
    plain = g["ok"].astype(bool) & ~flagged
    return {"pairs": len(g), "off": int(off.sum()), "refused": int(refused.sum()),
            "flagged": int(flagged.sum()), "flagged off": int((flagged & off).sum()),
            "unflagged off": int((off & plain).sum()),
            "precision": float((refused & off).sum() / refused.sum()) if refused.any()
            else np.nan,
            "close refused": int((refused & close).sum()),
            "false-alarm rate": float((refused & close).sum() / close.sum()) if close.any()
            else np.nan,
            "failed": int(g["failed"].sum()),
            "worst labelled, deg": float(g.loc[plain, "err_deg"].max()) if plain.any()
            else np.nan}


def rig_counts(g: pd.DataFrame) -> dict:
    """:func:`guard_counts` of a group of rig rows, with the rigs counted and those that left a
    camera without labels (a two-camera rig: no labels at all)."""
    per_rig = g.groupby(["subject", "noise_px", "seed", "threshold_px", "rig"])["rig_labelled"]
    labelled = per_rig.first()
    return {"rigs": len(labelled), "rigs with a camera unlabelled": int((~labelled).sum()),
            **guard_counts(g)}


def _table(df: pd.DataFrame, by: tuple[str, str], counts) -> pd.DataFrame:
    """``counts`` of every (first, second) group of ``df``, each first-level group's total
    (second "all") after its rows, and the grand total ("all", "all")."""
    rows = []
    for first, g1 in df.groupby(by[0], sort=False):
        rows += [{by[0]: first, by[1]: second, **counts(g2)}
                 for second, g2 in g1.groupby(by[1], sort=False)]
        rows.append({by[0]: first, by[1]: "all", **counts(g1)})
    rows.append({by[0]: "all", by[1]: "all", **counts(df)})
    return pd.DataFrame(rows).set_index(list(by))


def summarise(fits: pd.DataFrame, rigs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The sweep's tables: ``rigs``, the job's decisions per (noise, rig size) after the loop
    checks, with the rigs left without labels; ``thresholds``, the pair guard alone per
    (noise, RANSAC threshold), beside the single-hypothesis fit's off count."""
    by_rig = _table(rigs.assign(noise=rigs["noise_px"].map("{:g}".format),
                                cameras=rigs["rig_cameras"].astype(str)),
                    ("noise", "cameras"), rig_counts)

    def fit_counts(g: pd.DataFrame) -> dict:
        c = guard_counts(g)
        return {"pairs": c.pop("pairs"), "off, single fit": int(
            (g["single_err_deg"] > OFF_DEG).sum()), **c}

    by_thr = _table(fits.assign(noise=fits["noise_px"].map("{:g}".format),
                                thr=fits["threshold_px"].map("{:g}".format)),
                    ("noise", "thr"), fit_counts)
    return {"rigs": by_rig.rename_axis(["noise px", "rig cameras"]),
            "thresholds": by_thr.rename_axis(["noise px", "RANSAC thr px"])}


SHARES = {"precision": 2, "false-alarm rate": 3}


def to_markdown(tables: dict[str, pd.DataFrame]) -> str:
    """The summary tables as Markdown."""
    return ("Per rig size, after the job's loop checks (each pair of every two-, three- and "
            "four-camera rig of each draw):\n\n"
            + tables_md(tables["rigs"])
            + "\nThe pair guard alone (each pair fit once), per RANSAC threshold:\n\n"
            + tables_md(tables["thresholds"]))


def tables_md(t: pd.DataFrame) -> str:
    return eval_markdown(t, digits=1, digits_by_column=SHARES)


@click.command("flip-sweep")
@click.option("--bvh", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Motion clip (BVH, e.g. CMU 131_01); default: the procedural synthetic motion.")
@click.option("--step", default=4, show_default=True, help="Use every step-th BVH frame.")
@click.option("--subjects", default=",".join(SUBJECTS), show_default=True,
              help="Human3.6M rigs (subjects of data_manifests/h36m.yaml).")
@click.option("--seeds", default=3, show_default=True, help="Noise draws (and RANSAC seeds).")
@click.option("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS_PX),
              show_default=True, help="RANSAC thresholds, px.")
@click.option("--noises", default=",".join(f"{t:g}" for t in NOISES_PX), show_default=True,
              help="Gaussian 2D noise levels, px.")
@click.option("--outliers", default=0.1, show_default=True, type=click.FloatRange(0.0, 0.9),
              help="Share of outlier joints per view (displaced 30-150 px).")
@click.option("--bootstrap-runs", default=BOOTSTRAP_RUNS, show_default=True, type=click.IntRange(2),
              help="Refits of the guard's bootstrap of the rotation's standard error (the job's "
                   "value by default; a study of the guard may raise it).")
@click.option("--out", default="outputs/bench/flip_sweep", show_default=True,
              help="Folder for pairs.csv (every fit), rigs.csv (every pair of every sub-rig) "
                   "and table.md.")
@docs_table_option("flip_sweep")
def main(bvh: Path | None, step: int, subjects: str, seeds: int, thresholds: str,
         noises: str, outliers: float, bootstrap_runs: int, out: str,
         docs_table: Path | None) -> None:
    """Every camera pair of the Human3.6M rigs at 2/5/10 px noise with 10 % outlier joints and
    RANSAC thresholds 1-20 px, judged in every two-, three- and four-camera rig: are all pairs
    more than 5 deg off refused, how many refusals are right (precision), how many close pairs
    are refused (false alarms), and does every rig label every camera? One core: 17-23 minutes
    with the defaults (1,080 pair fits), measured on a shared 2-core machine."""
    cv2.setNumThreads(1)
    X = load_bvh_motion(bvh, step=step) if bvh is not None else load_synthetic_motion()
    spec = SweepSpec(subjects=tuple(subjects.split(",")), seeds=tuple(range(seeds)),
                     thresholds_px=tuple(float(t) for t in thresholds.split(",")),
                     noises_px=tuple(float(t) for t in noises.split(",")),
                     outlier_rate=outliers, bootstrap_runs=bootstrap_runs)
    t0 = time.perf_counter()
    fits, rigs = run_sweep(X, spec)
    md = to_markdown(summarise(fits, rigs))
    Path(out).mkdir(parents=True, exist_ok=True)
    fits.to_csv(Path(out) / "pairs.csv", index=False)
    rigs.to_csv(Path(out) / "rigs.csv", index=False)
    (Path(out) / "table.md").write_text(md)
    motion = bvh.name if bvh else "procedural motion"
    head = (f"{len(fits)} pair fits ({len(rigs)} pair decisions in "
            f"{rigs.groupby(['subject', 'noise_px', 'seed', 'threshold_px', 'rig']).ngroups} "
            f"rigs); motion: {motion}, {len(X)} frames; rigs of {', '.join(spec.subjects)}; "
            f"{len(spec.seeds)} seeds; {spec.outlier_rate:.0%} outlier joints; "
            f"{spec.bootstrap_runs} bootstrap refits; "
            f"{time.perf_counter() - t0:.0f} s, robust fit median "
            f"{fits['seconds'].median():.2f} s. "
            f"Off: more than {OFF_DEG:g} deg from the true rotation.")
    click.echo(head + "\n\n" + md)
    docs_tables.write(docs_table, head + "\n\n" + md)
