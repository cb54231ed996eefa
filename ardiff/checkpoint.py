"""Orbax checkpoints (train state, EMA and the data iterator together), the EMA export, and
loading the parameters that inference uses from either.

Layout under the workdir:
  checkpoints/<step>/{state,data}   asynchronous, every checkpoint_every_steps, last k kept
  export/params                     EMA parameters alone, for inference
  export/config.json                the config they were trained with
"""

import json
import os

from absl import logging
from etils import epath
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp

from ardiff import sharding
from ardiff import train_state
from ardiff.data import patches


class Checkpointer:
  """Saves and restores {"state": train state, "data": grain iterator} by step."""

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._last_saved = None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def describe_latest(self) -> str:
    step = self.latest_step()
    return f"step {step} in {self.directory}" if step is not None else "none (no checkpoint yet)"

  def save(self, step: int, state, data_iterator=None, *, force: bool = False) -> bool:
    """Starts saving; device arrays are copied to the host before this returns, so the
    state may be donated to the next step right away. A step already saved is not saved again
    (the periodic save and a preemption may fall on the same step)."""
    if step == self._last_saved:
      return False
    self._last_saved = step
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores onto abstract_state's shardings (any mesh), and data_iterator to its saved
    position (saved by any number of processes). None if there is no checkpoint."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
      if data_iterator is not None:
        _restore_data_iterator(self._step_path(step) / "data", data_iterator)
    except Exception as e:  # pylint: disable=broad-except  (any failure: report where and why)
      raise RuntimeError(
          f"Checkpoint {step} in {self.directory} cannot be restored onto this config"
          f" ({type(e).__name__}: {e}). Steps present: {list(self.manager.all_steps())}. If the"
          " config changed (model size, optimizer), use a new --workdir; if this step is"
          " damaged, move its directory aside to resume from the previous one."
      ) from e
    logging.info("Restored checkpoint %d from %s.", step, self.directory)
    return restored["state"]

  def _step_path(self, step: int) -> epath.Path:
    # The manager names its step directories in the standard format (we never change it).
    return ocp.step.standard_name_format().find_step(epath.Path(self.directory), step).path

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _restore_data_iterator(directory: epath.Path, data_iterator):
  """Sets data_iterator to the position saved in directory, also when another number of
  processes saved it (a run of 2 hosts resumed on 1, or the other way round).

  grain's own restore reads only the file of this process index and count
  (process_<i>-of-<n>.json). ardiff's iterators (pipeline.create_train_iterator) stand in every
  process at the same position of one global stream of batches, whatever the process count:
  so when all saved states are equal, that state fits any number of processes.
  """
  index, count = jax.process_index(), jax.process_count()
  own = directory / f"process_{index}-of-{count}.json"
  if own.exists():
    state = own.read_text()
  else:
    saved = sorted(directory.glob("process_*-of-*.json"))
    if not saved:
      raise FileNotFoundError(f"No data iterator state (process_*-of-*.json) in {directory}.")
    states = {p.read_text() for p in saved}
    if len(states) > 1:
      raise ValueError(
          f"The data iterator states in {directory} differ between the {len(saved)} processes"
          " that wrote them, so they cannot be spread over"
          f" {count} process{'es' if count > 1 else ''}: resume with {len(saved)} processes.")
    state = states.pop()
  if isinstance(data_iterator, grain.DatasetIterator):
    data_iterator.set_state(json.loads(state))
  else:  # a grain.DataLoader iterator: bytes
    data_iterator.set_state(state.encode())
  if hasattr(data_iterator, "start_prefetch"):
    data_iterator.start_prefetch()  # as grain's own restore does


def export_params(workdir: str, params, config) -> str:
  """Writes the EMA parameters alone (plus the config) to workdir/export for inference."""
  path = epath.Path(os.path.abspath(workdir)) / "export"
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path / "params", params, force=True)
  checkpointer.wait_until_finished()
  if jax.process_index() == 0:
    (path / "config.json").write_text(config.to_json_best_effort(indent=2))
  return os.fspath(path)


