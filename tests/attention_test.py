"""Attention's implementations (config.model.attention_impl) against XLA's plain attention
(jax.nn.dot_product_attention over the whole square): every one this machine can run. On CPU
that is "xla" itself with a static mask (by query chunks) and the splash kernel in Pallas'
interpreter (the TPU kernel's own code and its block mask); cuDNN where a GPU is present."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff import sharding
from ardiff.models import attention, attention_mask, build_model
from configs import tiny


def available() -> list[str]:
  impls = ["xla", "splash", "auto"]
  if jax.default_backend() == "gpu":
    impls.append("cudnn")
  return impls


def close(a, b, dtype):
  tol = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol, rtol=tol)


@pytest.mark.parametrize("impl", available())
def test_attention_and_its_gradients_equal_xla(impl):
  # The frame-causal mask with context tokens, a sequence that is not a multiple of the
  # kernels' tiles (padding), and gradients through every input.
  nc, f, l, h, dh, b = 2, 5, 7, 2, 8, 2
  mask = attention_mask(nc, f, l)
  s = mask.shape[0]
  dtype = jnp.bfloat16 if impl == "cudnn" else jnp.float32
  q, k, v = (jax.random.normal(jax.random.key(i), (b, s, h, dh), dtype) for i in range(3))
  resolved = attention.resolve(impl, dtype, dh)

  def loss(q, k, v, which):
    if which is None:
      out = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask)[None, None])
    else:
      out = attention.attend(q, k, v, jnp.asarray(mask), which, mask)
    return jnp.sum(out.astype(jnp.float32) * jnp.arange(s)[None, :, None, None]), out

  (_, ref), g_ref = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, None)
  (_, out), g = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v, resolved)
  close(out, ref, dtype)
  for a, r in zip(g, g_ref):
    close(a, r, dtype)


@pytest.mark.parametrize("impl", available())
def test_the_model_on_a_mesh_equals_xla(impl, monkeypatch):
  # The whole DiT, sharded over 8 devices (the splash kernel runs per device in shard_map), its
  # output and its gradients, against XLA's attention over the whole square (one query chunk).
  c = tiny.get_config()
  c.model.num_classes = 3
  c.mesh.shape = (4, 1, 2)
  f, l, ch = c.model.num_frames, c.model.tokens_per_frame, c.model.in_channels
  x = jax.random.normal(jax.random.key(1), (4, f, l, ch))
  t = jnp.sort(jax.random.randint(jax.random.key(2), (4, f), 0, 1000), axis=1)
  labels = jnp.array([0, 1, 2, 0], jnp.int32)
  mesh = sharding.make_mesh(c.mesh)

  def run(which):
    c.model.attention_impl = which
    model = build_model(c)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(c)):
      variables = model.init(jax.random.key(0), x, t, labels)
      leaves, treedef = jax.tree.flatten(nn.unbox(variables))
      keys = jax.random.split(jax.random.key(3), len(leaves))
      variables = treedef.unflatten(
          [0.1 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)]
      )
      loss = lambda v: jnp.mean(jnp.square(model.apply(v, x, t, labels)))
      return jax.jit(jax.value_and_grad(loss))(variables)

  with monkeypatch.context() as m:
    m.setattr(attention, "XLA_QUERY_CHUNKS", 1)
    ref, g_ref = run("xla")
  out, g = run(impl)
  np.testing.assert_allclose(out, ref, rtol=1e-5)
  # Per parameter, relative to its gradient's norm (the kernels sum in another order; a wrong
  # mask or layout is off by order 1).
  for a, r in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert np.linalg.norm(a - r) <= 1e-5 * np.linalg.norm(r)


def test_choices_and_errors():
  if jax.default_backend() == "cpu":
    assert attention.resolve("auto", jnp.bfloat16, 64) == "xla"
    with pytest.raises(ValueError, match="needs a GPU"):
      attention.resolve("cudnn", jnp.bfloat16, 64)
  with pytest.raises(ValueError, match="attention_impl='flash'"):
    attention.resolve("flash", jnp.float32, 64)
  assert attention.resolve("splash", jnp.float32, 64) == "splash"
