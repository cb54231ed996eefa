"""Where each dataset's videos lie in a manual download, which split each is in, and its label.

Each `list_<dataset>(manual_dir, ...)` checks the layout (LayoutError shows the expected one)
and returns a Listing: per split, the videos in sorted order of their path relative to
manual_dir. A video is a video file or a folder of frames.
"""

import dataclasses
import json
import os

from ardiff.data import video_io

EXPECTED_LAYOUT = {
    "sky_timelapse": """\
  <manual_dir>/sky_train/<video>/<clip>/*.jpg   (each clip folder is one video)
  <manual_dir>/sky_test/<video>/<clip>/*.jpg""",
    "taichi": """\
  <manual_dir>/train/<clip>   each clip an .mp4 file or a folder of .png frames (the
  <manual_dir>/test/<clip>    first-order-model preprocessing names both <id>#<start>#<end>.mp4)""",
    "faceforensics": """\
  <manual_dir>/original_sequences/youtube/<c0|c23|c40>/videos/<id>.mp4
  <manual_dir>/splits/train.json, val.json, test.json   (optional: FaceForensics++'s official
                                                          lists of [id, id] pairs)""",
    "ucf101": """\
  <manual_dir>/UCF-101/<ClassName>/v_<ClassName>_gXX_cXX.avi
  <manual_dir>/ucfTrainTestlist/classInd.txt, trainlist01.txt .. trainlist03.txt,
                                testlist01.txt .. testlist03.txt""",
    "video_folder": """\
  <manual_dir>/**/<name>.mp4 (.avi, .mov, .mkv, .webm, ...) or <manual_dir>/**/<clip>/*.jpg|png
  with --labels_from_subfolders: <manual_dir>/<class>/... (label = index of the sorted class)
  with --split_file: a JSON file {"train": [paths relative to manual_dir], "test": [...]}""",
}
# FaceForensics++ without its split lists: the last 14% of the sorted ids are the test split,
# the share of the official test list (140 of 1000 videos).
FACEFORENSICS_TEST_SHARE = 0.14
UCF101_SPLITS = (1, 2, 3)


class LayoutError(ValueError):
  """A manual_dir that is not laid out as the dataset ships."""


@dataclasses.dataclass(frozen=True)
class Video:
  relpath: str  # relative to manual_dir: the record's source path
  label: int  # -1: no label


@dataclasses.dataclass
class Listing:
  splits: dict[str, list[Video]]
  class_names: list[str] = dataclasses.field(default_factory=list)  # empty: no labels
  # Videos that a split list names but that are not on disk: (relpath, why).
  missing: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  # Videos on disk that no split list names (left out of the dataset, and counted).
  unlisted: list[str] = dataclasses.field(default_factory=list)
  # Further splits stored inside the same records, as relpaths per split: UCF-101's 2 and 3.
  other_splits: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)


def layout_error(dataset: str, manual_dir: str, problem: str) -> LayoutError:
  return LayoutError(
      f"{manual_dir} is not laid out as {dataset} ships: {problem}.\n"
      f"Expected layout:\n{EXPECTED_LAYOUT[dataset]}")


def list_sky_timelapse(manual_dir: str) -> Listing:
  splits = {}
  for split, folder in (("train", "sky_train"), ("test", "sky_test")):
    root = os.path.join(manual_dir, folder)
    if not os.path.isdir(root):
      raise layout_error("sky_timelapse", manual_dir, f"no folder {folder}/")
    clips = [os.path.join(folder, video, clip)
             for video in _subdirs(root) for clip in _subdirs(os.path.join(root, video))]
    if not clips:
      raise layout_error("sky_timelapse", manual_dir, f"no <video>/<clip>/ folders in {folder}/")
    splits[split] = [Video(relpath, -1) for relpath in sorted(clips)]
  return Listing(splits)


def list_taichi(manual_dir: str) -> Listing:
  splits = {}
  for split in ("train", "test"):
    root = os.path.join(manual_dir, split)
    if not os.path.isdir(root):
      raise layout_error("taichi", manual_dir, f"no folder {split}/")
    clips = [os.path.join(split, name) for name in sorted(os.listdir(root))
             if os.path.isdir(os.path.join(root, name))
             or video_io.is_video_file(os.path.join(root, name))]
    if not clips:
      raise layout_error("taichi", manual_dir, f"no video files or frame folders in {split}/")
    splits[split] = [Video(relpath, -1) for relpath in clips]
  return Listing(splits)


