"""Fréchet Inception Distance from features or statistics, and statistics files.

A statistics file is an `.npz` with `mu` (D,) and `sigma` (D, D), pytorch-fid's layout
(`--save-stats`), so statistics made here load in pytorch-fid and the other way round.
"""

import os
import pickle
import warnings
import zipfile
import zlib

import numpy as np
from scipy import linalg

from clade_tf.metrics.inception import FEATURE_DIM


def statistics(features):
    """Mean and covariance (float64, unbiased as `np.cov`) of `[N, D]` features, N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features have shape {f.shape}, expected [N, D] with N >= 2")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or Inf")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _check_stats(mu, sigma, what):
    mu, sigma = np.atleast_1d(np.asarray(mu, np.float64)), np.atleast_2d(np.asarray(sigma, np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{what}: mu has shape {mu.shape} and sigma {sigma.shape}, expected (D,) and (D, D)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{what}: mu or sigma contains NaN or Inf")
    return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it.

    `scipy.linalg.sqrtm` of the product; if that is not finite (a singular product), `eps`
    is added to both diagonals and the square root taken again (with a warning); a
    complex result whose diagonal has an imaginary part above 1e-3 raises `ValueError`,
    a smaller one is dropped.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"statistics of {mu1.shape[0]}-d and {mu2.shape[0]}-d features cannot be compared")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: the covariance product is singular; adding {eps} to the diagonals", RuntimeWarning,
                      stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        # rounding gives the square root of a (theoretically) real-spectrum product small imaginary parts
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the matrix square root has an imaginary component of "
                             f"{np.max(np.abs(covmean.imag)):.3g} (the covariances are not valid)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(features1, features2):
    """FID between two `[N, D]` feature sets (each N >= 2)."""
    return frechet_distance(*statistics(features1), *statistics(features2))


def save_stats(path, mu, sigma):
    """Writes `mu`, `sigma` as pytorch-fid's statistics `.npz` (compressed, float64)."""
    mu, sigma = _check_stats(mu, sigma, os.fspath(path))
    np.savez_compressed(path, mu=mu, sigma=sigma)


def load_stats(path, dim=FEATURE_DIM):
    """Reads a statistics `.npz` (`mu` (dim,), `sigma` (dim, dim)); `dim=None` takes any D.

    Raises `FileNotFoundError` or `ValueError`, one line naming the file and what is wrong.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such statistics file (an .npz with mu and sigma)")
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            # a file of the wrong content, not a caller's type error: ValueError like the others
            raise ValueError(f"{path}: a single .npy array, expected an .npz with the arrays 'mu' and 'sigma'")  # noqa: TRY004
        with f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise ValueError(f"{path}: statistics need the arrays 'mu' and 'sigma', found {sorted(f.files)}")
            mu, sigma = f["mu"], f["sigma"]
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a readable .npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    if dim is not None and (mu.shape != (dim,) or sigma.shape != (dim, dim)):
        raise ValueError(f"{path}: mu has shape {mu.shape} and sigma {sigma.shape}, expected ({dim},) and "
                         f"({dim}, {dim}) ({dim}-d pool3 features)")
    if not (np.issubdtype(mu.dtype, np.floating) and np.issubdtype(sigma.dtype, np.floating)):
        raise ValueError(f"{path}: mu is {mu.dtype} and sigma {sigma.dtype}, expected floats")
    return _check_stats(mu, sigma, path)
