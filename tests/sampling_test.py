"""The AD sampling loop: cache against no cache, a plain reference loop, prefix frames,
guidance, model-call counts, the work per call, and DDIM consistency with an oracle."""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff import diffusion, sampling, sampling_plan, timesteps
from ardiff.models import build_model
from configs import tiny

# Compile time dominates these tests (runs take milliseconds): optimise less.
FAST = {"xla_backend_optimization_level": 0}
B = 2  # videos per batch
L, C = 16, 48  # tiny: tokens and channels per frame


def tiny_config(num_classes=0, **sampling_fields):
  c = tiny.get_config()  # window of 4 frames, depth 2
  c.model.num_classes = num_classes
  c.diffusion.num_timesteps = 100
  c.sampling.num_steps = 4
  for name, value in sampling_fields.items():
    setattr(c.sampling, name, value)
  return c


def random_params(model, scale=None, seed=1):
  """Parameters drawn on the host (numpy: no RNG programs to compile) for the model's shapes.

  scale None: N(0, 1 / fan_in) for matrices, N(0, 0.1^2) for vectors, a well-conditioned
  network that is non-zero everywhere, like a trained one. At init adaLN-Zero makes the
  network the zero function; models_test's `randomized` (scale=0.3 for everything) makes it
  chaotic: saturated attention that turns float32 rounding into differences growing ~10x per
  denoising step, which no sampler comparison survives.
  """
  x, t = jnp.zeros((1, 4, L, C)), jnp.zeros((1, 4), jnp.int32)
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x, t, None))
  rng = np.random.default_rng(seed)

  def draw(a):
    std = scale or (0.1 if a.ndim == 1 else 1.0 / np.sqrt(np.prod(a.shape[:-1])))
    return jnp.asarray(std * rng.standard_normal(a.shape), jnp.float32)

  return jax.tree.map(draw, shapes)


@functools.lru_cache(maxsize=None)
def tiny_model(num_classes=0, rope_axes="frame", convs=0):
  config = tiny_config(num_classes)
  config.model.rope_axes = rope_axes
  config.model.conv_stem_channels = config.model.conv_head_channels = convs
  model = build_model(config)
  return model, random_params(model)


def keys(seed=0, n=B):
  return jax.random.split(jax.random.key(seed), n)


@functools.lru_cache(maxsize=None)
def reference_step(model, parameterization, num_timesteps, clip_denoised):
  """One call of the plain loop on a window: the model, guidance from two separate passes,
  x0 and eps, clipping, DDIM (eta = 0); compiled once per window shape."""
  dsched = diffusion.make_schedule("linear", num_timesteps)

  def guided(params, x, t, labels, guidance_scale):
    out = model.apply(params, x, t, labels)
    if labels is not None:
      uncond = model.apply(params, x, t, None)
      out = jnp.where(guidance_scale == 1, out, uncond + guidance_scale * (out - uncond))
    return out

  def step(params, x_w, t_in, t_cur, t_next, labels, guidance_scale, out_hist, history_scale):
    out = guided(params, x_w, t_in, labels, guidance_scale)
    if history_scale != 1:
      out = out_hist + history_scale * (out - out_hist)
    x0, eps = diffusion.to_x0_eps(dsched, parameterization, x_w, t_in, out)
    if clip_denoised:
      x0 = jnp.clip(x0, -1, 1)
      eps = diffusion.eps_from_x0(dsched, x_w, t_in, x0)
    return diffusion.ddim_step(dsched, x_w, t_cur, t_next, x0, eps)

  return (jax.jit(step, static_argnames="history_scale", compiler_options=FAST),
          jax.jit(guided, compiler_options=FAST))


def reference_sample(model, params, config, rngs, num_frames, labels=None, prefix=None,
                     temperature=1.0, finished_t=0):
  """The AD loop written plainly (eta = 0): a Python loop over the schedule's rows, the whole
  window per call, finished frames fed (clean) at t = finished_t, the initial noise of every frame
  but the first times `temperature`. With history guidance a second pass per
  call sees the finished frames noised to the lowest timestep of the frames in progress, with
  noise N(0, 1) keyed by (the video's key folded with 2, the frame's index) ("fractional"), or
  the frames in progress alone, as a shorter clip ("vanilla")."""
  s, n = config.sampling, config.sampling.num_steps
  k = 0 if prefix is None else prefix.shape[1]
  sched = sampling_plan.sampling_schedule(
      num_frames, config.model.num_frames, s.ar_step, n, s.context_frames, k
  )
  grid = diffusion.ddim_timesteps(config.diffusion.num_timesteps, n)
  step, guided = reference_step(
      model, config.diffusion.parameterization, config.diffusion.num_timesteps, s.clip_denoised
  )
  w = min(config.model.num_frames, num_frames)
  x = np.array(jax.jit(sampling.initial_noise, static_argnums=1)(rngs, (num_frames, L, C)))
  x[:, 1:] *= temperature
  if k:
    x[:, :k] = prefix
  history_scale = s.get("history_guidance_scale", 1.0)
  vanilla = s.get("history_guidance_mode", "fractional") == "vanilla"
  alpha_bar = np.cumprod(1 - diffusion.make_betas("linear", config.diffusion.num_timesteps))
  history_keys = [jax.random.fold_in(key, 2) for key in rngs]
  for r in range(sched.num_calls):
    ws = int(sched.window_start[r])
    prev, new = sched.previous[r, ws : ws + w], sched.steps[r, ws : ws + w]
    t_cur = np.broadcast_to(grid[prev], (len(rngs), w))
    t_next = np.broadcast_to(grid[new], (len(rngs), w))
    t_in = np.where(prev == n, finished_t, t_cur)
    x_w = x[:, ws : ws + w]
    out_hist = None
    if history_scale != 1 and vanilla:
      m = int(np.sum(prev == n))
      assert (prev[:m] == n).all() and (prev[m:] != n).all()  # finished frames come first
      out_hist = np.array(guided(params, x_w, t_in, labels, s.guidance_scale))
      out_hist[:, m:] = guided(params, x_w[:, m:], t_in[:, m:], labels, s.guidance_scale)
    elif history_scale != 1:
      x_hist, t_hist = x_w.copy(), t_in.copy()
      for j in np.flatnonzero(prev == n):  # noised as far as the cleanest frame in progress
        t_hist[:, j] = t_in[0, prev != n].min()
        a = alpha_bar[t_hist[0, j]]
        for b, key in enumerate(history_keys):
          noise = np.asarray(jax.random.normal(jax.random.fold_in(key, ws + j), (L, C)))
          x_hist[b, j] = np.sqrt(a) * x_w[b, j] + np.sqrt(1 - a) * noise
      out_hist = guided(params, x_hist, t_hist, labels, s.guidance_scale)
    x[:, ws : ws + w] = step(params, x_w, t_in, t_cur, t_next, labels, s.guidance_scale,
                             out_hist, history_scale=history_scale)
  return x


