"""Building a video dataset from a manual download: in parallel, resumable, with a report.

The videos of each split, sorted by path, are cut into chunks of `videos_per_shard`, and each
chunk becomes one array_record shard under TFDS's own name for it
(<name>-<split>.array_record-0000i-of-0000n): the finished folder is an ordinary TFDS dataset
(`builder.as_data_source`, `tfds.builder_from_directory`).

Resuming: a shard is written under a temporary name and renamed when complete; then a small
JSON file in build_progress/ records what went into it (frame counts, paths, unreadable files).
A rerun of the same command lists the download again, checks that it is the listing of the
interrupted build (build_progress/manifest.json), and decodes only the chunks without such a
record. When all are done, dataset_info.json, features.json, metadata.json and
build_report.txt are written and build_progress/ is removed. A stopped build thus loses at most
the chunks in flight. One build at a time may write a folder.

Decoding runs in a pool of spawned processes (fork would copy the parent's threads), one video
per task, in order with a bounded look-ahead; each worker also compresses and serializes its
record, so the parent only writes files.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import time

import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import naming
import tqdm

from ardiff.data import video_datasets
from ardiff.data import video_io
from ardiff.data import video_layouts

PROGRESS_DIR = "build_progress"
REPORT_FILE = "build_report.txt"


class NothingReadableError(RuntimeError):
  """A split none of whose videos could be read: there is nothing to build it from."""


class InputsChangedError(ValueError):
  """A rerun whose inputs differ from those of the interrupted build it would resume."""


@dataclasses.dataclass(frozen=True)
class _Chunk:
  split: str
  index: int
  num_shards: int
  videos: tuple[video_layouts.Video, ...]

  @property
  def name(self) -> str:
    return f"{self.split}-{self.index:05d}"


def build(builder: video_datasets.VideoDataset, manual_dir: str, *,
          options: dict | None = None, num_workers: int | None = None,
          videos_per_shard: int = 32) -> str:
  """Builds (or finishes building) `builder`'s dataset from `manual_dir`; returns the report.

  Args:
    builder: the dataset and its stored resolution (builder config).
    manual_dir: the download, laid out as video_layouts.EXPECTED_LAYOUT shows.
    options: keyword arguments of the dataset's video_layouts.list_<name> (compression,
      split_file, labels_from_subfolders).
    num_workers: decoding processes; default os.cpu_count(); 0 decodes in this process.
    videos_per_shard: videos per array_record file (the unit of resuming).
  """
  options = {k: v for k, v in (options or {}).items() if v is not None}
  if "split_file" in options:  # a rerun from another directory is the same build
    options["split_file"] = os.path.abspath(os.path.expanduser(options["split_file"]))
  manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  listing = video_layouts.LIST_VIDEOS[builder.name](manual_dir, **options)
  for split, videos in listing.splits.items():
    if not videos:
      raise NothingReadableError(f"The {split} split of {manual_dir} holds no video on disk.")
  out = os.fspath(builder.data_path)
  progress_dir = os.path.join(out, PROGRESS_DIR)
  os.makedirs(progress_dir, exist_ok=True)
  _check_manifest(progress_dir, {
      "dataset": builder.name, "resolution": builder.size, "options": options,
      "videos_per_shard": videos_per_shard,
      "splits": {s: [[v.relpath, v.label] for v in vs] for s, vs in listing.splits.items()},
  })
  chunks = []
  for split, videos in listing.splits.items():
    num_shards = -(-len(videos) // videos_per_shard)
    chunks += [_Chunk(split, i, num_shards,
                      tuple(videos[i * videos_per_shard:(i + 1) * videos_per_shard]))
               for i in range(num_shards)]
  done = {c.name: _read_json(os.path.join(progress_dir, c.name + ".json")) for c in chunks}
  pending = [c for c in chunks if done[c.name] is None]
  total = sum(len(c.videos) for c in chunks)
  start = time.time()
  bar = tqdm.tqdm(total=total, initial=total - sum(len(c.videos) for c in pending),
                  unit="video", desc=f"{builder.name} {builder.size}px", smoothing=0.1)
  num_workers = os.cpu_count() if num_workers is None else num_workers
  decoded_frames = 0
  results = _encode_all(manual_dir, [v for c in pending for v in c.videos], builder.size,
                        num_workers)
  with bar, contextlib.closing(results):  # closing shuts the pool down, also on errors
    for chunk in pending:
      records = []
      for _ in chunk.videos:
        records.append(next(results))
        bar.update(1)
      done[chunk.name] = _write_chunk(builder, chunk, records, progress_dir)
      decoded_frames += sum(done[chunk.name]["num_frames"])
  if pending:
    seconds = time.time() - start
    print(f"Decoded {sum(len(c.videos) for c in pending)} videos ({decoded_frames} frames) in "
          f"{seconds:.1f} s with {num_workers} workers: {decoded_frames / seconds:.1f} frames/s.",
          flush=True)
  return _finish(builder, manual_dir, listing, options, chunks, done)


def encode_video(manual_dir: str, video: video_layouts.Video, size: int):
  """Decodes one video into a serialized record: (relpath, record bytes or None, frames, error).

  Runs in the worker processes (a module-level function, so that it pickles).
  """
  try:
    frames, fps = video_io.read_video(os.path.join(manual_dir, video.relpath), size)
  except video_io.UnreadableVideoError as e:
    return video.relpath, None, 0, str(e)
  record = _features(size).serialize_example({
      "video": frames, "label": video.label, "fps": fps, "num_frames": len(frames),
      "path": video.relpath,
  })
  return video.relpath, record, len(frames), None


@functools.lru_cache
def _features(size: int):
  return video_datasets.features(size)


def _encode_all(manual_dir, videos, size, num_workers):
  """encode_video of every video, yielded in order, decoded num_workers at a time."""
  if num_workers == 0:
    for video in videos:
      yield encode_video(manual_dir, video, size)
    return
  pool = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=multiprocessing.get_context("spawn"))
  try:
    # Two tasks per worker in flight keeps them busy while the oldest result is awaited, and
    # bounds the memory that finished records wait in.
    queue = collections.deque()
    todo = iter(videos)
    for video in todo:
      queue.append(pool.submit(encode_video, manual_dir, video, size))
      if len(queue) >= 2 * num_workers:
        break
    while queue:
      result = queue.popleft().result()
      video = next(todo, None)
      if video is not None:
        queue.append(pool.submit(encode_video, manual_dir, video, size))
      yield result
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _write_chunk(builder, chunk, records, progress_dir) -> dict:
  """Writes the chunk's shard, then the record of what it holds; returns that record."""
  template = _template(builder, chunk.split)
  path = os.fspath(template.sharded_filepath(shard_index=chunk.index, num_shards=chunk.num_shards))
  written = [r for r in records if r[1] is not None]
  file_adapters.ArrayRecordFileAdapter.write_examples(
      path + ".incomplete", ((None, r[1]) for r in written))
  os.replace(path + ".incomplete", path)  # complete, or absent: never a half-written shard
  summary = {
      "num_records": len(written), "num_bytes": os.path.getsize(path),
      "paths": [r[0] for r in written], "num_frames": [r[2] for r in written],
      "unreadable": [[r[0], r[3]] for r in records if r[1] is None],
  }
  _write_json(os.path.join(progress_dir, chunk.name + ".json"), summary)
  return summary