def list_faceforensics(manual_dir: str, compression: str | None = None) -> Listing:
  youtube = os.path.join("original_sequences", "youtube")
  present = [c for c in ("c0", "c23", "c40")
             if os.path.isdir(os.path.join(manual_dir, youtube, c, "videos"))]
  if not present:
    raise layout_error("faceforensics", manual_dir, f"no {youtube}/<c0|c23|c40>/videos/")
  if compression is None:  # the one there, else the common choice c23
    compression = present[0] if len(present) == 1 else "c23" if "c23" in present else None
    if compression is None:
      raise LayoutError(f"{manual_dir} holds the compressions {present}: choose one with "
                        "--compression.")
  if compression not in present:
    raise layout_error("faceforensics", manual_dir,
                       f"no {youtube}/{compression}/videos/ (there: {present})")
  folder = os.path.join(youtube, compression, "videos")
  ids = sorted(n[:-4] for n in os.listdir(os.path.join(manual_dir, folder))
               if n.lower().endswith(".mp4"))
  if not ids:
    raise layout_error("faceforensics", manual_dir, f"no .mp4 files in {folder}/")
  relpath = {i: os.path.join(folder, i + ".mp4") for i in ids}
  lists = {split: os.path.join(manual_dir, "splits", name + ".json")
           for split, name in (("train", "train"), ("validation", "val"), ("test", "test"))}
  lists = {split: path for split, path in lists.items() if os.path.exists(path)}
  if not lists:
    num_test = max(1, round(FACEFORENSICS_TEST_SHARE * len(ids)))
    split_ids = {"train": ids[:-num_test], "test": ids[-num_test:]}
    return Listing({s: [Video(relpath[i], -1) for i in v] for s, v in split_ids.items()})
  listing = Listing({})
  listed = set()
  for split, path in lists.items():
    with open(path) as f:
      try:  # [[target, source], ...]: both ids of every pair are original videos of the split
        split_ids = sorted({str(i) for pair in json.load(f) for i in pair})
      except (ValueError, TypeError) as e:
        raise layout_error("faceforensics", manual_dir,
                           f"{path} is not a JSON list of [id, id] pairs ({e})") from e
    listed.update(split_ids)
    listing.splits[split] = [Video(relpath[i], -1) for i in split_ids if i in relpath]
    listing.missing += [(os.path.join(folder, i + ".mp4"), f"listed in {path}, not on disk")
                        for i in split_ids if i not in relpath]
  listing.unlisted = [relpath[i] for i in ids if i not in listed]
  return listing


