"""Input checks for :func:`solver.cluster`: the affinity matrix, k and the method name."""
from __future__ import annotations

import warnings

import numpy as np

METHODS = ("auto", "sdp", "lowrank", "spectral", "agglomerative")
MAX_AUTO_CANDIDATES = 40


def check_affinity(T: object) -> np.ndarray:
    """Return T as a float64 symmetric n×n array (n ≥ 2).

    Raises ValueError for a non-2-D, non-square, non-finite or too small T. An asymmetric T is
    replaced by (T + Tᵀ)/2 with a UserWarning: ⟨T, X⟩ = ⟨(T + Tᵀ)/2, X⟩ for every symmetric X,
    so the SDP is unchanged. Negative entries and the diagonal are kept as given.
    """
    try:
        A = np.asarray(T, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"T must be a numeric n×n array; got {type(T).__name__} "
                         f"that cannot be converted to float ({exc}).") from None
    if A.ndim != 2:
        raise ValueError(f"T must be a 2-D square array; got {A.ndim}-D array of shape "
                         f"{A.shape}. Pass the n×n task affinity matrix.")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"T must be square (n×n); got shape {A.shape}. Pass the full "
                         f"task-by-task affinity matrix.")
    if A.shape[0] < 2:
        raise ValueError(f"T must have at least n=2 tasks; got n={A.shape[0]}. "
                         f"There is nothing to group with fewer than 2 tasks.")
    if not np.all(np.isfinite(A)):
        bad = np.argwhere(~np.isfinite(A))[0]
        raise ValueError(f"T must be finite; T[{bad[0]}, {bad[1]}] = {A[bad[0], bad[1]]}. "
                         f"Replace NaN/inf entries (e.g. by the mean affinity) before clustering.")
    scale = max(1.0, float(np.abs(A).max()))
    if not np.allclose(A, A.T, rtol=0.0, atol=1e-12 * scale):
        warnings.warn("T is not symmetric; using (T + T.T) / 2 (the SDP objective only sees the "
                      "symmetric part).", UserWarning, stacklevel=3)
        A = (A + A.T) / 2
    return A


def check_method(method: object) -> str:
    """Return the method name, or raise ValueError listing the accepted names."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}; "
                         f"got {method!r}.")
    return method


def _check_int(value: object, name: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer between 1 and n={n}; got {value!r}.")
    if not 1 <= int(value) <= n:
        raise ValueError(f"{name} must be between 1 and n={n} (number of tasks); got {value!r}.")
    return int(value)


def auto_k_range(n: int) -> tuple[int, int]:
    """The range searched for k="auto": 2..min(n-1, max(2, n//2)) (k=1 and k=n are trivial)."""
    return 2, max(2, min(n - 1, max(2, n // 2)))


def candidate_ks(k_min: int, k_max: int) -> list[int]:
    """All k in [k_min, k_max] if there are at most 40 of them, else a geometric grid of at most
    40 distinct integers from k_min to k_max (both included)."""
    if k_max - k_min + 1 <= MAX_AUTO_CANDIDATES:
        return list(range(k_min, k_max + 1))
    grid = np.unique(np.round(np.geomspace(k_min, k_max, MAX_AUTO_CANDIDATES)).astype(int))
    return [int(v) for v in grid]


def check_k(k: object, n: int) -> int | list[int]:
    """Return k as an int, or the list of candidate values for "auto" / (k_min, k_max)."""
    if isinstance(k, str):
        if k != "auto":
            raise ValueError(f"k must be an int, 'auto' or a (k_min, k_max) pair; got {k!r}.")
        k_min, k_max = auto_k_range(n)
        return candidate_ks(k_min, k_max)
    if isinstance(k, (tuple, list)):
        if len(k) != 2:
            raise ValueError(f"k range must be a pair (k_min, k_max); got {k!r} "
                             f"with {len(k)} elements.")
        k_min = _check_int(k[0], "k_min", n)
        k_max = _check_int(k[1], "k_max", n)
        if k_min > k_max:
            raise ValueError(f"k range must have k_min <= k_max; got (k_min, k_max) = {tuple(k)}. "
                             f"Swap the two values.")
        return candidate_ks(k_min, k_max)
    return _check_int(k, "k", n)


def standardize(T: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Return (T_s, mu, s) with T = s·T_s + mu: mu is the mean off-diagonal entry, s the
    standard deviation of the off-diagonal entries (1 if they are constant).

    Under X·1 = 1, Σ_ij X_ij = n, so ⟨T, X⟩ = s⟨T_s, X⟩ + mu·n: the shift and the positive scale
    change the objective by a constant and a factor, never the maximizer.
    """
    n = T.shape[0]
    off = T[~np.eye(n, dtype=bool)]
    mu = float(off.mean())
    s = float(off.std())
    if not np.isfinite(s) or s <= 1e-12 * max(1.0, abs(mu)):
        s = 1.0
    return (T - mu) / s, mu, s
