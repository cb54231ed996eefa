"""A reader for the moving digits: which digits each frame of a video shows, and how surely.

The demo's legibility figures (issue: "a reader recognises the digits in most frames"). The
reader is a small CNN trained here (about 4 minutes on a 2-core CPU) on frames drawn as the
moving_digits builders draw theirs (1 or 2 sklearn digits of the dataset's glyph size anywhere
on a 64x64 canvas, composited by their maximum, white, shrunk to the videos' resolution with the
pipeline's resize) from the train clips' digit images; its accuracy is measured on frames of the
others. Per frame it reads a digit set (the classes of probability > 0.5) and is sure of it when
every class's probability is below 0.1 or above 0.9. Per video:
- legible: the fraction of frames it is sure of and reads at least one digit in;
- kept: the fraction of frames whose digit set is the video's most frequent one (of the sets
  with a digit). A digit that turns into another, fades, or merges into a blob lowers it.
Real clips are the yardstick: overlapping digits make some real frames unsure too.

Sureness is only as good as the probabilities: trained longer, a reader grows more confident
without reading better (2000, 6000, 12000 steps: 76-80 % of held-out frames read exactly, 57,
77, 88 % of real frames legible; docs/demo.md). So its logits are divided by a temperature
fitted on held-out frames (least cross-entropy): a probability of 0.9 then means right 9 times
in 10, whatever the length of training. "kept" needs no calibration and hardly moves with the
reader.
"""

import collections
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ardiff.data import datasets
from ardiff.data import frames as frames_lib
from ardiff.data import moving_digits

NUM_CLASSES = 10
SURE = 0.1  # sure of a frame: every class's probability below SURE or above 1 - SURE


def glyph_size(data_name: str) -> int | None:
  """The digits' size on the 64x64 canvas of a moving_digits dataset; None for other data."""
  builder = datasets.BUILDERS.get(data_name)
  if builder is None or not issubclass(builder, moving_digits.MovingDigits):
    return None
  return builder.GLYPH


def is_typeface(data_name: str) -> bool:
  """Whether a moving_digits dataset draws each class with one shape (load_glyphs' typeface)."""
  return bool(getattr(datasets.BUILDERS.get(data_name), "TYPEFACE", False))


def draw_frames(rng: np.random.Generator, num: int, resolution: int, glyph: int,
                held_out: bool = False, typeface: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """num frames as the builders draw them: uint8 [num, resolution, resolution] (white on black)
  and multi-hot labels float32 [num, 10]. The digit images are the train clips' (the first
  moving_digits.TRAIN_IMAGES) or, held_out, the test clips'; with typeface, their classes'
  medoids."""
  glyphs, labels = moving_digits.load_glyphs(glyph, typeface)
  pool = (np.arange(moving_digits.TRAIN_IMAGES, len(glyphs)) if held_out
          else np.arange(moving_digits.TRAIN_IMAGES))
  sprites = np.round(glyphs * 255).astype(np.uint8)
  canvas = np.zeros((num, moving_digits.SIZE, moving_digits.SIZE), np.uint8)
  multi_hot = np.zeros((num, NUM_CLASSES), np.float32)
  limit = moving_digits.SIZE - glyph
  for i in range(num):
    for _ in range(rng.integers(1, 3)):
      index = rng.choice(pool)
      y, x = np.round(rng.uniform(0, limit, size=2)).astype(int)
      region = canvas[i, y:y + glyph, x:x + glyph]
      np.maximum(region, sprites[index], out=region)
      multi_hot[i, labels[index]] = 1
  small = frames_lib.resize_frames(np.repeat(canvas[..., None], 3, axis=-1), resolution)
  return small[..., 0], multi_hot


class Reader(nn.Module):
  """Frames [N, H, W] in [0, 1] -> logits [N, 10], one independent yes/no per class."""

  @nn.compact
  def __call__(self, x):
    x = x[..., None]
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(len(x), -1)))
    return nn.Dense(NUM_CLASSES)(x)


