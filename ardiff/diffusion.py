"""Gaussian diffusion in which every frame of a video has its own timestep.

Shapes: x [B, F, L, C] (F frames of L tokens with C channels); t int32 [B, F]. A timestep of
-1 stands for "clean" (alpha_bar = 1): it is where the last DDIM step of a frame lands.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PARAMETERIZATIONS = ("x0", "eps", "v")


def make_betas(schedule: str, num_timesteps: int) -> np.ndarray:
  """Noise schedule in float64: "linear" is the LDM one used by the paper, "cosine" Nichol's."""
  if schedule == "linear":
    return np.linspace(1e-4**0.5, 2e-2**0.5, num_timesteps, dtype=np.float64) ** 2
  if schedule == "cosine":
    s = 0.008
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    return np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.0, 0.999)
  raise ValueError(f"Unknown beta_schedule {schedule!r}: use 'linear' or 'cosine'.")


class Schedule(NamedTuple):
  """Per-timestep constants (float32 [T]); a pytree, so it can be closed over or passed to jit."""

  betas: jax.Array
  alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


def make_schedule(beta_schedule: str = "linear", num_timesteps: int = 1000) -> Schedule:
  betas = make_betas(beta_schedule, num_timesteps)
  alphas_cumprod = np.cumprod(1.0 - betas)  # float64, then rounded once
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alphas_cumprod, jnp.float32))


def schedule_from_config(diffusion_config) -> Schedule:
  return make_schedule(diffusion_config.beta_schedule, diffusion_config.num_timesteps)


def alpha_bar(sched: Schedule, t: jax.Array) -> jax.Array:
  """alpha_bar at integer timesteps t (any shape); t = -1 means clean (alpha_bar = 1)."""
  a = sched.alphas_cumprod[jnp.clip(t, 0, sched.num_timesteps - 1)]
  return jnp.where(t < 0, 1.0, a)


