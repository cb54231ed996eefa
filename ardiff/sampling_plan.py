"""Host-side plans of AD sampling (numpy, static): what each model call of a sampler does.

They are computed once per sampler, before compiling, and enter the compiled loop as constants:

- sampling_schedule: the AD schedule (timesteps.ad_schedule) of a video whose first frames are
  given (video prediction): which frames each call denoises, and where its window sits.
- cache_plan: what each call of the KV-cached path runs through the model: the frames not yet
  in the cache up to the last one that moves, and whether the window moved (a refresh).
- stream_segments, segment_rows: the calls cut into segments over a buffer of frames that
  moves along a long video (Sampler.stream), and what each segment's calls read, relative to
  its buffer (the whole video is one segment whose buffer holds every frame).
- _padded_sizes: the few static query sizes that the cached path compiles, each call padded up
  to one of them (a compiled program needs static shapes; one size per call would compile a
  copy of the model per size).
"""

from typing import NamedTuple

import numpy as np

from ardiff import timesteps


def sampling_schedule(
    num_frames: int,
    window: int,
    ar_step: int,
    num_steps: int,
    context_frames: int | None = None,
    prefix_frames: int = 0,
) -> timesteps.ADSchedule:
  """The AD schedule of num_frames frames of which the first prefix_frames are given.

  Given frames count as finished from the start (timesteps.ad_schedule's given_frames): the
  first frame after them advances at once, and they stay in view as context while there is
  room. context_frames only matters (and is only checked) where the window slides.
  """
  return timesteps.ad_schedule(
      num_frames, window, ar_step, num_steps, context_frames, given_frames=prefix_frames
  )


class CachePlan(NamedTuple):
  """What each call of the cached path computes (all int32 [R] but `sizes`).

  query_start, query_end: the frames run through the model in call r. num_cached: frames
  from window_start whose keys/values are valid in the cache at the start of the call.
  refresh: the window moved (or the first call): num_cached = 0. branch: which compiled size
  of sizes (static numbers of query frames, the count padded up) serves the call.
  """

  query_start: np.ndarray
  query_end: np.ndarray
  num_cached: np.ndarray
  refresh: np.ndarray
  branch: np.ndarray
  sizes: tuple[int, ...]

  @property
  def query_frames(self) -> np.ndarray:
    return self.query_end - self.query_start

  @property
  def computed_frames(self) -> np.ndarray:
    """Frames each call computes, padding included."""
    return np.asarray(self.sizes)[self.branch]


def cache_plan(
    schedule: timesteps.ADSchedule, num_steps: int, max_branches: int = 4, rolling: bool = False
) -> CachePlan:
  """The cached path's work per call (see ardiff/sampling.py's docstring).

  Call r computes the frames [query_start, query_end): from the first frame of the window not
  in the cache (the frames finished in call r - 1, or every finished frame after a refresh) to
  the last frame it updates. The frames that were finished at its start then enter the cache.
  Query counts are padded up to at most max_branches sizes, chosen to waste the fewest frames.
  rolling: when the window moves the cache keeps the frames still in view (their keys and
  values as computed in an earlier window) instead of being refreshed; only the first call
  refreshes.
  """
  prev, steps, start = schedule.previous, schedule.steps, schedule.window_start
  num_calls = schedule.num_calls
  query_start, query_end, num_cached, refresh = (np.zeros(num_calls, np.int32) for _ in range(4))
  cache_end = 0  # one past the last cached frame
  for r in range(num_calls):
    refresh[r] = r == 0 or (start[r] != start[r - 1] and not rolling)
    if refresh[r]:  # the cached frames saw another window: their keys/values are stale
      cache_end = start[r]
    cache_end = max(cache_end, int(start[r]))  # frames that left the window leave the cache
    query_start[r], num_cached[r] = cache_end, cache_end - start[r]
    query_end[r] = np.nonzero(steps[r] != prev[r])[0].max() + 1
    # The frames finished at the start of the call are computed clean in it: cached after it.
    cache_end = max(cache_end, int(np.argmax(prev[r] < num_steps)))
  counts = query_end - query_start
  sizes = _padded_sizes(counts, max_branches)
  branch = np.searchsorted(np.asarray(sizes), counts).astype(np.int32)
  return CachePlan(query_start, query_end, num_cached, refresh.astype(bool), branch, sizes)


