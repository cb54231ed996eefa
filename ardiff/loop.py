"""The parts of a training loop that every trainer shares (the diffusion model's in train.py,
the frame autoencoder's in train_autoencoder.py): a metrics buffer that owns the host sync and
the non-finite check, preemption, periodic actions, hyperparameters and the parameter overview,
put together by `Run`. A trainer builds its state and its jitted step, then:

  run = loop.Run(config, workdir, data_iterator)
  state = run.restore_or_create(abstract_state, create_state)
  state, preempted = run.train(state, step_fn, extra_actions=[loop.every(...), ...])
  run.close()
"""

import os
import signal
import time
from typing import Any, Callable, Sequence

from absl import logging
from clu import metric_writers
from clu import parameter_overview
from clu import periodic_actions
import jax
import numpy as np

from ardiff import checkpoint
from ardiff import summaries


class NonFiniteLossError(FloatingPointError):
  pass


class MetricsBuffer:
  """The device metrics of the steps since the last report, and the one place that reads them.

  Steps are dispatched asynchronously; `add` keeps at most max_in_flight of them running ahead
  of the host (so that a SIGTERM is acted on within a step or two, with no data brought back).
  `check` brings the pending metrics to the host and raises NonFiniteLossError if any of
  check_keys is NaN or infinite: call it before anything that must not see a diverged state (a
  checkpoint, samples, an evaluation). `flush` checks, then returns the averages and clears.
  """

  def __init__(self, check_keys: Sequence[str] = ("loss", "grad_norm"), max_in_flight: int = 2,
               last_good: Callable[[], str] = lambda: "none"):
    self.check_keys = tuple(check_keys)
    self.max_in_flight = max_in_flight
    self.last_good = last_good  # describes the last good checkpoint, for the error message
    self._steps: list[int] = []
    self._pending: list[dict] = []  # device arrays, not yet read
    self._host: list[dict] = []  # read and checked

  def add(self, step: int, metrics: dict):
    self._steps.append(step)
    self._pending.append(metrics)
    if len(self._pending) > self.max_in_flight:
      jax.block_until_ready(self._pending[-self.max_in_flight - 1])

  def check(self):
    if not self._pending:
      return
    values = jax.device_get(self._pending)
    first = len(self._host)
    for step, v in zip(self._steps[first:], values):
      bad = {k: float(v[k]) for k in self.check_keys if k in v and not np.all(np.isfinite(v[k]))}
      if bad:
        raise NonFiniteLossError(
            f"Non-finite {bad} at step {step}. Training stopped without saving; the last good"
            f" checkpoint is {self.last_good()}. Lower config.optimizer.learning_rate or"
            " grad_clip, or check the data, then rerun with the same --workdir to resume from it."
        )
    self._host.extend(values)
    self._pending = []

  def flush(self) -> dict:
    """Averages over the steps since the last flush ({} if none); vectors become one scalar per
    entry (summaries.scalars_from_metrics)."""
    self.check()
    if not self._host:
      return {}
    out = summaries.scalars_from_metrics(self._host)
    self._steps, self._host = [], []
    return out


class Preemption:
  """SIGTERM (a preemption notice): the loop stops after the step in flight, at a step that every
  process agrees on, and saves.

  One process: a Python handler sets a flag. Several: jax.distributed.initialize starts JAX's
  preemption service (jax_enable_preemption_service, on by default), whose notifier catches a
  SIGTERM to any one process and tells the others through the coordinator; Orbax's
  reached_preemption(step), asked by every process after every step, then turns True for all of
  them at the same step (one past the largest step any process had reached). A Python handler
  here would replace JAX's notifier, so none is installed (tests/multiprocess_test.py).
  """

  def __init__(self, checkpointer):
    self._manager = checkpointer.manager
    self._signalled = False
    self._previous = None

  def __enter__(self):
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    elif not jax.config.jax_enable_preemption_service:
      logging.warning(
          "jax_enable_preemption_service is off: a SIGTERM ends this process without a"
          " checkpoint, and the others wait for it until the heartbeat timeout. Leave the"
          " option at its default (on) to save and stop on preemption.")
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _handle(self, *_):
    self._signalled = True

  def reached(self, step: int) -> bool:
    """Whether to stop after `step`: asked once per step, by every process (the signal may
    arrive any time; JAX's agreement needs every process to ask at every step)."""
    if jax.process_count() > 1:
      return bool(self._manager.reached_preemption(step))
    return self._signalled