def assert_close(a, b, rel=1e-4):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape
  scale = max(np.abs(b).max(), 1e-6)
  assert np.abs(a - b).max() <= rel * scale, (np.abs(a - b).max(), scale)


@contextlib.contextmanager
def count_compiles():
  compiles = []
  def listener(event, secs, **kwargs):
    if "backend_compile" in event:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield compiles
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


# ----------------------------------------------------------------------------------------------
# The model's cached pass.


@pytest.mark.parametrize(("rope_axes", "convs"), [("frame", 0), ("frame_row_col", 0),
                                                   ("frame_row_col", 8)])
def test_decode_with_cached_kv_matches_the_full_forward(rope_axes, convs):
  # Also with models_test's all-random weights: one call, no denoising loop to amplify. With
  # the pixel convolutions (per frame) too.
  x = jnp.asarray(np.random.default_rng(2).standard_normal((B, 4, L, C)), jnp.float32)
  t = jnp.array([[0, 0, 40, 99], [0, 3, 3, 70]])
  labels = jnp.array([1, 4])
  model, _ = tiny_model(num_classes=5, rope_axes=rope_axes, convs=convs)
  params = random_params(model, scale=0.3)  # as models_test.randomized

  @functools.partial(jax.jit, compiler_options=FAST)
  def run(params):
    full = model.apply(params, x, t, labels)
    ctx_k, ctx_v = model.apply(params, labels, B, method="context_kv")
    valid = jnp.ones(ctx_k.shape[2], bool)
    head, (k, v) = model.apply(
        params, x[:, :2], t[:, :2], jnp.arange(2), (ctx_k, ctx_v), valid, method="decode"
    )
    # The rest against the cache, with a stale slot that must stay masked.
    junk = lambda a, b: jnp.concatenate([a, b, 100.0 + b[:, :, :L]], axis=2)
    prefix = (junk(ctx_k, k), junk(ctx_v, v))
    valid = jnp.arange(prefix[0].shape[2]) < ctx_k.shape[2] + 2 * L
    tail, _ = model.apply(
        params, x[:, 2:], t[:, 2:], jnp.arange(2, 4), prefix, valid, method="decode"
    )
    return full, head, tail

  full, head, tail = run(params)
  assert_close(head, full[:, :2])
  assert_close(tail, full[:, 2:])


# ----------------------------------------------------------------------------------------------
# Schedules and the cache plan (host side).


@pytest.mark.parametrize("num_frames,prefix_frames", [(4, 0), (4, 1), (12, 0), (12, 3), (7, 5)])
@pytest.mark.parametrize("ar_step", [0, 1, 2, 4])
def test_sampling_schedule_with_prefix(num_frames, prefix_frames, ar_step):
  n, window = 4, 4
  sched = sampling_plan.sampling_schedule(num_frames, window, ar_step, n, None, prefix_frames)
  if prefix_frames == 0:
    plain = timesteps.ad_schedule(num_frames, window, ar_step, n)
    np.testing.assert_array_equal(sched.steps, plain.steps)
    np.testing.assert_array_equal(sched.window_start, plain.window_start)
  assert np.all(sched.previous[:, :prefix_frames] == n)  # given frames: finished throughout
  assert sched.updates[0, prefix_frames]  # the first frame to make starts at once
  assert np.all(sched.steps[-1] == n) and np.all(np.diff(sched.window_start) >= 0)
  w = min(window, num_frames)
  for r in range(sched.num_calls):
    ws, updated = sched.window_start[r], np.nonzero(sched.updates[r])[0]
    assert ws <= updated.min() and updated.max() < ws + w
    assert np.all(sched.previous[r, :ws] == n)
    assert np.all(np.diff(sched.steps[r]) <= 0)