def _padded_sizes(counts: np.ndarray, max_branches: int) -> tuple[int, ...]:
  """At most max_branches sizes covering every count with the least padded total (DP)."""
  values, weights = np.unique(counts, return_counts=True)
  n, inf = len(values), float("inf")
  # cost[m][j]: least total for values[:j + 1] with m + 1 sizes, the largest values[j].
  cost = [[inf] * n for _ in range(max_branches)]
  back = [[-1] * n for _ in range(max_branches)]
  for j in range(n):
    cost[0][j] = values[j] * weights[: j + 1].sum()
    for m in range(1, max_branches):
      for i in range(j):
        c = cost[m - 1][i] + values[j] * weights[i + 1 : j + 1].sum()
        if c < cost[m][j]:
          cost[m][j], back[m][j] = c, i
  m = int(np.argmin([cost[m][n - 1] for m in range(max_branches)]))
  sizes, j = [], n - 1
  while j >= 0:
    sizes.append(int(values[j]))
    j, m = back[m][j], m - 1
  return tuple(sorted(sizes))


class StreamPlan(NamedTuple):
  """Segments of calls [begins[k], ends[k]) each run on the frames [offsets[k], offsets[k] +
  buffer_frames): every frame the segment's calls touch lies in that buffer, and the frames
  before offsets[k + 1] are finished at its end (they left the window for good)."""

  begins: np.ndarray
  ends: np.ndarray
  offsets: np.ndarray
  buffer_frames: int


def stream_segments(schedule: timesteps.ADSchedule, window: int, segment_frames: int) -> StreamPlan:
  """Segments of equal numbers of calls (the last may be shorter) in which the window moves by
  at most segment_frames frames: the most calls per segment for which that holds, so that the
  buffer (the window plus how far it moves in a segment) stays within window + segment_frames."""
  if segment_frames < 1:
    raise ValueError(f"segment_frames={segment_frames} must be at least 1.")
  start, num_calls = schedule.window_start, schedule.num_calls
  num_frames = schedule.steps.shape[1]
  window = min(window, num_frames)

  def moves(calls):  # how far the window moves within the segments of `calls` calls
    first = np.arange(0, num_calls, calls)
    last = np.minimum(first + calls, num_calls) - 1
    return int((start[last] - start[first]).max())

  calls = num_calls
  while calls > 1 and moves(calls) > segment_frames:
    calls = max(1, min(calls - 1, calls * segment_frames // max(moves(calls), 1)))
  begins = np.arange(0, num_calls, calls)
  ends = np.minimum(begins + calls, num_calls)
  offsets = start[begins].astype(np.int64)
  buffer = min(window + moves(calls), num_frames)
  # The frames emitted after a segment (before the next one's offset) are finished.
  num_steps = schedule.steps[-1].max()
  for end, nxt in zip(ends[:-1], offsets[1:]):
    assert (schedule.steps[end - 1, :nxt] == num_steps).all(), "a frame left the window unfinished"
  return StreamPlan(begins, ends, offsets, int(buffer))


def segment_rows(schedule: timesteps.ADSchedule, plan: CachePlan | None, begin: int, end: int,
                 offset: int, length: int) -> dict[str, np.ndarray]:
  """What the sampler's scan feeds calls [begin, end), frame indices relative to a buffer of
  `length` frames from `offset`: the steps before and after each call for the buffer's frames
  (frames past the video: finished) [R, length], the window's start, the call's index, the
  buffer's first frame in the video (offset), and for the cached path its query frames, cached
  frames, branch and how far the window moved."""
  num_steps = schedule.steps[-1].max()

  def frames(a):  # [R, F] -> the buffer's columns [R, length]
    a = a[:, offset:offset + length]
    return np.pad(a, ((0, 0), (0, length - a.shape[1])), constant_values=num_steps)

  # The steps before each call: the row before it (the schedule's initial steps before call 0).
  before = schedule.steps[max(begin - 1, 0):end - 1]
  if begin == 0:
    first = schedule.initial
    first = np.zeros_like(schedule.steps[0]) if first is None else first
    before = np.concatenate([first[None], before])
  rows = dict(prev=frames(before), new=frames(schedule.steps[begin:end]),
              window_start=schedule.window_start[begin:end] - offset,
              call=np.arange(begin, end), offset=np.full(end - begin, offset))
  if plan is not None:
    moved = np.diff(schedule.window_start, prepend=schedule.window_start[0])
    rows.update(query_start=plan.query_start[begin:end] - offset,
                query_end=plan.query_end[begin:end] - offset,
                num_cached=plan.num_cached[begin:end], branch=plan.branch[begin:end],
                shift=moved[begin:end])
  return {k: np.asarray(v, np.int32) for k, v in rows.items()}
