"""Generation with the AD scheduler: the whole schedule as one compiled lax.scan.

Every row of the schedule (timesteps.ad_schedule) is one model call on the window of
config.model.num_frames frames starting at its window_start. A frame that has completed k of N
DDIM steps sits at grid[k] (diffusion.ddim_timesteps; grid[N] = -1, clean); a call moves the
frames it updates from grid[k] to grid[k + 1]. Finished frames are fed clean at t = 0, frames
not yet started are noise at grid[0], and the model sees exactly its window, as in training.

KV cache (config.sampling.kv_cache). Under temporal causal attention a finished frame's keys and
values depend only on it and the frames before it in the window, so they stay the same from
call to call while the window stays put. Per call the cached path computes only the frames from
the first one not in the cache to the last one that updates (cache_plan), against the cached
keys/values of the conditioning tokens (computed once) and of the finished frames; frames after
the last updating one are not computed at all. Frames that finished in the previous call are
computed once more, clean at t = 0, and their keys/values enter the cache. When the window moves
the cached frames' view changes: the cache is dropped and the call recomputes every finished
frame of the new window (a "refresh"). Both paths compute the same function of the window.
"""

import dataclasses
import functools
from typing import Callable, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ardiff import diffusion
from ardiff import timesteps

# ----------------------------------------------------------------------------------------------
# Host-side plans (numpy, static): the schedule with given prefix frames, and the cache plan.


def sampling_schedule(
    num_frames: int,
    window: int,
    ar_step: int,
    num_steps: int,
    context_frames: int | None = None,
    prefix_frames: int = 0,
) -> timesteps.ADSchedule:
  """The AD schedule of num_frames frames of which the first prefix_frames are given.

  Given frames count as finished from the start: the AD schedule of the remaining frames
  (the paper's recurrence lets the first of them advance at once), shifted behind them, with
  the window placed as ad_schedule places it (ending at the last frame denoised), so that the
  given frames stay in view as context while there is room.
  """
  if not 0 <= prefix_frames < num_frames:
    raise ValueError(f"prefix_frames={prefix_frames} must lie in [0, num_frames={num_frames}).")
  rest = timesteps.ad_schedule(
      num_frames - prefix_frames, window, ar_step, num_steps, context_frames
  )
  if prefix_frames == 0:
    return rest
  initial = np.zeros(num_frames, np.int32)
  initial[:prefix_frames] = num_steps
  given = np.full((rest.num_calls, prefix_frames), num_steps, np.int32)
  steps = np.concatenate([given, rest.steps], axis=1)
  last_updated = prefix_frames + np.array([np.nonzero(u)[0].max() for u in rest.updates])
  start = np.clip(last_updated - window + 1, 0, max(num_frames - window, 0))
  return timesteps.ADSchedule(steps, start.astype(np.int32), initial)


class CachePlan(NamedTuple):
  """What each call of the cached path computes (all int32 [R] but `sizes`).

  query_start, query_end: the frames run through the model in call r. num_cached: frames
  from window_start whose keys/values are valid in the cache at the start of the call.
  refresh: the window moved (or the first call): num_cached = 0. branch: which compiled size
  of sizes (static numbers of query frames, the count padded up) serves the call.
  """

  query_start: np.ndarray
  query_end: np.ndarray
  num_cached: np.ndarray
  refresh: np.ndarray
  branch: np.ndarray
  sizes: tuple[int, ...]

  @property
  def query_frames(self) -> np.ndarray:
    return self.query_end - self.query_start

  @property
  def computed_frames(self) -> np.ndarray:
    """Frames each call computes, padding included."""
    return np.asarray(self.sizes)[self.branch]


def cache_plan(
    schedule: timesteps.ADSchedule, num_steps: int, max_branches: int = 4
) -> CachePlan:
  """The cached path's work per call (see the module docstring).

  Call r computes the frames [query_start, query_end): from the first frame of the window not in
  the cache (the frames finished in call r - 1, or every finished frame after a refresh) to
  the last frame it updates. The frames that were finished at its start then enter the cache.
  Query counts are padded up to at most max_branches sizes, chosen to waste the fewest frames.
  """
  prev, steps, start = schedule.previous, schedule.steps, schedule.window_start
  num_calls = schedule.num_calls
  q0, q1, cached, refresh = (np.zeros(num_calls, np.int32) for _ in range(4))
  cache_end = 0  # one past the last cached frame
  for r in range(num_calls):
    refresh[r] = r == 0 or start[r] != start[r - 1]
    if refresh[r]:
      cache_end = start[r]
    q0[r], cached[r] = cache_end, cache_end - start[r]
    q1[r] = np.nonzero(steps[r] != prev[r])[0].max() + 1
    cache_end = max(cache_end, int(np.argmax(prev[r] < num_steps)))  # finished at the start
  sizes = _padded_sizes(q1 - q0, max_branches)
  branch = np.searchsorted(np.asarray(sizes), q1 - q0).astype(np.int32)
  return CachePlan(q0, q1, cached, refresh.astype(bool), branch, sizes)