@pytest.mark.parametrize(
    "num_frames,window,ar_step,num_steps,prefix_frames",
    [(4, 4, 0, 4, 0), (4, 4, 1, 4, 0), (3, 4, 2, 4, 0), (4, 4, 4, 4, 1), (12, 4, 0, 4, 0),
     (12, 4, 1, 4, 0), (12, 4, 2, 4, 2), (12, 4, 4, 4, 0), (16, 16, 5, 50, 0),
     (48, 16, 5, 50, 0), (48, 16, 1, 50, 4), (64, 16, 0, 50, 0)],
)
def test_cache_plan_computes_only_what_changed(
    num_frames, window, ar_step, num_steps, prefix_frames
):
  sched = sampling_plan.sampling_schedule(
      num_frames, window, ar_step, num_steps, None, prefix_frames
  )
  plan = sampling_plan.cache_plan(sched, num_steps, max_branches=4)
  prev, n, w = sched.previous, num_steps, min(window, num_frames)
  for r in range(sched.num_calls):
    ws = sched.window_start[r]
    moved = r == 0 or ws != sched.window_start[r - 1]
    assert plan.refresh[r] == moved
    in_window = np.arange(num_frames)
    in_window = in_window[(in_window >= ws) & (in_window < ws + w)]
    finished = in_window[prev[r, in_window] == n]
    if moved:  # the cached frames' view changed: every finished frame of the window again
      stale = set(finished)
    else:  # frames finished in the last call, once, clean
      stale = {f for f in finished if prev[r - 1, f] < n}
    expected = set(np.nonzero(sched.updates[r])[0]) | stale
    assert set(range(plan.query_start[r], plan.query_end[r])) == expected, r
    assert plan.query_end[r] - 1 == np.nonzero(sched.updates[r])[0].max()  # nothing later
    assert plan.num_cached[r] == plan.query_start[r] - ws
    assert np.all(prev[r, ws : plan.query_start[r]] == n)  # the cache holds finished frames
  assert len(plan.sizes) <= 4 and np.all(plan.computed_frames >= plan.query_frames)
  if len(np.unique(plan.query_frames)) <= 4:
    np.testing.assert_array_equal(plan.computed_frames, plan.query_frames)
  if ar_step > 0:  # a fraction of the whole-window work
    assert plan.computed_frames.sum() < sched.num_calls * w


def test_cache_plan_of_the_paper_setting():
  # 16 frames, window 16, 50 steps, s = 5: 125 calls; ~10 frames in progress per call.
  sched = timesteps.ad_schedule(16, 16, 5, 50)
  plan = sampling_plan.cache_plan(sched, 50)
  assert sched.num_calls == 50 + 15 * 5
  assert plan.query_frames.sum() == sched.updates.sum() + 15  # + each frame once, clean
  assert plan.computed_frames.sum() < 0.65 * sched.num_calls * 16


# ----------------------------------------------------------------------------------------------
# Sampling.


def test_sample_shapes_and_compiles_once():
  model, params = tiny_model()
  config = tiny_config(ar_step=4)  # two compiled query sizes (1, 2): quicker to compile
  out = sampling.sample(model, params, config, jax.random.key(0), num_videos=3)
  assert out.shape == (3, config.model.num_frames, L, C) and out.dtype == jnp.float32
  out = np.asarray(out)
  assert np.all(np.isfinite(out)) and np.abs(out).max() <= 1.0  # clean frames: clipped x0
  assert out.std() > 0.1
  with count_compiles() as compiles:
    again = sampling.sample(model, params, config, jax.random.key(1), num_videos=3)
    assert sampling.make_sampler(model, config) is sampling.make_sampler(model, config)
  assert not compiles  # one compile per (config, batch size)
  assert np.abs(np.asarray(again) - out).max() > 0.1  # another key, another video


@pytest.mark.parametrize("ar_step", [0, 1, 2, 4])
@pytest.mark.parametrize("num_frames", [3, 4, 12])
def test_kv_cache_matches_no_cache_and_the_reference(num_frames, ar_step):
  model, params = tiny_model()
  eta = 1.0 if (num_frames + ar_step) % 2 else 0.0  # same noise on both paths
  config = tiny_config(ar_step=ar_step, eta=eta)
  # One compiled query size (quicker), but four in one case.
  branches = 4 if (num_frames, ar_step) == (12, 2) else 1
  runs = {
      kv: sampling.make_sampler(
          model, config, num_frames, kv_cache=kv, max_branches=branches, compiler_options=FAST
      )
      for kv in (False, True)
  }
  if runs[True].plan is None:  # nothing to reuse: the cached sampler runs the plain path
    assert ar_step == 0 and np.all(runs[True].frames_per_call == min(num_frames, 4))
  else:
    assert len(runs[True].plan.sizes) == branches
  out = {kv: np.asarray(s(params, keys())) for kv, s in runs.items()}
  assert out[True].shape == (B, num_frames, L, C)
  assert out[False].std() > 0.1
  assert_close(out[True], out[False])
  if eta == 0:
    assert_close(out[True], reference_sample(model, params, config, keys(), num_frames))


