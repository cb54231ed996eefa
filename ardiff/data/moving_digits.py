"""moving_digits: sklearn's handwritten digits bouncing in 64x64 RGB clips (MNIST-style).

Built from data that ships inside scikit-learn (no download): each clip holds 1 or 2 colored
digits moving at constant speed and bouncing off the borders. The label is the first digit's
class, so class-conditional configs can be tested. Generation is a pure function of
(SEED, split, clip index), hence deterministic and independent of the order of generation.

moving_digits_long holds the same kind of clips at 128 frames (train split only): the real
videos for FVD on generated videos longer than moving_digits' 32 frames (e.g. FVD128).

moving_digits_large (and moving_digits_large_long) draw 28-pixel digits instead of 20-pixel ones:
Moving MNIST's proportions (28-pixel digits on 64x64 frames): at the demo's 32x32 frames a digit
spans 14 pixels with strokes of 2 to 3 (docs/demo.md, run G28, measured the demo on them).

moving_digits_typeface (and moving_digits_typeface_long) draw moving_digits_large's clips with one
shape per class, its medoid: ten shapes, as with a typeface (docs/demo.md, run TF16X2: the demo's
model keeps their identity far better than the handwriting's).

moving_digits_two_tone (and moving_digits_two_tone_long) draw moving_digits_typeface's clips with
two fixed colours instead of a random one per digit: the first digit amber, the second azure, so
that each lies in a colour channel of its own (red, blue) and two digits that cross stay two.
Their brightest channel is moving_digits_typeface's grey frame, pixel for pixel.

moving_digits_typeface_apart (and _long) draw moving_digits_typeface's clips with the two digits
bouncing off each other instead of crossing (as discs; their strokes may touch): no digit is ever
hidden behind the other, so a model that sees a few frames never has to remember one.
"""

import colorsys
import functools

import numpy as np
from PIL import Image
from sklearn import datasets as sklearn_datasets
import tensorflow_datasets as tfds

from ardiff.data import builder_base

NUM_FRAMES = 32
SIZE = 64
GLYPH = 20  # 8x8 digits upsampled to 20x20.
LARGE_GLYPH = 28  # moving_digits_large
# moving_digits_typeface_apart: the digits' positions (so their centres) stay at least this many
# glyph sides apart. The typeface's digits are about 0.75 of their glyph wide: at 0.9 their strokes
# touch in 9 % of a two-digit clip's frames, 0.3 % of a digit's pixels, against 65 % and 17 % when
# they cross.
APART = 0.9
SEED = 0
NUM_CLIPS = {"train": 2000, "test": 256}
# Digits of the train clips come from the first images, those of the test clips from the rest.
TRAIN_IMAGES = 1500


@functools.cache
def load_glyphs(size: int = GLYPH, typeface: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The 1797 sklearn digits as float32 [N, size, size] in [0, 1], and their labels [N].

  typeface: every digit drawn as its class's medoid (the train image nearest the class mean, on
  the 8x8 originals): ten shapes in all, as with a typeface. Index for index the same labels, so
  clips drawn with it are the handwriting's clips with other shapes."""
  digits = sklearn_datasets.load_digits()
  if typeface:
    glyphs, labels = load_glyphs(size)
    flat = digits.images.reshape(len(labels), -1)[:TRAIN_IMAGES]
    medoid = np.zeros(10, np.int64)
    for c in range(10):
      members = np.flatnonzero(labels[:TRAIN_IMAGES] == c)
      mean = flat[members].mean(0)
      medoid[c] = members[np.argmin(((flat[members] - mean) ** 2).sum(1))]
    return glyphs[medoid[labels]], labels
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)
  glyphs = np.stack([
      np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC))
      for im in images
  ])
  return glyphs.astype(np.float32) / 255, digits.target.astype(np.int64)


