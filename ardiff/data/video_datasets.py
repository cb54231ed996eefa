"""The paper's four video datasets and `video_folder`: TFDS builders of whole videos, and reading.

Each record is one whole source video, as long as it is: frames uint8 [T, S, S, 3] (ZLIB in
array_record), its fps, T, its path relative to the manual download and its label (-1: none).
The clip length and frame stride are chosen when reading, so one build serves 16-frame training
and FVD on 128-frame clips. Builder configs "64", "128" and "256" are the stored resolution S
(<data_dir>/<name>/<S>/<version>/). They are built from a manual download by
`python -m ardiff.data.build` (video_build.py), never downloaded.

metadata.json, next to dataset_info.json, holds per split the frame count and path of every
record (so that reading can skip short videos without decoding them), the class names, and
UCF-101's official splits 2 and 3 as lists of paths (the same videos as split 1, stored once).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ardiff.data import builder_base

RESOLUTIONS = (64, 128, 256)


def features(size: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "video": tfds.features.Tensor(shape=(None, size, size, 3), dtype=np.uint8,
                                    encoding=tfds.features.Encoding.ZLIB),
      "label": tfds.features.Scalar(dtype=np.int32),  # -1: the dataset has no labels
      "fps": tfds.features.Scalar(dtype=np.float32),  # 0: unknown (frame folders)
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "path": tfds.features.Text(),  # relative to the manual download
  })


def stored_resolution(resolution: int) -> int:
  """The builder config read for frames of `resolution`: the smallest stored one that is not
  smaller (the pipeline resizes the rest of the way with area averaging)."""
  for size in RESOLUTIONS:
    if size >= resolution:
      return size
  raise ValueError(f"data.resolution={resolution} exceeds the largest stored resolution "
                   f"{RESOLUTIONS[-1]} of the video datasets.")


class VideoDataset(builder_base.ArrayRecordBuilder, skip_registration=True):
  """Whole videos of a manual download. Subclasses name the dataset and where it comes from."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Whole videos, resized by the short side and center-cropped."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=str(size), description=f"{size}x{size} frames")
      for size in RESOLUTIONS
  ]
  NUM_CLASSES = 0
  DOWNLOAD = ""  # where the data come from, one line
  # Registered with TFDS under names such as "ucf101" that TFDS's own (downloading) datasets
  # already use: these builders are not registered, and are found through ardiff.data.datasets.
  name = "video_dataset"

  @property
  def size(self) -> int:
    return int(self.builder_config.name)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=f"{type(self).__doc__}\n\n{__doc__}",
        features=features(self.size), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager
    raise NotImplementedError(
        f"{self.name} is built from a manual download by `python -m ardiff.data.build "
        f"--dataset={self.name} --manual_dir=...` (resumable, in parallel), not by TFDS.")

  def _generate_examples(self):
    raise NotImplementedError  # see _split_generators


class SkyTimelapse(VideoDataset, skip_registration=True):
  """Sky Time-lapse (MDGAN): JPEG frame folders, one video per clip folder."""
  name = "sky_timelapse"
  DOWNLOAD = ("the MDGAN release (Xiong et al. 2018: github.com/weixiong-ur/mdgan, "
              "sky_timelapse.zip)")


class Taichi(VideoDataset, skip_registration=True):
  """TaiChi-HD: the first-order-model clips (mp4 files or PNG frame folders)."""
  name = "taichi"
  DOWNLOAD = ("the first-order-model's taichi loading scripts (github.com/AliaksandrSiarohin/"
              "video-preprocessing: load_videos.py --metadata taichi-metadata.csv)")


class FaceForensics(VideoDataset, skip_registration=True):
  """FaceForensics++ original YouTube sequences (mp4)."""
  name = "faceforensics"
  DOWNLOAD = ("FaceForensics++ through the authors' request form (github.com/ondyari/"
              "FaceForensics: download script, -d original -c c23 -t videos)")


class Ucf101(VideoDataset, skip_registration=True):
  """UCF-101 action videos (avi), 101 classes; labels from classInd.txt."""
  name = "ucf101"
  NUM_CLASSES = 101
  DOWNLOAD = ("the UCF CRCV site (www.crcv.ucf.edu/data/UCF101.php: UCF101.rar and "
              "UCF101TrainTestSplits-RecognitionTask.zip)")


class VideoFolder(VideoDataset, skip_registration=True):
  """Any folder of video files or frame folders; labels from subfolder names if asked."""
  name = "video_folder"
  DOWNLOAD = "your own videos (any folder of video files or frame folders)"


BUILDERS = {cls.name: cls for cls in (SkyTimelapse, Taichi, FaceForensics, Ucf101, VideoFolder)}


@dataclasses.dataclass(frozen=True, eq=False)
class VideoSource:
  """Records `indices` of a TFDS data source, and their frame counts (read from metadata.json).

  A frozen dataclass of picklable parts: grain's spawned workers pickle the source.
  """

  source: object  # tfds ArrayRecordDataSource (one split, or several concatenated)
  indices: np.ndarray  # [N] int64
  num_frames: np.ndarray  # [N] int64, of the records at `indices`
  dataset_info: tfds.core.DatasetInfo

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]

  def subset(self, keep: np.ndarray) -> "VideoSource":
    return dataclasses.replace(self, indices=self.indices[keep], num_frames=self.num_frames[keep])


def open_source(builder: VideoDataset, split: str, split_number: int | None = None) -> VideoSource:
  """A split of a built video dataset; for UCF-101, of its official split `split_number`.

  UCF-101's records are stored once, in the train and test splits of the official split 1;
  splits 2 and 3 select the same records by path from both.
  """
  info = builder.info
  metadata = info.metadata
  if split not in info.splits:
    raise ValueError(f"Dataset {builder.name} has no split {split!r}; it has {list(info.splits)}.")
  if split_number in (None, 1):
    indices = np.arange(len(metadata["paths"][split]))
    return VideoSource(builder.as_data_source(split=split), indices,
                       np.asarray(metadata["num_frames"][split], np.int64), info)
  other = metadata.get("other_splits", {})
  if str(split_number) not in other:
    fix = ("rebuild it (--overwrite) from a download whose ucfTrainTestlist/ holds "
           f"trainlist0{split_number}.txt and testlist0{split_number}.txt"
           if builder.name == "ucf101" else "only UCF-101 has official splits 2 and 3")
    raise ValueError(
        f"Dataset {builder.name} has no split_number {split_number}: it was built with the "
        f"splits {['1'] + sorted(other)}. Use data.split_number=1 (the default); {fix}.")
  stored = list(info.splits)
  paths = [p for s in stored for p in metadata["paths"][s]]
  num_frames = np.asarray([n for s in stored for n in metadata["num_frames"][s]], np.int64)
  wanted = set(other[str(split_number)][split])
  # In path order, as a stored split is.
  indices = np.asarray(sorted((i for i, p in enumerate(paths) if p in wanted),
                              key=paths.__getitem__), np.int64)
  source = builder.as_data_source(split="+".join(stored))  # the records of all stored splits
  return VideoSource(source, indices, num_frames[indices], info)
