"""Kernel Inception Distance: the unbiased MMD^2 between two feature sets with the cubic
polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged over random subsets, as
torch-fidelity computes it (same defaults, same subset draws for the same seed)."""

import numpy as np


def polynomial_kernel(x, y, degree=3, coef0=1.0):
    """(x y^T / D + coef0)^degree for `[n, D]`, `[m, D]` -> `[n, m]`."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x, y, degree=3, coef0=1.0):
    """Unbiased MMD^2 of two equal-size samples: the within-set means leave out the
    diagonal (k(x_i, x_i)), the cross term is the mean over all pairs."""
    m = x.shape[0]
    kxx = polynomial_kernel(x, x, degree, coef0)
    kyy = polynomial_kernel(y, y, degree, coef0)
    kxy = polynomial_kernel(x, y, degree, coef0)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return within - 2.0 * kxy.sum() / (m * m)


def kernel_inception_distance(features1, features2, n_subsets=100, subset_size=1000, seed=2020):
    """KID between `[N1, D]` and `[N2, D]` features: `(mean, std)` of the unbiased MMD^2 over
    `n_subsets` pairs of subsets of `min(subset_size, N1, N2)` samples each, drawn without
    replacement by `np.random.RandomState(seed)` (first set, then second, per subset).

    torch-fidelity refuses sets smaller than `subset_size`; here the size is capped at the
    smaller set (with a full-size subset every draw is the whole set and the std is 0).
    The std is over subsets (`np.std`), i.e. the spread of one subset's estimate.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"KID: features have shapes {f1.shape} and {f2.shape}, expected [N1, D] and [N2, D]")
    if not (np.isfinite(f1).all() and np.isfinite(f2).all()):
        raise ValueError("KID: features contain NaN or Inf")
    m = min(int(subset_size), len(f1), len(f2))
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples; the sets have {len(f1)} and {len(f2)}, "
                         f"subset_size={subset_size}")
    if n_subsets < 1:
        raise ValueError(f"KID: n_subsets={n_subsets}, expected >= 1")
    rng = np.random.RandomState(seed)
    mmds = np.empty(n_subsets)
    for i in range(n_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        mmds[i] = mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())
