"""Generation with the AD scheduler: the whole schedule as one compiled lax.scan.

Every row of the schedule (sampling_plan.sampling_schedule) is one model call on the window of
config.model.num_frames frames starting at its window_start. A frame that has completed k of N
DDIM steps sits at grid[k] (diffusion.ddim_timesteps; grid[N] = -1, clean); a call moves the
frames it updates from grid[k] to grid[k + 1]. Finished frames are fed clean at t = 0
(config.sampling.finished_timestep: at another t), frames not yet started are noise at grid[0],
and the model sees exactly its window, as in training. config.sampling.timestep_grid =
"reference" and finished_timestep = 1 instead reproduce the reference's sampler, for its
released checkpoints (_DenoisingStep).

KV cache (config.sampling.kv_cache). Under temporal causal attention a finished frame's keys and
values depend only on it and the frames before it in the window, so they stay the same from call
to call while the window stays put. Per call the cached path computes only the frames from the
first one not in the cache to the last one that updates (sampling_plan.cache_plan), against the
cached keys/values of the conditioning tokens (computed once) and of the finished frames; frames
after the last updating one are not computed at all. Frames that finished in the previous call
are computed once more, clean at t = 0, and their keys/values enter the cache. When the window
moves the cached frames' view changes: the cache is dropped and the call recomputes every
finished frame of the new window (a "refresh"). Where the plan saves nothing (every call
computes the whole window, e.g. ar_step 0 within the window) the plain path runs instead. Both
paths compute the same function of the window: _sample_uncached and _sample_cached differ only
in what they run through the model, and share one denoising step (_DenoisingStep: guidance,
then DDIM).

Rolling cache (config.sampling.kv_cache_mode = "rolling"): when the window moves the cache is
not dropped; the frames still in view move down their slots, their keys rotated to the new
positions (RoPE composes, so positions stay window-relative as in training), and only frames
not yet cached are computed. Their keys and values stay those of the window that computed them
(which saw frames that have since left the view): an approximation, exact for a one-layer model,
that makes the cost per frame of a long video that of a video within the window.

History guidance (config.sampling.history_guidance_scale, 1: off). Each call runs the model
twice: on the window as above, and with the history weakened (Song et al. 2025, "History-Guided
Video Diffusion"). The output is the second pass's moved towards the first and beyond by the
scale: frames lean more on the frames before them. config.sampling.history_guidance_mode says
how the history is weakened: "fractional" noises the finished frames to the lowest timestep of
the frames still in progress (the window stays non-decreasing in t, so the second pass is a FoPP
clip too; their noise is a function of the video's key and the frame's index, so streamed and
whole-video sampling agree); "vanilla" leaves them out: the frames in progress as a clip of
their own, as the first frames of a training clip. Either way the second pass changes from call
to call, so history guidance samples without KV cache. Frame by frame (ar_step >= num_steps)
config.sampling.frame_by_frame_history_guidance_scale, where set, replaces the scale (and
frame_by_frame_noise_temperature the noise temperature, frame_by_frame_finished_timestep the
finished_timestep).

Streaming (Sampler.stream, --mode=sample): Sampler.__call__ runs the whole schedule as one
program on the whole video. stream runs the same calls in segments (sampling_plan.
stream_segments) on a buffer of the window plus a few frames that moves along the video, and
yields the frames that left the window for good after each segment: the same videos, with
device memory for the buffer and the cache whatever the length. A frame's initial noise is a
function of its video's key and its index (initial_noise), so a buffer can draw it when the
frame enters.
"""

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from ardiff import diffusion
from ardiff import sampling_plan
from ardiff import timesteps