@pytest.mark.parametrize("num_frames,prefix_frames,ar_step", [(4, 1, 4), (12, 3, 1)])
def test_prefix_frames_come_back_unchanged(num_frames, prefix_frames, ar_step):
  model, params = tiny_model()
  config = tiny_config(ar_step=ar_step, num_frames=num_frames)
  prefix = np.tanh(np.random.default_rng(5).standard_normal((B, prefix_frames, L, C)))
  prefix = prefix.astype(np.float32)
  run = lambda kv: sampling.make_sampler(
      model, config, prefix_frames=prefix_frames, kv_cache=kv, max_branches=2,
      compiler_options=FAST,
  )(params, keys(), None, prefix)
  out = {False: run(False)}
  if num_frames == config.model.num_frames:  # through sample(), prefix_frames from the prefix
    out[True] = sampling.sample(
        model, params, config, jax.random.key(0), num_videos=B, prefix=prefix
    )
  else:
    out[True] = run(True)
  for video in out.values():
    np.testing.assert_array_equal(np.asarray(video)[:, :prefix_frames], prefix)
  assert_close(out[True], out[False])
  expected = reference_sample(model, params, config, keys(), num_frames, prefix=prefix)
  assert_close(out[True], expected)


@pytest.mark.parametrize("kv_cache", [False, True])
def test_noise_temperature_scales_the_noise_of_frames_after_the_first(kv_cache):
  model, params = tiny_model()
  run = lambda config, rngs, prefix=None: np.asarray(sampling.make_sampler(
      model, config, 12, prefix_frames=0 if prefix is None else prefix.shape[1],
      kv_cache=kv_cache, max_branches=2, compiler_options=FAST)(params, rngs, None, prefix))
  # eta = 0: the AD loop written plainly from initial noise scaled by hand.
  config = tiny_config(ar_step=1, noise_temperature=0.5)
  assert_close(run(config, keys()), reference_sample(model, params, config, keys(), 12,
                                                     temperature=0.5))
  # At 0 the frames after a given first frame depend on it alone, at every eta; the first frame
  # keeps its noise, so that videos without a prefix differ.
  prefix = np.tanh(np.random.default_rng(5).standard_normal((B, 1, L, C))).astype(np.float32)
  for eta in (0.0, 1.0):
    cold = tiny_config(ar_step=1, eta=eta, noise_temperature=0.0)
    np.testing.assert_allclose(run(cold, keys(0), prefix), run(cold, keys(1), prefix), atol=1e-6)
    warm = tiny_config(ar_step=1, eta=eta)
    assert np.abs(run(warm, keys(0), prefix) - run(warm, keys(1), prefix)).max() > 0.1
  cold = tiny_config(ar_step=1, eta=1.0, noise_temperature=0.0)
  assert np.abs(run(cold, keys(0))[:, 0] - run(cold, keys(1))[:, 0]).min(axis=0).max() > 0.1
  with pytest.raises(ValueError, match="noise_temperature"):
    run(tiny_config(noise_temperature=-1.0), keys())


def test_noise_temperature_streams_as_one_call():
  model, params = tiny_model()
  config = tiny_config(ar_step=2, eta=1.0, noise_temperature=0.5)
  for kv_cache in (False, True):
    sampler = sampling.make_sampler(model, config, 10, kv_cache=kv_cache, max_branches=2,
                                    compiler_options=FAST)
    whole = np.asarray(sampler(params, keys()))
    chunks = list(sampler.stream(params, keys(), segment_frames=2))
    streamed = np.concatenate([np.asarray(frames) for _, frames in chunks], axis=1)
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
    assert np.abs(whole - np.asarray(sampling.make_sampler(
        model, tiny_config(ar_step=2, eta=1.0), 10, kv_cache=kv_cache, max_branches=2,
        compiler_options=FAST)(params, keys()))).max() > 0.1


def test_classifier_free_guidance():
  model, params = tiny_model(num_classes=5)
  labels = jnp.array([1, 3], jnp.int32)
  results = {}
  for g in (1.0, 3.0):
    config = tiny_config(num_classes=5, guidance_scale=g, ar_step=1)
    sampler = sampling.make_sampler(model, config, max_branches=2, compiler_options=FAST)
    assert sampler.guided == (g != 1.0)
    results[g] = np.asarray(sampler(params, keys(), labels))
    assert_close(results[g], reference_sample(model, params, config, keys(), 4, labels))
    if g != 1.0:  # no labels: unconditional (the null label), no second pass
      uncond = sampler(params, keys(), None)
      assert_close(uncond, reference_sample(model, params, config, keys(), 4, None))
  assert np.abs(results[3.0] - results[1.0]).max() > 1e-2
  with pytest.raises(ValueError, match="unconditional model"):
    sampling.sample(*tiny_model(), tiny_config(), jax.random.key(0), num_videos=B, labels=labels)


@pytest.mark.parametrize("mode", ["fractional", "vanilla"])
@pytest.mark.parametrize("num_frames,ar_step,prefix_frames", [(4, 1, 0), (9, 2, 0), (8, 4, 3)])
def test_history_guidance_matches_the_reference(num_frames, ar_step, prefix_frames, mode):
  model, params = tiny_model()
  prefix = (jax.random.normal(jax.random.key(5), (B, prefix_frames, L, C))
            if prefix_frames else None)
  out = {}
  for scale in (1.0, 2.0):
    config = tiny_config(ar_step=ar_step, history_guidance_scale=scale,
                         history_guidance_mode=mode)
    sampler = sampling.make_sampler(model, config, num_frames, prefix_frames=prefix_frames,
                                    max_branches=2, compiler_options=FAST)
    assert sampler.history_guided == (scale != 1.0)
    assert (sampler.plan is None) == (scale != 1.0)  # the cache cannot serve the second pass
    out[scale] = np.asarray(sampler(params, keys(), None, prefix))
    assert_close(out[scale], reference_sample(model, params, config, keys(), num_frames,
                                              prefix=prefix))
  assert np.abs(out[2.0] - out[1.0]).max() > 1e-2


