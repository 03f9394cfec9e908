"""Camera math and multi-view geometry: the epipolar pair fit, triangulation and validity, the
camera rig, all-view registration and bundle adjustment, pose hypotheses, left/right flips and
the geometry-mode registry. Imports only ``pipeline.joints`` from outside."""