TIMESTEP_GRIDS = ("ardiff", "reference")
# config.sampling.kv_cache_mode: "exact" recomputes the finished frames in view when the window
# moves (the samples equal the uncached path's); "rolling" keeps their keys and values, computed
# in earlier windows, moved to their new slots (constant cost per frame on long videos, an
# approximation; module docstring).
KV_CACHE_MODES = ("exact", "rolling")
HISTORY_GUIDANCE_MODES = ("fractional", "vanilla")


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
  noise_temperature: float
  timestep_grid: str
  finished_timestep: int
  clip_denoised: bool
  clip_bound: float  # x0 is clipped to [-clip_bound, clip_bound]
  guidance_scale: float
  history_guidance_scale: float
  history_guidance_mode: str
  kv_cache: bool
  kv_cache_mode: str
  parameterization: str
  beta_schedule: str
  num_timesteps: int
  num_classes: int
  max_branches: int
  compiler_options: tuple[tuple[str, object], ...] | None

  @property
  def history_guided(self) -> bool:
    """History guidance on: a second pass per call, no KV cache."""
    return self.history_guidance_scale != 1.0


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A compiled sampling run: `sampler(params, rngs, labels, prefix)`.

  rngs: a key per video [B] (a video depends on its own key only, not on the batch); labels
  int32 [B] or None; prefix [B, prefix_frames, L, C] or None. Returns float32 [B, F, L, C].
  """

  fn: Callable[..., jax.Array]
  schedule: timesteps.ADSchedule
  plan: sampling_plan.CachePlan | None  # None: no KV cache, every call runs the whole window
  window: int
  guided: bool  # two passes (conditional, null label) per call when labels are given
  history_guided: bool  # one more pass per call, with the history weakened
  init: Callable[..., Any]  # Sampler.stream's programs (_init_buffer, _run_segment), jitted
  segment: Callable[..., Any]

  def __call__(self, params, rngs, labels=None, prefix=None) -> jax.Array:
    return self.fn(params, rngs, labels, prefix)

  def stream(self, params, rngs, labels=None, prefix=None, segment_frames: int | None = None):
    """The same videos as __call__, yielded as they finish: (first_frame, frames), frames a
    float32 numpy array [B, n, L, C] holding frames first_frame to first_frame + n - 1 of each
    video (every process gets all videos), in order.

    The calls run in segments (sampling_plan.stream_segments) over a buffer of the window plus
    segment_frames (default: the window) frames, so that a video of any length needs device
    memory for the buffer and the cache, not for the whole video; after each segment the
    frames that left the window for good are yielded. Two programs compile (the segments and a
    shorter last one) whatever the length.
    """
    plan = sampling_plan.stream_segments(self.schedule, self.window,
                                         segment_frames or self.window)
    carry = self.init(params, rngs, labels, plan.buffer_frames, prefix)
    offset = 0
    for begin, end, start in zip(plan.begins, plan.ends, plan.offsets):
      rows = sampling_plan.segment_rows(self.schedule, self.plan, begin, end, start,
                                        plan.buffer_frames)
      if start > offset:  # the frames before the window, finished in the last segment
        yield offset, to_host(carry[0])[:, : start - offset]
      carry = self.segment(params, rngs, labels, carry, rows, start - offset, start)
      offset = start
    yield offset, to_host(carry[0])[:, : self.schedule.steps.shape[1] - offset]

  def num_model_calls_for(self, labels_given: bool) -> int:
    """Model evaluations per video: two per call when guided and labels are given, else one
    (without labels the model runs once, on the null label); twice that with history guidance."""
    passes = (2 if self.guided and labels_given else 1) * (2 if self.history_guided else 1)
    return self.schedule.num_calls * passes

  @property
  def num_model_calls(self) -> int:
    """Model evaluations per video when labels are given: num_model_calls_for(True)."""
    return self.num_model_calls_for(labels_given=True)

  @property
  def frames_per_call(self) -> np.ndarray:
    """int [R]: frames one pass of call r runs through the model."""
    if self.plan is None:
      return np.full(self.schedule.num_calls, self.window)
    return self.plan.computed_frames


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly sharded across processes) array as numpy, whole, in every process: what the
  sampler's videos become before they are decoded and written."""
  if not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(x)


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
      noise_temperature=noise_temperature(s),
      timestep_grid=str(s.get("timestep_grid", "ardiff")),
      finished_timestep=finished_timestep(s),
      clip_denoised=bool(s.clip_denoised),
      # Pixels and tanh or L2-normalised latents lie in [-1, 1]; stage 2 scales latents.
      clip_bound=float(config.latents.get("scale", 1.0)) if config.latents.autoencoder_workdir
      else 1.0,
      guidance_scale=float(s.guidance_scale),
      history_guidance_scale=history_guidance_scale(s),
      history_guidance_mode=str(s.get("history_guidance_mode", "fractional")),
      kv_cache=bool(s.kv_cache if kv_cache is None else kv_cache),
      kv_cache_mode=str(s.get("kv_cache_mode", "exact")),
      parameterization=config.diffusion.parameterization,
      beta_schedule=config.diffusion.beta_schedule,
      num_timesteps=int(config.diffusion.num_timesteps),
      num_classes=int(config.model.num_classes),
      max_branches=max_branches,
      compiler_options=tuple(sorted(compiler_options.items())) if compiler_options else None,
  )
  if spec.kv_cache_mode not in KV_CACHE_MODES:
    raise ValueError(
        f"config.sampling.kv_cache_mode={spec.kv_cache_mode!r}: one of {KV_CACHE_MODES}.")
  if spec.timestep_grid not in TIMESTEP_GRIDS:
    raise ValueError(
        f"config.sampling.timestep_grid={spec.timestep_grid!r}: one of {TIMESTEP_GRIDS}.")
  if not 0 <= spec.finished_timestep < spec.num_timesteps:
    raise ValueError(
        f"config.sampling.finished_timestep (frame by frame: frame_by_frame_finished_timestep"
        f" where set) = {spec.finished_timestep} must lie in [0, {spec.num_timesteps}): 0 (clean,"
        " ardiff's), 1 (the reference's) or 300 (the demo's frame by frame).")
  if spec.kv_cache and getattr(model, "context_attends_video", False):
    logging.warning(getattr(model, "kv_cache_refusal",
                            "context_attends_video: the context sees the frames, sampling"
                            " without cache."))
    spec = dataclasses.replace(spec, kv_cache=False)
  if not np.isfinite(spec.noise_temperature) or spec.noise_temperature < 0:
    raise ValueError(f"config.sampling.noise_temperature (frame by frame:"
                     f" frame_by_frame_noise_temperature where set) = {spec.noise_temperature}:"
                     " a finite scale >= 0 of the sampled noise (1: off).")
  if not np.isfinite(spec.history_guidance_scale) or spec.history_guidance_scale < 0:
    raise ValueError(
        f"config.sampling.history_guidance_scale (frame by frame:"
        f" frame_by_frame_history_guidance_scale where set) = {spec.history_guidance_scale}: a"
        " finite scale >= 0 (1: off).")
  if spec.history_guidance_mode not in HISTORY_GUIDANCE_MODES:
    raise ValueError(f"config.sampling.history_guidance_mode={spec.history_guidance_mode!r}: one"
                     f" of {HISTORY_GUIDANCE_MODES}.")
  if spec.kv_cache and spec.history_guided:
    logging.warning("sampling.history_guidance_scale != 1 runs a second pass per call whose"
                    " history changes from call to call: sampling without cache.")
    spec = dataclasses.replace(spec, kv_cache=False)
  if spec.kv_cache and spec.timestep_grid == "reference":
    logging.warning("sampling.timestep_grid='reference' changes finished frames at every call"
                    " (as the reference's sampler does): sampling without cache.")
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


