"""(Re)builds a dataset: python -m ardiff.data.build --dataset=moving_digits [--overwrite]."""

from absl import app
from absl import flags

from ardiff.data import datasets

_DATASET = flags.DEFINE_string(
    "dataset", None, f"Dataset to build: one of {sorted(datasets.BUILDERS)}.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Where to write; default $TFDS_DATA_DIR, else ~/tensorflow_datasets.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Delete the existing copy and rebuild it.")
flags.mark_flag_as_required("dataset")


def main(argv):
  del argv
  builder = datasets.build(_DATASET.value, _DATA_DIR.value, overwrite=_OVERWRITE.value)
  for split, info in builder.info.splits.items():
    print(f"{split}: {info.num_examples} clips, {info.num_bytes / 2**20:.1f} MiB")
  print(f"Ready in {builder.data_dir}")


if __name__ == "__main__":
  app.run(main)
