"""(Re)builds a dataset.

Generated datasets: python -m ardiff.data.build --dataset=moving_digits [--overwrite].
Video datasets, from your download (README, "Datasets"):
  python -m ardiff.data.build --dataset=ucf101 --manual_dir=/data/ucf101 [--resolution=256]
Stopping a video build and rerunning the same command resumes it; unreadable videos are
skipped and listed in a report, printed at the end and kept as build_report.txt in the dataset.
"""

import os

from absl import app
from absl import flags

from ardiff.data import datasets
from ardiff.data import video_build
from ardiff.data import video_datasets
from ardiff.data import video_layouts

_DATASET = flags.DEFINE_enum(
    "dataset", None, sorted(datasets.KNOWN), "Dataset to build.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where to write; default $TFDS_DATA_DIR, else ~/tensorflow_datasets.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the existing copy and rebuild it.")
# Video datasets only.
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Video datasets: the download, laid out as the dataset ships.")
_RESOLUTION = flags.DEFINE_enum(
    "resolution", "256", [str(r) for r in video_datasets.RESOLUTIONS],
    "Video datasets: side of the stored square frames.")
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", None, "Video datasets: decoding processes (default: one per CPU core).")
_VIDEOS_PER_SHARD = flags.DEFINE_integer(
    "videos_per_shard", 32, "Video datasets: videos per array_record file, the unit of resuming.")
_COMPRESSION = flags.DEFINE_enum(
    "compression", None, ["c0", "c23", "c40"],
    "faceforensics: which compression of the original sequences (default: the one downloaded, "
    "c23 if several).")
_SPLIT_FILE = flags.DEFINE_string(
    "split_file", None, 'video_folder: JSON {"train": [paths relative to manual_dir], ...}; '
    "default: every video in train.")
_LABELS_FROM_SUBFOLDERS = flags.DEFINE_bool(
    "labels_from_subfolders", False, "video_folder: label each video by its top-level subfolder.")
flags.mark_flag_as_required("dataset")

# Flags that only some datasets take (None: every video dataset).
_ONLY_FOR = {"manual_dir": None, "num_workers": None, "compression": "faceforensics",
             "split_file": "video_folder", "labels_from_subfolders": "video_folder"}


def main(argv):
  del argv
  name = _DATASET.value
  for flag, only in _ONLY_FOR.items():
    if flags.FLAGS[flag].present and name != only and (only or name not in datasets.VIDEO_DATASETS):
      raise app.UsageError(f"--{flag} applies to {only or 'video datasets'}, not to {name}.")
  if name not in datasets.VIDEO_DATASETS:
    builder = datasets.build(name, _DATA_DIR.value, overwrite=_OVERWRITE.value)
    for split, info in builder.info.splits.items():
      print(f"{split}: {info.num_examples} clips, {info.num_bytes / 2**20:.1f} MiB")
    print(f"Ready in {builder.data_dir}")
    return
  layout_options = {"compression": _COMPRESSION.value} if name == "faceforensics" else {}
  if name == "video_folder":
    layout_options = {"split_file": _SPLIT_FILE.value,
                      "labels_from_subfolders": _LABELS_FROM_SUBFOLDERS.value}
  try:
    builder = datasets.build(
        name, _DATA_DIR.value, overwrite=_OVERWRITE.value, resolution=int(_RESOLUTION.value),
        manual_dir=_MANUAL_DIR.value, num_workers=_NUM_WORKERS.value,
        videos_per_shard=_VIDEOS_PER_SHARD.value, **layout_options)
  except (datasets.DatasetNotBuiltError, video_layouts.LayoutError,
          video_build.NothingReadableError, video_build.InputsChangedError) as e:
    raise SystemExit(f"{type(e).__name__}: {e}") from e  # the message says what to do
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} videos, {info.num_bytes / 2**30:.2f} GiB")
  print(f"Ready in {builder.data_dir} (report: "
        f"{os.path.join(builder.data_dir, video_build.REPORT_FILE)})")


if __name__ == "__main__":
  app.run(main)
