r"""Two small experiments on whether the causal DiT learns to use the frames before a frame
(docs/demo.md, "The diagnosis"); a few minutes each on a 2-core CPU.

  python -m experiments.context_toys --toy=copy [--token_position_init=sincos] [--steps=400]
  python -m experiments.context_toys --toy=static [--train_timesteps=fopp] [--steps=1500]
  (either with [--rope_axes=frame_row_col]: RoPE over the patch grid too)

- copy: a plain regression on random inputs whose target for frame f is the input of frame
  f - 1 (all timesteps 0, Adam 1e-3): the model must attend to the same token position in the
  frame before, which it can only find through its token-in-frame position (RoPE covers the
  frame index). Prints the MSE every 100 steps (1.0: nothing learned).
- static: the real train step (FoPP or another sampler) on clips whose frames are all the same
  random dot image, then metrics.context_gain at t = 400 and 800 (1: the frames before are not
  used; the right answer, copying the previous frame, scores far above 1).

Both on configs/tiny.py at width 96, 2 layers, 4 frames of 4x4 tokens, batch 16.
"""

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ardiff import diffusion
from ardiff import sharding
from ardiff import train
from ardiff import train_state
from ardiff.data import patches
from ardiff.evaluation import metrics
from ardiff.models import build_model
from configs import tiny

_TOY = flags.DEFINE_enum("toy", "copy", ["copy", "static"], "Which experiment.")
_STEPS = flags.DEFINE_integer("steps", 400, "Training steps.")
_POSITION_INIT = flags.DEFINE_string("token_position_init", "normal", "model.token_position_init.")
_TIMESTEPS = flags.DEFINE_string("train_timesteps", "fopp", "config.train_timesteps (static).")
_ROPE_AXES = flags.DEFINE_string("rope_axes", "frame", "model.rope_axes.")

BATCH = 16


def toy_config(position_init: str = "normal", train_timesteps: str = "fopp",
               rope_axes: str = "frame"):
  c = tiny.get_config()
  c.global_batch_size = BATCH
  c.optimizer.learning_rate = 1e-3
  c.model.hidden_size, c.model.depth, c.model.num_heads = 96, 2, 4
  c.model.token_position_init = position_init
  c.model.rope_axes = rope_axes
  c.train_timesteps = train_timesteps
  c.mesh.shape = (1, 1, 1)
  return c


def copy_previous_frame(config, steps: int, log_every: int = 100) -> list[tuple[int, float]]:
  """(step, MSE) of the regression 'output the previous frame's input' (frames 1..F-1)."""
  model = build_model(config)
  m = config.model
  shape = (BATCH, m.num_frames, m.tokens_per_frame, m.in_channels)
  t = jnp.zeros(shape[:2], jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros(shape), t, None))["params"]
  tx = optax.adam(config.optimizer.learning_rate)

  def loss_fn(p, x):
    out = model.apply({"params": p}, x, t, None)
    return jnp.mean(jnp.square(out[:, 1:] - x[:, :-1]))

  @jax.jit
  def step(p, opt, x):
    loss, grads = jax.value_and_grad(loss_fn)(p, x)
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt, loss

  opt, log = tx.init(params), []
  for i in range(steps + 1):
    params, opt, loss = step(params, opt, jax.random.normal(jax.random.key(i), shape))
    if i % log_every == 0 or i == steps:
      log.append((i, float(loss)))
  return log


def static_clips_gain(config, steps: int) -> dict:
  """metrics.context_gain (frame 2, t = 400 and 800) after `steps` train steps on clips whose
  frames all show the same random dot image."""
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state = train_state.create_train_state(config, mesh, jax.random.key(0))
  step_fn = train.make_train_step(config, mesh)
  rng = np.random.default_rng(0)
  r, f = config.data.resolution, config.num_frames

  def batch():
    image = (rng.random((BATCH, 1, r, r, 3)) < 0.15).astype(np.uint8) * 255
    return {"video": np.repeat(image, f, axis=1), "label": np.zeros(BATCH, np.int32)}

  for i in range(steps):
    state, _ = step_fn(state, batch(), jax.random.key(i))
  model = build_model(config)
  apply = jax.jit(lambda x, t: model.apply({"params": state["params"]}, x, t, None))
  x0 = jnp.asarray(patches.video_to_tokens(config, batch()["video"]))
  sched = diffusion.schedule_from_config(config.diffusion)
  return {t: metrics.context_gain(apply, sched, config.diffusion.parameterization, x0, t, 2,
                                  jax.random.key(0)) for t in (400, 800)}


def main(argv):
  del argv
  config = toy_config(_POSITION_INIT.value, _TIMESTEPS.value, _ROPE_AXES.value)
  if _TOY.value == "copy":
    for step, loss in copy_previous_frame(config, _STEPS.value):
      print(f"step {step}: MSE {loss:.4f}")
  else:
    for t, g in static_clips_gain(config, _STEPS.value).items():
      print(f"t = {t}: x0 MSE {g['noisy']:.4f} (frames before noisy), {g['clean']:.4f} (clean),"
            f" gain {g['gain']:.2f}")


if __name__ == "__main__":
  app.run(main)
