"""Fréchet Video Distance: Fréchet distance between Gaussians fitted to I3D features.

FVD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), computed in float64.

The matrix square root term. The usual code calls scipy.linalg.sqrtm(S1 @ S2) on the
non-symmetric product and, when that fails, retries with eps added to the diagonals. With fewer
clips than features (N <= 400, e.g. a quick evaluation) both covariances are singular: sqrtm's
Schur method then returns spurious imaginary parts (~1e-6 here) that are thrown away, and the eps
retry shifts the value. Instead we use that S1 S2 is similar to A = S1^(1/2) S2 S1^(1/2), which is
symmetric positive semi-definite, so tr sqrt(S1 S2) = sum_i sqrt(lambda_i(A)) with real
eigenvalues from the backward-stable symmetric solver (eigh), no offset needed. Eigenvalues below
the rounding level (the tolerance of numpy.linalg.matrix_rank) are the null space of a singular
covariance and count as zero; without that cut their square roots add up to ~1e-3 of noise.
On full-rank covariances the result agrees with the sqrtm formula to ~1e-14 relative, on
rank-deficient ones to ~1e-7 (the size of sqrtm's own error there).
"""

import numpy as np

from ardiff.evaluation.i3d import i3d_features


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (ddof=1, as TF-GAN's FVD) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"Need features [N >= 2, D], got shape {features.shape}.")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def _eigvalsh_psd(a: np.ndarray) -> np.ndarray:
  """Eigenvalues of a symmetric PSD matrix, with rounding-level ones (and negatives) set to 0."""
  w = np.linalg.eigvalsh((a + a.T) / 2)  # symmetrize: products only drift off by rounding
  tol = w.max(initial=0.0) * len(a) * np.finfo(np.float64).eps
  return np.where(w > tol, w, 0.0)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"Shapes differ: {mu1.shape} {sigma1.shape} vs {mu2.shape} {sigma2.shape}.")
  root1 = _sqrtm_psd(sigma1)
  trace_sqrt = np.sqrt(_eigvalsh_psd(root1 @ sigma2 @ root1)).sum()  # tr sqrt(S1 S2)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def fvd_from_features(f_real: np.ndarray, f_fake: np.ndarray) -> float:
  """FVD between two feature sets [N1, 400] and [N2, 400] (e.g. from `i3d_features`)."""
  return frechet_distance(*feature_statistics(f_real), *feature_statistics(f_fake))


def compute_fvd(real: np.ndarray, fake: np.ndarray, *, batch_size: int = 16,
                progress: bool = True, devices=None) -> float:
  """FVD between two sets of uint8 videos [N, F, H, W, 3]; F = 16 gives FVD16, 128 FVD128.

  The sets may differ in N and in H, W (each is resized to 224x224), not in F. The papers use
  N = 2048 clips per set; with fewer the estimate is biased upwards.
  """
  if np.shape(real)[1] != np.shape(fake)[1]:
    raise ValueError(f"Clip lengths differ: {np.shape(real)[1]} vs {np.shape(fake)[1]} frames.")
  kwargs = dict(batch_size=batch_size, progress=progress, devices=devices)
  return fvd_from_features(i3d_features(real, **kwargs), i3d_features(fake, **kwargs))