def _padded_sizes(counts: np.ndarray, max_branches: int) -> tuple[int, ...]:
  """At most max_branches sizes covering every count with the least padded total (DP)."""
  values, weights = np.unique(counts, return_counts=True)
  n, inf = len(values), float("inf")
  # cost[m][j]: least total for values[:j + 1] with m + 1 sizes, the largest values[j].
  cost = [[inf] * n for _ in range(max_branches)]
  back = [[-1] * n for _ in range(max_branches)]
  for j in range(n):
    cost[0][j] = values[j] * weights[: j + 1].sum()
    for m in range(1, max_branches):
      for i in range(j):
        c = cost[m - 1][i] + values[j] * weights[i + 1 : j + 1].sum()
        if c < cost[m][j]:
          cost[m][j], back[m][j] = c, i
  m = int(np.argmin([cost[m][n - 1] for m in range(max_branches)]))
  sizes, j = [], n - 1
  while j >= 0:
    sizes.append(int(values[j]))
    j, m = back[m][j], m - 1
  return tuple(sorted(sizes))


# ----------------------------------------------------------------------------------------------
# The compiled sampler.


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Every static setting of a sampler (hashable: samplers are built once per spec)."""

  num_frames: int
  window: int
  tokens_per_frame: int
  in_channels: int
  prefix_frames: int
  ar_step: int
  num_steps: int
  context_frames: int | None
  eta: float
  clip_denoised: bool
  guidance_scale: float
  kv_cache: bool
  parameterization: str
  beta_schedule: str
  num_timesteps: int
  num_classes: int
  max_branches: int
  compiler_options: tuple[tuple[str, object], ...] | None


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A compiled sampling run: `sampler(params, rngs, labels, prefix)`.

  rngs: a key per video [B] (a video depends on its own key only, not on the batch); labels
  int32 [B] or None; prefix [B, prefix_frames, L, C] or None. Returns float32 [B, F, L, C].
  """

  fn: Callable[..., jax.Array]
  schedule: timesteps.ADSchedule
  plan: CachePlan | None  # None: no KV cache, every call runs the whole window
  window: int
  guided: bool  # two passes (conditional, null label) per call when labels are given

  def __call__(self, params, rngs, labels=None, prefix=None) -> jax.Array:
    return self.fn(params, rngs, labels, prefix)

  @property
  def num_model_calls(self) -> int:
    """Model evaluations per video when labels are given (with guidance: two per call)."""
    return self.schedule.num_calls * (2 if self.guided else 1)

  @property
  def frames_per_call(self) -> np.ndarray:
    """int [R]: frames one pass of call r runs through the model."""
    if self.plan is None:
      return np.full(self.schedule.num_calls, self.window)
    return self.plan.computed_frames


def make_sampler(
    model,
    config,
    num_frames: int | None = None,
    *,
    prefix_frames: int = 0,
    kv_cache: bool | None = None,
    max_branches: int = 4,
    compiler_options: dict | None = None,
) -> Sampler:
  """The sampler of config.sampling for videos of num_frames frames.

  num_frames: default config.sampling.num_frames, or the trained length where that is None.

  Compiled once per (model, settings) and batch size: samplers are cached, so building one
  again for the same config is free. kv_cache overrides config.sampling.kv_cache;
  max_branches bounds the compiled query sizes of the cached path (each one a copy of the
  model in the program: fewer compile faster, more pad less); compiler_options go to jax.jit
  (e.g. {"xla_backend_optimization_level": 0} where compile time matters more than run time).
  """
  s = config.sampling
  spec = _Spec(
      num_frames=int(num_frames or s.num_frames or config.model.num_frames),
      window=int(config.model.num_frames),
      tokens_per_frame=int(config.model.tokens_per_frame),
      in_channels=int(config.model.in_channels),
      prefix_frames=int(prefix_frames),
      ar_step=int(s.ar_step),
      num_steps=int(s.num_steps),
      context_frames=s.context_frames,
      eta=float(s.eta),
      clip_denoised=bool(s.clip_denoised),
      guidance_scale=float(s.guidance_scale),
      kv_cache=bool(s.kv_cache if kv_cache is None else kv_cache),
      parameterization=config.diffusion.parameterization,
      beta_schedule=config.diffusion.beta_schedule,
      num_timesteps=int(config.diffusion.num_timesteps),
      num_classes=int(config.model.num_classes),
      max_branches=max_branches,
      compiler_options=tuple(sorted(compiler_options.items())) if compiler_options else None,
  )
  if spec.kv_cache and getattr(model, "context_attends_video", False):
    logging.warning("context_attends_video: the context sees the frames, sampling without cache.")
    spec = dataclasses.replace(spec, kv_cache=False)
  return _build(model, spec)


