"""Tests of the video datasets built from manual downloads (video_layouts, video_io, video_build,
video_datasets) and of reading them through the grain pipeline.

Each fixture is written in its dataset's real layout (JPEG and PNG frame folders, mp4 files,
mpeg4 avi files written with imageio-ffmpeg, UCF-101's split lists with real class names and
ids), tiny (frames of at most 64x64, 10-40 frames), with one corrupt file each.
"""

import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from conftest import runlocal_config

from ardiff import extract_latents
from ardiff import train
from ardiff import train_autoencoder
from ardiff.data import datasets
from ardiff.data import pipeline
from ardiff.data import video_build
from ardiff.data import video_io
from ardiff.data import video_layouts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# UCF-101 classes with their official ids (classInd.txt); the folder and the file names of
# HandstandPushups disagree in case in the real download, as here.
UCF_CLASSES = {"ApplyEyeMakeup": 1, "Basketball": 8, "HandstandPushups": 37, "YoYo": 101}


def _frames(seed: int, num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
  """A textured frame with a bright square that moves: uint8 [T, height, width, 3]."""
  rng = np.random.default_rng(seed)
  # 8x8 blocks: smooth enough for the lossy codecs to keep, distinct per seed.
  blocks = rng.integers(0, 160, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
  base = blocks.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]
  video = np.repeat(base[None], num_frames, axis=0)
  for t in range(num_frames):
    top, left = (2 * t) % (height - 8), (3 * t + seed) % (width - 8)
    video[t, top:top + 8, left:left + 8] = 255
  return video


def _write_frames(folder: str, frames: np.ndarray, ext: str):
  os.makedirs(folder, exist_ok=True)
  for i, frame in enumerate(frames):
    Image.fromarray(frame).save(os.path.join(folder, f"{i:07d}{ext}"))


def _write_video(path: str, frames: np.ndarray):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  codec = {"codec": "mpeg4"} if path.endswith(".avi") else {}
  iio.imwrite(path, frames, fps=25, macro_block_size=1, **codec)


def _write_corrupt(path: str):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42 cut off by a failed download" * 8)


def _sky(root):
  for relpath, seed, n in (("sky_train/v01/v01_1", 1, 12), ("sky_train/v01/v01_2", 2, 16),
                           ("sky_train/v02/v02_1", 3, 20), ("sky_test/v03/v03_1", 4, 14),
                           ("sky_test/v03/v03_2", 5, 10)):
    _write_frames(os.path.join(root, relpath), _frames(seed, n, 36, 64), ".jpg")
  # A frame folder with one JPEG that does not decode.
  _write_frames(os.path.join(root, "sky_train/v02/v02_2"), _frames(6, 12, 36, 64), ".jpg")
  _write_corrupt(os.path.join(root, "sky_train/v02/v02_2/0000005.jpg"))
  return root


def _taichi(root):
  _write_video(os.path.join(root, "train/aaa#000010#000040.mp4"), _frames(1, 30, 64, 64))
  _write_frames(os.path.join(root, "train/bbb#000000#000024.mp4"), _frames(2, 24, 64, 64), ".png")
  _write_frames(os.path.join(root, "test/ccc#000100#000120.mp4"), _frames(3, 20, 64, 64), ".png")
  _write_video(os.path.join(root, "test/ddd#000000#000016.mp4"), _frames(4, 16, 64, 64))
  _write_corrupt(os.path.join(root, "train/eee#000000#000030.mp4"))
  return root


def _faceforensics(root, with_splits=True):
  videos = os.path.join(root, "original_sequences/youtube/c23/videos")
  for i in range(6):
    if i == 3:
      _write_corrupt(os.path.join(videos, "003.mp4"))
    else:
      _write_video(os.path.join(videos, f"{i:03d}.mp4"), _frames(10 + i, 12, 64, 48))
  if with_splits:
    os.makedirs(os.path.join(root, "splits"))
    for name, pairs in (("train", [["000", "001"], ["003", "002"]]), ("test", [["005", "004"]])):
      with open(os.path.join(root, "splits", name + ".json"), "w") as f:
        json.dump(pairs, f)
  return root


def _ucf_name(class_name, group, clip=1):
  file_class = "HandStandPushups" if class_name == "HandstandPushups" else class_name
  return f"{class_name}/v_{file_class}_g{group:02d}_c{clip:02d}.avi"


def _ucf101(root):
  """Each class has a video of group 1 (test in split 1), 9 (test in split 2) and 16 (test in
  split 3); the lists are written as the official ones, with HandStandPushups as they spell it.
  """
  lists = os.path.join(root, "ucfTrainTestlist")
  os.makedirs(lists)
  with open(os.path.join(lists, "classInd.txt"), "w") as f:
    f.writelines(f"{i} {name}\n" for name, i in UCF_CLASSES.items())
  entries = [(name, group) for name in UCF_CLASSES for group in (1, 9, 16)]
  for k, (name, group) in enumerate(entries):
    on_disk = _ucf_name(name, group).replace("HandStandPushups", "HandstandPushups")
    path = os.path.join(root, "UCF-101", on_disk)
    if (name, group) == ("YoYo", 9):
      _write_corrupt(path)
    else:
      _write_video(path, _frames(20 + k, 10 + 2 * k, 48, 64))
  _write_video(os.path.join(root, "UCF-101/YoYo/v_YoYo_g25_c07.avi"), _frames(0, 10, 48, 64))
  for number, test_group in ((1, 1), (2, 9), (3, 16)):
    with open(os.path.join(lists, f"trainlist{number:02d}.txt"), "w") as f:
      f.writelines(f"{_ucf_name(n, g)} {UCF_CLASSES[n]}\n" for n, g in entries if g != test_group)
    with open(os.path.join(lists, f"testlist{number:02d}.txt"), "w") as f:
      f.writelines(f"{_ucf_name(n, g)}\n" for n, g in entries if g == test_group)
      if number == 1:
        f.write("YoYo/v_YoYo_g01_c02.avi\n")  # listed, never downloaded
  return root


def _video_folder(root):
  _write_video(os.path.join(root, "cats/a.mp4"), _frames(30, 20))
  _write_frames(os.path.join(root, "cats/b"), _frames(31, 15), ".jpg")
  _write_video(os.path.join(root, "dogs/c.avi"), _frames(32, 12))
  _write_video(os.path.join(root, "dogs/d.mp4"), _frames(33, 18))
  _write_corrupt(os.path.join(root, "dogs/broken.mp4"))
  with open(os.path.join(root, "splits.json"), "w") as f:
    json.dump({"train": ["cats/a.mp4", "dogs/c.avi", "dogs/broken.mp4"],
               "test": ["cats/b", "dogs/d.mp4"]}, f)
  return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """Every fixture built at 64x64 into one data dir: {name: (manual_dir, data_dir)}."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  result = {}
  for name, write, options in (
      ("sky_timelapse", _sky, {}), ("taichi", _taichi, {}),
      ("faceforensics", _faceforensics, {}), ("ucf101", _ucf101, {"num_workers": 2}),
      ("video_folder", _video_folder, {"labels_from_subfolders": True})):
    manual_dir = write(str(tmp_path_factory.mktemp(name)))
    if name == "video_folder":
      options["split_file"] = os.path.join(manual_dir, "splits.json")
    options.setdefault("num_workers", 0)
    start = time.time()
    datasets.build(name, data_dir, resolution=64, manual_dir=manual_dir, videos_per_shard=2,
                   **options)
    print(f"built {name} in {time.time() - start:.1f} s")
    result[name] = manual_dir
  return data_dir, result


def _records(data_dir, name, split):
  source = datasets.open_split(name, split, data_dir, resolution=64)
  return [source[i] for i in range(len(source))]


def _report(data_dir, name):
  with open(os.path.join(datasets.dataset_dir(name, data_dir, 64), video_build.REPORT_FILE)) as f:
    return f.read()


def _config(data_dir, name, **overrides):
  """configs/tiny.py (the tests' runlocal size) on dataset `name` at 32x32, batch 4."""
  c = runlocal_config("tiny", data_dir, **{"data.name": name, "data.resolution": 32,
                                           "global_batch_size": 4})
  for key, value in overrides.items():
    (c.data if key in c.data else c)[key] = value
  return c


def test_sky_timelapse(built):
  data_dir, manual = built
  train = _records(data_dir, "sky_timelapse", "train")
  assert [r["path"].decode() for r in train] == [
      "sky_train/v01/v01_1", "sky_train/v01/v01_2", "sky_train/v02/v02_1"]
  assert [r["path"].decode() for r in _records(data_dir, "sky_timelapse", "test")] == [
      "sky_test/v03/v03_1", "sky_test/v03/v03_2"]
  assert [int(r["num_frames"]) for r in train] == [12, 16, 20]
  for r in train:
    assert r["video"].shape == (r["num_frames"], 64, 64, 3) and r["video"].dtype == np.uint8
    assert r["label"] == -1 and r["fps"] == 0
  # Frames in file order, each the short side resized and the middle square kept.
  folder = os.path.join(manual["sky_timelapse"], "sky_train/v01/v01_2")
  expected = [video_io.preprocess(Image.open(f), 64) for f in video_io.frame_files(folder)]
  assert np.array_equal(train[1]["video"], np.stack(expected))
  report = _report(data_dir, "sky_timelapse")
  assert "unreadable, skipped: 1\n    sky_train/v02/v02_2: " in report


def test_taichi_mp4_and_png_clips(built):
  data_dir, manual = built
  train = {r["path"].decode(): r for r in _records(data_dir, "taichi", "train")}
  test = {r["path"].decode(): r for r in _records(data_dir, "taichi", "test")}
  assert sorted(train) == ["train/aaa#000010#000040.mp4", "train/bbb#000000#000024.mp4"]
  assert sorted(test) == ["test/ccc#000100#000120.mp4", "test/ddd#000000#000016.mp4"]
  # PNG frames of 64x64 are stored exactly; the mp4 keeps its fps and all its frames.
  assert np.array_equal(train["train/bbb#000000#000024.mp4"]["video"], _frames(2, 24, 64, 64))
  mp4 = train["train/aaa#000010#000040.mp4"]
  assert mp4["video"].shape == (30, 64, 64, 3) and mp4["fps"] == 25
  assert np.abs(mp4["video"].astype(int) - _frames(1, 30, 64, 64)).mean() < 6  # lossy h264
  assert "train/eee#000000#000030.mp4: " in _report(data_dir, "taichi")


def test_faceforensics_splits(built, tmp_path):
  data_dir, _ = built
  paths = {split: [r["path"].decode().split("/")[-1] for r in _records(data_dir, "faceforensics",
                                                                         split)]
           for split in ("train", "test")}
  assert paths == {"train": ["000.mp4", "001.mp4", "002.mp4"], "test": ["004.mp4", "005.mp4"]}
  assert "original_sequences/youtube/c23/videos/003.mp4: " in _report(data_dir, "faceforensics")
  # Without the official lists: the last 14% of the sorted ids (at least one) are the test split.
  listing = video_layouts.list_faceforensics(_faceforensics(str(tmp_path), with_splits=False))
  assert [v.relpath[-7:] for v in listing.splits["test"]] == ["005.mp4"]
  assert len(listing.splits["train"]) == 5


def _ucf_expected(split, test_group):
  """Paths of a split whose test videos are those of test_group, as stored (the corrupt one
  left out, HandstandPushups spelled as on disk)."""
  return sorted(
      os.path.join("UCF-101", _ucf_name(n, g).replace("HandStandPushups", "HandstandPushups"))
      for n in UCF_CLASSES for g in (1, 9, 16)
      if (g == test_group) == (split == "test") and (n, g) != ("YoYo", 9))


def test_ucf101_labels_and_splits(built):
  data_dir, _ = built
  labels = {name: i - 1 for name, i in UCF_CLASSES.items()}  # classInd.txt counts from 1
  for split in ("train", "test"):
    records = _records(data_dir, "ucf101", split)
    assert [r["path"].decode() for r in records] == _ucf_expected(split, 1)
    for r in records:
      assert r["label"] == labels[r["path"].decode().split("/")[1]]
      assert r["fps"] == 25 and r["video"].shape[0] == r["num_frames"] >= 10
  assert datasets.num_classes("ucf101") == 101
  report = _report(data_dir, "ucf101")
  assert "unreadable, skipped: 1\n    UCF-101/YoYo/v_YoYo_g09_c01.avi: " in report
  assert "listed but not on disk: 1\n    UCF-101/YoYo/v_YoYo_g01_c02.avi" in report
  assert "in no split list, left out: 1\n    UCF-101/YoYo/v_YoYo_g25_c07.avi" in report
  # Splits 2 and 3 select the same stored records by their official lists.
  for number, test_group in ((2, 9), (3, 16)):
    for split in ("train", "test"):
      source = datasets.open_split("ucf101", split, data_dir, resolution=64, split_number=number)
      records = [source[i] for i in range(len(source))]
      assert [r["path"].decode() for r in records] == _ucf_expected(split, test_group)
      assert all(r["label"] == labels[r["path"].decode().split("/")[1]] for r in records)


def test_video_folder_labels_and_split_file(built):
  data_dir, _ = built
  train = _records(data_dir, "video_folder", "train")
  test = _records(data_dir, "video_folder", "test")
  assert [(r["path"].decode(), int(r["label"])) for r in train] == [("cats/a.mp4", 0),
                                                                     ("dogs/c.avi", 1)]
  assert [(r["path"].decode(), int(r["label"])) for r in test] == [("cats/b", 0),
                                                                    ("dogs/d.mp4", 1)]
  assert datasets.num_classes("video_folder", data_dir) == 2
  assert "dogs/broken.mp4: " in _report(data_dir, "video_folder")
  # An ordinary TFDS dataset: TFDS alone reads it back.
  builder = tfds.builder_from_directory(datasets.dataset_dir("video_folder", data_dir, 64))
  assert builder.as_data_source(split="test")[1]["video"].shape == (18, 64, 64, 3)


def test_training_batches_and_eval_clips(built, caplog):
  data_dir, _ = built
  # Clips of 8 frames 2 apart span 15: the two ApplyEyeMakeup training videos (12 and 14
  # frames) are too short and left out; the other 5 hold a clip.
  config = _config(data_dir, "ucf101", num_frames=8, frame_stride=2)
  with caplog.at_level("INFO"):
    it = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  assert "Leaving out 2 of the 7 ucf101 train videos" in caplog.text
  batches = [next(it) for _ in range(4)]
  for batch in batches:
    assert batch["video"].shape == (4, 8, 32, 32, 3) and batch["video"].dtype == np.uint8
  labels = np.concatenate([b["label"] for b in batches])
  assert set(labels.tolist()) == {7, 36, 100}  # 16 draws, over 3 epochs of the 5 videos
  state = it.get_state()
  continuation = [next(it) for _ in range(2)]
  resumed = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(state)
  for a, b in zip(continuation, [next(resumed) for _ in range(2)], strict=True):
    assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["label"], b["label"])
  halves = [next(pipeline.create_train_iterator(config, process_index=p, process_count=2))
            for p in range(2)]
  assert np.array_equal(np.concatenate([h["video"] for h in halves]), batches[0]["video"])
  # Evaluation clips of another length and resolution, in a fixed order.
  eval_config = _config(data_dir, "taichi", num_frames=20, resolution=64)
  videos, labels = pipeline.load_clips(eval_config, "train", 3)
  assert videos.shape == (3, 20, 64, 64, 3) and labels.tolist() == [-1, -1, -1]
  again, _ = pipeline.load_clips(eval_config, "train", 3)
  assert np.array_equal(videos, again)
  # Clips lie inside their video: each is 20 consecutive stored frames of one of them.
  stored = [r["video"] for r in _records(data_dir, "taichi", "train")]
  for clip in videos:
    assert any(np.array_equal(clip, v[s:s + 20]) for v in stored for s in range(len(v) - 19))
  with pytest.raises(ValueError, match="spans 41 frames, but the longest of the 2 taichi test "
                                       "videos has 20"):
    pipeline.load_clips(_config(data_dir, "taichi", num_frames=41), "test", 1)
  # UCF-101's test videos (10 to 28 frames) as 10-frame clips: all 4, then again.
  videos, labels = pipeline.load_clips(_config(data_dir, "ucf101", num_frames=10), "test", 6)
  assert videos.shape == (6, 10, 32, 32, 3)
  assert sorted(labels[:4].tolist()) == [0, 7, 36, 100]


def test_resume_after_kill_equals_one_build(tmp_path):
  """A build killed while a frame file blocks (a FIFO, as a hung network mount would) resumes
  into the same dataset as an uninterrupted build."""
  manual_dir = _sky(str(tmp_path / "sky"))
  blocked = os.path.join(manual_dir, "sky_test/v03/v03_1/0000003.jpg")
  os.replace(blocked, blocked + ".real")
  os.mkfifo(blocked)
  killed_dir = str(tmp_path / "killed")
  process = subprocess.Popen(
      [sys.executable, "-m", "ardiff.data.build", "--dataset=sky_timelapse",
       f"--manual_dir={manual_dir}", f"--data_dir={killed_dir}", "--resolution=64",
       "--num_workers=0", "--videos_per_shard=1"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  path = datasets.dataset_dir("sky_timelapse", killed_dir, 64)
  progress = os.path.join(path, video_build.PROGRESS_DIR)
  # Train's 4 clip folders are done (one shard each) when the first test clip blocks.
  deadline = time.time() + 120
  while not (os.path.isdir(progress) and
             len([n for n in os.listdir(progress) if n.startswith("train-")]) == 4):
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(path, "dataset_info.json"))
  with pytest.raises(NotImplementedError, match="interrupted build is there"):
    datasets.open_split("sky_timelapse", "train", killed_dir, resolution=64)
  os.remove(blocked)
  os.replace(blocked + ".real", blocked)
  # Rerunning with other inputs is refused; with the same ones it resumes.
  with pytest.raises(video_build.InputsChangedError,
                     match="interrupted build of other inputs.*videos_per_shard"):
    datasets.build("sky_timelapse", killed_dir, resolution=64, manual_dir=manual_dir,
                   num_workers=0, videos_per_shard=2)
  shards = [os.path.join(path, f"sky_timelapse-train.array_record-{i:05d}-of-00004")
            for i in range(4)]
  finished = [os.path.getmtime(shard) for shard in shards]
  datasets.build("sky_timelapse", killed_dir, resolution=64, manual_dir=manual_dir,
                 num_workers=2, videos_per_shard=1)
  assert [os.path.getmtime(shard) for shard in shards] == finished  # kept, not redone
  whole_dir = str(tmp_path / "whole")
  datasets.build("sky_timelapse", whole_dir, resolution=64, manual_dir=manual_dir,
                 num_workers=0, videos_per_shard=1)
  for split in ("train", "test"):
    resumed, whole = (_records(d, "sky_timelapse", split) for d in (killed_dir, whole_dir))
    assert len(resumed) == len(whole) == {"train": 3, "test": 2}[split]
    for a, b in zip(resumed, whole, strict=True):
      assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
  infos = [tfds.builder_from_directory(datasets.dataset_dir("sky_timelapse", d, 64)).info
           for d in (killed_dir, whole_dir)]
  assert infos[0].metadata["num_frames"] == infos[1].metadata["num_frames"]
  assert ([s.shard_lengths for s in infos[0].splits.values()]
          == [s.shard_lengths for s in infos[1].splits.values()])
  assert _report(killed_dir, "sky_timelapse") == _report(whole_dir, "sky_timelapse")


def test_wrong_layout_shows_the_expected_one(tmp_path):
  (tmp_path / "videos").mkdir()
  for name in datasets.VIDEO_DATASETS:
    manual_dir = str(tmp_path / "videos")
    with pytest.raises(video_layouts.LayoutError, match="Expected layout") as error:
      datasets.build(name, str(tmp_path / "out"), resolution=64, manual_dir=manual_dir)
    assert video_layouts.EXPECTED_LAYOUT[name] in str(error.value)
  # The command line says it without a traceback.
  result = subprocess.run(
      [sys.executable, "-m", "ardiff.data.build", "--dataset=ucf101",
       f"--manual_dir={tmp_path / 'videos'}", f"--data_dir={tmp_path / 'out'}"],
      cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "UCF-101/<ClassName>/v_<ClassName>_gXX_cXX.avi" in result.stderr


def test_not_built_says_how_to_build(tmp_path):
  config = _config(str(tmp_path), "ucf101", resolution=256)
  with pytest.raises(datasets.DatasetNotBuiltError) as error:
    pipeline.create_train_iterator(config, process_index=0, process_count=1)
  message = str(error.value)
  assert (f"python -m ardiff.data.build --dataset=ucf101 --manual_dir=/path/to/ucf101 "
          f"--resolution=256 --data_dir={tmp_path}") in message
  assert "www.crcv.ucf.edu/data/UCF101.php" in message
  for name in datasets.VIDEO_DATASETS:
    with pytest.raises(datasets.DatasetNotBuiltError, match=f"--dataset={name} --manual_dir"):
      datasets.check_available(name, str(tmp_path))


def test_ucf101_through_both_stages_at_runlocal_size(built, tmp_path):
  """configs/ucf101_vae.py:runlocal trains on the built fixture, its latents are extracted, and
  configs/ucf101.py:runlocal trains class-conditionally on them."""
  data_dir, _ = built
  vae = str(tmp_path / "vae")
  stage1 = runlocal_config("ucf101_vae", data_dir, num_train_steps=2)
  train_autoencoder.train_and_evaluate(stage1, vae)
  manifests = extract_latents.extract(stage1, vae, progress=False)
  train_records = _records(data_dir, "ucf101", "train")
  assert manifests["train"]["num_videos"] == len(train_records)
  assert manifests["train"]["num_frames"] == [int(r["num_frames"]) for r in train_records]
  stage2 = runlocal_config("ucf101", data_dir, num_train_steps=2,
                           **{"latents.autoencoder_workdir": vae})
  assert stage2.model.num_classes == 101
  batch = next(pipeline.create_train_iterator(stage2))
  assert batch["latents"].shape == (8, 4, 8, 4) and batch["label"].min() >= 0
  scalars = train.train_and_evaluate(stage2, str(tmp_path / "stage2"))
  assert np.isfinite(scalars["loss"])
