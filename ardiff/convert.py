r"""The reference's released checkpoints (safetensors) as ardiff exports.

  python -m ardiff.convert --checkpoint=PATH/model.safetensors --kind=dit \
      --config=configs/sky_timelapse.py --config.model.variant=reference --workdir=OUT
  python -m ardiff.convert --checkpoint=PATH/model.safetensors --kind=autoencoder \
      --config=configs/sky_timelapse_vae.py[:temporal] --workdir=OUT

kind=dit: the reference's DiT_crossattn (share_norm) onto ardiff's reference variant
(models/reference_dit.py), from the full checkpoint of its diffusion wrapper
(`diffusion_model.model.*`, `context_emb` or `class_emb`, the diffusion buffers, whose betas and
alphas_cumprod must match config.diffusion; `vae.*`, the frozen autoencoder, is skipped) or from a
bare DiT state dict with `context_emb` / `class_emb` beside it. The export (OUT/export) loads like
a trained run's: --mode=sample / evaluate with --workdir=OUT, or fine-tuning with
--config.init_from=OUT.

kind=autoencoder: the reference's TiTok-KL (or, with config.autoencoder.temporal, its temporal
TiTok_KL_wT) onto ardiff's FrameAutoencoder of config.autoencoder's sizes, from its own state dict
or from the `vae.*` keys of a diffusion checkpoint. OUT is then a stage-1 workdir (OUT/config.json,
OUT/export): --config.latents.autoencoder_workdir=OUT (or decoder_workdir) decodes stage 2's
latents, and --mode=extract_latents encodes a dataset with it.

The key map is explicit (dit_key_map, autoencoder_key_map): every reference tensor, its shape for
this config, the ardiff parameter it becomes and how (torch Linear [out, in] -> kernel [in, out];
Conv2d [out, in, kh, kw] -> [kh, kw, in, out]; 1x1 convolutions that ardiff runs as Dense; per
layer keys stacked on the scanned blocks' leading axis). A checkpoint that does not fit the config
fails listing the missing, unexpected and mis-shaped keys, and the config fields whose values the
checkpoint implies. to_reference inverts the map.
"""

import dataclasses
import functools
import json
import os
import re

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
from safetensors import numpy as safetensors_numpy

from ardiff import checkpoint
from ardiff import diffusion
from ardiff.models import autoencoder as autoencoder_lib
from ardiff.models import build_model
from ardiff.models import layers

KINDS = ("dit", "autoencoder")
WRAPPER_PREFIX = "diffusion_model.model."  # the DiT inside the reference's diffusion wrapper
BUFFER_PREFIX = "diffusion_model."  # the wrapper's diffusion buffers
VAE_PREFIX = "vae."  # the frozen frame autoencoder inside the wrapper
# The wrapper's registered buffers (LatentDiffusion.register_schedule, logvar), one per timestep.
DIFFUSION_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "logvar",
)


@dataclasses.dataclass(frozen=True)
class Param:
  """One reference tensor (per layer where `layers` > 0: key holds "{}", the layer index) and
  the ardiff parameter it becomes.

  layout: "plain" (same numbers, reshaped), "linear" (torch [out, in] -> [in, out]),
  "conv" ([out, in, kh, kw] -> [kh, kw, in, out]) or "dense1x1" (a 1x1 convolution
  [out, in, 1, 1] that ardiff runs as Dense [in, out]); the result is reshaped to `target`.
  """

  key: str
  path: tuple[str, ...]
  shape: tuple[int, ...]  # the reference's, per layer
  fields: str  # the config fields that set this shape
  layout: str = "plain"
  target: tuple[int, ...] | None = None  # ardiff's, per layer (None: as converted)
  layers: int = 0

  def keys(self) -> list[str]:
    return [self.key.format(i) for i in range(self.layers)] if self.layers else [self.key]

  def to_ardiff(self, a: np.ndarray) -> np.ndarray:
    if self.layout == "linear":
      a = a.T
    elif self.layout == "conv":
      a = a.transpose(2, 3, 1, 0)
    elif self.layout == "dense1x1":
      a = a[:, :, 0, 0].T
    return a.reshape(self.target) if self.target else a

  def to_reference(self, v: np.ndarray) -> np.ndarray:
    out, inp = self.shape[:2] if len(self.shape) >= 2 else (None, None)
    if self.layout == "linear":
      return v.reshape(inp, out).T
    if self.layout == "conv":
      return v.reshape(self.shape[2:] + (inp, out)).transpose(3, 2, 0, 1)
    if self.layout == "dense1x1":
      return v.reshape(inp, out).T[:, :, None, None]
    return v.reshape(self.shape)