def sample(
    model, params, config, rng, *, num_videos: int, labels=None, prefix=None, prefix_frames: int = 0
) -> jax.Array:
  """Generates num_videos videos: float32 [num_videos, F, L, C], one compiled batch.

  F: config.sampling.num_frames (None: the trained length, config.model.num_frames).
  params: the variables to apply the model with (e.g. the EMA ones). labels: int32
  [num_videos] for a class-conditional model (None: unconditional, the null label, no
  guidance). prefix: clean frames [num_videos, k, L, C]; its first prefix_frames (default: all
  k) are given, held at t = 0 and returned unchanged (video prediction, image-to-video).
  """
  if prefix is not None:
    prefix_frames = prefix_frames or prefix.shape[1]
    if prefix.shape[0] != num_videos or prefix.shape[1] < prefix_frames:
      raise ValueError(
          f"prefix {prefix.shape} must hold {prefix_frames} frames of {num_videos} videos."
      )
    prefix = jnp.asarray(prefix[:, :prefix_frames], jnp.float32)
  elif prefix_frames:
    raise ValueError(f"prefix_frames={prefix_frames} but no prefix given.")
  sampler = make_sampler(model, config, prefix_frames=prefix_frames)
  return sampler(params, jax.random.split(rng, num_videos), labels, prefix)