def _reflect(pos: np.ndarray, vel: np.ndarray, limit: float):
  """pos + vel reflected at 0 and `limit` (any leading shape, coordinates last): new position
  and velocity."""
  pos, vel = pos + vel, vel.copy()
  low, high = pos < 0, pos > limit
  pos[low], pos[high] = -pos[low], 2 * limit - pos[high]
  vel[low | high] *= -1
  return pos, vel


def _bounce(start: np.ndarray, velocity: np.ndarray, num_frames: int, limit: float):
  """Positions [num_frames, 2] of a point reflected at 0 and `limit`."""
  pos, vel, out = start.copy(), velocity.copy(), []
  for _ in range(num_frames):
    out.append(pos.copy())
    pos, vel = _reflect(pos, vel, limit)
  return np.stack(out)


def _bounce_apart(starts: np.ndarray, velocities: np.ndarray, num_frames: int, limit: float,
                  distance: float):
  """Positions [num_frames, 2, 2] of two points reflected at 0 and `limit` and off each other as
  discs of diameter `distance`. When a move would bring them closer than that, they collide where
  they were: if approaching (after any wall's reflection), they exchange their velocity components
  along the line between them (an elastic collision of equal masses), then move from there with
  those velocities, or hold still for the frame should that still bring them closer. starts
  [2, 2] must be `distance` apart or more; so are all positions."""
  pos, vel, out = starts.copy(), velocities.copy(), []
  assert np.linalg.norm(pos[0] - pos[1]) >= distance, "the discs start overlapping"
  for _ in range(num_frames):
    out.append(pos.copy())
    new, vel = _reflect(pos, vel, limit)
    if np.linalg.norm(new[0] - new[1]) < distance:
      normal = (pos[0] - pos[1]) / np.linalg.norm(pos[0] - pos[1])
      approach = np.dot(vel[0] - vel[1], normal)
      if approach < 0:
        vel = vel - approach * np.stack([normal, -normal])
      new, vel = _reflect(pos, vel, limit)
      if np.linalg.norm(new[0] - new[1]) < distance:
        new = pos
    pos = new
  return np.stack(out)


def render_clip(rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray,
                pool: np.ndarray, num_frames: int = NUM_FRAMES,
                palette: tuple | None = None, apart: bool = False) -> tuple[np.ndarray, int]:
  """One clip: uint8 [num_frames, SIZE, SIZE, 3] and the class of its first digit; the digits
  are as large as `glyphs` [N, G, G]. palette: the d-th digit's RGB colour in [0, 1] instead of
  a random one (which is still drawn, so that the clip's motion and digits stay those without).
  apart: two digits bounce off each other as discs of diameter APART x G instead of crossing
  (their strokes may touch, not cross); the same digits, colours and velocities as without, the
  starts redrawn while closer than that (draws after all the others, so that those stay the
  same)."""
  glyph = glyphs.shape[1]
  canvas = np.zeros((num_frames, SIZE, SIZE, 3), np.uint8)
  limit = SIZE - glyph
  first_label = -1
  starts, velocities, sprites = [], [], []
  for d in range(rng.integers(1, 3)):
    index = rng.choice(pool)
    if d == 0:
      first_label = int(labels[index])
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3.5)
    velocities.append(speed * np.array([np.sin(angle), np.cos(angle)]))
    starts.append(rng.uniform(0, limit, size=2))
    # Saturated, bright colors so that two digits stay distinguishable.
    color = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), 1.0), np.float32)
    if palette is not None:
      color = np.asarray(palette[d], np.float32)
    sprites.append(np.round(glyphs[index][..., None] * color * 255).astype(np.uint8))  # [G, G, 3]
  if apart and len(starts) == 2:
    distance = APART * glyph
    while np.linalg.norm(starts[0] - starts[1]) < distance:
      starts = [rng.uniform(0, limit, size=2) for _ in starts]
    tracks = _bounce_apart(np.stack(starts), np.stack(velocities), num_frames, limit, distance)
    tracks = tracks.transpose(1, 0, 2)
  else:
    tracks = [_bounce(s, v, num_frames, limit) for s, v in zip(starts, velocities)]
  for sprite, track in zip(sprites, tracks):
    for t, (y, x) in enumerate(np.round(track).astype(int)):
      region = canvas[t, y:y + glyph, x:x + glyph]
      np.maximum(region, sprite, out=region)  # Overlaps composite like MNIST's max.
  return canvas, first_label