@dataclasses.dataclass(frozen=True)
class TrainedReader:
  params: dict
  resolution: int
  glyph: int
  accuracy: float  # the held-out frames whose digit set it reads exactly
  temperature: float = 1.0  # the logits' divisor that calibrates the probabilities

  def logits(self, frames: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Frames uint8 [N, H, W] -> the network's float32 logits [N, 10] (not calibrated)."""
    out = [np.asarray(_logits(self.params, jnp.asarray(frames[i:i + batch_size])))
           for i in range(0, len(frames), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, NUM_CLASSES), np.float32)

  def probabilities(self, frames: np.ndarray) -> np.ndarray:
    """Frames uint8 [N, H, W] -> calibrated probabilities float32 [N, 10]."""
    z = self.logits(frames).astype(np.float64) / self.temperature
    return (0.5 + 0.5 * np.tanh(z / 2)).astype(np.float32)  # the sigmoid, without overflow


@jax.jit
def _logits(params, frames):
  return Reader().apply({"params": params}, frames.astype(jnp.float32) / 255)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
  """The T > 0 for which sigmoid(logits / T) has the least binary cross-entropy against the
  0/1 targets (temperature scaling, Guo et al. 2017), to within 0.5 % (a grid over log T)."""
  z, y = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
  temperatures = np.exp(np.linspace(np.log(0.05), np.log(50.0), 1400))
  losses = [np.mean(np.logaddexp(0, z / t) - y * z / t) for t in temperatures]
  return float(temperatures[int(np.argmin(losses))])


@functools.cache
def train_reader(resolution: int, glyph: int, steps: int = 6000, batch_size: int = 128,
                 num_frames: int = 40000, seed: int = 0, typeface: bool = False) -> TrainedReader:
  """The reader for frames of `resolution` pixels with digits of `glyph` pixels at 64x64 (with
  typeface, one shape per class), its temperature and its accuracy, both from 4000 held-out
  frames. (6000 steps: of 2000, 6000 and 12000 the least held-out cross-entropy once
  calibrated.)"""
  rng = np.random.default_rng(seed)
  images, targets = draw_frames(rng, num_frames, resolution, glyph, typeface=typeface)
  model = Reader()
  params = model.init(jax.random.key(seed), jnp.zeros((1, resolution, resolution)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x.astype(jnp.float32) / 255)
      return optax.sigmoid_binary_cross_entropy(logits, y).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(steps):
    batch = rng.integers(0, num_frames, size=batch_size)
    params, opt_state = step(params, opt_state, images[batch], targets[batch])
  reader = TrainedReader(params, resolution, glyph, 0.0)
  test_images, test_targets = draw_frames(np.random.default_rng([seed, 1]), 4000, resolution,
                                          glyph, held_out=True, typeface=typeface)
  logits = reader.logits(test_images)
  accuracy = float(np.mean(np.all((logits > 0) == (test_targets > 0.5), axis=-1)))
  return dataclasses.replace(reader, accuracy=accuracy,
                             temperature=fit_temperature(logits, test_targets))


def read_videos(reader: TrainedReader, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """uint8 videos [N, F, H, W, 3] -> the digit sets read (bool [N, F, 10]) and whether the
  reader is sure of each frame (bool [N, F])."""
  videos = np.asarray(videos)
  if videos.ndim != 5 or videos.shape[2:4] != (reader.resolution, reader.resolution):
    raise ValueError(f"Expected videos [N, F, {reader.resolution}, {reader.resolution}, 3], got"
                     f" {videos.shape}.")
  n, f = videos.shape[:2]
  grey = videos.max(axis=-1).reshape((n * f,) + videos.shape[2:4])  # as data.grayscale does
  p = reader.probabilities(grey).reshape(n, f, NUM_CLASSES)
  return p > 0.5, np.all((p < SURE) | (p > 1 - SURE), axis=-1)


def legibility(reader: TrainedReader, videos: np.ndarray, first: int = 0) -> dict:
  """The reader's figures over the frames from `first` on (frames before it: a real prefix):
  "legible" and "kept" (module docstring), means over the videos."""
  sets, sure = read_videos(reader, videos)
  sets, sure = sets[:, first:], sure[:, first:]
  legible = sure & sets.any(axis=-1)
  kept = []
  for video in sets:
    # (Not an empty set: a video that fades to black would keep "no digit".)
    counts = collections.Counter(map(bytes, np.packbits(video[video.any(axis=-1)], axis=-1)))
    kept.append(counts.most_common(1)[0][1] / len(video) if counts else 0.0)
  return {"legible": float(legible.mean()), "kept": float(np.mean(kept))}
