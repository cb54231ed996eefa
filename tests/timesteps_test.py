"""Training timestep samplers against enumeration, and the AD schedule against its recurrence."""

import itertools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ardiff import timesteps


def nondecreasing_sequences(num_frames, num_timesteps):
  return list(itertools.combinations_with_replacement(range(num_timesteps), num_frames))


def exact_fopp_probabilities(num_frames, num_timesteps, clean_prefix_prob=0):
  """P(sequence) under FoPP's construction, with path counts found by brute-force enumeration;
  with clean_prefix_prob, that share of clips has every frame before the pivot at t = 0."""
  seqs = nondecreasing_sequences(num_frames, num_timesteps)

  def ending(f, t):  # non-decreasing t_0..t_f with t_f = t
    return sum(1 for s in nondecreasing_sequences(f + 1, num_timesteps) if s[-1] == t)

  def starting(f, t):  # non-decreasing t_f..t_{F-1} with t_f = t
    return sum(1 for s in nondecreasing_sequences(num_frames - f, num_timesteps) if s[0] == t)

  clean_share = Fraction(clean_prefix_prob)
  probs = {}
  for seq in seqs:
    total = Fraction(0)
    for pivot in range(num_frames):
      after = Fraction(1, num_frames * num_timesteps)  # the pivot, then the frames after it
      for f in range(pivot + 1, num_frames):
        norm = sum(starting(f, u) for u in range(seq[f - 1], num_timesteps))
        after *= Fraction(starting(f, seq[f]), norm)
      before = Fraction(1)
      for f in range(pivot - 1, -1, -1):
        norm = sum(ending(f, u) for u in range(seq[f + 1] + 1))
        before *= Fraction(ending(f, seq[f]), norm)
      clean = Fraction(int(all(t == 0 for t in seq[:pivot])))
      total += after * ((1 - clean_share) * before + clean_share * clean)
    probs[seq] = total
  return probs


def draw_counts(kind, num_frames, num_timesteps, n, seed=0, clean_prefix_prob=0.0):
  t = jax.jit(timesteps.sample_train_timesteps, static_argnums=(1, 2, 3, 4, 5))(
      jax.random.key(seed), kind, n, num_frames, num_timesteps, clean_prefix_prob
  )
  t = np.asarray(t)
  assert np.all(np.diff(t, axis=1) >= 0)
  seqs, counts = np.unique(t, axis=0, return_counts=True)
  return {tuple(int(v) for v in s): c for s, c in zip(seqs, counts)}


def chi_square_pvalue(observed: dict, expected_probs: dict, n: int) -> float:
  assert set(observed) <= set(expected_probs), "drew a sequence outside the support"
  keys = sorted(expected_probs)
  obs = np.array([observed.get(k, 0) for k in keys], np.float64)
  exp = np.array([float(expected_probs[k]) * n for k in keys])
  return stats.chisquare(obs, exp).pvalue


def test_path_counts_are_binomials():
  # E[t, f] = C(t + f, f) and S[t, f] = C(T - 1 - t + F - 1 - f, F - 1 - f): exact integers.
  num_timesteps, num_frames = 1000, 128
  log_e, log_s = timesteps.path_log_counts(num_timesteps, num_frames)
  for t, f in [(0, 0), (999, 0), (5, 3), (999, 15), (500, 64), (999, 127), (0, 127), (321, 100)]:
    e = math.comb(t + f, f)
    s = math.comb(num_timesteps - 1 - t + num_frames - 1 - f, num_frames - 1 - f)
    assert log_e[t, f] == pytest.approx(math.log(e), rel=1e-9, abs=1e-9)
    assert log_s[t, f] == pytest.approx(math.log(s), rel=1e-9, abs=1e-9)
  # All non-decreasing sequences of 128 frames: C(T + F - 1, F), about 1e172 (float32 ends at
  # 3e38): the log tables must hold it.
  total = np.logaddexp.reduce(log_s[:, 0])
  assert total == pytest.approx(math.log(math.comb(num_timesteps + num_frames - 1, num_frames)))
  assert total > math.log(1e170)