def initial_noise(rngs: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The noise a video starts from, [B, *shape]: a function of its own key alone."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), shape))(rngs)


@functools.lru_cache(maxsize=32)
def _build(model, spec: _Spec) -> Sampler:
  schedule = sampling_schedule(
      spec.num_frames, spec.window, spec.ar_step, spec.num_steps, spec.context_frames,
      spec.prefix_frames,
  )
  window = min(spec.window, spec.num_frames)
  plan = cache_plan(schedule, spec.num_steps, spec.max_branches) if spec.kv_cache else None
  guided = spec.num_classes > 0 and spec.guidance_scale != 1.0
  run = functools.partial(_run, model, spec, schedule, plan, window)
  options = dict(spec.compiler_options) if spec.compiler_options else None
  return Sampler(jax.jit(run, compiler_options=options), schedule, plan, window, guided)


def _run(model, spec, schedule, plan, window, params, rngs, labels, prefix):
  """The jitted body of a Sampler (model, spec, schedule, plan and window are static)."""
  num_videos = rngs.shape[0]
  f, n = spec.num_frames, spec.num_steps
  l, c = spec.tokens_per_frame, spec.in_channels
  if labels is not None and not spec.num_classes:
    raise ValueError("Labels given to an unconditional model (config.model.num_classes = 0).")
  guided = labels is not None and spec.num_classes > 0 and spec.guidance_scale != 1.0
  sched = diffusion.make_schedule(spec.beta_schedule, spec.num_timesteps)
  grid = jnp.asarray(diffusion.ddim_timesteps(spec.num_timesteps, n))

  x = initial_noise(rngs, (f, l, c))  # [B, F, L, C]
  step_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(rngs)
  if spec.prefix_frames:
    if prefix is None or prefix.shape != (num_videos, spec.prefix_frames, l, c):
      raise ValueError(f"Expected a prefix of {(num_videos, spec.prefix_frames, l, c)} frames.")
    x = x.at[:, : spec.prefix_frames].set(prefix.astype(jnp.float32))

  def combine(out):  # [B or 2B, ...] -> guided prediction [B, ...]
    if not guided:
      return out
    cond, uncond = jnp.split(out, 2)
    return uncond + spec.guidance_scale * (cond - uncond)

  def twice(a):  # the conditional and the unconditional pass as one batch
    return jnp.concatenate([a, a]) if guided else a

  def denoise(x_t, out, prev, new, noise):
    """One DDIM step of the frames with prev != new; x_t, out [B, Q, L, C]; prev, new [Q]."""
    t_cur = jnp.broadcast_to(grid[prev], (num_videos,) + prev.shape)
    t_next = jnp.broadcast_to(grid[new], t_cur.shape)
    t_in = jnp.where(prev == n, 0, t_cur)  # finished frames were fed clean at t = 0
    x0, eps = diffusion.to_x0_eps(sched, spec.parameterization, x_t, t_in, out)
    if spec.clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = diffusion.eps_from_x0(sched, x_t, t_in, x0)
    return diffusion.ddim_step(sched, x_t, t_cur, t_next, x0, eps, noise, spec.eta)

  def window_noise(r):  # [B, W, L, C], a function of (video key, call) only: both paths agree
    if spec.eta == 0:
      return None
    keys = jax.vmap(lambda k: jax.random.fold_in(k, r))(step_keys)
    return jax.vmap(lambda k: jax.random.normal(k, (window, l, c)))(keys)

  def model_input(x, prev):
    t_in = jnp.where(prev == n, 0, grid[prev])
    return twice(x), twice(jnp.broadcast_to(t_in, (num_videos,) + prev.shape))

  xs = dict(
      prev=jnp.asarray(schedule.previous), new=jnp.asarray(schedule.steps),
      start=jnp.asarray(schedule.window_start), call=jnp.arange(schedule.num_calls),
  )
  model_labels = None
  if labels is not None:
    model_labels = jnp.asarray(labels, jnp.int32)
    if guided:
      null = jnp.full_like(model_labels, spec.num_classes)  # the model's null label
      model_labels = jnp.concatenate([model_labels, null])

  if plan is None:

    def call(x, row):
      ws = row["start"]
      x_w = jax.lax.dynamic_slice_in_dim(x, ws, window, axis=1)  # [B, W, L, C]
      prev = jax.lax.dynamic_slice_in_dim(row["prev"], ws, window)
      new = jax.lax.dynamic_slice_in_dim(row["new"], ws, window)
      out = combine(model.apply(params, *model_input(x_w, prev), model_labels))
      x_w = denoise(x_w, out, prev, new, window_noise(row["call"]))
      return jax.lax.dynamic_update_slice_in_dim(x, x_w, ws, axis=1), None

    x, _ = jax.lax.scan(call, x, xs)
    return x

  # The cached path: conditioning keys/values once, frame keys/values [depth, B', W, L, H, Dh].
  ctx_k, ctx_v = model.apply(params, model_labels, 2 * num_videos if guided else num_videos,
                             method="context_kv")
  cache_shape = ctx_k.shape[:2] + (window, l) + ctx_k.shape[3:]
  cache = (jnp.zeros(cache_shape, ctx_k.dtype), jnp.zeros(cache_shape, ctx_v.dtype))
  slot_frame = jnp.asarray(np.repeat(np.arange(window), l))  # [W * L]
  xs.update(
      q0=jnp.asarray(plan.query_start), q1=jnp.asarray(plan.query_end),
      cached=jnp.asarray(plan.num_cached), branch=jnp.asarray(plan.branch),
  )

  def run_queries(size, x, cache, row):
    ws = row["start"]
    idx = row["q0"] + jnp.arange(size)  # [Q] frames, the tail past q1 padding
    valid = idx < row["q1"]
    frames = jnp.minimum(idx, f - 1)
    prev = row["prev"][frames]
    new = jnp.where(valid, row["new"][frames], prev)  # padding frames do not move
    x_q = x[:, frames]  # [B, Q, L, C]
    flat = lambda a: a.reshape(a.shape[:2] + (window * l,) + a.shape[4:])
    kv_prefix = tuple(jnp.concatenate([a, flat(b)], axis=2) for a, b in zip((ctx_k, ctx_v), cache))
    prefix_valid = jnp.concatenate([jnp.ones(ctx_k.shape[2], bool), slot_frame < row["cached"]])
    out, own_kv = model.apply(
        params, *model_input(x_q, prev), idx - ws, kv_prefix, prefix_valid, method="decode"
    )
    noise = window_noise(row["call"])
    if noise is not None:
      noise = noise[:, jnp.clip(idx - ws, 0, window - 1)]
    x_q = denoise(x_q, combine(out), prev, new, noise)
    x = x.at[:, jnp.where(valid, idx, f)].set(x_q, mode="drop")
    # Frames finished at the start of the call were computed clean at t = 0: cache them.
    slot = jnp.where(valid & (prev == n), idx - ws, window)
    per_frame = lambda a: a.reshape(a.shape[:2] + (size, l) + a.shape[3:])
    cache = tuple(
        cached.at[:, :, slot].set(per_frame(new_kv), mode="drop")
        for cached, new_kv in zip(cache, own_kv)
    )
    return x, cache

  def call(carry, row):
    branches = [functools.partial(run_queries, size) for size in plan.sizes]
    return jax.lax.switch(row["branch"], branches, *carry, row), None

  (x, _), _ = jax.lax.scan(call, (x, cache), xs)
  return x