def initial_noise(rngs: jax.Array, shape: tuple[int, ...], first_frame=0) -> jax.Array:
  """The noise a video starts from, [B, *shape] with shape = (frames, L, C): frames
  first_frame, first_frame + 1, ... of each video. A frame's noise is a function of its video's
  key and its index alone (not of the video's length), so a long video can be generated in
  segments (Sampler.stream) and starts as a shorter one does."""
  keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(rngs)
  return frame_noise(keys, first_frame + jnp.arange(shape[0]), shape[1:])


def frame_noise(keys: jax.Array, frames: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """N(0, 1) [B, F, *shape]: for video b and frame index frames[f], a function of keys[b] and
  that index alone (initial noise; the finished frames' noise of history guidance)."""
  return jax.vmap(lambda key: jax.vmap(
      lambda f: jax.random.normal(jax.random.fold_in(key, f), shape))(frames))(keys)


def tempered(spec, noise: jax.Array | None, frames: jax.Array) -> jax.Array | None:
  """noise [B, F, L, C] of the video's frames `frames` [F] scaled by spec.noise_temperature,
  but for frame 0 (config.sampling.noise_temperature)."""
  if noise is None or spec.noise_temperature == 1.0:
    return noise
  scale = jnp.where(frames == 0, 1.0, spec.noise_temperature)
  return noise * scale[None, :, None, None]


def _for_schedule(s, name: str, default: float) -> float:
  """config.sampling's `name` for its schedule: frame by frame (ar_step >= num_steps)
  frame_by_frame_<name> where set."""
  by_frame = s.get("frame_by_frame_" + name)
  if by_frame is not None and int(s.ar_step) >= int(s.num_steps):
    return float(by_frame)
  return float(s.get(name, default))


def history_guidance_scale(s) -> float:
  """The history guidance scale config.sampling `s` samples with (1: off)."""
  return _for_schedule(s, "history_guidance_scale", 1.0)


def noise_temperature(s) -> float:
  """The noise temperature config.sampling `s` samples with (1: off)."""
  return _for_schedule(s, "noise_temperature", 1.0)


def finished_timestep(s) -> int:
  """The timestep config.sampling `s` feeds finished frames at (0: clean)."""
  return int(_for_schedule(s, "finished_timestep", 0))


@functools.lru_cache(maxsize=32)
def _build(model, spec: _Spec) -> Sampler:
  schedule = sampling_plan.sampling_schedule(
      spec.num_frames, spec.window, spec.ar_step, spec.num_steps, spec.context_frames,
      spec.prefix_frames,
  )
  window = min(spec.window, spec.num_frames)
  plan = None
  if spec.kv_cache:
    rolling = spec.kv_cache_mode == "rolling"
    plan = sampling_plan.cache_plan(schedule, spec.num_steps, spec.max_branches, rolling)
    if plan.query_frames.sum() >= schedule.num_calls * window:
      # Nothing to reuse (e.g. ar_step 0: every call updates the whole window): the cache would
      # only add its bookkeeping, so the plain path runs.
      plan = None
  guided = spec.num_classes > 0 and spec.guidance_scale != 1.0
  options = dict(spec.compiler_options) if spec.compiler_options else None
  run = functools.partial(_run, model, spec, schedule, plan, window)
  # Sampler.stream's two programs: the buffer's first frames, and a segment of calls.
  init = functools.partial(_init_buffer, model, spec, plan, window)
  segment = functools.partial(_run_segment, model, spec, plan, window)
  return Sampler(
      jax.jit(run, compiler_options=options), schedule, plan, window, guided,
      spec.history_guided,
      jax.jit(init, static_argnums=3, compiler_options=options),
      jax.jit(segment, donate_argnums=3, compiler_options=options),
  )


# ----------------------------------------------------------------------------------------------
# The compiled loop: the jitted body, the denoising step both paths share, the two paths.


def _run(model, spec, schedule, plan, window, params, rngs, labels, prefix):
  """The jitted body of Sampler.__call__ (model, spec, schedule, plan and window are static):
  the whole video in one program, as one segment whose buffer holds every frame."""
  carry = _init_buffer(model, spec, plan, window, params, rngs, labels, spec.num_frames, prefix)
  rows = sampling_plan.segment_rows(schedule, plan, 0, schedule.num_calls, 0, spec.num_frames)
  x, _ = _sample_segment(model, spec, plan, window, params, rngs, labels, carry, rows)
  return x


def _init_buffer(model, spec, plan, window, params, rngs, labels, length, prefix):
  """The sampler's carry at the start: the first `length` frames of the video (initial noise,
  the given prefix frames set) and, for the cached path, an empty cache."""
  num_videos = rngs.shape[0]
  frame_shape = (spec.tokens_per_frame, spec.in_channels)
  x = tempered(spec, initial_noise(rngs, (length,) + frame_shape), jnp.arange(length))
  if spec.prefix_frames:
    expected = (num_videos, spec.prefix_frames) + frame_shape
    if prefix is None or prefix.shape != expected:
      raise ValueError(f"Expected a prefix of {expected} frames.")
    x = x.at[:, : spec.prefix_frames].set(prefix.astype(jnp.float32))
  if plan is None:
    return x, None
  labels, guided = _prepare_labels(spec, labels)
  # The frames' keys/values by window slot: [depth, B', W, L, H, Dh], valid up to num_cached
  # (B' = 2B when guided). Only the shapes of the context's keys/values are used.
  context_kv = _LabelledModel(model, params, labels).context_kv(
      2 * num_videos if guided else num_videos)
  cache = tuple(
      jnp.zeros(a.shape[:2] + (window, spec.tokens_per_frame) + a.shape[3:], a.dtype)
      for a in context_kv
  )
  return x, cache


def _run_segment(model, spec, plan, window, params, rngs, labels, carry, rows, advance, offset):
  """One segment of Sampler.stream: the buffer moved on by `advance` frames (its first frames
  were emitted; it now starts at frame `offset`), then the segment's calls (rows)."""
  x, cache = carry
  x = jnp.roll(x, -advance, axis=1)
  fresh = tempered(spec, initial_noise(rngs, x.shape[1:], offset),  # the frames that enter
                   offset + jnp.arange(x.shape[1]))
  slot = jnp.arange(x.shape[1])[None, :, None, None]
  x = jnp.where(slot >= x.shape[1] - advance, fresh, x)
  return _sample_segment(model, spec, plan, window, params, rngs, labels, (x, cache), rows)


def _prepare_labels(spec, labels):
  """(labels as the model takes them, guided): the null labels appended when guided."""
  if labels is not None and not spec.num_classes:
    raise ValueError("Labels given to an unconditional model (config.model.num_classes = 0).")
  guided = labels is not None and spec.num_classes > 0 and spec.guidance_scale != 1.0
  if labels is not None:
    labels = jnp.asarray(labels, jnp.int32)
    if guided:
      labels = _with_null_labels(labels, spec.num_classes)
  return labels, guided


def _sample_segment(model, spec, plan, window, params, rngs, labels, carry, rows):
  """The calls of `rows` (sampling_plan.segment_rows) on the carry (frames, cache)."""
  x, cache = carry
  labels, guided = _prepare_labels(spec, labels)
  step = _DenoisingStep(
      spec=spec,
      guided=guided,
      sched=diffusion.make_schedule(spec.beta_schedule, spec.num_timesteps),
      grid=jnp.asarray(_grid(spec)),
      noise_keys=jax.vmap(lambda k: jax.random.fold_in(k, 1))(rngs),
      history_keys=jax.vmap(lambda k: jax.random.fold_in(k, 2))(rngs),
      noise_shape=(window,) + x.shape[2:],
  )
  model = _LabelledModel(model, params, labels)
  if plan is None:
    return _sample_uncached(model, step, rows, window, x), None
  return _sample_cached(model, step, rows, plan.sizes, window, x, cache)


def _grid(spec) -> np.ndarray:
  """The DDIM timestep after k of N steps, int32 [N + 1] (sampling.timestep_grid)."""
  if spec.timestep_grid == "reference":
    return diffusion.reference_ddim_timesteps(spec.num_timesteps, spec.num_steps)
  return diffusion.ddim_timesteps(spec.num_timesteps, spec.num_steps)


def _with_null_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """[B] -> [2B]: the labels, then the model's null label (num_classes) for each video."""
  return jnp.concatenate([labels, jnp.full_like(labels, num_classes)])


def _duplicate_for_guidance(a: jax.Array) -> jax.Array:
  """[B, ...] -> [2B, ...]: the conditional and the unconditional pass run as one batch."""
  return jnp.concatenate([a, a])


def _combine_guidance(out: jax.Array, guidance_scale: float) -> jax.Array:
  """[2B, ...] (conditional, then unconditional) -> the guided prediction [B, ...]."""
  cond, uncond = jnp.split(out, 2)
  return uncond + guidance_scale * (cond - uncond)


@dataclasses.dataclass(frozen=True)
class _LabelledModel:
  """The model with its variables and the labels of the batch (null labels appended if guided)."""

  model: Any
  params: Any
  labels: jax.Array | None

  def __call__(self, x, t):
    return self.model.apply(self.params, x, t, self.labels)

  def context_kv(self, batch_size: int):
    return self.model.apply(self.params, self.labels, batch_size, method="context_kv")

  def decode(self, x, t, positions, kv_prefix, prefix_valid):
    return self.model.apply(self.params, x, t, positions, kv_prefix, prefix_valid, method="decode")

  def shift_keys(self, keys, shift):
    return self.model.apply(self.params, keys, shift, method="shift_keys")


@dataclasses.dataclass(frozen=True)
class _DenoisingStep:
  """One guided denoising step of some frames of each video, the same on both paths.

  model_inputs gives what the model sees; __call__ turns the model's output into the frames
  after the step: classifier-free guidance, x0 and eps, a DDIM step of the frames that move.
  """

  spec: _Spec
  guided: bool  # labels given and guidance_scale != 1: the batch runs twice, as one pass
  sched: diffusion.Schedule
  grid: jax.Array  # int32 [N + 1]: the timestep after k of N DDIM steps (grid[N] = -1, clean)
  noise_keys: jax.Array  # [B]: a key per video for the DDIM noise (eta > 0)
  history_keys: jax.Array  # [B]: a key per video for the finished frames' noise (history)
  noise_shape: tuple[int, ...]  # (W, L, C): noise is drawn for the whole window

  def model_timesteps(self, prev: jax.Array, num_videos: int, new: jax.Array) -> jax.Array:
    """int32 [B, Q]: the model's timestep of frames that completed prev [Q] steps and will have
    completed new [Q] after the call."""
    s = self.spec
    t = jnp.broadcast_to(self.grid[prev], (num_videos,) + prev.shape)
    if s.timestep_grid == "reference":  # frames not yet started: at T - 1, not at grid[0]
      t = jnp.where((prev == 0) & (new == 0), s.num_timesteps - 1, t)
    # Finished frames (grid = -1) are fed clean at t = 0, as the model saw them in training
    # (finished_timestep; the reference's sampler feeds them at t = 1).
    return jnp.where(prev == s.num_steps, s.finished_timestep, t)

  def model_inputs(self, x: jax.Array, prev: jax.Array, new: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
    """The model's (x, t) for the frames x [B, Q, L, C] moving from steps prev to new [Q]."""
    return self._passed(x, self.model_timesteps(prev, x.shape[0], new))

  def _passed(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x, t) as the model takes them: twice over when guided (conditional, null label)."""
    if self.guided:
      return _duplicate_for_guidance(x), _duplicate_for_guidance(t)
    return x, t

  def history_output(self, model, x: jax.Array, prev: jax.Array, new: jax.Array,
                     frames: jax.Array) -> jax.Array:
    """The model's output with the history weakened, for history guidance (same layout as
    model(*model_inputs(...))). frames [Q]: the frames' indices in the video.

    fractional: the finished frames (prev = N) noised to the lowest timestep of the frames still
    in progress, so that the window stays non-decreasing in t, as in FoPP's training clips; their
    noise is a function of the video's key and the frame's index alone.
    vanilla: without the finished frames: the frames in progress as a clip of their own. Under
    strict causality a clip's first frames do not see the ones after them, so the window is
    rolled to put them first; the finished frames' outputs (rolled behind) are not used.
    """
    s = self.spec
    t = self.model_timesteps(prev, x.shape[0], new)  # [B, Q]
    finished = prev == s.num_steps  # [Q]: the first frames of the window
    if s.history_guidance_mode == "vanilla":
      shift = jnp.sum(finished)
      out = model(*self._passed(jnp.roll(x, -shift, axis=1), jnp.roll(t, -shift, axis=1)))
      return jnp.roll(out, shift, axis=1)
    lowest = jnp.min(jnp.where(finished, s.num_timesteps, t), axis=1, keepdims=True)
    t = jnp.where(finished, jnp.broadcast_to(lowest, t.shape), t)
    noise = frame_noise(self.history_keys, frames, x.shape[2:])
    noised = diffusion.q_sample(self.sched, x, t, noise)
    return model(*self._passed(jnp.where(finished[None, :, None, None], noised, x), t))

  def combine_history(self, out: jax.Array, out_history: jax.Array) -> jax.Array:
    """History guidance: the weak-history output moved towards the full-history one and
    beyond, by history_guidance_scale (1: the full-history output)."""
    return out_history + self.spec.history_guidance_scale * (out - out_history)

  def noise(self, call: jax.Array) -> jax.Array | None:
    """[B, W, L, C]: a function of (video key, call) alone, so that both paths agree."""
    if self.spec.eta == 0:
      return None
    keys = jax.vmap(lambda k: jax.random.fold_in(k, call))(self.noise_keys)
    return jax.vmap(lambda k: jax.random.normal(k, self.noise_shape))(keys)

  def __call__(self, x, out, prev, new, noise=None) -> jax.Array:
    """The frames x [B, Q, L, C] moved from steps prev to new [Q] (prev == new: unchanged).

    out: the model's output on model_inputs(x, prev, new). noise: [B, Q, L, C] or None.
    """
    s = self.spec
    if self.guided:
      out = _combine_guidance(out, s.guidance_scale)
    t_in = self.model_timesteps(prev, x.shape[0], new)
    t_cur = jnp.broadcast_to(self.grid[prev], t_in.shape)
    t_next = jnp.broadcast_to(self.grid[new], t_in.shape)
    x0, eps = diffusion.to_x0_eps(self.sched, s.parameterization, x, t_in, out)
    if s.clip_denoised:
      x0 = jnp.clip(x0, -s.clip_bound, s.clip_bound)
      eps = diffusion.eps_from_x0(self.sched, x, t_in, x0)
    if s.timestep_grid == "reference":
      # The reference's sampler steps every frame of the window, the finished ones with
      # themselves as x0 from the timestep they are fed at to grid[N] (t = 0): at eta = 0 they
      # grow by about 2e-5 per call; at eta > 0 they get noise.
      resting = (prev == s.num_steps) & (new == s.num_steps)  # [Q]
      frames = resting[None, :, None, None]
      x0 = jnp.where(frames, x, x0)
      eps = jnp.where(frames, diffusion.eps_from_x0(self.sched, x, t_in, x), eps)
      t_cur = jnp.where(resting, t_in, t_cur)
    return diffusion.ddim_step(self.sched, x, t_cur, t_next, x0, eps, noise, s.eta)


# The uncached path: every call runs the model on its whole window.


def _sample_uncached(model, step, rows, window, x):
  """x [B, S, L, C] (noise, prefix frames set) -> after the calls of rows, one _uncached_call
  each."""
  call = functools.partial(_uncached_call, model, step, window)
  x, _ = jax.lax.scan(call, x, rows)
  return x


def _uncached_call(model, step, window, x, row):
  """One call: the model on the window at window_start, one step of the frames that move."""
  window_start = row["window_start"]
  x_w = jax.lax.dynamic_slice_in_dim(x, window_start, window, axis=1)  # [B, W, L, C]
  prev = jax.lax.dynamic_slice_in_dim(row["prev"], window_start, window)
  new = jax.lax.dynamic_slice_in_dim(row["new"], window_start, window)
  frames = row["offset"] + window_start + jnp.arange(window)  # the window's frames in the video
  out = model(*step.model_inputs(x_w, prev, new))
  if step.spec.history_guided:
    out = step.combine_history(out, step.history_output(model, x_w, prev, new, frames))
  x_w = step(x_w, out, prev, new, tempered(step.spec, step.noise(row["call"]), frames))
  return jax.lax.dynamic_update_slice_in_dim(x, x_w, window_start, axis=1), None


# The cached path (module docstring): per call, the query frames of the plan against the
# cached keys/values of the conditioning tokens and of the finished frames.


def _sample_cached(model, step, rows, sizes, window, x, cache):
  """(x [B, S, L, C], cache) -> after the calls of rows, one _cached_call each."""
  num_videos = x.shape[0]
  # The conditioning tokens' keys/values: [depth, B', Nc, H, Dh] (B' = 2B when guided).
  context_kv = model.context_kv(2 * num_videos if step.guided else num_videos)
  # One compiled branch per padded query size; the plan says which serves each call.
  branches = [
      functools.partial(_cached_call, size, max(sizes), model, step, window, context_kv)
      for size in sizes
  ]
  call = functools.partial(_switch_branch, model, step.spec.kv_cache_mode, branches)
  carry, _ = jax.lax.scan(call, (x, cache), rows)
  return carry


def _switch_branch(model, kv_cache_mode, branches, carry, row):
  """The scan body of the cached path: the branch of the call's padded query size computes the
  query frames; the video and the cache are updated here, outside the branches, so that XLA
  updates them in place (a branch that returned them would copy them at every call)."""
  x, cache = carry
  if kv_cache_mode == "rolling":
    # Where the window moved by `shift` frames, the cached frames move down as many slots (those
    # that left the window drop out) and their keys are rotated to their new positions, so that
    # positions stay window-relative as in training (the conditioning tokens just before the
    # window). Their keys and values themselves stay as an earlier window computed them: that
    # is the approximation.
    cache = jax.lax.cond(
        row["shift"] > 0, functools.partial(_roll_cache, model, row["shift"]), lambda c: c, cache
    )
  x_q, targets, query_kv, slots = jax.lax.switch(row["branch"], branches, x, cache, row)
  x = x.at[:, targets].set(x_q, mode="drop")
  cache = tuple(_store_frames(cached, kv, slots) for cached, kv in zip(cache, query_kv))
  return (x, cache), None


def _cached_call(size, max_size, model, step, window, context_kv, x, cache, row):
  """One call on `size` query frames from query_start; those past query_end are padding.

  Returns the query frames after the call [B, max_size, L, C] and the frames they go to
  (num_frames: dropped), and their keys/values [depth, B', max_size * L, H, Dh] and the cache
  slots they go to (window: not stored), padded to max_size frames for every branch alike.
  """
  num_frames, tokens_per_frame = x.shape[1:3]
  window_start = row["window_start"]
  frames = row["query_start"] + jnp.arange(size)  # [Q]
  valid = frames < row["query_end"]
  clamped = jnp.minimum(frames, num_frames - 1)
  prev = row["prev"][clamped]
  new = jnp.where(valid, row["new"][clamped], prev)  # padding frames do not move
  slots = frames - window_start  # in the window: also the frames' RoPE positions
  x_q = x[:, clamped]  # [B, Q, L, C]

  kv_prefix = tuple(
      jnp.concatenate([ctx, _flatten_frames(cached)], axis=2)
      for ctx, cached in zip(context_kv, cache)
  )
  slot_frame = jnp.asarray(np.repeat(np.arange(window), tokens_per_frame))  # [W * L]
  prefix_valid = jnp.concatenate(
      [jnp.ones(context_kv[0].shape[2], bool), slot_frame < row["num_cached"]]
  )
  out, query_kv = model.decode(*step.model_inputs(x_q, prev, new), slots, kv_prefix,
                               prefix_valid)

  noise = step.noise(row["call"])
  if noise is not None:
    noise = tempered(step.spec, noise[:, jnp.clip(slots, 0, window - 1)], row["offset"] + frames)
  x_q = step(x_q, out, prev, new, noise)
  targets = jnp.where(valid, frames, num_frames)
  # Frames finished at the start of the call were computed clean at t = 0: they enter the cache.
  slots = jnp.where(valid & (prev == step.spec.num_steps), slots, window)
  x_q = _pad_axis(x_q, 1, max_size)
  query_kv = tuple(_pad_axis(kv, 2, max_size * tokens_per_frame) for kv in query_kv)
  targets = _pad_axis(targets, 0, max_size, num_frames)
  slots = _pad_axis(slots, 0, max_size, window)
  return x_q, targets, query_kv, slots


def _pad_axis(a: jax.Array, axis: int, length: int, value=0) -> jax.Array:
  """a padded with `value` at the end of `axis` up to `length`."""
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, length - a.shape[axis])
  return jnp.pad(a, widths, constant_values=value)


def _roll_cache(model, shift, cache):
  """The rolling cache after the window moved by `shift` frames: slots moved down, keys rotated
  to their new positions (only run when the window moved: most calls keep it in place)."""
  keys, values = (jnp.roll(c, -shift, axis=2) for c in cache)
  return model.shift_keys(keys, shift), values


def _flatten_frames(kv: jax.Array) -> jax.Array:
  """[depth, B, W, L, H, Dh] -> [depth, B, W * L, H, Dh]: frames as one run of tokens."""
  return kv.reshape(kv.shape[:2] + (kv.shape[2] * kv.shape[3],) + kv.shape[4:])


def _store_frames(cache: jax.Array, kv: jax.Array, slots: jax.Array) -> jax.Array:
  """The cache [depth, B, W, L, ...] with the query frames' keys or values written in.

  kv: [depth, B, Q * L, ...]; slots: int [Q], the window slot of each query frame (W or more:
  not stored).
  """
  per_frame = kv.reshape(kv.shape[:2] + (slots.shape[0], cache.shape[3]) + kv.shape[3:])
  return cache.at[:, :, slots].set(per_frame, mode="drop")
