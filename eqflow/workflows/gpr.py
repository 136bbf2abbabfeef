"""The surrogate: a scikit-learn Gaussian-process regressor, and acquisition scores that
turn its predictions into task priorities (higher priority is evaluated first)."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    """A GP on the results so far: a constant times an isotropic RBF, plus white noise, on
    normalized y. Choices measured with ``benchmarks/ackley_quality.py`` (see benchmarks/README.md):

    * one BLAS thread: the fit is small matrices, and on a shared machine OpenBLAS's threads
      made a 50-point fit take 0.5 s instead of 20 ms, long enough for the pool to evaluate
      tens of points in stale order before the new priorities land;
    * one optimizer run, no restarts: restarts found the same hyperparameters (the likelihood
      is unimodal here) at 2-4 times the cost;
    * isotropic RBF: Matern (nu 1.5, 2.5), rational quadratic and per-dimension length scales
      ranked the set's best point no better, ARD clearly worse from 25-50 points; a log of y
      changed nothing;
    * length scale bounded relative to the sampled span (1/20 to 3 spans, starting at 1/4):
      Ackley's bowl is the signal, its cosine ripples (period 1) are left to the noise term.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, dtype=float)
    span = float(np.max(np.ptp(x, axis=0))) if len(x) > 1 else 1.0
    span = span if span > 0 else 1.0
    kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(span / 4, (span / 20, span * 3))
              + WhiteKernel(0.1, (1e-2, 10.0)))
    model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=0, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # hyperparameters at a bound are fine here
        return model.fit(x, np.asarray(y, dtype=float))


def scores(model: Any, x: np.ndarray, acquisition: str, best: float, kappa: float = 2.0) -> np.ndarray:
    """How promising each point is for minimization: larger is better.

    mean: lowest predicted value first; ucb: lowest confidence bound mu - kappa*sigma first;
    ei: largest expected improvement below ``best`` first."""
    from threadpoolctl import threadpool_limits

    if acquisition not in ("mean", "ucb", "ei"):
        raise ValueError(f"unknown acquisition {acquisition!r}: expected mean, ucb or ei")
    with threadpool_limits(1):
        mu, sigma = model.predict(np.asarray(x, dtype=float), return_std=True)
    if acquisition == "mean":
        return -mu  # type: ignore[no-any-return]
    if acquisition == "ucb":  # the lower confidence bound, for minimization
        return -(mu - kappa * sigma)  # type: ignore[no-any-return]
    from scipy.stats import norm

    sigma = np.maximum(sigma, 1e-12)
    improvement = best - mu
    z = improvement / sigma
    return improvement * norm.cdf(z) + sigma * norm.pdf(z)  # type: ignore[no-any-return]


def priorities(score: np.ndarray) -> list[int]:
    """Ranks as priorities: the best score gets the highest priority."""
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score), dtype=int)
    ranks[order] = np.arange(len(score))
    return [int(r) for r in ranks]


def train_task(payload: str) -> str:
    """The `gpr` task run on a pool: training data arrive as a ProxyStore proxy, the fitted
    model goes back as one. Payload: {"data": <proxy text>, "store": {...}, "seed": n}."""
    from eqflow.proxies import from_text, make_store, to_text

    spec = json.loads(payload)
    x, y = from_text(spec["data"])
    model = fit(np.asarray(x), np.asarray(y), spec.get("seed", 0))
    store = make_store(**spec["store"])
    return json.dumps({"model": to_text(store.proxy(model)), "n": len(y)})
