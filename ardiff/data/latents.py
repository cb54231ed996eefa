"""Latent datasets: the autoencoder's latents of a video dataset, which stage 2 trains on.

Made by `python -m ardiff.main --mode=extract_latents --config=<stage-1 config> --workdir=<its
workdir>` (ardiff/extract_latents.py) into <workdir>/latents/<dataset>/<split>/:
  shard-00000.array_record, ...   one record per video, in the dataset's order
  manifest.json                   written last: counts, shapes, the source and the autoencoder

A record is a msgpack dict {"latents": float32 [F, N, C] (posterior means, per frame),
"label": int, "index": int (the video's index in the source split)}. A split without its
manifest is unfinished: extraction resumes it, reading refuses it.
"""

import copy
import json
import os

from array_record.python import array_record_module
from flax import serialization
import grain
import numpy as np

MANIFEST = "manifest.json"


def dataset_dir(autoencoder_workdir: str, data_name: str, split_number: int = 1) -> str:
  """<workdir>/latents/<data_name> (<data_name>_split<k> for UCF-101's official splits 2, 3)."""
  name = data_name if split_number in (None, 1) else f"{data_name}_split{split_number}"
  return os.path.join(os.path.abspath(autoencoder_workdir), "latents", name)


def shard_path(split_dir: str, index: int) -> str:
  return os.path.join(split_dir, f"shard-{index:05d}.array_record")


def encode_record(latents: np.ndarray, label: int, index: int) -> bytes:
  return serialization.msgpack_serialize(
      {"latents": np.asarray(latents, np.float32), "label": int(label), "index": int(index)})


def decode_record(data: bytes) -> dict:
  record = serialization.msgpack_restore(data)
  return {"latents": np.asarray(record["latents"], np.float32),
          "label": np.int32(record["label"]), "index": int(record["index"])}


def write_shard(path: str, records: list[bytes]):
  """Writes a shard atomically: a reader or a resumed extraction never sees half of one."""
  tmp = f"{path}.tmp{os.getpid()}"
  writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
  for r in records:
    writer.write(r)
  writer.close()
  os.replace(tmp, path)


def read_shard(path: str) -> list[dict]:
  """Every record of one shard, decoded."""
  reader = array_record_module.ArrayRecordReader(path)
  try:
    return [decode_record(r) for r in reader.read_all()]
  finally:
    reader.close()


def read_manifest(split_dir: str) -> dict | None:
  path = os.path.join(split_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_manifest(split_dir: str, manifest: dict):
  tmp = os.path.join(split_dir, f"{MANIFEST}.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, os.path.join(split_dir, MANIFEST))


class LatentSource(grain.sources.RandomAccessDataSource):
  """A finished split of a latent dataset as decoded records (a grain random-access source)."""

  def __init__(self, split_dir: str):
    self.manifest = read_manifest(split_dir)
    if self.manifest is None:
      raise FileNotFoundError(f"No finished latent dataset in {split_dir} (no {MANIFEST}).")
    paths = [os.path.join(split_dir, name) for name in self.manifest["shards"]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(f"Latent dataset {split_dir} lacks {missing}: extract it again.")
    self._source = grain.sources.ArrayRecordDataSource(paths)
    if len(self._source) != self.manifest["num_videos"]:
      raise ValueError(f"Latent dataset {split_dir} holds {len(self._source)} records, its"
                       f" manifest says {self.manifest['num_videos']}: extract it again.")
    self.indices = np.arange(len(self._source))
    # int [V]: the frame count of every record, from the manifest (no decoding).
    self.num_frames = np.asarray(self.manifest["num_frames"], np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index) -> dict:
    return decode_record(self._source[int(self.indices[index])])

  def subset(self, keep: np.ndarray) -> "LatentSource":
    """The records where keep (bool [V]) holds, as the video datasets' sources do."""
    out = copy.copy(self)
    out.indices, out.num_frames = self.indices[keep], self.num_frames[keep]
    return out


def stage2_tokens(latents: np.ndarray, l2_normalize: bool, scale: float) -> np.ndarray:
  """Extracted latents [..., C] -> the tokens stage 2 models: L2-normalised over the channels
  (z / max(|z|, 1e-12), as the paper's tokenizer decodes them) when l2_normalize, then times
  scale (LDM's scale factor). generate.tokens_to_video divides by scale before decoding."""
  z = np.asarray(latents, np.float32)
  if l2_normalize:
    z = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  return z * np.float32(scale)


def split_dir(config, split: str, autoencoder_workdir: str | None = None) -> str:
  """Where the latents of config.data.name's split are (of config.latents.autoencoder_workdir
  unless another workdir is given)."""
  workdir = autoencoder_workdir or config.latents.autoencoder_workdir
  return os.path.join(
      dataset_dir(workdir, config.data.name, config.data.get("split_number", 1)), split)


def check_ready(config, split: str = "train") -> dict:
  """The manifest of the latents a stage-2 config trains on; errors say how to make them."""
  workdir = config.latents.autoencoder_workdir
  m = config.model
  if not workdir:
    raise ValueError(
        f"This config trains on latent tokens ({m.tokens_per_frame} x {m.in_channels} per"
        " frame) of a frame autoencoder: set --config.latents.autoencoder_workdir=<its stage-1"
        " workdir>. Train one with the dataset's configs/<dataset>_vae.py (e.g."
        f" configs/{config.data.name}_vae.py; the demo's: configs/demo_vae.py), then run"
        " --mode=extract_latents with that config and workdir.")
  directory = split_dir(config, split)
  manifest = read_manifest(directory)
  if manifest is None:
    raise FileNotFoundError(
        f"No latents of {config.data.name} ({split}) in {directory}. Make them with:\n"
        f"  python -m ardiff.main --mode=extract_latents --config=<the config {workdir} was"
        f" trained with: configs/<dataset>_vae.py, the demo's configs/demo_vae.py>"
        f" --workdir={workdir} --config.data.name={config.data.name}"
        f" --config.data.split_number={config.data.get('split_number', 1)}")
  made_at = manifest["identity"]["resolution"]
  if made_at != config.data.resolution:
    raise ValueError(
        f"The latents in {directory} encode {made_at}x{made_at} frames; this config's"
        f" data.resolution is {config.data.resolution} (its real clips for FVD and prefixes):"
        f" set --config.data.resolution={made_at}.")
  shape = (manifest["tokens_per_frame"], manifest["channels"])
  if shape != (m.tokens_per_frame, m.in_channels):
    raise ValueError(
        f"The latents in {directory} have {shape[0]} tokens x {shape[1]} channels per frame;"
        f" this config's model expects {m.tokens_per_frame} x {m.in_channels}: set"
        f" config.model.tokens_per_frame={shape[0]} and config.model.in_channels={shape[1]}.")
  return manifest