def _finish(builder, manual_dir, listing, options, chunks, done) -> str:
  """Writes dataset_info.json (TFDS's mark of a prepared dataset), metadata and the report."""
  out = os.fspath(builder.data_path)
  by_split = {split: [done[c.name] for c in chunks if c.split == split] for split in listing.splits}
  unreadable = [tuple(u) for c in chunks for u in done[c.name]["unreadable"]]
  report = _report(builder, manual_dir, listing, by_split, unreadable)
  with open(os.path.join(out, REPORT_FILE), "w") as f:
    f.write(report)
  empty = [split for split, parts in by_split.items() if not sum(p["num_records"] for p in parts)]
  if empty:
    raise NothingReadableError(
        f"No video of the {empty[0]} split of {manual_dir} could be read: replace the files "
        f"listed below, then rebuild with --overwrite (this report is also in "
        f"{os.path.join(out, REPORT_FILE)}):\n{report}")
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[p["num_records"] for p in parts],
                          num_bytes=sum(p["num_bytes"] for p in parts),
                          filename_template=_template(builder, split))
      for split, parts in by_split.items()
  ]))
  builder.info.metadata.update({
      "manual_dir": manual_dir,
      "options": options,
      "paths": {s: [p for part in parts for p in part["paths"]] for s, parts in by_split.items()},
      "num_frames": {s: [n for part in parts for n in part["num_frames"]]
                     for s, parts in by_split.items()},
      "class_names": listing.class_names,
      "other_splits": listing.other_splits,
      "unreadable": unreadable,
  })
  builder.info.write_to_directory(out)
  shutil.rmtree(os.path.join(out, PROGRESS_DIR))
  return report


def _report(builder, manual_dir, listing, by_split, unreadable) -> str:
  lines = [f"{builder.name} at {builder.size}x{builder.size}, from {manual_dir}:"]
  for split, parts in by_split.items():
    records = sum(p["num_records"] for p in parts)
    frames = sum(sum(p["num_frames"]) for p in parts)
    size = sum(p["num_bytes"] for p in parts)
    lines.append(f"  {split}: {records} videos, {frames} frames, {size / 2**30:.2f} GiB")
  for title, entries in (
      ("unreadable, skipped", [f"{path}: {why}" for path, why in unreadable]),
      ("listed but not on disk", [f"{path}: {why}" for path, why in listing.missing]),
      ("on disk but in no split list, left out", listing.unlisted)):
    lines.append(f"  {title}: {len(entries)}")
    lines += [f"    {entry}" for entry in entries]
  return "\n".join(lines) + "\n"


def _template(builder, split: str) -> naming.ShardedFileTemplate:
  return naming.ShardedFileTemplate(
      data_dir=builder.data_path, dataset_name=builder.name, split=split,
      filetype_suffix=file_adapters.FileFormat.ARRAY_RECORD.file_suffix)


def _check_manifest(progress_dir: str, manifest: dict):
  """Starts a build's manifest, or checks that a rerun resumes the same build."""
  path = os.path.join(progress_dir, "manifest.json")
  previous = _read_json(path)
  if previous is None:
    _write_json(path, manifest)
    return
  if previous != manifest:
    changed = [key for key in manifest if previous.get(key) != manifest[key]]
    raise InputsChangedError(
        f"{os.path.dirname(progress_dir)} holds an interrupted build of other inputs (they differ "
        f"in {changed}: the download or the build flags changed). Finish it with the same "
        f"inputs, or start over by adding --overwrite.")


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value):
  with open(path + ".incomplete", "w") as f:
    json.dump(value, f)
  os.replace(path + ".incomplete", path)
