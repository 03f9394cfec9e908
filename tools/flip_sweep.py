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

A pair is *off* when its rotation is more than ``OFF_DEG`` from the truth. The claim under test:
every off pair is flagged (``unflagged off`` is 0). ``flagged, within 5 deg`` counts the price:
pairs the check refuses although their pose was close.

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
from pipeline.geometry.cameras import Camera, relative_pose, rotation_error_deg
from pipeline.geometry.hypotheses import fit_pair_robust
from tools import docs_tables
from tools.docs_tables import docs_table_option
from tools.geometry_bench import (load_bvh_motion, load_rig_from_manifest, load_synthetic_motion,
                                  observe)

OFF_DEG = 5.0
SUBJECTS = ("S1", "S5", "S9", "S11")
NOISES_PX = (2.0, 5.0, 10.0)
THRESHOLDS_PX = (1.0, 2.0, 5.0, 10.0, 20.0)


@dataclass(frozen=True)
class SweepSpec:
    """What the sweep covers: rigs (subjects of h36m.yaml), noise levels (px), outlier share,
    RANSAC thresholds (px) and seeds (noise draws and RANSAC seeds)."""

    subjects: tuple[str, ...] = SUBJECTS
    noises_px: tuple[float, ...] = NOISES_PX
    outlier_rate: float = 0.1
    thresholds_px: tuple[float, ...] = THRESHOLDS_PX
    seeds: tuple[int, ...] = (0, 1)


def pair_rows(rig: dict[str, Camera], X: np.ndarray, noise_px: float, outlier_rate: float,
              thresholds_px: tuple[float, ...], seed: int) -> list[dict]:
    """Both fits of every camera pair of ``rig`` at every threshold, on one noise draw."""
    rng = np.random.default_rng(seed)
    x = {c: observe(X, cam, noise_px, outlier_rate, rng)[1] for c, cam in rig.items()}
    rows = []
    for a, b in itertools.combinations(rig, 2):
        f = float(np.mean([rig[c].K[0, 0] for c in (a, b)]))
        mask = np.isfinite(x[a]).all(-1) & np.isfinite(x[b]).all(-1)
        R_true, _ = relative_pose(rig[a].R, rig[a].t, rig[b].R, rig[b].t)
        for thr in thresholds_px:
            single = epi.fit_pair_pooled(x[a], x[b], mask, thr, f, seed=seed)
            t0 = time.perf_counter()
            robust = fit_pair_robust(x[a], x[b], mask, thr, f, seed=seed)
            seconds = time.perf_counter() - t0
            failed = not robust.ok and not robust.ambiguous  # no pose (degenerate, z-test)
            err = np.nan if failed else float(rotation_error_deg(robust.R, R_true))
            rows.append({
                "pair": f"{a}-{b}", "threshold_px": thr,
                "single_err_deg": float(rotation_error_deg(single.R, R_true)) if single.ok
                else np.nan,
                "err_deg": err, "ok": bool(robust.ok), "ambiguous": bool(robust.ambiguous),
                "failed": failed,
                "cost_margin": robust.cost_margin, "runner_up_deg": robust.runner_up_deg,
                "rotation_se_deg": robust.rotation_se_deg, "cheirality": robust.cheirality,
                "n_hypotheses": robust.n_hypotheses, "seconds": seconds})
    return rows


