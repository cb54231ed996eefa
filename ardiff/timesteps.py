"""Who gets which timestep: training samplers (FoPP and baselines) and the AD inference schedule.

Training samplers run inside jax.jit: no host callbacks, no Python loop over the batch. The
FoPP path counts are tables that depend only on (T, F); they are computed once per trace in
float64 on the host and enter the compiled step as constants.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TRAIN_SAMPLERS = ("fopp", "autoregressive", "diffusion_forcing", "full_sequence")


@functools.lru_cache(maxsize=16)
def path_log_counts(num_timesteps: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
  """Log counts of non-decreasing timestep paths through each cell, float64 [T, F] each.

  E[t, f]: paths t_0 <= ... <= t_f = t (from frame 0 ending at (t, f)).
  S[t, f]: paths t = t_f <= ... <= t_{F-1} (from (t, f) to the last frame).
  Dynamic programming in log space: the counts reach binomial(T + F - 1, F), about 1e172 for
  T = 1000, F = 128, far past float32 (and float64 beyond a few hundred frames).
  """
  log_e = np.zeros((num_timesteps, num_frames))
  log_s = np.zeros((num_timesteps, num_frames))
  for f in range(1, num_frames):
    # E[t, f] = sum_{u <= t} E[u, f - 1]
    log_e[:, f] = np.logaddexp.accumulate(log_e[:, f - 1])
  for f in range(num_frames - 2, -1, -1):
    # S[t, f] = sum_{u >= t} S[u, f + 1]
    log_s[:, f] = np.logaddexp.accumulate(log_s[::-1, f + 1])[::-1]
  return log_e, log_s


def _draw(key, log_w, lo, hi):
  """One draw per row u in [lo, hi] with P(u) proportional to exp(log_w[u]).

  log_w: [T], a column of a count table; lo, hi: int [B]. Inverse CDF on weights scaled by
  the largest allowed one (which sits at lo or hi, as counts are monotone in u): one uniform
  per row instead of T Gumbel draws, and float32 relative precision on each probability.
  """
  u = jnp.arange(log_w.shape[0], dtype=jnp.int32)
  allowed = (u[None, :] >= lo[:, None]) & (u[None, :] <= hi[:, None])  # [B, T]
  ref = jnp.maximum(log_w[lo], log_w[hi])[:, None]
  w = jnp.where(allowed, jnp.exp(jnp.minimum(log_w[None, :] - ref, 0.0)), 0.0)
  cdf = jnp.cumsum(w, axis=-1)
  r = jax.random.uniform(key, lo.shape) * cdf[:, -1]
  drawn = jnp.sum(cdf <= r[:, None], axis=-1, dtype=jnp.int32)
  return jnp.clip(drawn, lo, hi)  # guards r rounding up to the total


def _sample_forward(key, log_s, first_free, t_init):
  """Fills frames f > first_free[b] forwards: P(t_f = u | t_{f-1}) ~ S[u, f] for u >= t_{f-1}.

  Frames f <= first_free[b] keep t_init. first_free = -1 samples every frame from the start,
  with t_0 ~ S[u, 0]: the uniform distribution over all non-decreasing sequences.
  """
  num_timesteps, num_frames = log_s.shape
  last = jnp.full_like(first_free, num_timesteps - 1)

  def step(prev, f):  # prev: [B], t_{f-1} (0 before frame 0)
    drawn = _draw(jax.random.fold_in(key, f), log_s[:, f], prev, last)
    t_f = jnp.where(f > first_free, drawn, t_init[:, f])
    return t_f, t_f

  _, ts = jax.lax.scan(step, jnp.zeros_like(first_free), jnp.arange(num_frames))
  return ts.T  # [B, F]


def _sample_backward(key, log_e, pivot, t_pivot):
  """Fills frames f <= pivot[b] backwards: t_pivot at the pivot, then
  P(t_f = u | t_{f+1}) ~ E[u, f] for u <= t_{f+1}. Frames after the pivot are left at 0."""
  num_frames = log_e.shape[1]
  zero = jnp.zeros_like(pivot)

  def step(nxt, f):  # nxt: [B], t_{f+1} where already drawn
    drawn = _draw(jax.random.fold_in(key, f), log_e[:, f], zero, nxt)
    t_f = jnp.where(f == pivot, t_pivot, jnp.where(f < pivot, drawn, 0))
    return jnp.where(f <= pivot, t_f, nxt), t_f

  _, ts = jax.lax.scan(step, t_pivot, jnp.arange(num_frames - 1, -1, -1))
  return ts[::-1].T  # [B, F]


def sample_train_timesteps(
    rng: jax.Array,
    kind: str,
    batch_size: int,
    num_frames: int,
    num_timesteps: int,
    clean_prefix_prob: float = 0.0,
) -> jax.Array:
  """Per-frame training timesteps, int32 [batch_size, num_frames] in [0, num_timesteps).

  kind:
    "fopp" (the paper's): a frame f chosen uniformly gets t_f ~ U[0, T); the earlier frames
      are drawn backwards, the later forwards, each from the exact conditional given by the
      counts of non-decreasing paths, so every sequence is non-decreasing.
    "autoregressive": uniform over all non-decreasing sequences t_1 <= ... <= t_F.
    "diffusion_forcing": independent uniform t per frame.
    "full_sequence": one t per video (synchronous diffusion).

  clean_prefix_prob (FoPP only): the share of clips whose frames before the pivot are clean
  (t = 0) instead of drawn backwards; the pivot's t and the later frames are drawn as before, so
  every sequence stays non-decreasing. FoPP's neighbouring frames have close timesteps, so
  "finished frames, then one at high noise" -- every step of frame-by-frame generation, and the
  first frame after a video-prediction prefix -- is a corner it almost never trains on
  (docs/demo.md measures what that does to long rollouts). 0: the paper's FoPP.
  """
  if clean_prefix_prob and kind != "fopp":
    raise ValueError(f"clean_prefix_prob={clean_prefix_prob} is for 'fopp', not {kind!r}.")
  shape = (batch_size, num_frames)
  if kind == "full_sequence":
    t = jax.random.randint(rng, (batch_size, 1), 0, num_timesteps, jnp.int32)
    return jnp.broadcast_to(t, shape)
  if kind == "diffusion_forcing":
    return jax.random.randint(rng, shape, 0, num_timesteps, jnp.int32)
  if kind not in TRAIN_SAMPLERS:
    raise ValueError(f"Unknown train timestep sampler {kind!r}: use one of {TRAIN_SAMPLERS}.")

  # Log counts reach ~400 for F = 128; float32 keeps them to ~3e-5 absolute, which is the
  # relative precision of each drawn probability (the weights are exp of differences).
  log_e, log_s = (jnp.asarray(a, jnp.float32) for a in path_log_counts(num_timesteps, num_frames))
  if kind == "autoregressive":
    none_fixed = jnp.full((batch_size,), -1, jnp.int32)
    return _sample_forward(rng, log_s, none_fixed, jnp.zeros(shape, jnp.int32))

  k_frame, k_t, k_back, k_fwd = jax.random.split(rng, 4)
  pivot = jax.random.randint(k_frame, (batch_size,), 0, num_frames, jnp.int32)
  t_pivot = jax.random.randint(k_t, (batch_size,), 0, num_timesteps, jnp.int32)
  upto_pivot = _sample_backward(k_back, log_e, pivot, t_pivot)
  if clean_prefix_prob:  # a separate key: the draws of clean_prefix_prob = 0 stay as they were
    # rng folded with 1 is k_t (partitionable threefry, the default: split(rng, n)[i] is rng
    # folded with i); the uniform draws other bits than randint, which splits its key first, so
    # clean and t_pivot do not correlate, but a draw made like t_pivot's would repeat it
    # (docs/demo.md, runs D3ST1 and D3ST2).
    clean = jax.random.uniform(jax.random.fold_in(rng, 1), (batch_size,)) < clean_prefix_prob
    before = jnp.arange(num_frames)[None, :] < pivot[:, None]
    upto_pivot = jnp.where(clean[:, None] & before, 0, upto_pivot)
  return _sample_forward(k_fwd, log_s, pivot, upto_pivot)


# ----------------------------------------------------------------------------------------------
# The AD inference schedule.


class ADSchedule(NamedTuple):
  """Which frames the model denoises in each call, and where its window sits.

  steps: int32 [R, F]: after model call r, how many of num_steps DDIM steps each frame has
    completed. The last row is all num_steps.
  window_start: int32 [R]: first frame of the window of `window` frames seen in call r.
  initial: int32 [F] or None: the steps before the first call (None: all zeros; num_steps for
    frames given in advance, e.g. the prefix of video prediction).
  """

  steps: np.ndarray
  window_start: np.ndarray
  initial: np.ndarray | None = None

  @property
  def num_calls(self) -> int:
    return self.steps.shape[0]

  @property
  def previous(self) -> np.ndarray:
    """[R, F]: the steps before each call (row r - 1; `initial` for r = 0)."""
    first = np.zeros_like(self.steps[:1]) if self.initial is None else self.initial[None]
    return np.concatenate([first, self.steps[:-1]], axis=0)

  @property
  def updates(self) -> np.ndarray:
    """bool [R, F]: frame f is denoised by one step in call r."""
    return self.steps != self.previous


def default_context_frames(window: int, ar_step: int, num_steps: int) -> int:
  """Finished frames to keep in view when a long video cannot follow the plain recurrence.

  With ar_step * window >= num_steps, a frame only starts once the frame `window` places
  before it has finished, so the paper's recurrence fits the window as it is: no reserve. Below
  that (e.g. ar_step = 0), frames would start faster than the window slides; half the window
  then holds finished frames as clean context, so each new chunk sees the last one.
  """
  return 0 if ar_step * window >= num_steps else window // 2


def ad_schedule(
    num_frames: int,
    window: int,
    ar_step: int,
    num_steps: int,
    context_frames: int | None = None,
    given_frames: int = 0,
) -> ADSchedule:
  """The AD scheduler's rows for num_frames frames seen through a window of `window` frames.

  Each row follows the paper's recurrence: frame 0 advances one step; frame i advances one
  step if frame i-1 had finished in the previous row, else it takes (new value of frame i-1)
  - ar_step; clipped to [0, num_steps]. For num_frames <= window that is all, and there are
  num_steps + (num_frames - 1) * ar_step calls (ar_step = 0: synchronous; num_steps: one frame
  after another).

  For longer videos a frame additionally (a) never advances by more than one step per call,
  and (b) may not start until it fits in the window together with every unfinished frame
  before it and `context_frames` frames of room for finished context (fewer than `window`;
  default: default_context_frames). Rule (b) only binds once the window must slide: the frames
  of the first window start as in a video of the window's length, so the first window of a long
  video generates exactly as that video does until a frame beyond it starts. The window then
  starts `window - 1` frames before the last frame that is denoised (never before frame 0 or
  after num_frames - window). Thus in every call:
  rows are non-increasing along frames, every updated frame lies inside the window, every
  frame before the window has finished, the window never moves back, and every frame ends
  finished. Where the plain recurrence already keeps these rules it is followed exactly.

  The first given_frames frames (the prefix of video prediction) count as finished from the
  start (ADSchedule.initial): the first frame after them advances at once, and they stay in view
  as context, and count as such, while there is room.
  """
  if num_frames < 1 or window < 1 or num_steps < 1:
    raise ValueError("num_frames, window and num_steps must be positive.")
  if not 0 <= ar_step <= num_steps:
    raise ValueError(f"ar_step={ar_step} must lie in [0, num_steps={num_steps}].")
  window = min(window, num_frames)
  long_video = num_frames > window
  if context_frames is None:
    context_frames = default_context_frames(window, ar_step, num_steps)
  if context_frames < 0:
    raise ValueError(f"context_frames={context_frames} must not be negative.")
  # Context frames are room kept for finished frames while the window slides; a video within
  # the window never slides, and its context_frames go unused (e.g. 8 for a 4-frame video).
  if long_video and context_frames >= window:
    raise ValueError(
        f"context_frames={context_frames} must be less than the window ({window} frames) that"
        f" slides over {num_frames} frames: no room would be left for frames in progress."
    )
  span = window - context_frames if long_video else window  # frames that may be in progress

  if not 0 <= given_frames < num_frames:
    raise ValueError(f"prefix_frames={given_frames} must lie in [0, num_frames={num_frames}).")
  initial = np.zeros(num_frames, np.int64)
  initial[:given_frames] = num_steps
  prev = initial
  rows, starts = [], []
  while not np.all(prev == num_steps):
    first_unfinished = int(np.argmax(prev < num_steps))
    new = np.empty_like(prev)
    for i in range(num_frames):
      if i == 0 or prev[i - 1] == num_steps:
        cand = prev[i] + 1
      else:
        cand = new[i - 1] - ar_step
      if long_video:
        # Frames of the first window need no room for context: the window has not moved yet.
        may_start = i < window or i < first_unfinished + span
        cand = min(cand, prev[i] + 1) if may_start else prev[i]
        cand = max(cand, prev[i])
      new[i] = min(max(cand, 0), num_steps)
    last_updated = int(np.nonzero(new != prev)[0].max())
    starts.append(min(max(last_updated - window + 1, 0), num_frames - window))
    rows.append(new)
    prev = new
  return ADSchedule(
      np.stack(rows).astype(np.int32),
      np.asarray(starts, np.int32),
      initial.astype(np.int32) if given_frames else None,
  )
