"""Motion read-out: direction and speed from pooled unit activity.

A linear read-out fitted by ridge regression on ground-truth natural pans of the training stills: pooled
activity of every unit at every pyramid level predicts ``(cos theta, sin theta, log speed)``. Because it is
linear in the code, the prediction for a region is the mean of per-patch contributions ``z_u * beta_u``: the
engine computes those once per patch and pools them over any region or time window for free. Confidence
is the length of the predicted unit vector: it shrinks towards 0 where the code carries no direction.
"""

from __future__ import annotations

import numpy as np

from v1motion.models.estimator import NotFittedError, Params


def angular_error(a, b) -> np.ndarray:
    """Absolute angle difference in radians, in [0, pi]."""
    return np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b)))))


class MotionReadout(Params):
    """Ridge read-out of ``(cos, sin, log speed)`` from features ``(S, F)``.

    Parameters
    ----------
    alphas : sequence of float
        Ridge penalties tried (on standardised features); the best on a held-out quarter is kept.

    Attributes
    ----------
    coef_ : (F, 3) float32, in raw feature units.  intercept_ : (3,) float32.  alpha_ : float.
    """

    def __init__(self, alphas=(1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)):
        self.alphas = alphas

    @staticmethod
    def targets(direction, speed) -> np.ndarray:
        direction = np.asarray(direction, float)
        return np.stack([np.cos(direction), np.sin(direction), np.log(speed)], axis=1)

    def _solve(self, x, y, alpha):
        mu, sd = x.mean(0), x.std(0) + 1e-8
        xs = (x - mu) / sd
        ym = y.mean(0)
        a = xs.T @ xs + alpha * len(xs) * np.eye(xs.shape[1])
        beta = np.linalg.solve(a, xs.T @ (y - ym))
        coef = beta / sd[:, None]
        return coef, ym - mu @ coef

    def fit(self, features, direction, speed, seed: int = 0) -> MotionReadout:
        x = np.asarray(features, np.float64)
        y = self.targets(direction, speed)
        if len(x) != len(y) or len(x) < 8:
            raise ValueError("need at least 8 trials, with one direction and speed per feature row")
        order = np.random.default_rng(seed).permutation(len(x))
        cut = len(x) * 3 // 4
        tr, va = order[:cut], order[cut:]
        best = None
        for alpha in self.alphas:
            coef, icpt = self._solve(x[tr], y[tr], alpha)
            pred = x[va] @ coef + icpt
            err = angular_error(np.arctan2(pred[:, 1], pred[:, 0]), np.arctan2(y[va, 1], y[va, 0]))
            score = err.mean() + 0.5 * np.abs(pred[:, 2] - y[va, 2]).mean()
            if best is None or score < best[0]:
                best = (score, alpha)
        self.alpha_ = best[1]
        coef, icpt = self._solve(x, y, self.alpha_)
        self.coef_ = coef.astype(np.float32)
        self.intercept_ = icpt.astype(np.float32)
        return self

    def predict_raw(self, features) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise NotFittedError("MotionReadout is not fitted")
        return np.asarray(features, np.float32) @ self.coef_ + self.intercept_

    @staticmethod
    def decode(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(..., 3)`` raw prediction -> direction (rad), speed (px/frame), confidence in [0, 1]."""
        direction = np.arctan2(raw[..., 1], raw[..., 0])
        speed = np.exp(np.clip(raw[..., 2], -5, 5))
        confidence = np.clip(np.hypot(raw[..., 0], raw[..., 1]), 0, 1)
        return direction, speed, confidence

    def predict(self, features):
        return self.decode(self.predict_raw(features))