def run_sweep(X: np.ndarray, spec: SweepSpec, progress: bool = True) -> pd.DataFrame:
    """One row per (rig, noise, seed, pair, threshold)."""
    jobs = list(itertools.product(spec.subjects, spec.noises_px, spec.seeds))
    rigs = {s: load_rig_from_manifest(s) for s in spec.subjects}
    rows = []
    for subject, noise, seed in tqdm(jobs, desc="flip sweep", unit="rig draw",
                                     disable=not progress):
        for r in pair_rows(rigs[subject], X, noise, spec.outlier_rate, spec.thresholds_px, seed):
            rows.append({"subject": subject, "noise_px": noise, "seed": seed, **r})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Counts per (noise, threshold) and in total: pairs, off pairs of the single-hypothesis fit,
    off pairs of the robust fit, how many of those are flagged, unflagged off pairs (must be 0),
    flagged pairs within ``OFF_DEG``, and the worst rotation error of a labelled pair."""
    def counts(g: pd.DataFrame) -> pd.Series:
        off = g["err_deg"] > OFF_DEG
        return pd.Series({
            "pairs": len(g),
            "off, single fit": int((g["single_err_deg"] > OFF_DEG).sum()),
            "off, robust fit": int(off.sum()),
            "off and flagged": int((off & g["ambiguous"]).sum()),
            "unflagged off": int((off & g["ok"]).sum()),
            "flagged, within 5 deg": int((~off & g["ambiguous"]).sum()),
            "failed (other reasons)": int(g["failed"].sum()),
            "worst labelled, deg": float(g.loc[g["ok"], "err_deg"].max()) if g["ok"].any()
            else np.nan})

    by = df.groupby(["noise_px", "threshold_px"]).apply(counts, include_groups=False)
    total = counts(df).to_frame().T
    total.index = pd.MultiIndex.from_tuples([("all", "all")], names=by.index.names)
    return pd.concat([by, total])


def to_markdown(table: pd.DataFrame) -> str:
    """The summary as a markdown table."""
    cols = list(table.columns)
    lines = ["| noise px | RANSAC thr px | " + " | ".join(cols) + " |",
             "|" + "---|" * (len(cols) + 2)]
    for (noise, thr), r in table.iterrows():
        cells = [f"{v:.1f}" if isinstance(v, float) and c.startswith("worst") else f"{int(v)}"
                 for c, v in r.items()]
        lines.append(f"| {noise} | {thr} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command("flip-sweep")
@click.option("--bvh", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Motion clip (BVH, e.g. CMU 131_01); default: the procedural synthetic motion.")
@click.option("--step", default=4, show_default=True, help="Use every step-th BVH frame.")
@click.option("--subjects", default=",".join(SUBJECTS), show_default=True,
              help="Human3.6M rigs (subjects of data_manifests/h36m.yaml).")
@click.option("--seeds", default=2, show_default=True, help="Noise draws (and RANSAC seeds).")
@click.option("--thresholds", default=",".join(f"{t:g}" for t in THRESHOLDS_PX),
              show_default=True, help="RANSAC thresholds, px.")
@click.option("--out", default="outputs/bench/flip_sweep", show_default=True,
              help="Folder for pairs.csv (every fit) and table.md.")
@docs_table_option("flip_sweep")
def main(bvh: Path | None, step: int, subjects: str, seeds: int, thresholds: str,
         out: str, docs_table: Path | None) -> None:
    """Every camera pair of the Human3.6M rigs at 2/5/10 px noise with 10 % outlier joints and
    RANSAC thresholds 1-20 px: how many pooled pairs are more than 5 deg off, and are they all
    flagged ambiguous (never labelled)? One core; about 10 minutes with the defaults."""
    cv2.setNumThreads(1)
    X = load_bvh_motion(bvh, step=step) if bvh is not None else load_synthetic_motion()
    spec = SweepSpec(subjects=tuple(subjects.split(",")), seeds=tuple(range(seeds)),
                     thresholds_px=tuple(float(t) for t in thresholds.split(",")))
    t0 = time.perf_counter()
    df = run_sweep(X, spec)
    table = summarise(df)
    md = to_markdown(table)
    Path(out).mkdir(parents=True, exist_ok=True)
    df.to_csv(Path(out) / "pairs.csv", index=False)
    (Path(out) / "table.md").write_text(md + "\n")
    click.echo(f"{bvh.name if bvh else 'procedural motion'}: {len(X)} frames, rigs "
               f"{', '.join(spec.subjects)}, seeds {len(spec.seeds)}, {len(df)} pair fits in "
               f"{time.perf_counter() - t0:.0f} s (robust fit median "
               f"{df['seconds'].median():.2f} s)\n")
    click.echo(md)
    docs_tables.write(docs_table, f"{len(df)} pair fits; motion: "
                                  f"{bvh.name if bvh else 'procedural motion'}.\n\n{md}")