class MovingDigits(builder_base.ArrayRecordBuilder):
  """Bouncing sklearn digits, 32 frames of 64x64 RGB per clip."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  NUM_FRAMES = NUM_FRAMES
  NUM_CLIPS = NUM_CLIPS
  SEED = SEED
  GLYPH = GLYPH
  TYPEFACE = False  # every digit of a class drawn with one shape (load_glyphs' typeface)
  PALETTE = None  # the first and second digit's colours (render_clip); None: random ones
  APART = False  # two digits bounce off each other instead of crossing (render_clip)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "video": builder_base.video_feature(self.NUM_FRAMES, SIZE),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("video", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in self.NUM_CLIPS}

  def _generate_examples(self, split):
    glyphs, labels = load_glyphs(self.GLYPH, self.TYPEFACE)
    pool = np.arange(TRAIN_IMAGES) if split == "train" else np.arange(TRAIN_IMAGES, len(glyphs))
    split_id = list(NUM_CLIPS).index(split)
    for i in range(self.NUM_CLIPS[split]):
      rng = np.random.default_rng([self.SEED, split_id, i])
      video, label = render_clip(rng, glyphs, labels, pool, self.NUM_FRAMES, self.PALETTE,
                                 self.APART)
      yield i, {"video": video, "label": label}


class MovingDigitsLong(MovingDigits):
  """The same bouncing digits, 128 frames per clip: real videos for FVD on long generations."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  NUM_FRAMES = 128
  # Train only: FVD compares with the training distribution. 512 clips hold as many frames as
  # moving_digits' 2000; random 16- to 128-frame windows of them give more distinct clips.
  NUM_CLIPS = {"train": 512}
  SEED = 1  # other clips than moving_digits'


class MovingDigitsLarge(MovingDigits):
  """moving_digits' clips with 28-pixel digits (Moving MNIST's proportions) instead of 20."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  GLYPH = LARGE_GLYPH


class MovingDigitsLargeLong(MovingDigitsLong):
  """moving_digits_long's clips (128 frames) with 28-pixel digits: real videos for FVD on long
  generations of models trained on moving_digits_large."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  GLYPH = LARGE_GLYPH


class MovingDigitsTypeface(MovingDigitsLarge):
  """moving_digits_large's clips (the same motion, classes and colours) with every digit of a
  class drawn with one shape, its medoid: ten shapes instead of 1500 hands."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  TYPEFACE = True


class MovingDigitsTypefaceLong(MovingDigitsLargeLong):
  """moving_digits_large_long's clips drawn as moving_digits_typeface draws them."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  TYPEFACE = True


# Amber and azure: each digit's brightest channel at 1 (so the grey frame is the typeface's), the
# first in red, the second in blue, green shared at 0.6 for a warm and a cool tone.
TWO_TONE = ((1.0, 0.6, 0.0), (0.0, 0.6, 1.0))


class MovingDigitsTwoTone(MovingDigitsTypeface):
  """moving_digits_typeface's clips with the first digit amber and the second azure."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  PALETTE = TWO_TONE


class MovingDigitsTwoToneLong(MovingDigitsTypefaceLong):
  """moving_digits_typeface_long's clips drawn as moving_digits_two_tone draws them."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  PALETTE = TWO_TONE


class MovingDigitsTypefaceApart(MovingDigitsTypeface):
  """moving_digits_typeface's clips (the same digits, colours and velocities) with two digits
  bouncing off each other instead of crossing: no digit is ever hidden behind another."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  APART = True


class MovingDigitsTypefaceApartLong(MovingDigitsTypefaceLong):
  """moving_digits_typeface_long's clips drawn as moving_digits_typeface_apart draws them."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  APART = True
