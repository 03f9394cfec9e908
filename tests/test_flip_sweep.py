"""The flip sweep's counts (tools/flip_sweep.py): precision and false-alarm rate of the pair
guard, counted by hand on a few pairs, and every sub-rig of a real draw judged after the loop
checks."""
from __future__ import annotations

import numpy as np
import pandas as pd

from tools.flip_sweep import SweepSpec, guard_counts, rig_rows, fit_draw, summarise
from tools.geometry_bench import load_rig_from_manifest, load_synthetic_motion


def test_precision_and_false_alarms_by_hand():
    """Seven pairs: three off (8 and 12 deg; one refused, one labelled; 9 deg labelled with a
    flag), three close (one refused), one failed (no pose, neither)."""
    g = pd.DataFrame({"err_deg": [8.0, 12.0, 0.5, 1.0, 4.9, np.nan, 9.0],
                      "ok": [False, True, False, True, True, False, True],
                      "flagged": [False, False, False, False, False, False, True],
                      "refused": [True, False, True, False, False, False, False],
                      "failed": [False, False, False, False, False, True, False]})
    c = guard_counts(g)
    assert (c["pairs"], c["off"], c["refused"], c["unflagged off"]) == (7, 3, 2, 1)
    assert (c["flagged"], c["flagged off"]) == (1, 1)
    assert c["precision"] == 0.5 and c["close refused"] == 1
    assert c["false-alarm rate"] == 1 / 3 and c["failed"] == 1
    assert c["worst labelled, deg"] == 12.0


def test_every_sub_rig_of_a_draw_is_judged():
    """One draw of the S1 rig (procedural motion, 2 px): 6 pair fits, judged in 6 two-camera,
    4 three-camera and 1 four-camera rig (24 pair decisions); every rig labels every camera."""
    rig = load_rig_from_manifest("S1")
    draws = fit_draw(rig, load_synthetic_motion(60), 2.0, 0.1, (2.0,), 0)
    rows = pd.DataFrame(rig_rows(draws[2.0], rig, (2, 3, 4)))
    assert len(draws[2.0].fits) == 6 and len(rows) == 24
    assert rows.groupby("rig_cameras")["rig"].nunique().to_dict() == {2: 6, 3: 4, 4: 1}
    assert rows["rig_labelled"].all() and (rows["err_deg"] < 5).all()
    key = {"subject": "S1", "noise_px": 2.0, "seed": 0, "threshold_px": 2.0}
    fits = pd.DataFrame([{**key, "pair": f"{a}-{b}", "err_deg": 1.0, "ok": True,
                          "refused": False, "failed": False, "single_err_deg": 1.0}
                         for a, b in draws[2.0].fits])
    t = summarise(fits, rows.assign(**key))
    assert t["rigs"].loc[("all", "all"), "rigs"] == 11
    assert t["rigs"].loc[("2", "2"), "rigs with a camera unlabelled"] == 0
    assert t["thresholds"].loc[("2", "2"), "pairs"] == 6
    assert SweepSpec().rig_sizes == (2, 3, 4)
