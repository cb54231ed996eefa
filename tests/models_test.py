"""The causal video DiT: shapes, exact temporal causality, conditioning, gradients, paper size."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.data import patches
from ardiff.models import attention_mask, build_model, dit
from configs import tiny


def randomized(variables, seed=0):
  """Every parameter replaced by a random value: at init adaLN-Zero and the zero output layer
  make the network the zero function, which would hide both causality leaks and dead paths."""
  leaves, treedef = jax.tree.flatten(nn.unbox(variables))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([0.3 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves)])


def setup_model(num_classes=0, context_attends_video=False, batch=2):
  c = tiny.get_config()
  c.model.num_classes = num_classes
  c.model.context_attends_video = context_attends_video
  model = build_model(c)
  f, l, ch = c.model.num_frames, c.model.tokens_per_frame, c.model.in_channels
  kx, kt = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (batch, f, l, ch))
  t = jnp.sort(jax.random.randint(kt, (batch, f), 0, 1000), axis=1)
  labels = jnp.arange(batch, dtype=jnp.int32) % max(num_classes, 1) if num_classes else None
  variables = model.init(jax.random.key(0), x, t, labels)
  return model, randomized(variables), x, t, labels


def test_shapes_and_zero_init():
  c = tiny.get_config()
  model = build_model(c)
  x = jnp.ones((3, 4, 16, 48))
  t = jnp.zeros((3, 4), jnp.int32)
  variables = model.init(jax.random.key(0), x, t, None)
  out = model.apply(variables, x, t, None)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.asarray(out) == 0)  # zero-initialised output layer (adaLN-Zero)
  # Shorter windows (sampling near the start of a video) work with the same parameters.
  assert model.apply(variables, x[:, :2], t[:, :2], None).shape == (3, 2, 16, 48)
  with pytest.raises(ValueError, match="tokens_per_frame"):
    model.apply(variables, jnp.ones((3, 4, 9, 48)), t, None)
  with pytest.raises(ValueError, match="at most 4 frames"):
    model.apply(variables, jnp.ones((3, 5, 16, 48)), jnp.zeros((3, 5), jnp.int32), None)


def test_attention_mask_by_enumeration():
  nc, f, l = 2, 3, 2
  mask = attention_mask(nc, f, l)
  frame_of = [-1] * nc + [i for i in range(f) for _ in range(l)]
  for q, fq in enumerate(frame_of):
    for k, fk in enumerate(frame_of):
      expect = (fk == -1) if fq == -1 else (fk == -1 or fk <= fq)
      assert mask[q, k] == expect, (q, k)
  leaky = attention_mask(nc, f, l, context_attends_video=True)
  assert leaky[:nc].all() and (leaky[nc:] == mask[nc:]).all()


@pytest.mark.parametrize("num_classes", [0, 5])
def test_exact_temporal_causality(num_classes):
  model, variables, x, t, labels = setup_model(num_classes)
  apply = jax.jit(model.apply)
  base = np.asarray(apply(variables, x, t, labels))
  f = x.shape[1]
  for k in range(f):
    x2 = x.at[:, k].add(1.0)
    t2 = t.at[:, k].set((t[:, k] + 317) % 1000)
    for changed in (apply(variables, x2, t, labels), apply(variables, x, t2, labels)):
      changed = np.asarray(changed)
      # Bit-identical on earlier frames: nothing of frame k reaches them.
      np.testing.assert_array_equal(changed[:, :k], base[:, :k])
      assert np.abs(changed[:, k] - base[:, k]).max() > 1e-3


def test_leaky_context_option_is_not_causal():
  model, variables, x, t, labels = setup_model(context_attends_video=True)
  base = np.asarray(model.apply(variables, x, t, labels))
  changed = np.asarray(model.apply(variables, x.at[:, -1].add(1.0), t, labels))
  assert np.abs(changed[:, 0] - base[:, 0]).max() > 1e-4  # depth 2: the future leaks back


def test_conditioning_changes_the_output():
  model, variables, x, t, labels = setup_model(num_classes=5)
  a = np.asarray(model.apply(variables, x, t, jnp.array([0, 0])))
  b = np.asarray(model.apply(variables, x, t, jnp.array([3, 3])))
  null = np.asarray(model.apply(variables, x, t, None))
  assert np.abs(a - b).max() > 1e-3 and np.abs(a - null).max() > 1e-3
  np.testing.assert_array_equal(null, np.asarray(model.apply(variables, x, t, jnp.array([5, 5]))))
  # Unconditional: the learned context is a parameter and shapes the output.
  model, variables, x, t, _ = setup_model()
  out = model.apply(variables, x, t, None)
  # (A random change: a constant shift would vanish in the LayerNorm.)
  bump = lambda p, a: a + jax.random.normal(jax.random.key(9), a.shape) if p[-1].key == "context" else a
  variables2 = jax.tree_util.tree_map_with_path(bump, variables)
  assert np.abs(np.asarray(model.apply(variables2, x, t, None) - out)).max() > 1e-3


def test_shorter_window_matches_the_full_clip():
  # Frame positions are relative to the window (RoPE), and later frames are invisible: a model
  # call on the first frames alone gives what the full clip gives there (sampling relies on it).
  model, variables, x, t, labels = setup_model()
  full = np.asarray(model.apply(variables, x, t, labels))
  prefix = np.asarray(model.apply(variables, x[:, :2], t[:, :2], labels))
  np.testing.assert_allclose(prefix, full[:, :2], atol=1e-5 * np.abs(full).max())


@pytest.mark.parametrize("num_classes", [0, 5])
def test_gradients_reach_every_parameter(num_classes):
  model, variables, x, t, labels = setup_model(num_classes)

  def loss(v):
    return jnp.mean(jnp.square(model.apply(v, x, t, labels) - 0.5))

  grads = jax.grad(loss)(variables)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    name = jax.tree_util.keystr(path)
    if "label_embedding" in name:  # only the rows of the labels used get gradient
      g = g[np.asarray(labels)]
    assert np.all(np.isfinite(g)), name
    # The blocks' parameters are stacked [depth, ...]: every layer must get gradient.
    per_layer = g.reshape(g.shape[0], -1) if "'blocks'" in name else g.reshape(1, -1)
    assert np.all(np.abs(per_layer).max(axis=1) > 0), f"no gradient reaches (a layer of) {name}"


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_same_gradients(policy):
  model, variables, x, t, labels = setup_model(num_classes=5)
  c = tiny.get_config()
  c.model.num_classes = 5
  c.model.remat, c.model.remat_policy = True, policy
  remat_model = build_model(c)

  def grads(m):
    return jax.jit(jax.grad(lambda v: jnp.mean(jnp.square(m.apply(v, x, t, labels)))))(variables)

  for a, b in zip(jax.tree.leaves(grads(model)), jax.tree.leaves(grads(remat_model))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  c.model.remat_policy = "dots"
  with pytest.raises(ValueError, match="remat_policy"):
    build_model(c).init(jax.random.key(0), x, t, labels)


def test_blocks_are_traced_once_whatever_the_depth():
  # The blocks are one nn.scan: the program (and its compile time) does not grow with depth.
  def num_equations(depth):
    c = tiny.get_config()
    c.model.depth = depth
    model = build_model(c)
    x, t = jnp.ones((1, 4, 16, 48)), jnp.zeros((1, 4), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, t, None)
    return len(jax.make_jaxpr(model.apply)(variables, x, t, None).eqns)

  assert num_equations(2) == num_equations(8)


def test_unrolled_blocks_compute_the_same_without_a_loop():
  # model.scan_unroll = depth: the same parameters (stacked [depth, ...]), outputs and
  # gradients, and no while loop left in the program.
  model, variables, x, t, labels = setup_model(num_classes=5)
  c = tiny.get_config()
  c.model.num_classes = 5
  c.model.scan_unroll = c.model.depth
  unrolled = build_model(c)

  def loss(m):
    return lambda v: jnp.mean(jnp.square(m.apply(v, x, t, labels)))

  lowered = {m: jax.jit(jax.value_and_grad(loss(m))).lower(variables) for m in (model, unrolled)}
  assert "while" in lowered[model].as_text() and "while" not in lowered[unrolled].as_text()
  (la, ga), (lb, gb) = (lowered[m].compile()(variables) for m in (model, unrolled))
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  c.model.scan_unroll = 0
  with pytest.raises(ValueError, match="scan_unroll"):
    build_model(c).init(jax.random.key(0), x, t, labels)


@pytest.mark.parametrize("convs", [0, 8])
def test_every_parameter_has_logical_names(convs):
  c = tiny.get_config()
  c.model.num_classes = 3
  c.model.conv_stem_channels = c.model.conv_head_channels = convs
  model = build_model(c)
  x, t = jnp.ones((1, 4, 16, 48)), jnp.zeros((1, 4), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, jnp.zeros((1,), jnp.int32))
  leaves = jax.tree_util.tree_leaves_with_path(
      abstract, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned)
  )
  assert leaves and all(isinstance(a, nn.LogicallyPartitioned) for _, a in leaves)
  for path, a in leaves:
    assert len(a.names) == len(a.value.shape)
    # The scanned blocks' parameters carry the stacked layer axis first.
    in_blocks = "'blocks'" in jax.tree_util.keystr(path)
    assert (a.names[0] == "layers") == in_blocks, (path, a.names)
    if in_blocks:
      assert a.value.shape[0] == c.model.depth


def test_bfloat16_compute():
  c = tiny.get_config()
  c.model.dtype = "bfloat16"
  model = build_model(c)
  x, t = jnp.ones((1, 4, 16, 48)), jnp.zeros((1, 4), jnp.int32)
  variables = model.init(jax.random.key(0), x, t, None)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(nn.unbox(variables)))
  variables = randomized(variables)
  out = model.apply(variables, x, t, None)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
  # The KV cache is kept in the compute dtype; decode's prediction is float32.
  k, v = model.apply(variables, None, 1, method="context_kv")
  assert k.dtype == v.dtype == jnp.bfloat16
  out, (k2, _) = model.apply(
      variables, x[:, :1], t[:, :1], jnp.zeros(1, jnp.int32), (k, v), jnp.ones(k.shape[2], bool),
      method="decode",
  )
  assert out.dtype == jnp.float32 and k2.dtype == jnp.bfloat16


def test_bfloat16_stays_close_to_float32():
  """Mixed precision: bfloat16 matmuls in attention and MLP, float32 residual stream, norms,
  embeddings, conditioning and final layer. On 8 layers of hidden 128 with weights N(0, 1/D)
  the output differs from float32 by 0.54 % relative L2 (0.48-0.54 % over 5 seeds); it was
  1.4 % (1.27-1.47 %) when all of it ran in bfloat16. Bound: 1 %."""
  c = tiny.get_config()
  c.model.depth, c.model.hidden_size, c.model.num_heads = 8, 128, 4
  f, l, ch = c.model.num_frames, c.model.tokens_per_frame, c.model.in_channels
  kx, kt = jax.random.split(jax.random.key(100))
  x = jax.random.normal(kx, (2, f, l, ch))
  t = jax.random.randint(kt, (2, f), 0, 1000)
  model32 = build_model(c)
  c.model.dtype = "bfloat16"
  model16 = build_model(c)
  # Weights N(0, 1/D): non-trivial yet of a trained-like scale, under which activations keep
  # their size through the layers (randomized()'s 0.3 is well above 1/sqrt(D) = 0.09).
  leaves, tree = jax.tree.flatten(nn.unbox(model32.init(jax.random.key(0), x, t, None)))
  keys = jax.random.split(jax.random.key(0), len(leaves))
  variables = tree.unflatten(
      [jax.random.normal(k, a.shape) / np.sqrt(c.model.hidden_size) for k, a in zip(keys, leaves)]
  )
  out32 = np.asarray(model32.apply(variables, x, t, None))
  out16 = np.asarray(model16.apply(variables, x, t, None))
  assert out16.dtype == np.float32
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert rel < 0.01, rel


def paper_parameter_count():
  from configs import taichi  # noqa: PLC0415 - the paper's size

  c = taichi.get_config()
  model = build_model(c)
  m = c.model
  x = jax.ShapeDtypeStruct((1, m.num_frames, m.tokens_per_frame, m.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1, m.num_frames), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t, None)
  return c, sum(a.size for a in jax.tree.leaves(nn.unbox(abstract)))


def test_paper_size_parameter_count():
  c, count = paper_parameter_count()
  m = c.model
  assert (m.hidden_size, m.depth, m.num_heads, m.mlp_ratio) == (1152, 28, 16, 4.0)
  assert (m.num_frames, m.tokens_per_frame, m.in_channels) == (16, 32, 4)
  d = m.hidden_size
  # Per block: q, k, v, out (4 d^2 + 4 d), MLP (8 d^2 + 5 d), adaLN (6 d^2 + 6 d).
  per_block = 18 * d * d + 15 * d
  assert count > m.depth * per_block
  assert count == pytest.approx(673.7e6, rel=0.01)  # about DiT-XL (675M)
  print(f"paper-size parameters: {count:,}")


def test_sincos_token_positions():
  # model.token_position_init = "sincos": the token-in-frame position starts from DiT's 2D
  # sine-cosine table (rows in the first half of the channels, columns in the second), 1D for
  # token counts that are not a square (latents); "normal" keeps the N(0, 0.02^2) init.
  table = dit.sincos_positions(16, 48)  # a 4x4 grid
  row, col = np.divmod(np.arange(16), 4)
  for a in range(16):
    for b in range(16):
      assert np.allclose(table[a, :24], table[b, :24]) == (row[a] == row[b])
      assert np.allclose(table[a, 24:], table[b, 24:]) == (col[a] == col[b])
  # Direct formula for one entry: column 1's code, channel 24 + 1 (sin at frequency 1e4^(-1/12)).
  np.testing.assert_allclose(table[1, 25], np.sin(10_000 ** (-1 / 12)), rtol=1e-6)
  one_d = dit.sincos_positions(32, 8)
  np.testing.assert_allclose(one_d[5], [np.sin(5), np.sin(5e-1), np.sin(5e-2), np.sin(5e-3),
                                        np.cos(5), np.cos(5e-1), np.cos(5e-2), np.cos(5e-3)],
                             rtol=1e-5)
  c = tiny.get_config()
  x, t = jnp.ones((1, 4, 16, 48)), jnp.zeros((1, 4), jnp.int32)
  for init in ("sincos", "normal"):
    c.model.token_position_init = init
    params = nn.unbox(build_model(c).init(jax.random.key(0), x, t, None))["params"]
    is_table = np.allclose(params["token_position"], dit.sincos_positions(16, c.model.hidden_size))
    assert is_table == (init == "sincos")
  c.model.token_position_init = "learned"
  with pytest.raises(ValueError, match="token_position_init"):
    build_model(c).init(jax.random.key(0), x, t, None)


def test_axial_rope_angles_and_relative_scores():
  # layers.rope_angles over (frame, row, column): each axis rotates its own share of the head
  # (here 8, 4, 4 of 16 dimensions) with its own frequency ladder; checked against the formula
  # written out slot by slot, and the rotated scores q.k depend only on position differences.
  from ardiff.models import layers  # noqa: PLC0415

  dh, theta = 16, 100.0
  pos = np.array([[0, 0, 0], [2, 1, 3], [5, 3, 1], [1, 2, 2]])
  cos, sin = layers.rope_angles(jnp.asarray(pos), dh, theta, (8, 4, 4))
  slots = [(0, theta ** (-2 * j / 8)) for j in range(4)]
  slots += [(a, theta ** (-2 * j / 4)) for a in (1, 2) for j in range(2)]
  angles = np.array([[p[a] * f for a, f in slots] for p in pos])
  np.testing.assert_allclose(cos, np.cos(angles), atol=1e-6)
  np.testing.assert_allclose(sin, np.sin(angles), atol=1e-6)
  # One axis over the whole head is the 1D RoPE the frame-only model uses.
  one = layers.rope_angles(jnp.asarray(pos[:, 0]), dh, theta)
  np.testing.assert_allclose(layers.rope_angles(jnp.asarray(pos[:, :1]), dh, theta, (dh,))[0],
                             one[0])

  q, k = jax.random.normal(jax.random.key(0), (2, 1, len(pos), 1, dh))

  def scores(p):
    c, s = layers.rope_angles(jnp.asarray(p), dh, theta, (8, 4, 4))
    rq, rk = layers.apply_rope(q, c, s)[0, :, 0], layers.apply_rope(k, c, s)[0, :, 0]
    return np.asarray(rq @ rk.T)

  np.testing.assert_allclose(scores(pos + np.array([3, 1, 2])), scores(pos), atol=1e-4)
  moved = pos.copy()
  moved[1, 2] += 1  # one token one column over: its scores change
  assert np.abs(scores(moved) - scores(pos))[1].max() > 1e-2
  with pytest.raises(ValueError, match="sum to head_dim"):
    layers.rope_angles(jnp.asarray(pos), dh, theta, (8, 4, 2))


def test_rope_over_the_patch_grid():
  # model.rope_axes = "frame_row_col": a token's row and column in its frame rotate a quarter of
  # each head each; it changes the function (same parameters, different output), the frame-only
  # path is the default, and a frame without a square token grid (latents) is refused.
  c = tiny.get_config()
  model, variables, x, t, _ = setup_model()
  c.model.rope_axes = "frame_row_col"
  axial = build_model(c)
  out_axial, out_frame = axial.apply(variables, x, t, None), model.apply(variables, x, t, None)
  assert out_axial.shape == out_frame.shape
  assert np.abs(out_axial - out_frame).max() > 1e-3
  c.model.tokens_per_frame, c.model.in_channels = 32, 4  # 1D latent tokens
  with pytest.raises(ValueError, match="square grid"):
    build_model(c).init(jax.random.key(0), jnp.ones((1, 4, 32, 4)), t[:1], None)
  c.model.rope_axes = "xyz"
  with pytest.raises(ValueError, match="rope_axes"):
    build_model(c).init(jax.random.key(0), jnp.ones((1, 4, 32, 4)), t[:1], None)


def test_pixel_convolutions_around_the_transformer():
  # model.conv_stem_channels / conv_head_channels: 3x3 convolutions over each frame's pixels.
  # Zero function at init (the head's last convolution starts at zero, as the linear head);
  # the pixels they see are the frame's own (patchify's layout); frame-causal; every new
  # parameter gets a gradient; latent tokens (no pixel grid) are refused.
  c = tiny.get_config()
  c.model.conv_stem_channels, c.model.conv_head_channels = 8, 8
  model = build_model(c)
  f, l, ch = c.model.num_frames, c.model.tokens_per_frame, c.model.in_channels
  x = jax.random.normal(jax.random.key(1), (2, f, l, ch))
  t = jnp.sort(jax.random.randint(jax.random.key(2), (2, f), 0, 1000), axis=1)
  variables = model.init(jax.random.key(0), x, t, None)
  assert np.all(np.asarray(model.apply(variables, x, t, None)) == 0)
  params = nn.unbox(variables)["params"]
  assert params["stem_convs_0"]["kernel"].shape == (3, 3, 3, 8)
  assert params["head_out"]["kernel"].shape == (3, 3, 8, 3)

  r = c.data.resolution
  video = jax.random.normal(jax.random.key(3), (2, f, r, r, 3))
  tokens = patches.patchify(video, c.data.patch_size)
  pixels = model.apply(variables, tokens, method=lambda m, x: m._to_pixels(x))
  np.testing.assert_array_equal(pixels, video.reshape(2 * f, r, r, 3))
  back = model.apply(variables, pixels, 2, method=lambda m, p, b: m._to_tokens(p, b))
  np.testing.assert_array_equal(back, tokens)

  variables = randomized(variables)
  out = model.apply(variables, x, t, None)
  moved = model.apply(variables, x.at[:, 2:].add(1.0), t, None)
  np.testing.assert_array_equal(moved[:, :2], out[:, :2])
  assert np.abs(moved[:, 2:] - out[:, 2:]).max() > 1e-3

  grads = jax.grad(lambda p: jnp.sum(model.apply(p, x, t, None) ** 2))(variables)
  for name in ("stem_convs_0", "stem_convs_1", "head_features", "head_conv", "head_out"):
    for g in jax.tree.leaves(grads["params"][name]):
      assert np.abs(np.asarray(g)).max() > 0, name

  c.model.tokens_per_frame, c.model.in_channels = 32, 4  # 1D latent tokens
  with pytest.raises(ValueError, match="pixel"):
    build_model(c).init(jax.random.key(0), jnp.ones((1, f, 32, 4)), t[:1], None)


def test_attention_projects_query_key_value_in_one_matmul():
  # layers.Attention runs its three HeadsIn projections as one product (heads_in); written out
  # here projection by projection, with RoPE and XLA's attention over the whole square, the
  # output and the returned keys/values agree, and the parameters keep their own names and
  # shapes (query/key/value: kernel [D, H, Dh], bias [H, Dh]), as checkpoints store them.
  from ardiff.models import layers  # noqa: PLC0415

  b, s, d, h = 2, 9, 32, 4
  dh = d // h
  x = jax.random.normal(jax.random.key(0), (b, s, d))
  mask = np.tril(np.ones((s, s), bool))
  cos, sin = layers.rope_angles(jnp.arange(s), dh, 100.0)
  attn = layers.Attention(h)
  variables = randomized(attn.init(jax.random.key(1), x, cos, sin, jnp.asarray(mask)))
  p = variables["params"]
  for name in ("query", "key", "value"):
    assert p[name]["kernel"].shape == (d, h, dh) and p[name]["bias"].shape == (h, dh)
  out, (k_own, v_own) = attn.apply(variables, x, cos, sin, jnp.asarray(mask), return_kv=True)

  q, k, v = (jnp.einsum("bsd,dhk->bshk", x, p[n]["kernel"]) + p[n]["bias"]
             for n in ("query", "key", "value"))
  q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
  ref = jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask)[None, None])
  ref = jnp.einsum("bshk,hkd->bsd", ref, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(k_own, k, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(v_own, v, atol=1e-5, rtol=1e-5)