@pytest.mark.parametrize("kind", timesteps.TRAIN_SAMPLERS)
def test_shapes_dtypes_ranges(kind):
  t = timesteps.sample_train_timesteps(jax.random.key(1), kind, 64, 7, 50)
  assert t.shape == (64, 7) and t.dtype == jnp.int32
  assert int(t.min()) >= 0 and int(t.max()) < 50
  if kind == "full_sequence":
    assert np.all(np.asarray(t) == np.asarray(t)[:, :1])
  if kind == "diffusion_forcing":  # independent frames: some sequences decrease
    assert np.any(np.diff(np.asarray(t), axis=1) < 0)


@pytest.mark.parametrize("kind", ["autoregressive", "fopp"])
def test_nondecreasing_over_many_draws(kind):
  t = jax.jit(timesteps.sample_train_timesteps, static_argnums=(1, 2, 3, 4))(
      jax.random.key(2), kind, 100_000, 16, 200
  )
  t = np.asarray(t)
  assert np.all(np.diff(t, axis=1) >= 0)
  assert t.min() >= 0 and t.max() <= 199
  assert len(np.unique(t)) > 190  # the draws cover the whole range


def test_autoregressive_is_uniform_over_nondecreasing_sequences():
  num_frames, num_timesteps, n = 3, 6, 60_000
  seqs = nondecreasing_sequences(num_frames, num_timesteps)
  uniform = {s: Fraction(1, len(seqs)) for s in seqs}
  observed = draw_counts("autoregressive", num_frames, num_timesteps, n)
  assert chi_square_pvalue(observed, uniform, n) > 1e-3


def test_fopp_matches_its_construction():
  num_frames, num_timesteps, n = 3, 6, 60_000
  exact = exact_fopp_probabilities(num_frames, num_timesteps)
  assert sum(exact.values()) == 1
  observed = draw_counts("fopp", num_frames, num_timesteps, n, seed=3)
  assert chi_square_pvalue(observed, exact, n) > 1e-3
  # FoPP is not the uniform distribution: a test that cannot tell them apart proves nothing.
  uniform = {s: Fraction(1, len(exact)) for s in exact}
  assert chi_square_pvalue(observed, uniform, n) < 1e-6


def test_fopp_four_frames_matches_construction():
  num_frames, num_timesteps, n = 4, 4, 60_000
  exact = exact_fopp_probabilities(num_frames, num_timesteps)
  observed = draw_counts("fopp", num_frames, num_timesteps, n, seed=4)
  assert chi_square_pvalue(observed, exact, n) > 1e-3


@pytest.mark.parametrize("clean_prefix_prob", [0.3, 1.0])
def test_fopp_clean_prefix_matches_its_construction(clean_prefix_prob):
  num_frames, num_timesteps, n = 3, 5, 60_000
  exact = exact_fopp_probabilities(num_frames, num_timesteps, clean_prefix_prob)
  assert sum(exact.values()) == 1
  observed = draw_counts("fopp", num_frames, num_timesteps, n, seed=7,
                         clean_prefix_prob=clean_prefix_prob)
  assert chi_square_pvalue(observed, exact, n) > 1e-3
  # Distinguishable from plain FoPP, so the test has power.
  plain = exact_fopp_probabilities(num_frames, num_timesteps)
  assert chi_square_pvalue(observed, plain, n) < 1e-6


def test_fopp_clean_prefix_zero_is_the_papers_fopp():
  # Same key, same draws: runs without the option reproduce.
  sample = jax.jit(timesteps.sample_train_timesteps, static_argnums=(1, 2, 3, 4, 5))
  plain = sample(jax.random.key(8), "fopp", 256, 16, 1000, 0.0)
  np.testing.assert_array_equal(plain, timesteps.sample_train_timesteps(
      jax.random.key(8), "fopp", 256, 16, 1000))
  t = np.asarray(sample(jax.random.key(8), "fopp", 4096, 16, 1000, 0.5))
  assert np.all(np.diff(t, axis=1) >= 0)
  # A frame-by-frame step, 15 clean frames then t >= 500: under plain FoPP about 1 clip in
  # 4000; here the clean-prefix clips whose pivot is the last frame with t >= 500, 0.5/16/2.
  def corner(t):
    return np.mean((t[:, -2] == 0) & (t[:, -1] >= 500))
  assert corner(np.asarray(plain)) < 0.002 and 0.01 < corner(t) < 0.025
  with pytest.raises(ValueError, match="is for 'fopp'"):
    timesteps.sample_train_timesteps(jax.random.key(8), "autoregressive", 4, 4, 10, 0.5)