def list_ucf101(manual_dir: str) -> Listing:
  """Split 1 (the official default) as the stored splits; splits 2 and 3 as other_splits."""
  lists_dir = os.path.join(manual_dir, "ucfTrainTestlist")
  video_dir = os.path.join(manual_dir, "UCF-101")
  for path in (video_dir, os.path.join(lists_dir, "classInd.txt"),
               os.path.join(lists_dir, "trainlist01.txt"),
               os.path.join(lists_dir, "testlist01.txt")):
    if not os.path.exists(path):
      raise layout_error("ucf101", manual_dir, f"no {os.path.relpath(path, manual_dir)}")
  class_ids, names = {}, [""] * 101
  for line in _lines(os.path.join(lists_dir, "classInd.txt")):
    number, name = line.split()
    if not 1 <= int(number) <= 101:
      raise layout_error("ucf101", manual_dir, f"classInd.txt numbers {name} {number}, not 1..101")
    class_ids[name.lower()] = int(number) - 1
    names[int(number) - 1] = name
  # The official lists and folders disagree in case (HandstandPushups/v_HandStandPushups_...).
  on_disk = {}
  for class_dir in _subdirs(video_dir):
    for name in os.listdir(os.path.join(video_dir, class_dir)):
      if video_io.is_video_file(os.path.join(video_dir, class_dir, name)):
        relpath = os.path.join("UCF-101", class_dir, name)
        on_disk[relpath.lower()] = relpath
  if not on_disk:
    raise layout_error("ucf101", manual_dir, "no video files in UCF-101/<ClassName>/")
  listing = Listing({}, class_names=names)
  for number in UCF101_SPLITS:
    splits = {}
    for split in ("train", "test"):
      path = os.path.join(lists_dir, f"{split}list{number:02d}.txt")
      if not os.path.exists(path):
        if number == 1:
          raise layout_error("ucf101", manual_dir, f"no {os.path.relpath(path, manual_dir)}")
        break
      videos = []
      for line in _lines(path):
        entry = line.split()[0]  # trainlists add the 1-based class number: same as classInd
        class_name = entry.split("/")[0].lower()
        if class_name not in class_ids:
          raise layout_error("ucf101", manual_dir, f"{path} names {entry}, whose class is not in "
                             "classInd.txt")
        relpath = on_disk.get(os.path.join("UCF-101", entry).lower())
        if relpath is None:
          if number == 1:
            listing.missing.append((os.path.join("UCF-101", entry),
                                    f"listed in {os.path.basename(path)}, not on disk"))
          continue
        videos.append(Video(relpath, class_ids[class_name]))
      splits[split] = sorted(videos, key=lambda v: v.relpath)
    else:  # both lists of this split number exist
      if number == 1:
        listing.splits = splits
      else:
        listing.other_splits[str(number)] = {s: [v.relpath for v in vs] for s, vs in splits.items()}
  stored = {v.relpath for videos in listing.splits.values() for v in videos}
  listing.unlisted = sorted(set(on_disk.values()) - stored)
  return listing


def list_video_folder(manual_dir: str, split_file: str | None = None,
                      labels_from_subfolders: bool = False) -> Listing:
  if not os.path.isdir(manual_dir):
    raise layout_error("video_folder", manual_dir, "it is not a folder")
  found = []
  for root, dirs, files in os.walk(manual_dir):
    dirs.sort()
    if any(f.lower().endswith(video_io.FRAME_EXTENSIONS) for f in files):
      found.append(os.path.relpath(root, manual_dir))
      dirs.clear()  # a frame folder is one video
      continue
    found += [os.path.relpath(os.path.join(root, f), manual_dir)
              for f in files if f.lower().endswith(video_io.VIDEO_EXTENSIONS)]
  found = sorted(p for p in found if p != ".")  # frames directly in manual_dir: not a video
  if not found:
    raise layout_error("video_folder", manual_dir, "no video files or frame folders in it")
  class_names = []
  if labels_from_subfolders:
    at_top = [p for p in found if os.sep not in p]
    if at_top:
      raise layout_error("video_folder", manual_dir,
                         f"labels come from subfolders, but {at_top[0]} is in no subfolder")
    class_names = sorted({p.split(os.sep)[0] for p in found})
  label = {p: class_names.index(p.split(os.sep)[0]) if class_names else -1 for p in found}
  if split_file is None:
    return Listing({"train": [Video(p, label[p]) for p in found]}, class_names=class_names)
  try:
    with open(split_file) as f:
      lists = json.load(f)
    lists = {str(split): [os.path.normpath(p) for p in paths] for split, paths in lists.items()}
  except (OSError, ValueError, TypeError, AttributeError) as e:
    raise layout_error("video_folder", manual_dir,
                       f"cannot read the split file {split_file} ({type(e).__name__}: {e})") from e
  listing = Listing({}, class_names=class_names)
  on_disk = set(found)
  for split, paths in lists.items():
    listing.splits[split] = [Video(p, label[p]) for p in sorted(set(paths)) if p in on_disk]
    listing.missing += [(p, f"listed in {split_file}, not on disk")
                        for p in sorted(set(paths)) if p not in on_disk]
  listed = {p for paths in lists.values() for p in paths}
  listing.unlisted = [p for p in found if p not in listed]
  return listing


LIST_VIDEOS = {
    "sky_timelapse": list_sky_timelapse,
    "taichi": list_taichi,
    "faceforensics": list_faceforensics,
    "ucf101": list_ucf101,
    "video_folder": list_video_folder,
}


def _subdirs(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))


def _lines(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]