# ----------------------------------------------------------------------------------------------
# Key maps.


def dit_key_map(config) -> list[Param]:
  """The reference's DiT_crossattn (share_norm, learn_sigma False, no RoPE, no qk norm) and its
  conditioning embedding, for config.model (the reference variant)."""
  m = config.model
  d, c, depth = m.hidden_size, m.in_channels, m.depth
  h = m.num_heads
  dm = int(d * m.mlp_ratio)
  nc, dc = m.reference_context_tokens, m.reference_context_dim
  size = "model.hidden_size"
  block = lambda key, path, shape, fields, layout="plain", target=None: Param(
      f"blocks.{{}}.{key}", ("blocks",) + path, shape, fields + ", model.depth", layout, target,
      depth)
  params = [
      Param("x_embedder.weight", ("embed", "kernel"), (d, c), f"{size}, model.in_channels", "linear"),
      Param("x_embedder.bias", ("embed", "bias"), (d,), size),
      Param("t_embedder.mlp.0.weight", ("timestep_embedding", "fc1", "kernel"), (d, 256), size,
            "linear"),
      Param("t_embedder.mlp.0.bias", ("timestep_embedding", "fc1", "bias"), (d,), size),
      Param("t_embedder.mlp.2.weight", ("timestep_embedding", "fc2", "kernel"), (d, d), size,
            "linear"),
      Param("t_embedder.mlp.2.bias", ("timestep_embedding", "fc2", "bias"), (d,), size),
      Param("c_embedder.weight", ("context_embed", "kernel"), (d, dc),
            f"{size}, model.reference_context_dim", "linear"),
      Param("c_embedder.bias", ("context_embed", "bias"), (d,), size),
      block("attn.qkv.weight", ("attn", "qkv_kernel"), (3 * d, d), size, "linear",
            (d, 3, h, d // h)),
      block("attn.qkv.bias", ("attn", "qkv_bias"), (3 * d,), size, "plain", (3, h, d // h)),
      block("attn.proj.weight", ("attn", "out", "kernel"), (d, d), size, "linear",
            (h, d // h, d)),
      block("attn.proj.bias", ("attn", "out", "bias"), (d,), size),
      block("mlp.fc1.weight", ("mlp", "fc1", "kernel"), (dm, d), f"{size}, model.mlp_ratio",
            "linear"),
      block("mlp.fc1.bias", ("mlp", "fc1", "bias"), (dm,), f"{size}, model.mlp_ratio"),
      block("mlp.fc2.weight", ("mlp", "fc2", "kernel"), (d, dm), f"{size}, model.mlp_ratio",
            "linear"),
      block("mlp.fc2.bias", ("mlp", "fc2", "bias"), (d,), size),
      block("adaLN_modulation.1.weight", ("adaLN", "kernel"), (6 * d, d), size, "linear"),
      block("adaLN_modulation.1.bias", ("adaLN", "bias"), (6 * d,), size),
      Param("final_layer.1.weight", ("final", "kernel"), (c, d), f"{size}, model.in_channels",
            "linear"),
      Param("final_layer.1.bias", ("final", "bias"), (c,), "model.in_channels"),
  ]
  context = "model.reference_context_tokens, model.reference_context_dim"
  if m.num_classes:
    params.append(Param("class_emb", ("class_emb",), (m.num_classes + 1, nc, dc),
                        f"model.num_classes, {context}"))
  else:
    params.append(Param("context_emb", ("context_emb",), (nc, dc), f"model.num_classes, {context}"))
  return params


def _vit_block(prefix: str, path: tuple[str, ...], width: int, heads: int, mlp: int | None,
               depth: int, fields: str) -> list[Param]:
  """A TiTok ResidualAttentionBlock (open_clip's: LayerNorms, torch MultiheadAttention, MLP;
  mlp None: attention only) per layer, onto a scanned layer at path."""
  dh = width // heads
  p = lambda key, sub, shape, layout="plain", target=None: Param(
      f"{prefix}.{{}}.{key}", path + sub, shape, fields, layout, target, depth)
  params = [
      p("ln_1.weight", ("ln_1", "scale"), (width,)),
      p("ln_1.bias", ("ln_1", "bias"), (width,)),
      *_attention(p, width, heads, dh),
  ]
  if mlp:
    params += [
        p("ln_2.weight", ("ln_2", "scale"), (width,)),
        p("ln_2.bias", ("ln_2", "bias"), (width,)),
        p("mlp.c_fc.weight", ("mlp", "c_fc", "kernel"), (mlp, width), "linear"),
        p("mlp.c_fc.bias", ("mlp", "c_fc", "bias"), (mlp,)),
        p("mlp.c_proj.weight", ("mlp", "c_proj", "kernel"), (width, mlp), "linear"),
        p("mlp.c_proj.bias", ("mlp", "c_proj", "bias"), (width,)),
    ]
  return params


def _attention(p, width, heads, dh) -> list[Param]:
  """torch.nn.MultiheadAttention -> autoencoder.MultiheadAttention (in_proj [W, 3, H, Dh])."""
  return [
      p("attn.in_proj_weight", ("attn", "in_proj_kernel"), (3 * width, width), "linear",
        (width, 3, heads, dh)),
      p("attn.in_proj_bias", ("attn", "in_proj_bias"), (3 * width,), "plain", (3, heads, dh)),
      p("attn.out_proj.weight", ("attn", "out_proj_kernel"), (width, width), "linear",
        (heads, dh, width)),
      p("attn.out_proj.bias", ("attn", "out_proj_bias"), (width,)),
  ]


def _layer_norm(key: str, path: tuple[str, ...], width: int, fields: str) -> list[Param]:
  return [Param(f"{key}.weight", path + ("scale",), (width,), fields),
          Param(f"{key}.bias", path + ("bias",), (width,), fields)]


def _resnet_block(key: str, path: tuple[str, ...], cin: int, cout: int, fields: str):
  """MaskGIT-VQGAN's ResnetBlock (no conv biases; the 1x1 shortcut where channels change)."""
  params = [
      *_layer_norm(f"{key}.norm1", path + ("norm1",), cin, fields),
      Param(f"{key}.conv1.weight", path + ("conv1", "kernel"), (cout, cin, 3, 3), fields, "conv"),
      *_layer_norm(f"{key}.norm2", path + ("norm2",), cout, fields),
      Param(f"{key}.conv2.weight", path + ("conv2", "kernel"), (cout, cout, 3, 3), fields, "conv"),
  ]
  if cin != cout:
    params.append(Param(f"{key}.nin_shortcut.weight", path + ("nin_shortcut", "kernel"),
                        (cout, cout, 1, 1), fields, "conv"))
  return params


def autoencoder_key_map(config) -> list[Param]:
  """The reference's TiTok_KL (temporal: TiTok_KL_wT) for config.autoencoder."""
  ae = config.autoencoder
  w, heads, n, c = ae.width, ae.num_heads, ae.num_latent_tokens, ae.token_channels
  mlp = int(w * ae.mlp_ratio)
  p, g = ae.patch_size, ae.image_size // ae.patch_size
  vocab, z, hidden = ae.pixel_vocab, ae.z_channels, ae.pixel_hidden_channels
  mult = tuple(ae.channel_mult)
  width = "autoencoder.width"
  grid = "autoencoder.image_size, autoencoder.patch_size, autoencoder.width"
  tokens = "autoencoder.num_latent_tokens, autoencoder.width"
  params = [Param("latent_tokens", ("latent_tokens",), (n, w), tokens)]
  for part in ("encoder", "decoder"):
    params += [
        Param(f"{part}.class_embedding", (part, "class_embedding"), (1, w), width),
        Param(f"{part}.positional_embedding", (part, "positional_embedding"), (g * g + 1, w), grid),
        Param(f"{part}.latent_token_positional_embedding",
              (part, "latent_token_positional_embedding"), (n, w), tokens),
        *_layer_norm(f"{part}.ln_pre", (part, "ln_pre"), w, width),
        *_layer_norm(f"{part}.ln_post", (part, "ln_post"), w, width),
        *_vit_block(f"{part}.transformer", (part, "transformer", "block"), w, heads, mlp,
                    ae[f"{part}_depth"], f"{width}, autoencoder.mlp_ratio, autoencoder.{part}_depth"),
    ]
  params += [
      Param("encoder.patch_embed.weight", ("encoder", "patch_embed", "kernel"), (w, 3, p, p),
            f"{width}, autoencoder.patch_size", "conv"),
      Param("encoder.patch_embed.bias", ("encoder", "patch_embed", "bias"), (w,), width),
      Param("encoder.conv_out.weight", ("encoder", "conv_out", "kernel"), (2 * c, w, 1, 1),
            f"{width}, autoencoder.token_channels", "dense1x1"),
      Param("encoder.conv_out.bias", ("encoder", "conv_out", "bias"), (2 * c,),
            "autoencoder.token_channels"),
      Param("decoder.decoder_embed.weight", ("decoder", "decoder_embed", "kernel"), (w, c),
            f"{width}, autoencoder.token_channels", "linear"),
      Param("decoder.decoder_embed.bias", ("decoder", "decoder_embed", "bias"), (w,), width),
      Param("decoder.mask_token", ("decoder", "mask_token"), (1, 1, w), width),
      Param("decoder.ffn.0.weight", ("decoder", "ffn_in", "kernel"), (2 * w, w, 1, 1), width,
            "dense1x1"),
      Param("decoder.ffn.0.bias", ("decoder", "ffn_in", "bias"), (2 * w,), width),
      Param("decoder.ffn.2.weight", ("decoder", "ffn_out", "kernel"), (vocab, 2 * w, 1, 1),
            f"{width}, autoencoder.pixel_vocab", "dense1x1"),
      Param("decoder.ffn.2.bias", ("decoder", "ffn_out", "bias"), (vocab,), "autoencoder.pixel_vocab"),
      Param("pixel_quantize_conv.weight", ("pixel_quantize_conv", "kernel"), (z, vocab, 1, 1),
            "autoencoder.z_channels, autoencoder.pixel_vocab", "conv"),
      Param("pixel_quantize_conv.bias", ("pixel_quantize_conv", "bias"), (z,),
            "autoencoder.z_channels"),
  ]
  if ae.temporal:
    fields = f"{width}, autoencoder.decoder_depth, autoencoder.temporal"
    params += _vit_block("decoder.fine_temporal_blocks", ("decoder", "transformer", "fine_temporal"),
                         w, heads, None, ae.decoder_depth, fields)
    coarse = lambda key, sub, shape, layout="plain", target=None: Param(
        f"decoder.coarse_temporal_blocks.{{}}.{key}", ("decoder", "transformer", "coarse_temporal")
        + sub, shape, fields, layout, target, ae.decoder_depth)
    for ln in ("ln_q", "ln_k", "ln_v"):
      params += [coarse(f"{ln}.weight", (ln, "scale"), (w,)), coarse(f"{ln}.bias", (ln, "bias"), (w,))]
    params += _attention(coarse, w, heads, w // heads)
  # The pixel decoder (MaskGIT-VQGAN's Decoder): mid blocks, then up levels from the coarsest.
  pixels = ("autoencoder.pixel_hidden_channels, autoencoder.channel_mult,"
            " autoencoder.num_res_blocks")
  channels = [hidden * k for k in mult]
  params += [
      Param("pixel_decoder.conv_in.weight", ("pixel_decoder", "conv_in", "kernel"),
            (channels[-1], z, 3, 3), f"{pixels}, autoencoder.z_channels", "conv"),
      Param("pixel_decoder.conv_in.bias", ("pixel_decoder", "conv_in", "bias"), (channels[-1],),
            pixels),
  ]
  for j in range(ae.num_res_blocks):
    params += _resnet_block(f"pixel_decoder.mid.{j}", ("pixel_decoder", f"mid_{j}"), channels[-1],
                            channels[-1], pixels)
  for level, cout in enumerate(channels):
    cin = channels[min(level + 1, len(channels) - 1)]
    for j in range(ae.num_res_blocks):
      params += _resnet_block(f"pixel_decoder.up.{level}.block.{j}",
                              ("pixel_decoder", f"up_{level}", f"block_{j}"),
                              cin if j == 0 else cout, cout, pixels)
    if level > 0:
      params += [
          Param(f"pixel_decoder.up.{level}.upsample_conv.weight",
                ("pixel_decoder", f"up_{level}", "upsample_conv", "kernel"), (cout, cout, 3, 3),
                pixels, "conv"),
          Param(f"pixel_decoder.up.{level}.upsample_conv.bias",
                ("pixel_decoder", f"up_{level}", "upsample_conv", "bias"), (cout,), pixels),
      ]
  params += [
      *_layer_norm("pixel_decoder.norm_out", ("pixel_decoder", "norm_out"), channels[0], pixels),
      Param("pixel_decoder.conv_out.weight", ("pixel_decoder", "conv_out", "kernel"),
            (3, channels[0], 3, 3), pixels, "conv"),
      Param("pixel_decoder.conv_out.bias", ("pixel_decoder", "conv_out", "bias"), (3,), pixels),
  ]
  return params


def key_map(config, kind: str) -> list[Param]:
  if kind == "dit":
    return dit_key_map(config)
  if kind == "autoencoder":
    return autoencoder_key_map(config)
  raise ValueError(f"kind={kind!r}: one of {KINDS}.")


# ----------------------------------------------------------------------------------------------
# What a checkpoint implies about the config (for the error message).


def _layer_count(keys, prefix: str) -> int:
  found = [int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", k))]
  return max(found) + 1 if found else 0


def _implied_dit(state: dict, config) -> dict:
  m, out = config.model, {}
  if "x_embedder.weight" in state:
    out["model.hidden_size"], out["model.in_channels"] = state["x_embedder.weight"].shape
    if "blocks.0.mlp.fc1.weight" in state:
      out["model.mlp_ratio"] = state["blocks.0.mlp.fc1.weight"].shape[0] / out["model.hidden_size"]
  out["model.depth"] = _layer_count(state, "blocks")
  emb = state.get("class_emb", state.get("context_emb"))
  out["model.num_classes"] = state["class_emb"].shape[0] - 1 if "class_emb" in state else 0
  if emb is not None:
    out["model.reference_context_tokens"], out["model.reference_context_dim"] = emb.shape[-2:]
  if "pos_embed" in state:
    out["model.num_frames * model.tokens_per_frame"] = state["pos_embed"].shape[1]
  current = {"model.num_frames * model.tokens_per_frame": m.num_frames * m.tokens_per_frame}
  return {k: (v, current.get(k, m.get(k.split(".", 1)[1]))) for k, v in out.items()}


def _implied_autoencoder(state: dict, config) -> dict:
  ae, out = config.autoencoder, {}
  get = lambda k, i: state[k].shape[i] if k in state else None
  out["width"], out["num_latent_tokens"] = get("latent_tokens", 1), get("latent_tokens", 0)
  out["patch_size"] = get("encoder.patch_embed.weight", -1)
  grid = get("encoder.positional_embedding", 0)
  if grid and out["patch_size"]:
    out["image_size"] = int(round((grid - 1) ** 0.5)) * out["patch_size"]
  out["encoder_depth"] = _layer_count(state, "encoder.transformer")
  out["decoder_depth"] = _layer_count(state, "decoder.transformer")
  if out["width"] and "encoder.transformer.0.mlp.c_fc.weight" in state:
    out["mlp_ratio"] = state["encoder.transformer.0.mlp.c_fc.weight"].shape[0] / out["width"]
  out["token_channels"] = get("decoder.decoder_embed.weight", 1)
  out["pixel_vocab"] = get("decoder.ffn.2.weight", 0)
  out["z_channels"] = get("pixel_quantize_conv.weight", 0)
  out["num_res_blocks"] = _layer_count(state, "pixel_decoder.up.0.block")
  out["temporal"] = any(".fine_temporal_blocks." in k for k in state)
  implied = {f"autoencoder.{k}": (v, ae[k]) for k, v in out.items() if v is not None}
  levels = _layer_count(state, "pixel_decoder.up")
  per_level = [get(f"pixel_decoder.up.{i}.block.0.conv2.weight", 0) for i in range(levels)]
  if levels and None not in per_level:
    implied["autoencoder.pixel_hidden_channels * autoencoder.channel_mult"] = (
        tuple(per_level), tuple(ae.pixel_hidden_channels * k for k in ae.channel_mult))
  return implied


def _hint(state: dict, config, kind: str) -> str:
  implied = (_implied_dit if kind == "dit" else _implied_autoencoder)(state, config)
  same = lambda a, b: np.shape(a) == np.shape(b) and np.allclose(np.asarray(a, float),
                                                                  np.asarray(b, float))
  differ = [f"{k}: checkpoint {v!r}, config {c!r}" for k, (v, c) in implied.items()
            if not same(v, c)]
  if not differ:
    return ""
  return ("\n  The checkpoint implies other values of these config fields; set them:\n    "
          + "\n    ".join(differ))


# ----------------------------------------------------------------------------------------------
# Conversion.


def _split(state: dict, kind: str) -> tuple[dict, dict, list[str]]:
  """(the model's tensors by key, the wrapper's diffusion buffers, the keys skipped)."""
  if kind == "autoencoder":
    if any(k.startswith(VAE_PREFIX) for k in state):  # inside a diffusion checkpoint
      model = {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
      return model, {}, sorted(k for k in state if not k.startswith(VAE_PREFIX))
    return dict(state), {}, []
  model, buffers, skipped = {}, {}, []
  for k, v in state.items():
    if k.startswith(WRAPPER_PREFIX):
      model[k[len(WRAPPER_PREFIX):]] = v
    elif k.startswith(BUFFER_PREFIX):
      buffers[k[len(BUFFER_PREFIX):]] = v
    elif k.startswith(VAE_PREFIX):
      skipped.append(k)
    else:
      model[k] = v  # a bare DiT, and the wrapper's context_emb / class_emb
  return model, buffers, skipped


def check_diffusion_buffers(buffers: dict, config, source: str = "the checkpoint"):
  """The wrapper's noise schedule against config.diffusion: the same betas and alphas_cumprod,
  else an error (the model was trained for another schedule)."""
  unknown = sorted(set(buffers) - set(DIFFUSION_BUFFERS))
  if unknown:
    raise ValueError(f"{source} has unexpected diffusion-wrapper keys"
                     f" {[BUFFER_PREFIX + k for k in unknown]}: not a reference checkpoint?")
  d = config.diffusion
  betas = diffusion.make_betas(d.beta_schedule, d.num_timesteps)
  expected = {"betas": betas, "alphas_cumprod": np.cumprod(1.0 - betas)}
  for name, want in expected.items():
    if name not in buffers:
      continue
    got = np.asarray(buffers[name], np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-8):
      raise ValueError(
          f"{source} was trained with another noise schedule: its {BUFFER_PREFIX}{name} has"
          f" {got.shape[0]} steps from {got[0]:.6g} to {got[-1]:.6g}, but"
          f" config.diffusion (beta_schedule={d.beta_schedule!r},"
          f" num_timesteps={d.num_timesteps}) gives {want.shape[0]} from {want[0]:.6g} to"
          f" {want[-1]:.6g}. Set config.diffusion to the checkpoint's schedule (the released"
          " models: linear, 1000).")


def _check_dit_config(config):
  if config.model.get("variant", "ardiff") != "reference":
    raise ValueError("The reference's DiT converts onto the reference variant: set"
                     " --config.model.variant=reference (ardiff's own DiT has other layers).")


def convert_state_dict(state: dict, config, kind: str = "dit", source: str = "the checkpoint"):
  """The ardiff parameter tree (nested dicts of float32 numpy arrays) of a reference state dict
  (numpy arrays by key). Raises ValueError naming every key that does not fit the config."""
  if kind == "dit":
    _check_dit_config(config)
  params = key_map(config, kind)
  model, buffers, _ = _split(state, kind)
  expected = {k: (p, i) for p in params for i, k in enumerate(p.keys())}
  fixed = {}  # tensors that are not parameters in ardiff but are checked
  if kind == "dit":
    m = config.model
    fixed["pos_embed"] = layers.sincos_positions(m.num_frames * m.tokens_per_frame,
                                                 m.hidden_size)[None]
  missing = sorted(set(expected) - set(model)) + sorted(set(fixed) - set(model))
  unexpected = sorted(set(model) - set(expected) - set(fixed))
  mis_shaped = [f"{k}: checkpoint {tuple(model[k].shape)}, config {expected[k][0].shape}"
                f" ({expected[k][0].fields})" for k in sorted(set(expected) & set(model))
                if tuple(model[k].shape) != expected[k][0].shape]
  mis_shaped += [f"{k}: checkpoint {tuple(model[k].shape)}, config {v.shape}"
                 " (model.num_frames, model.tokens_per_frame, model.hidden_size)"
                 for k, v in fixed.items() if k in model and tuple(model[k].shape) != v.shape]
  if missing or unexpected or mis_shaped:
    lines = [f"{source} does not match the config (kind={kind}):"]
    for name, keys in (("missing", missing), ("unexpected", unexpected),
                       ("mis-shaped", mis_shaped)):
      if keys:
        shown = keys[:30] + ([f"... {len(keys) - 30} more"] if len(keys) > 30 else [])
        lines.append(f"  {name} ({len(keys)}): " + ", ".join(shown))
    if kind == "dit" and "final_layer.1.weight" in model and (
        model["final_layer.1.weight"].shape[0] == 2 * config.model.in_channels):
      lines.append("  Its final layer predicts 2 x in_channels (learn_sigma=True), which ardiff"
                   " does not support.")
    raise ValueError("\n".join(lines) + _hint(model, config, kind))
  if kind == "dit":
    got = np.asarray(model["pos_embed"], np.float32)
    if not np.allclose(got, fixed["pos_embed"], atol=1e-5):
      raise ValueError(f"{source}: pos_embed is not the fixed sin-cos table of its"
                       f" {got.shape[1]} tokens (max difference"
                       f" {np.abs(got - fixed['pos_embed']).max():.3g}): not a share_norm"
                       " DiT_crossattn without RoPE?")
    check_diffusion_buffers(buffers, config, source)
  tree = {}
  for p in params:
    value = np.stack([p.to_ardiff(np.asarray(model[k], np.float32)) for k in p.keys()]) \
        if p.layers else p.to_ardiff(np.asarray(model[p.key], np.float32))
    node = tree
    for name in p.path[:-1]:
      node = node.setdefault(name, {})
    node[p.path[-1]] = np.ascontiguousarray(value, np.float32)
  _check_against_model(tree, config, kind)
  return tree


def to_reference(params, config, kind: str = "dit") -> dict:
  """The inverse of convert_state_dict: the reference's tensors by key (for a DiT: the bare
  model's, with pos_embed and the context embedding). float32 numpy arrays."""
  out = {}
  for p in key_map(config, kind):
    value = params
    for name in p.path:
      value = value[name]
    value = np.asarray(value, np.float32)
    if p.layers:
      out.update({k: p.to_reference(value[i]) for i, k in enumerate(p.keys())})
    else:
      out[p.key] = p.to_reference(value)
  if kind == "dit":
    m = config.model
    out["pos_embed"] = layers.sincos_positions(m.num_frames * m.tokens_per_frame, m.hidden_size)[None]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_safetensors(path: str) -> dict:
  """A safetensors file's tensors as numpy arrays by key (no torch needed)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"No checkpoint at {path}: pass the model.safetensors of the"
                            " reference's accelerate checkpoint directory.")
  return safetensors_numpy.load_file(path)


def convert_checkpoint(path: str, config, kind: str = "dit"):
  """The parameter tree that build_model(config).apply({"params": tree}, x, t, labels) takes
  (kind="dit"), or that autoencoder.build_autoencoder(config.autoencoder) takes
  (kind="autoencoder"), from the reference's safetensors file at path."""
  return convert_state_dict(load_safetensors(path), config, kind, source=path)


def model_shapes(config, kind: str) -> dict:
  """ShapeDtypeStructs of the parameters of config's model of this kind (nothing allocated)."""
  if kind == "dit":
    m = config.model
    x = jnp.zeros((1, m.num_frames, m.tokens_per_frame, m.in_channels))
    labels = jnp.zeros((1,), jnp.int32) if m.num_classes else None
    init = functools.partial(build_model(config).init, x=x, t=jnp.zeros((1, m.num_frames), jnp.int32),
                             labels=labels)
  else:
    r = config.autoencoder.image_size
    init = functools.partial(autoencoder_lib.build_autoencoder(config.autoencoder).init,
                             pixels=jnp.zeros((1, 1, r, r, 3)))
  return nn.unbox(jax.eval_shape(init, jax.random.key(0)))["params"]


def _check_against_model(tree, config, kind: str):
  """The converted tree has exactly the model's parameters and shapes (else the key map and
  the model disagree: a bug in this file, reported as such)."""
  flat = lambda t: {jax.tree_util.keystr(p): np.shape(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  got, want = flat(tree), flat(model_shapes(config, kind))
  if got != want:
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    raise AssertionError(f"ardiff.convert's {kind} key map and the model disagree on {diff}.")


def write_export(params, config, kind: str, workdir: str) -> str:
  """Writes params as workdir/export (+ for the autoencoder workdir/config.json, what a stage-1
  run leaves), loadable like a trained run's. Returns the export's path."""
  # In the dtype the model keeps its parameters in (config's param_dtype).
  dtype = np.dtype(config.model.param_dtype if kind == "dit" else config.autoencoder.param_dtype)
  params = jax.tree.map(lambda a: np.asarray(a, dtype), params)
  path = checkpoint.export_params(workdir, params, config)
  if kind == "autoencoder" and jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  return path


# ----------------------------------------------------------------------------------------------
# The command (its flags are defined when run as one: ardiff.main defines --config too).


def _define_flags():
  config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).")
  flags.DEFINE_string("checkpoint", None, "The reference's model.safetensors.")
  flags.DEFINE_enum("kind", "dit", list(KINDS), "dit (stage 2) or autoencoder (stage 1).")
  flags.DEFINE_string("workdir", None, "Where the export is written (workdir/export).")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  state = load_safetensors(f.checkpoint)
  skipped = _split(state, f.kind)[2]
  params = convert_state_dict(state, f.config, f.kind, source=f.checkpoint)
  path = write_export(params, f.config, f.kind, f.workdir)
  print(json.dumps({"export": path, "kind": f.kind,
                    "parameters": int(sum(a.size for a in jax.tree.leaves(params))),
                    "skipped_keys": len(skipped)}), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