def test_frame_by_frame_history_guidance_scale_applies_frame_by_frame_only():
  # Frame by frame (ar_step = num_steps = 4) the frame-by-frame scale replaces the scale: the
  # videos are those of that scale set as history_guidance_scale; at ar_step 1 it is unused.
  model, params = tiny_model()
  def videos(**fields):
    sampler = sampling.make_sampler(model, tiny_config(history_guidance_mode="vanilla", **fields),
                                    6, max_branches=2, compiler_options=FAST)
    return sampler.history_guided, np.asarray(sampler(params, keys()))
  guided, by_frame = videos(ar_step=4, history_guidance_scale=1.0,
                            frame_by_frame_history_guidance_scale=2.0)
  assert guided
  np.testing.assert_array_equal(by_frame, videos(ar_step=4, history_guidance_scale=2.0)[1])
  guided, ad = videos(ar_step=1, history_guidance_scale=1.0,
                      frame_by_frame_history_guidance_scale=2.0)
  assert not guided
  np.testing.assert_array_equal(ad, videos(ar_step=1, history_guidance_scale=1.0)[1])
  assert np.abs(by_frame - videos(ar_step=4, history_guidance_scale=1.0)[1]).max() > 1e-2
  with pytest.raises(ValueError, match="frame_by_frame_history_guidance_scale"):
    videos(ar_step=4, frame_by_frame_history_guidance_scale=-1.0)


def test_frame_by_frame_noise_temperature_applies_frame_by_frame_only():
  # As the frame-by-frame guidance scale: frame by frame (ar_step = num_steps = 4) the videos of
  # that temperature set as noise_temperature; at ar_step 1 it is unused.
  model, params = tiny_model()
  def videos(**fields):
    sampler = sampling.make_sampler(model, tiny_config(eta=1.0, **fields), 6, kv_cache=False,
                                    max_branches=2, compiler_options=FAST)
    return np.asarray(sampler(params, keys()))
  by_frame = videos(ar_step=4, frame_by_frame_noise_temperature=0.5)
  np.testing.assert_array_equal(by_frame, videos(ar_step=4, noise_temperature=0.5))
  assert np.abs(by_frame - videos(ar_step=4)).max() > 1e-2
  np.testing.assert_array_equal(videos(ar_step=1, frame_by_frame_noise_temperature=0.5),
                                videos(ar_step=1))
  assert sampling.noise_temperature(
      tiny_config(ar_step=4, noise_temperature=0.8).sampling) == 0.8
  with pytest.raises(ValueError, match="frame_by_frame_noise_temperature"):
    videos(ar_step=4, frame_by_frame_noise_temperature=-1.0)


def test_frame_by_frame_finished_timestep_applies_frame_by_frame_only():
  # Frame by frame (ar_step = num_steps = 4) from a 2-frame prefix, the finished frames (the
  # prefix's too) are fed at t = 5, with and without cache, as the plain loop feeds them; at
  # ar_step 1 it is unused.
  model, params = tiny_model()
  prefix = np.tanh(np.random.default_rng(3).standard_normal((B, 2, L, C))).astype(np.float32)
  def videos(kv_cache, **fields):
    sampler = sampling.make_sampler(model, tiny_config(**fields), 7, prefix_frames=2,
                                    kv_cache=kv_cache, max_branches=2, compiler_options=FAST)
    return np.asarray(sampler(params, keys(), None, prefix))
  by_frame = videos(True, ar_step=4, frame_by_frame_finished_timestep=5)
  assert_close(by_frame, videos(False, ar_step=4, frame_by_frame_finished_timestep=5))
  config = tiny_config(ar_step=4)
  assert_close(by_frame, reference_sample(model, params, config, keys(), 7, prefix=prefix,
                                          finished_t=5))
  assert np.abs(by_frame - videos(True, ar_step=4)).max() > 1e-2
  np.testing.assert_array_equal(videos(True, ar_step=1, frame_by_frame_finished_timestep=5),
                                videos(True, ar_step=1))
  assert sampling.finished_timestep(tiny_config(ar_step=4, finished_timestep=1).sampling) == 1
  with pytest.raises(ValueError, match="frame_by_frame_finished_timestep"):
    videos(True, ar_step=4, frame_by_frame_finished_timestep=100)


@pytest.mark.parametrize("mode", ["fractional", "vanilla"])
def test_history_guidance_streams_with_labels_and_counts_its_passes(mode):
  # The finished frames' noise is keyed by their index in the video, not in the buffer: the
  # streamed videos are the whole-video program's.
  model, params = tiny_model(num_classes=5)
  config = tiny_config(num_classes=5, guidance_scale=3.0, ar_step=1, history_guidance_scale=1.5,
                       history_guidance_mode=mode)
  sampler = sampling.make_sampler(model, config, 10, max_branches=2, compiler_options=FAST)
  labels = jnp.array([1, 3], jnp.int32)
  whole = np.asarray(sampler(params, keys(), labels))
  assert_close(whole, reference_sample(model, params, config, keys(), 10, labels))
  chunks = list(sampler.stream(params, keys(), labels, segment_frames=2))
  assert len(chunks) > 2
  streamed = np.concatenate([np.asarray(f) for _, f in chunks], axis=1)
  np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
  assert sampler.num_model_calls == 4 * sampler.schedule.num_calls
  assert sampler.num_model_calls_for(labels_given=False) == 2 * sampler.schedule.num_calls
  for bad in (-1.0, float("nan")):
    with pytest.raises(ValueError, match="history_guidance_scale"):
      sampling.make_sampler(model, tiny_config(num_classes=5, history_guidance_scale=bad), 10)
  with pytest.raises(ValueError, match="history_guidance_mode"):
    sampling.make_sampler(model, tiny_config(history_guidance_mode="full"), 10)


