"""Learned whitening (Radenović, Tolias & Chum, TPAMI 2018), in closed form.

From matching pairs (a shopper's view, the shop photo of the same item) of L2-normalised
descriptors: centre on the mean m, whiten by the inverse square root of the pairs' difference
covariance (so the ways a view differs from its shop photo are shrunk), then rotate onto the
principal axes of the whitened catalogue and keep the `dim` strongest:

    P = V_dim^T  S^{-1/2},   S = cov(q_i - c_i),   V = eig(cov(S^{-1/2} (c - m)))
    y = P (x - m)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Whitening:
    mean: np.ndarray        # (C,)
    projection: np.ndarray  # (dim, C)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(N, C) descriptors -> (N, dim) unit vectors."""
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        y = (x - self.mean) @ self.projection.T
        return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def _inverse_sqrt(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    # Ridge towards the mean eigenvalue: with ~C pairs the smallest directions are noise, and
    # their inverse square roots would blow noise up into the strongest axes.
    values = np.maximum(values, 0) + shrinkage * max(float(values.mean()), 1e-12)
    return (vectors / np.sqrt(values)) @ vectors.T


def fit_whitening(queries: np.ndarray, shops: np.ndarray, dim: int, shrinkage: float = 0.1,
                  catalog: np.ndarray | None = None) -> Whitening:
    """Fit on pairs (queries[i], shops[i]); the PCA runs on `catalog` (default: the pairs' shop side)."""
    if queries.shape != shops.shape or queries.ndim != 2 or len(queries) < 2:
        raise ValueError("whitening needs at least two pairs of equal-width descriptors")
    channels = queries.shape[1]
    if not 1 <= dim <= channels:
        raise ValueError(f"whitening dim must be between 1 and {channels}, got {dim}")

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    q, s = unit(queries), unit(shops)
    cat = unit(catalog) if catalog is not None else s
    mean = np.concatenate([q, s]).mean(0)
    diff = q - s
    whiten = _inverse_sqrt(diff.T @ diff / len(diff), shrinkage)
    spread = (cat - mean) @ whiten
    values, vectors = np.linalg.eigh(spread.T @ spread / len(spread))
    top = vectors[:, np.argsort(values)[::-1][:dim]]
    return Whitening(mean=mean.astype(np.float32), projection=(top.T @ whiten).astype(np.float32))
