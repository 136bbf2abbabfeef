"""The surrogate: a scikit-learn Gaussian-process regressor, and acquisition scores that
turn its predictions into task priorities (higher priority is evaluated first)."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np


def fit(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Any:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from threadpoolctl import threadpool_limits

    # One smooth length scale for Ackley's bowl; its cosine ripples are left to the noise term.
    kernel = ConstantKernel(1.0) * RBF(20.0, (5.0, 200.0)) + WhiteKernel(0.1, (1e-3, 10.0))
    model = GaussianProcessRegressor(kernel=kernel, normalize_y=True, n_restarts_optimizer=1, random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # hyperparameters at a bound are fine here
        return model.fit(x, y)


def scores(model: Any, x: np.ndarray, acquisition: str, best: float, kappa: float = 2.0) -> np.ndarray:
    """How promising each point is for minimization: larger is better."""
    mu, sigma = model.predict(x, return_std=True)
    if acquisition == "mean":
        return -mu  # type: ignore[no-any-return]
    if acquisition == "ucb":  # the lower confidence bound, for minimization
        return -(mu - kappa * sigma)  # type: ignore[no-any-return]
    if acquisition == "ei":
        sigma = np.maximum(sigma, 1e-12)
        improvement = best - mu
        z = improvement / sigma
        cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return improvement * cdf + sigma * pdf  # type: ignore[no-any-return]
    raise ValueError(f"unknown acquisition {acquisition!r}: expected mean, ucb or ei")


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
