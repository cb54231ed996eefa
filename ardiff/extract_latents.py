"""`--mode=extract_latents`: encode a video dataset with a trained frame autoencoder into the
latent dataset that stage 2 trains on (ardiff/data/latents.py has the format).

  python -m ardiff.main --mode=extract_latents --config=configs/demo_vae.py --workdir=/tmp/vae

Every split of config.data.name, every video whole, in the dataset's order; each frame's latent
is its posterior mean (deterministic: the same weights and data give the same bytes). Frames are
encoded in jitted batches of config.latents.extract_batch_size sharded over the mesh. Shards of
config.latents.shard_size videos are written as they finish: a stopped extraction resumes at
the first missing shard.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ardiff import autoencoder_state
from ardiff import sharding
from ardiff.data import datasets
from ardiff.data import frames as frames_lib
from ardiff.data import latents as latents_lib
from ardiff.models import autoencoder as autoencoder_lib

SPLITS = ("train", "test")


def make_encoder(ae, config, mesh, params):
  """uint8 frames [B, H, W, 3] -> posterior means [B, N, C] of the autoencoder ae, jitted over
  the mesh of config."""
  model = autoencoder_lib.build_autoencoder(ae)
  shards = jax.tree.map(lambda a: a.sharding, params)

  def encode(params, frames):
    x = frames.astype(jnp.float32)[:, None] / 255.0  # [B, 1, H, W, 3] in [0, 1]
    mean, _ = model.apply({"params": params}, x, method="encode")
    return mean[:, 0]

  batch_shards = sharding.batch_sharding(config, mesh, 4)
  jitted = jax.jit(encode, in_shardings=(shards, batch_shards),
                   out_shardings=sharding.replicated(mesh))

  def encoder(frames):
    # Every process holds the whole batch: each puts its devices' rows of it (a numpy array
    # with a split sharding is refused by jit when there are several processes).
    batch = jax.make_array_from_callback(frames.shape, batch_shards, lambda idx: frames[idx])
    return np.asarray(jax.device_get(jitted(params, batch)))

  return encoder


def encode_frames(encoder, frames: np.ndarray, batch_size: int) -> np.ndarray:
  """Frames [T, H, W, 3] in fixed batches (the last padded: one compiled shape) -> [T, N, C]."""
  out = []
  for start in range(0, len(frames), batch_size):
    chunk = frames[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    out.append(encoder(chunk)[:batch_size - pad])
  return np.concatenate(out)


def extract_split(config, ae, source, split_dir: str, encoder, identity: dict, *, progress=True):
  """Writes the latent dataset of one split; returns its manifest. Resumes a stopped run."""
  os.makedirs(split_dir, exist_ok=True)
  done = latents_lib.read_manifest(split_dir)
  if done is not None:
    if done["identity"] != identity:
      raise ValueError(
          f"{split_dir} holds latents of {done['identity']}, not of {identity}: move it aside"
          " to extract again.")
    return done
  started = os.path.join(split_dir, "identity.json")
  if os.path.exists(started):
    with open(started) as f:
      previous = json.load(f)
    if previous != identity:
      raise ValueError(f"{split_dir} holds a partial extraction of {previous}, not of"
                       f" {identity}: move it aside to extract again.")
  elif jax.process_index() == 0:
    with open(started, "w") as f:
      json.dump(identity, f)
  n, size = len(source), config.latents.shard_size
  num_frames = [0] * n
  shards = []
  bar = tqdm.tqdm(total=n, desc=f"extracting {os.path.basename(split_dir)}", unit="video",
                  disable=not progress)
  for shard in range(-(-n // size)):
    path = latents_lib.shard_path(split_dir, shard)
    shards.append(os.path.basename(path))
    indices = range(shard * size, min((shard + 1) * size, n))
    if os.path.exists(path):  # finished by an earlier run: read its frame counts back
      for record in latents_lib.read_shard(path):
        num_frames[record["index"]] = len(record["latents"])
      bar.update(len(indices))
      continue
    records = []
    for i in indices:
      record = source[i]
      video = frames_lib.resize_frames(np.asarray(record["video"]), ae.image_size)
      if config.data.get("grayscale", False):  # as the autoencoder trained on them
        video = frames_lib.grayscale(video)
      latents = encode_frames(encoder, video, config.latents.extract_batch_size)
      num_frames[i] = len(latents)
      records.append(latents_lib.encode_record(latents, int(record["label"]), i))
      bar.update(1)
    if jax.process_index() == 0:
      latents_lib.write_shard(path, records)
  bar.close()
  manifest = {"identity": identity, "num_videos": n, "num_frames": num_frames,
              "shards": shards, "tokens_per_frame": ae.num_latent_tokens,
              "channels": ae.token_channels}
  if jax.process_index() == 0:
    latents_lib.write_manifest(split_dir, manifest)
  return manifest


def extract(config, workdir: str, *, progress: bool = True) -> dict:
  """The --mode=extract_latents entry: every split of config.data.name -> its latent dataset
  under workdir/latents/<data.name>/. Returns {split: manifest}."""
  if config.trainer != "autoencoder":
    raise ValueError("--mode=extract_latents runs with the autoencoder's config and workdir"
                     " (configs/<name>_vae.py), whose encoder makes the latents.")
  mesh = sharding.make_mesh(config.mesh)
  # The model as the run in workdir trained it (its config.json); the config given names the
  # data, the mesh and the extraction sizes.
  params, trained, step = autoencoder_state.load_params(workdir, mesh)
  ae = trained.autoencoder
  encoder = make_encoder(ae, config, mesh, params)
  batch = config.latents.extract_batch_size
  devices = sharding.batch_devices(config, mesh)
  if batch % devices:
    raise ValueError(f"latents.extract_batch_size={batch} is not divisible by the {devices}"
                     " devices of the batch axes.")
  out = {}
  for split in SPLITS:
    try:
      source = datasets.open_split(config.data.name, split, config.data.data_dir,
                                   resolution=ae.image_size,
                                   split_number=config.data.split_number)
    except ValueError as e:
      if f"no split {split!r}" in str(e):  # e.g. the _long datasets hold train only
        continue
      raise
    identity = {"dataset": config.data.name, "split": split,
                "split_number": int(config.data.split_number),
                "resolution": int(ae.image_size), "autoencoder_step": step,
                "autoencoder_workdir": os.path.abspath(workdir)}
    if config.data.get("grayscale", False):  # (absent for colour: earlier extractions match)
      identity["grayscale"] = True
    split_dir = latents_lib.split_dir(config, split, workdir)
    out[split] = extract_split(config, ae, source, split_dir, encoder, identity,
                               progress=progress)
    if jax.process_index() == 0:
      frames = sum(out[split]["num_frames"])
      print(f"{split}: {out[split]['num_videos']} videos, {frames} frames -> {split_dir}",
            flush=True)
  return out