class CountingModel:
  """Passes model.apply through, recording (method, batch rows, frames) of every evaluation
  when it runs (a callback in the compiled program: a branch of lax.switch not taken, or a
  trace, records nothing)."""

  def __init__(self, model):
    self.model, self.calls = model, []

  def apply(self, variables, *args, method=None, **kwargs):
    if method != "context_kv":
      entry = (method, args[0].shape[0], args[0].shape[1])
      jax.debug.callback(lambda: self.calls.append(entry))
    return self.model.apply(variables, *args, method=method, **kwargs)

  def __getattr__(self, name):
    return getattr(self.model, name)


@pytest.mark.parametrize("kv_cache", [False, True])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_number_of_model_evaluations(kv_cache, guidance_scale):
  model, params = tiny_model(num_classes=5)
  config = tiny_config(num_classes=5, guidance_scale=guidance_scale, ar_step=2)
  counting = CountingModel(model)
  sampler = sampling.make_sampler(
      counting, config, 6, kv_cache=kv_cache, max_branches=2, compiler_options=FAST
  )
  jax.block_until_ready(sampler(params, keys(), jnp.array([0, 4])))
  jax.effects_barrier()
  rows = [b for _, b, _ in counting.calls]
  assert len(counting.calls) == sampler.schedule.num_calls  # one batched pass per call
  assert sum(rows) // B == sampler.num_model_calls
  assert sampler.num_model_calls == sampler.schedule.num_calls * (2 if guidance_scale != 1 else 1)
  frames = np.array([f for _, _, f in counting.calls])
  np.testing.assert_array_equal(frames, sampler.frames_per_call)
  assert {m for m, _, _ in counting.calls} == {"decode" if kv_cache else None}


ORACLE_X0 = 0.9 * np.tanh(np.random.default_rng(7).standard_normal((L, C))).astype(np.float32)


class Oracle(nn.Module):
  """A stand-in for the network that knows the answer: a fixed x0 (the same for every frame),
  given in the parameterization asked for, with the KV-cache methods of VideoDiT."""

  parameterization: str
  num_timesteps: int
  context_attends_video: bool = False
  x0_scale: float = 1.0  # the answer is x0_scale * ORACLE_X0

  def __call__(self, x, t, labels=None):
    x0 = jnp.broadcast_to(self.x0_scale * ORACLE_X0, x.shape)
    sched = diffusion.make_schedule("linear", self.num_timesteps)
    eps = diffusion.eps_from_x0(sched, x, t, x0)
    return diffusion.target(sched, self.parameterization, x0, eps, t)

  def context_kv(self, labels, batch_size):
    kv = jnp.zeros((1, batch_size, 1, 1, 2))
    return kv, kv

  def decode(self, x, t, positions, kv_prefix, prefix_valid):
    kv = jnp.zeros((1, x.shape[0], x.shape[1] * L, 1, 2))
    return self(x, t), (kv, kv)


@pytest.mark.parametrize("parameterization", diffusion.PARAMETERIZATIONS)
@pytest.mark.parametrize("kv_cache", [False, True])
def test_ddim_lands_on_the_oracle_x0(parameterization, kv_cache):
  config = tiny_config(ar_step=2, eta=0.5)
  config.diffusion.parameterization = parameterization
  oracle = Oracle(parameterization, config.diffusion.num_timesteps)
  sampler = sampling.make_sampler(
      oracle, config, 12, kv_cache=kv_cache, max_branches=1, compiler_options=FAST
  )
  out = np.asarray(sampler({}, keys()))
  expected = np.broadcast_to(ORACLE_X0, out.shape)
  np.testing.assert_allclose(out, expected, atol=1e-5 if parameterization == "x0" else 1e-4)


def test_x0_is_clipped_to_the_range_of_the_tokens():
  """clip_denoised: pixels to [-1, 1]; stage 2's latents, multiplied by latents.scale, to
  [-scale, scale]. An oracle whose x0 reaches 2.7 lands on it clipped accordingly."""
  oracle = Oracle("x0", 100, x0_scale=3.0)
  x0 = 3.0 * ORACLE_X0
  assert np.abs(x0).max() > 2
  for workdir, scale, bound in ((None, 3.0, 1.0), ("a stage-1 run", 3.0, 3.0),
                                ("a stage-1 run", 2.0, 2.0)):
    config = tiny_config(ar_step=2)
    config.diffusion.parameterization = "x0"
    config.latents.autoencoder_workdir, config.latents.scale = workdir, scale
    sampler = sampling.make_sampler(oracle, config, 4, max_branches=1, compiler_options=FAST)
    out = np.asarray(sampler({}, keys()))
    np.testing.assert_allclose(out, np.broadcast_to(np.clip(x0, -bound, bound), out.shape),
                               atol=1e-5)