def test_fopp_jit_large_batch_and_long_clips():
  sample = jax.jit(timesteps.sample_train_timesteps, static_argnums=(1, 2, 3, 4))
  t = np.asarray(sample(jax.random.key(5), "fopp", 4096, 16, 1000))
  assert t.shape == (4096, 16) and t.min() >= 0 and t.max() <= 999
  assert np.all(np.diff(t, axis=1) >= 0)
  # The chosen frame's t is uniform over [0, T): the overall mean sits near the middle.
  assert abs(t.mean() - 499.5) < 40
  t = np.asarray(sample(jax.random.key(6), "fopp", 64, 128, 1000))
  assert t.shape == (64, 128) and t.min() >= 0 and t.max() <= 999
  assert np.all(np.diff(t, axis=1) >= 0)


# ----------------------------------------------------------------------------------------------
# AD schedule.


def direct_recurrence(num_frames, ar_step, num_steps):
  """The paper's recurrence written out plainly, including the all-zero first row."""
  rows = [[0] * num_frames]
  while any(v != num_steps for v in rows[-1]):
    prev, new = rows[-1], []
    for i in range(num_frames):
      if i == 0:
        v = prev[0] + 1
      elif prev[i - 1] == num_steps:
        v = prev[i] + 1
      else:
        v = new[i - 1] - ar_step
      new.append(v)
    rows.append([min(max(v, 0), num_steps) for v in new])
  return np.array(rows[1:])


@pytest.mark.parametrize("num_steps", [1, 3, 7, 10])
@pytest.mark.parametrize("num_frames", [1, 2, 5, 8])
def test_ad_schedule_is_the_paper_recurrence(num_frames, num_steps):
  for window in {num_frames, num_frames + 3}:
    for ar_step in range(num_steps + 1):
      sched = timesteps.ad_schedule(num_frames, window, ar_step, num_steps)
      np.testing.assert_array_equal(sched.steps, direct_recurrence(num_frames, ar_step, num_steps))
      assert sched.num_calls == num_steps + (num_frames - 1) * ar_step
      assert np.all(sched.window_start == 0)


def test_ad_schedule_extremes():
  sync = timesteps.ad_schedule(4, 4, 0, 5)
  np.testing.assert_array_equal(sync.steps, np.repeat(np.arange(1, 6)[:, None], 4, axis=1))
  one_by_one = timesteps.ad_schedule(3, 3, 5, 5)
  assert one_by_one.num_calls == 15
  assert np.all(one_by_one.updates.sum(axis=1) == 1)


def check_long_video_rules(sched, num_frames, window, num_steps):
  steps, starts, updates = sched.steps, sched.window_start, sched.updates
  assert steps.min() >= 0 and steps.max() <= num_steps
  assert np.all(steps[-1] == num_steps), "a frame was left unfinished"
  assert np.all(np.diff(steps, axis=1) <= 0), "a row increases along the frames"
  assert np.all(np.diff(sched.previous.astype(int) - 0, axis=0) >= 0)
  assert np.all((steps - sched.previous >= 0) & (steps - sched.previous <= 1))
  assert np.all(updates.any(axis=1)), "a call updates nothing"
  assert np.all(np.diff(starts) >= 0), "the window moved back"
  assert np.all((starts >= 0) & (starts + window <= num_frames))
  for r in range(sched.num_calls):
    frames = np.nonzero(updates[r])[0]
    assert frames.min() >= starts[r] and frames.max() < starts[r] + window
    assert np.all(sched.previous[r, : starts[r]] == num_steps), "a frame before the window is unfinished"