def load_export(workdir: str, abstract_params=None):
  """The exported parameters (onto abstract_params' shardings if given) and the config dict."""
  path = epath.Path(os.path.abspath(workdir)) / "export"
  if not (path / "params").exists():
    raise FileNotFoundError(f"No exported model in {path}: train first (the export is written at the end).")
  params = ocp.StandardCheckpointer().restore(path / "params", abstract_params)
  return params, json.loads((path / "config.json").read_text())


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in workdir was started with (workdir/config.json, else the export's)."""
  for path in (os.path.join(workdir, "config.json"), os.path.join(workdir, "export", "config.json")):
    if os.path.exists(path):
      with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
  raise FileNotFoundError(
      f"{workdir} holds no run (no config.json): train there first with --mode=train.")


def load_params(workdir: str, abstract_state, key: str, export_key: str | None = None):
  """The parameters state[key] of the latest checkpoint in workdir, else those of its export
  (which holds the train state's export_key, default key), restored onto abstract_state's
  shardings whatever topology wrote them. Returns (params, step or None for the export)."""
  ckpt = Checkpointer(workdir)
  try:
    step = ckpt.latest_step()
    if step is not None:
      return ckpt.restore(abstract_state)[key], int(step)
  finally:
    ckpt.close()
  if not os.path.exists(os.path.join(workdir, "export", "params")):
    raise FileNotFoundError(
        f"No checkpoint in {os.path.join(workdir, 'checkpoints')} and no export in"
        f" {os.path.join(workdir, 'export')}: train first with --mode=train and the same"
        " --workdir.")
  params, _ = load_export(workdir, abstract_state[export_key or key])
  return params, None


# Fields that give trained weights their meaning without changing their shapes: sampled or
# evaluated with another value, the weights load and silently read the frames wrongly (a 4-frame
# window over a model trained on 6, white frames fed to a model trained on coloured ones). The
# data fields only where the model's tokens are pixels (stage 2's are the autoencoder's).
RUN_DEFINING_FIELDS = (
    "num_frames", "model.rope_axes", "model.rope_theta", "model.context_attends_video",
    "diffusion.num_timesteps", "diffusion.beta_schedule", "diffusion.parameterization",
)
PIXEL_RUN_DEFINING_FIELDS = ("data.resolution", "data.patch_size", "data.grayscale")


def _field(config, name: str):
  for key in name.split("."):
    if key not in config:
      return None  # (an older run's config.json may lack a field)
    config = config[key]
  return config


def check_same_run(config, workdir: str) -> None:
  """Raises if config differs from the run in workdir (its config.json) in a field of
  RUN_DEFINING_FIELDS (pixel models: PIXEL_RUN_DEFINING_FIELDS too), naming the flags that
  would match it; a workdir without a config.json is not checked."""
  try:
    trained = run_config(workdir)
  except FileNotFoundError:
    return
  fields = RUN_DEFINING_FIELDS
  if patches.tokens_are_pixels(config):
    fields += PIXEL_RUN_DEFINING_FIELDS
  values = [(n, _field(config, n), _field(trained, n)) for n in fields]
  differ = [(n, mine, theirs) for n, mine, theirs in values
            if None not in (mine, theirs) and mine != theirs]
  if differ:
    raise ValueError(
        f"The config differs from the run in {workdir} in what its weights mean: "
        + "; ".join(f"{n}={mine!r} where the run trained with {theirs!r}"
                    for n, mine, theirs in differ)
        + ". Pass the run's values, e.g. "
        + " ".join(f"--config.{n}={theirs}" for n, _, theirs in differ) + ".")


def load_inference_params(config, workdir: str, mesh=None, *, same_run: bool = True):
  """EMA parameters (or the raw ones if config.sampling.use_ema is False) of the diffusion
  model's latest checkpoint in workdir, else of workdir/export (the EMA ones), on this run's
  mesh. Returns (params, step or None). same_run: first check_same_run (off where the weights
  start another run: config.init_from)."""
  if same_run:
    check_same_run(config, workdir)
  mesh = mesh or sharding.make_mesh(config.mesh)
  key = "ema_params" if config.sampling.use_ema else "params"
  params, step = load_params(workdir, train_state.abstract_state(config, mesh), key, "ema_params")
  if step is None and not config.sampling.use_ema:
    logging.warning("sampling.use_ema=False, but the export holds only the EMA parameters.")
  return params, step