@pytest.mark.parametrize("kv_cache", [False, True])
def test_context_frames_beyond_a_video_within_the_window(kv_cache):
  # context_frames = 8 > the 4-frame window: unused where the video (given frames included)
  # fits in the window; an error where the window slides, given frames or not.
  config = tiny_config(ar_step=1, context_frames=8)
  oracle = Oracle("x0", config.diffusion.num_timesteps)
  prefix = np.zeros((B, 3, L, C), np.float32)
  for num_frames, k in [(4, 0), (4, 3)]:
    sched = sampling_plan.sampling_schedule(num_frames, 4, 1, 4, 8, k)
    default = sampling_plan.sampling_schedule(num_frames, 4, 1, 4, None, k)
    np.testing.assert_array_equal(sched.steps, default.steps)
    sampler = sampling.make_sampler(
        oracle, config, num_frames, prefix_frames=k, kv_cache=kv_cache, max_branches=1,
        compiler_options=FAST,
    )
    out = np.asarray(sampler({}, keys(), None, prefix[:, :k] if k else None))
    np.testing.assert_allclose(out[:, k:], np.broadcast_to(ORACLE_X0, out[:, k:].shape), atol=1e-5)
  with pytest.raises(ValueError, match="context_frames=8 must be less than the window"):
    sampling.make_sampler(oracle, config, 12, kv_cache=kv_cache)
  with pytest.raises(ValueError, match="context_frames=8 must be less than the window"):
    sampling.make_sampler(oracle, config, 6, prefix_frames=3, kv_cache=kv_cache)


@pytest.mark.parametrize("kv_cache", [False, True])
@pytest.mark.parametrize("labels", [None, [0, 4]])
def test_number_of_model_evaluations_with_and_without_labels(kv_cache, labels):
  # Guided, but without labels only the null-label pass runs: one evaluation per call.
  config = tiny_config(num_classes=5, guidance_scale=2.0, ar_step=2)
  counting = CountingModel(Oracle("x0", config.diffusion.num_timesteps))
  sampler = sampling.make_sampler(
      counting, config, 6, kv_cache=kv_cache, max_branches=1, compiler_options=FAST
  )
  jax.block_until_ready(sampler({}, keys(), None if labels is None else jnp.array(labels)))
  jax.effects_barrier()
  passes = sum(b for _, b, _ in counting.calls) // B
  assert passes == sampler.num_model_calls_for(labels_given=labels is not None)
  assert passes == sampler.schedule.num_calls * (1 if labels is None else 2)
  assert sampler.num_model_calls == sampler.num_model_calls_for(labels_given=True)


# ----------------------------------------------------------------------------------------------
# The rolling KV cache (config.sampling.kv_cache_mode = "rolling").


def test_rolling_plan_computes_each_finished_frame_once():
  # Exact: every slide recomputes the finished frames in view. Rolling: a frame is computed
  # clean once, when it has just finished, and stays cached while it is in view.
  sched = sampling_plan.sampling_schedule(128, 16, 5, 50)
  exact = sampling_plan.cache_plan(sched, 50)
  rolling = sampling_plan.cache_plan(sched, 50, rolling=True)
  assert rolling.refresh.sum() == 1 and exact.refresh.sum() > 100
  assert np.all(rolling.num_cached == rolling.query_start - sched.window_start)
  # Query frames = frames updated in the call + frames that finished in the call before.
  updated = sched.updates.sum(axis=1)
  just_finished = np.diff((sched.previous == 50).sum(axis=1), prepend=0)  # in call r - 1
  np.testing.assert_array_equal(rolling.query_frames, updated + just_finished)
  # Exact pays, on every slide, for the finished frames of the new window that were cached.
  refreshed = exact.refresh & (np.arange(sched.num_calls) > 0)
  extra = (exact.query_frames - rolling.query_frames)[refreshed]
  assert np.all(extra > 0) and np.all(exact.query_frames[~refreshed] == rolling.query_frames[~refreshed])


@pytest.mark.parametrize(
    "num_frames,ar_step,prefix_frames,deep_differs,rope_axes",
    [(12, 2, 0, True, "frame"), (10, 4, 3, True, "frame_row_col"), (12, 0, 0, False, "frame")],
)
def test_rolling_cache_is_exact_for_one_layer(num_frames, ar_step, prefix_frames, deep_differs,
                                              rope_axes):
  # With one layer a frame's keys and values depend on that frame alone, so keeping them as the
  # window slides changes nothing: rolling equals exact (keys rotated to their new slots). With
  # two layers they depend on the frames before them in view, and rolling differs, except at
  # ar_step 0, where each chunk's frames finish together and enter the cache in the window that
  # then uses them (the window has already moved on when they are computed clean).
  config = tiny_config(ar_step=ar_step)
  config.model.rope_axes = rope_axes
  prefix = jax.random.normal(jax.random.key(5), (B, prefix_frames, L, C)) if prefix_frames else None
  outs = {}
  for depth in (1, 2):
    config.model.depth = depth
    model = build_model(config)
    params = random_params(model)
    for mode in ("exact", "rolling"):
      config.sampling.kv_cache_mode = mode
      sampler = sampling.make_sampler(
          model, config, num_frames, prefix_frames=prefix_frames, kv_cache=True, max_branches=2,
          compiler_options=FAST,
      )
      assert sampler.plan is not None
      outs[depth, mode] = np.asarray(sampler(params, keys(), None, prefix))
  assert_close(outs[1, "rolling"], outs[1, "exact"])
  if deep_differs:
    assert np.abs(outs[2, "rolling"] - outs[2, "exact"]).max() > 1e-3
  else:
    assert_close(outs[2, "rolling"], outs[2, "exact"])


