"""Base of ardiff's TFDS builders: array_record files, and a TFDS 4.9.10 workaround."""

import inspect

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes array_record shards, which `as_data_source` reads without TensorFlow."""

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  # TFDS's own code_path imports `importlib_resources`, a backport it only declares for
  # Python < 3.9, for any builder defined in a package: on 3.11 that is a ModuleNotFoundError.
  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))


def video_feature(num_frames: int, size: int) -> tfds.features.Tensor:
  """uint8 frames [num_frames, size, size, 3], zlib-compressed (no TensorFlow needed to read)."""
  return tfds.features.Tensor(
      shape=(num_frames, size, size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)
