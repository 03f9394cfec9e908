"""Temporal smoothing of predicted poses: the One-Euro filter (Casiez, Roussel, Vogel, CHI 2012).

A first-order low-pass filter whose cut-off rises with the signal's speed: slow motion is
smoothed strongly (little jitter), fast motion little (little lag). Causal, so it runs while
frames are predicted. Each coordinate of each joint is filtered independently.
"""
from __future__ import annotations

import numpy as np


def _alpha(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2.0 * np.pi * np.asarray(cutoff_hz, np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter over arrays of any fixed shape (e.g. (J, 3) poses).

    Args:
        fps: frame rate of the samples (the time step is 1 / fps).
        min_cutoff_hz: cut-off at rest; lower = smoother, more lag.
        beta: how fast the cut-off rises with speed (units of the signal per second).
        d_cutoff_hz: cut-off of the speed estimate.
    A NaN entry is passed through and resets that entry's state (a joint that was not seen).
    """

    def __init__(self, fps: float, min_cutoff_hz: float = 1.0, beta: float = 0.01,
                 d_cutoff_hz: float = 1.0) -> None:
        if fps <= 0 or min_cutoff_hz <= 0 or d_cutoff_hz <= 0 or beta < 0:
            raise ValueError("One-Euro filter: fps, cut-offs must be > 0 and beta >= 0")
        self.dt = 1.0 / fps
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff_hz, beta, d_cutoff_hz
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None:
            self.x, self.dx = x.copy(), np.zeros_like(x)
            return x.copy()
        seen = np.isfinite(self.x) & np.isfinite(x)
        dx = np.where(seen, (x - np.where(seen, self.x, 0.0)) / self.dt, 0.0)
        a_d = _alpha(self.d_cutoff, self.dt)
        self.dx = a_d * dx + (1 - a_d) * np.where(seen, self.dx, 0.0)
        a = _alpha(self.min_cutoff + self.beta * np.abs(self.dx), self.dt)
        out = np.where(seen, a * x + (1 - a) * np.where(seen, self.x, 0.0), x)
        self.x = out
        return out.copy()


def smooth_sequence(poses: np.ndarray, fps: float, **kw: float) -> np.ndarray:
    """(F, ...) samples in time order -> the One-Euro filtered (F, ...) array."""
    f = OneEuroFilter(fps, **kw)
    return np.stack([f(p) for p in poses]) if len(poses) else np.asarray(poses, np.float64)