def every(num_steps: int, callback: Callable[..., Any], *, last_step: int,
          metrics: MetricsBuffer | None = None) -> periodic_actions.PeriodicCallback | None:
  """A clu PeriodicCallback running callback(step=, t=, **kwargs) every num_steps steps and at
  last_step; None when num_steps is 0 (off). With metrics, their non-finite check runs first."""
  if not num_steps:
    return None

  def checked(**kwargs):
    if metrics is not None:
      metrics.check()
    return callback(**kwargs)

  checked.__name__ = getattr(callback, "__name__", "callback")
  return periodic_actions.PeriodicCallback(
      every_steps=num_steps, on_steps=[last_step], callback_fn=checked)


def flat_hparams(config) -> dict:
  """The config as TensorBoard hyperparameters: dotted keys, scalar values (others as text)."""
  out = {}

  def visit(prefix, node):
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, dict):
        visit(key + ".", v)
      else:
        out[key] = v if isinstance(v, (bool, int, float, str)) else str(v)

  visit("", config.to_dict())
  return out


def count_parameters(params) -> int:
  return parameter_overview.count_parameters(params)


def describe_parameters(params) -> str:
  """clu's table of the parameter arrays: names, shapes, shardings, and the total count."""
  return parameter_overview.get_parameter_overview(params, include_stats=False)


class ConsoleReport:
  """ardiff's own progress line every log step: step, the main metrics, steps/s, ETA."""

  def __init__(self, num_steps: int, keys: Sequence[str] = ("loss", "grad_norm")):
    self.num_steps, self.keys = num_steps, tuple(keys)
    self._last = None  # (step, time)

  def __call__(self, step: int, scalars: dict):
    now = time.monotonic()
    line = f"step {step}/{self.num_steps}" + "".join(
        f"  {k} {scalars[k]:.4f}" for k in self.keys if k in scalars)
    if self._last is not None and step > self._last[0]:
      rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
      eta = (self.num_steps - step) / max(rate, 1e-9)
      line += f"  {rate:.2f} steps/s  ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
    self._last = (step, now)
    if jax.process_index() == 0:
      print(line, flush=True)


def run(state, step_fn, next_batch, *, start: int, num_steps: int, metrics: MetricsBuffer,
        actions: Sequence[Any], preemption: Preemption, save: Callable[[int, Any], Any]):
  """Steps from `start` to num_steps: state, step_metrics = step_fn(state, batch).

  After each step its metrics go to the buffer, then every action runs in order: clu periodic
  actions, a PeriodicCallback called as action(step, state=state, batch=batch) (None entries
  are skipped; the periodic checkpoint is one of them). On preemption the step is saved with
  save(step, state) after a non-finite check, and the loop stops. Returns (state, preempted).
  """
  actions = [a for a in actions if a is not None]
  for step in range(start, num_steps):
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      batch = next_batch()
      state, step_metrics = step_fn(state, batch)
    step += 1
    metrics.add(step, step_metrics)
    stop = preemption.reached(step)
    for action in actions:
      if isinstance(action, periodic_actions.PeriodicCallback):
        action(step, state=state, batch=batch)
      else:
        action(step)
    if stop:
      metrics.check()
      save(step, state)
      logging.warning("Preempted: saved step %d; exiting.", step)
      return state, True
  return state, False