def _per_frame(a: jax.Array, x: jax.Array) -> jax.Array:
  """[B, F] -> [B, F, 1, 1]: one value per frame, broadcast over its tokens and channels."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim)).astype(x.dtype)


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, with t [B, F]."""
  a = _per_frame(alpha_bar(sched, t), x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def target(sched: Schedule, parameterization: str, x0, noise, t) -> jax.Array:
  """What the network is trained to output."""
  if parameterization == "x0":
    return x0
  if parameterization == "eps":
    return noise
  if parameterization == "v":
    a = _per_frame(alpha_bar(sched, t), x0)
    return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0
  raise ValueError(f"Unknown parameterization {parameterization!r}: use one of {PARAMETERIZATIONS}.")


def to_x0_eps(sched: Schedule, parameterization: str, x_t, t, out):
  """Converts a network output in any parameterization to the (x0, eps) pair it implies."""
  a = _per_frame(alpha_bar(sched, t), x_t)
  sa, s1a = jnp.sqrt(a), jnp.sqrt(1.0 - a)
  if parameterization == "x0":
    x0 = out
    eps = (x_t - sa * x0) / jnp.maximum(s1a, 1e-8)
  elif parameterization == "eps":
    eps = out
    x0 = (x_t - s1a * eps) / sa
  elif parameterization == "v":
    x0 = sa * x_t - s1a * out
    eps = s1a * x_t + sa * out
  else:
    raise ValueError(f"Unknown parameterization {parameterization!r}: use one of {PARAMETERIZATIONS}.")
  return x0, eps


def eps_from_x0(sched: Schedule, x_t, t, x0):
  """The noise implied by x_t and an x0 estimate (used after clipping x0)."""
  a = _per_frame(alpha_bar(sched, t), x_t)
  return (x_t - jnp.sqrt(a) * x0) / jnp.maximum(jnp.sqrt(1.0 - a), 1e-8)


def logit_normal_density(num_timesteps: int, mean: float, std: float) -> np.ndarray:
  """float64 [T]: the logit-normal density of u = (t + 0.5) / T (SD3's timestep distribution,
  Esser et al. 2024), rescaled to mean 1 over t: a weight that favours the middle noise levels
  (mean 0, std 1: t = T / 2 gets 1.6, t = T / 10 and 9 T / 10 about 0.4, t = T / 20 and
  19 T / 20 about 0.1)."""
  u = (np.arange(num_timesteps) + 0.5) / num_timesteps
  logit = np.log(u / (1.0 - u))
  density = np.exp(-0.5 * np.square((logit - mean) / std)) / (u * (1.0 - u))
  return density / density.mean()


def timestep_weights(
    sched: Schedule, weighting: str, parameterization: str, gamma: float = 5.0,
    logit_normal: tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
  """A loss weight per timestep, float32 [T].

  "none": plain MSE on the parameterization's target. "min_snr": Min-SNR-gamma (Hang et al.
  2023), which clamps the SNR weighting of the implied x0 error at gamma. "logit_normal":
  the implied x0 error weighted by `logit_normal_density` (mean, std = `logit_normal`), which
  trains the middle noise levels as if timesteps were drawn from it, leaving the timestep
  draws (FoPP's) as they are. Both are written for each parameterization's own target.
  """
  if weighting == "none":
    return jnp.ones((sched.num_timesteps,), jnp.float32)
  snr = sched.alphas_cumprod / (1.0 - sched.alphas_cumprod)
  if weighting == "min_snr":
    x0_weight = jnp.minimum(snr, gamma)
  elif weighting == "logit_normal":
    x0_weight = jnp.asarray(logit_normal_density(sched.num_timesteps, *logit_normal), jnp.float32)
  else:
    raise ValueError(
        f"Unknown loss_weighting {weighting!r}: use 'none', 'min_snr' or 'logit_normal'.")
  # The eps error is the x0 error times sqrt(snr), the v error times sqrt(snr + 1).
  return {"x0": x0_weight, "eps": x0_weight / snr, "v": x0_weight / (snr + 1.0)}[parameterization]


ELEMENT_LOSSES = ("mse", "l1", "pseudo_huber")


def element_loss(diff, kind: str = "mse", huber_c: float = 0.03) -> jax.Array:
  """Each element's loss for the error diff: squared (the paper's), absolute, or pseudo-Huber,
  sqrt(diff^2 + c^2) - c: squared below c, absolute above. Absolute errors are minimised by the
  median rather than the mean, so an unsure x0 estimate of a stroke is not a dim average of
  stroke and background (docs/demo.md, run HU)."""
  if kind == "mse":
    return jnp.square(diff)
  if kind == "l1":
    return jnp.abs(diff)
  if kind == "pseudo_huber":
    return jnp.sqrt(jnp.square(diff) + huber_c**2) - huber_c
  raise ValueError(f"diffusion.loss={kind!r}: use one of {ELEMENT_LOSSES}.")


def frame_losses(out, tgt, t, weights=None, pixel_weights=None, kind="mse",
                 huber_c=0.03) -> jax.Array:
  """Per-frame loss (element_loss of kind, MSE by default), mean over tokens and channels:
  [B, F]; times weights[t] if given, each element's loss times pixel_weights (shaped as out)
  if given."""
  err = element_loss(out.astype(jnp.float32) - tgt.astype(jnp.float32), kind, huber_c)
  if pixel_weights is not None:
    err = err * pixel_weights
  per_frame = jnp.mean(err, axis=tuple(range(2, err.ndim)))
  if weights is not None:
    per_frame = per_frame * weights[t]
  return per_frame


def loss_and_metrics(out, tgt, t, weights=None, pixel_weights=None, kind="mse", huber_c=0.03):
  """Scalar training loss and the loss by frame position [F] (mean over the batch)."""
  per_frame = frame_losses(out, tgt, t, weights, pixel_weights, kind, huber_c)
  return jnp.mean(per_frame), jnp.mean(per_frame, axis=0)


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """int32 [num_steps + 1]: the timestep of a frame after k of num_steps DDIM steps.

  Entry 0 is T - 1 (pure noise, as in training) and the spacing is even ("trailing"), so the
  first step starts from the most noisy timestep the model saw. The last entry is -1: clean.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f"num_steps={num_steps} must lie in [1, num_timesteps={num_timesteps}].")
  k = np.arange(num_steps)
  ts = np.round(num_timesteps - k * num_timesteps / num_steps).astype(np.int64) - 1
  return np.concatenate([ts, [-1]]).astype(np.int32)


def reference_ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """int32 [num_steps + 1]: the reference's DDIM timesteps in ddim_timesteps' layout.

  Its sampler (LDM's "uniform" spacing, shifted by one) walks c * (N - 1) + 1, ..., c + 1, 1
  with c = T / N (981, 961, ..., 1 for T = 1000, N = 50): it treats pure noise as t = 981,
  and its last step lands at t = 0 (alpha_bar = 1 - beta_0), not on the clean frame.
  """
  if not 1 <= num_steps <= num_timesteps or num_timesteps % num_steps:
    raise ValueError(
        f"The reference's DDIM timesteps need num_steps={num_steps} to divide"
        f" num_timesteps={num_timesteps} (its spacing is T // N; e.g. 50 steps of 1000), or"
        " config.sampling.timestep_grid='ardiff'.")
  c = num_timesteps // num_steps
  return np.concatenate([c * np.arange(num_steps - 1, -1, -1) + 1, [0]]).astype(np.int32)


def ddim_step(sched: Schedule, x_t, t, t_next, x0, eps, noise=None, eta: float = 0.0):
  """One DDIM update from t to t_next, both int [B, F]: each frame has its own pair.

  x0 and eps are the model's estimates at (x_t, t). Frames with t_next == t are returned
  untouched; t_next = -1 lands on x0. eta = 0 is deterministic DDIM, eta = 1 DDPM-like; above
  1 more of the noise is fresh, at most all of it (x0 noised afresh to t_next).
  """
  a_t = _per_frame(alpha_bar(sched, t), x_t)
  a_next = _per_frame(alpha_bar(sched, t_next), x_t)
  # Noise level of the step (Song et al. 2021, eq. 16); zero where a_next = 1.
  sigma = eta * jnp.sqrt(
      jnp.clip((1.0 - a_next) / jnp.maximum(1.0 - a_t, 1e-12) * (1.0 - a_t / a_next), 0.0)
  )
  # eta > 1: at most all of t_next's noise is fresh (x0 re-noised), never more than its level.
  sigma = jnp.minimum(sigma, jnp.sqrt(1.0 - a_next))
  x_next = jnp.sqrt(a_next) * x0 + jnp.sqrt(jnp.clip(1.0 - a_next - sigma**2, 0.0)) * eps
  if noise is not None:
    x_next = x_next + sigma * noise
  moves = _per_frame(t_next != t, x_t)
  return jnp.where(moves > 0, x_next, x_t)