@pytest.mark.parametrize(
    "num_frames,window,num_steps", [(12, 4, 10), (48, 16, 50), (7, 3, 4), (33, 8, 9)]
)
def test_ad_schedule_long_videos_keep_the_rules(num_frames, window, num_steps):
  for ar_step in range(num_steps + 1):
    sched = timesteps.ad_schedule(num_frames, window, ar_step, num_steps)
    check_long_video_rules(sched, num_frames, window, num_steps)


def test_ad_schedule_long_video_follows_reference_where_it_fits():
  # ar_step * window >= num_steps: the reference's sliding window is valid, so the rows are the
  # plain recurrence over all frames.
  for num_frames, window, ar_step, num_steps in [(48, 16, 4, 50), (20, 5, 2, 10), (9, 3, 3, 9)]:
    sched = timesteps.ad_schedule(num_frames, window, ar_step, num_steps)
    np.testing.assert_array_equal(sched.steps, direct_recurrence(num_frames, ar_step, num_steps))


def test_ad_schedule_long_video_keeps_context():
  # Synchronous (ar_step = 0) long video: each new chunk sees finished frames of the last one.
  sched = timesteps.ad_schedule(12, 4, 0, 5)
  for r in range(sched.num_calls):
    frames = np.nonzero(sched.updates[r])[0]
    if frames.min() > 0:
      finished_in_view = np.arange(sched.window_start[r], frames.min())
      assert len(finished_in_view) >= 2


@pytest.mark.parametrize(
    "num_frames,window,ar_step,num_steps,given",
    [(17, 16, 0, 50, 0), (48, 16, 1, 50, 0), (12, 4, 0, 5, 0), (33, 8, 2, 9, 0),
     (20, 16, 0, 50, 4), (12, 4, 1, 5, 2)],
)
def test_first_window_of_a_long_video_generates_as_a_video_of_the_window(
    num_frames, window, ar_step, num_steps, given
):
  # Context room is reserved only once the window must slide: the frames of the first window
  # follow the schedule of a video of the window's length, call for call, and the window stays
  # put until a frame beyond it starts.
  long = timesteps.ad_schedule(num_frames, window, ar_step, num_steps, given_frames=given)
  short = timesteps.ad_schedule(window, window, ar_step, num_steps, given_frames=given)
  np.testing.assert_array_equal(long.steps[: short.num_calls, :window], short.steps)
  first_slide = np.argmax(long.updates[:, window:].any(axis=1))
  assert first_slide > 0 and np.all(long.window_start[:first_slide] == 0)
  check_long_video_rules(long, num_frames, window, num_steps)
  if given:  # the given frames are finished throughout and in view while the first window lasts
    assert np.all(long.previous[:, :given] == num_steps)


def test_one_frame_past_the_window_costs_one_more_chunk():
  # 17 frames at ar_step 0: 50 calls for the first 16 frames, then 50 for the 17th (which sees
  # 15 finished frames), not 150 with half the window held back from the start.
  sched = timesteps.ad_schedule(17, 16, 0, 50)
  assert sched.num_calls == 100
  assert np.all(sched.updates[:50, :16]) and not sched.updates[:50, 16].any()
  assert sched.window_start[50] == 1


def test_context_frames_are_checked_only_where_the_window_slides():
  # A video within the window never slides: context_frames is unused, whatever its value.
  for window in (4, 16):
    sched = timesteps.ad_schedule(4, window, 1, 4, context_frames=8)
    np.testing.assert_array_equal(sched.steps, timesteps.ad_schedule(4, window, 1, 4).steps)
  with pytest.raises(ValueError, match="context_frames=4 must be less than the window"):
    timesteps.ad_schedule(12, 4, 0, 4, context_frames=4)
  with pytest.raises(ValueError, match="must not be negative"):
    timesteps.ad_schedule(4, 4, 1, 4, context_frames=-1)