class Run:
  """A training run in a workdir, set up as every trainer needs it: the summary writer (only
  process 0 writes), the Orbax checkpointer with the data iterator, the metrics buffer, clu's
  progress report, the console line, the periodic log and save, preemption.

  Writes workdir/config.json (the config the run was started with: what loads its weights
  later rebuilds the model from it) and TensorBoard summaries into workdir.
  """

  def __init__(self, config, workdir: str, data_iterator,
               console_keys: Sequence[str] = ("loss", "grad_norm"),
               check_keys: Sequence[str] = ("loss", "grad_norm")):
    self.config, self.workdir, self.data_iterator = config, workdir, data_iterator
    self.lead = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if self.lead:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.lead)
    self.ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
    self.metrics = MetricsBuffer(check_keys, last_good=self.ckpt.describe_latest)
    n = config.num_train_steps
    self.report = periodic_actions.ReportProgress(
        num_train_steps=n, writer=self.writer, every_steps=config.log_every_steps or None,
        every_secs=None if config.log_every_steps else 60.0)
    self.console = ConsoleReport(n, console_keys)
    self.scalars = {}  # the last scalars written

  def restore_or_create(self, abstract_state, create: Callable[[], Any]):
    """The latest checkpoint (with the data iterator's position) restored onto abstract_state,
    else create(): a new state, whose hyperparameters and parameters are then reported."""
    state = self.ckpt.restore(abstract_state, self.data_iterator)
    if state is not None:
      if self.lead:
        print(f"Resumed from step {int(state['step'])} ({self.ckpt.directory}).", flush=True)
      return state
    state = create()
    self.writer.write_hparams(flat_hparams(self.config))
    logging.info("Parameters:\n%s", describe_parameters(state["params"]))
    if self.lead:
      print(f"Training from scratch: {count_parameters(state['params']):,} parameters.",
            flush=True)
    return state

  def log(self, step: int, **_):
    scalars = self.metrics.flush()
    if scalars:
      self.writer.write_scalars(step, scalars)
      self.console(step, scalars)
      self.scalars = scalars

  def save(self, step: int, state, **_):
    self.ckpt.save(step, state, self.data_iterator, force=True)

  def _checked_save(self, **kwargs):
    self.metrics.check()  # never save a diverged state
    self.save(**kwargs)

  def every(self, num_steps: int, callback: Callable[..., Any]):
    """A periodic action of this run (every num_steps and at the last step), after the
    non-finite check; None when num_steps is 0."""
    return every(num_steps, callback, last_step=self.config.num_train_steps, metrics=self.metrics)

  def train(self, state, step_fn, extra_actions: Sequence[Any] = ()):
    """Steps to config.num_train_steps: step_fn(state, host_batch) -> (state, metrics). Logs
    every log_every_steps, runs extra_actions, saves every checkpoint_every_steps, at the end
    and on preemption. Returns (state, preempted)."""
    c = self.config
    # The last step is always saved, whatever checkpoint_every_steps (0: only then).
    save = periodic_actions.PeriodicCallback(
        every_steps=c.checkpoint_every_steps or None, on_steps=[c.num_train_steps],
        callback_fn=self._checked_save)
    actions = [self.report, every(c.log_every_steps, self.log, last_step=c.num_train_steps),
               *extra_actions, save]
    with Preemption(self.ckpt) as preemption:
      state, preempted = run(
          state, step_fn, lambda: next(self.data_iterator), start=int(state["step"]),
          num_steps=c.num_train_steps, metrics=self.metrics, actions=actions,
          preemption=preemption, save=self.save)
    self.log(int(state["step"]))  # the steps since the last report (after a preemption)
    self.ckpt.wait()
    if preempted and self.lead:
      print(f"SIGTERM: saved checkpoint {int(state['step'])} in {self.ckpt.directory}; exiting.",
            flush=True)
    return state, preempted

  def export(self, state, params, what: str):
    """Writes params (of a finished run) to workdir/export for inference."""
    if int(state["step"]) >= self.config.num_train_steps:
      path = checkpoint.export_params(self.workdir, params, self.config)
      if self.lead:
        print(f"Exported {what} to {path}.", flush=True)

  def close(self):
    self.ckpt.wait()
    self.ckpt.close()
    self.writer.flush()
    if hasattr(self.data_iterator, "close"):
      self.data_iterator.close()
    if self.lead:
      print(f"TensorBoard logs: {os.path.abspath(self.workdir)}  (tensorboard --logdir"
            f" {self.workdir})", flush=True)