@pytest.mark.parametrize("rope_axes", ["frame", "frame_row_col"])
def test_shift_keys_moves_keys_to_another_position(rope_axes):
  # RoPE composes: a key computed at position p and shifted by m equals it computed at p - m
  # (with the axial RoPE, in the frame index only: rows and columns stay).
  model, params = tiny_model(rope_axes=rope_axes)
  x = jax.random.normal(jax.random.key(0), (1, 1, L, C))
  t = jnp.full((1, 1), 10, jnp.int32)
  no_prefix = tuple(jnp.zeros((2, 1, 0) + s, jnp.float32) for s in [(2, 16)] * 2)

  def keys_at(p):  # a frame alone (nothing cached before it): its keys at position p
    _, (k, _) = model.apply(params, x, t, jnp.array([p]), no_prefix, jnp.zeros((0,), bool),
                            method="decode")
    return k

  shifted = model.apply(params, keys_at(7), jnp.int32(3), method="shift_keys")
  np.testing.assert_allclose(shifted, keys_at(4), atol=1e-5)
  assert np.abs(keys_at(7) - keys_at(4)).max() > 1e-2


def test_unknown_kv_cache_mode():
  model, _ = tiny_model()
  with pytest.raises(ValueError, match="kv_cache_mode='sliding'"):
    sampling.make_sampler(model, tiny_config(kv_cache_mode="sliding"), 4)


# Sampler.stream: the calls in segments over a buffer that moves along the video.


@pytest.mark.parametrize("num_frames,ar_step,segment_frames", [(13, 0, 1), (12, 2, 3), (16, 4, 4)])
def test_stream_segments_cover_the_calls_and_emit_finished_frames(num_frames, ar_step,
                                                                   segment_frames):
  sched = sampling_plan.sampling_schedule(num_frames, 4, ar_step, 4)
  plan = sampling_plan.stream_segments(sched, 4, segment_frames)
  assert plan.begins[0] == 0 and plan.ends[-1] == sched.num_calls
  np.testing.assert_array_equal(plan.begins[1:], plan.ends[:-1])
  assert len(set((plan.ends - plan.begins)[:-1])) <= 1  # equal segments: one program
  assert len(plan.begins) > 1 and plan.buffer_frames <= 4 + segment_frames
  for begin, end, offset in zip(plan.begins, plan.ends, plan.offsets):
    # Every frame a call of the segment touches (its window) lies in the buffer.
    starts = sched.window_start[begin:end]
    assert starts.min() >= offset and starts.max() + 4 <= offset + plan.buffer_frames
    # Frames that change in the segment are in its buffer too.
    changed = np.nonzero((sched.steps[begin:end] != sched.previous[begin:end]).any(0))[0]
    assert changed.min() >= offset and changed.max() < offset + plan.buffer_frames


@pytest.mark.parametrize(
    "kv_cache,mode,num_frames,ar_step,prefix_frames,eta",
    [(False, "exact", 13, 0, 0, 0.0), (True, "exact", 12, 2, 0, 0.0),
     (True, "rolling", 14, 1, 3, 0.0), (True, "exact", 10, 4, 0, 1.0)],
)
def test_stream_yields_the_videos_of_one_call(kv_cache, mode, num_frames, ar_step, prefix_frames,
                                              eta):
  # The same videos, frame for frame, as the whole-video program, with at most 2 frames of
  # slack in the buffer (several segments), and a frame's initial noise independent of how
  # long the video is.
  model, params = tiny_model()
  config = tiny_config(ar_step=ar_step, kv_cache_mode=mode, eta=eta)
  prefix = jax.random.normal(jax.random.key(5), (B, prefix_frames, L, C)) if prefix_frames else None
  sampler = sampling.make_sampler(model, config, num_frames, prefix_frames=prefix_frames,
                                  kv_cache=kv_cache, max_branches=2, compiler_options=FAST)
  assert (sampler.plan is not None) == kv_cache
  whole = np.asarray(sampler(params, keys(), None, prefix))
  chunks = list(sampler.stream(params, keys(), None, prefix, segment_frames=2))
  assert len(chunks) > 2
  firsts = [first for first, _ in chunks]
  assert firsts == sorted(firsts) and firsts[0] == 0
  streamed = np.concatenate([np.asarray(frames) for _, frames in chunks], axis=1)
  assert streamed.shape == whole.shape
  np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
  if prefix is not None:
    np.testing.assert_array_equal(streamed[:, :prefix_frames], np.asarray(prefix))
  noise = sampling.initial_noise(keys(), (num_frames, L, C))
  np.testing.assert_array_equal(sampling.initial_noise(keys(), (3, L, C), first_frame=5),
                                noise[:, 5:8])


def test_stream_with_labels_and_guidance():
  model, params = tiny_model(num_classes=5)
  config = tiny_config(num_classes=5, guidance_scale=3.0, ar_step=1)
  sampler = sampling.make_sampler(model, config, 10, max_branches=2, compiler_options=FAST)
  labels = jnp.array([1, 3], jnp.int32)
  whole = np.asarray(sampler(params, keys(), labels))
  streamed = np.concatenate(
      [np.asarray(f) for _, f in sampler.stream(params, keys(), labels, segment_frames=3)], axis=1)
  np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
