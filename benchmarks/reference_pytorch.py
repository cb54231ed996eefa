r"""Speed of the reference's PyTorch code (iva-mzsun/AR-Diffusion) next to ardiff's, in one run.

  pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu
  pip install einops omegaconf timm rotary_embedding_torch accelerate
  python -m benchmarks.reference_pytorch --ref_src=PATH [--threads=2] [--videos=1,4] [--steps=5]
  python -m benchmarks.reference_pytorch --ref_src=PATH --quick  # tiny shapes, about a minute
  python -m benchmarks.reference_pytorch --ref_src=PATH --what=sample --videos=4 \
      --sample_cases=large:50  # one row of the table

PATH is a checkout of the reference repository (its files, e.g. `git archive HEAD | tar -x`).
torch is not a dependency of ardiff and this is not run in CI. Both sides run float32 on the
CPU, on the same --threads cores (the process's CPU affinity, set before either framework starts
its thread pool, and torch.set_num_threads), 16 frames x 32 latent tokens x 4 channels of random
latents (random weights for sampling, each side's initial ones for training; the cost does not
depend on them):
- train step: forward, x0 loss, backward, gradient clipping, AdamW and the EMA update (what each
  side's training runs every step: the reference's diff_train.py with --use_ema and
  --gradient_clip_norm), the mean of --steps steps after one warm-up.
- sample: one call of each side's AD sampler, 50 DDIM steps at the given ar_step, no guidance
  (the reference's inference at guidance 1.0), divided by the videos of the batch.

The reference side is its own code: `src.ardiff.base.BaseModel` as its released stage-2 configs
build it (configs/ucf101/ardiff/diff_ardiff_vtattn_x0pred_nvae_midt.yaml: DiT_crossattn with
share_norm blocks and the video_temporal_causal mask, LatentDiffusion with x0 prediction, the
FoPP timesteps "ar_diff_midsamplet" drawn on the host by timestep_sampler.Incremental_Timesteps,
the unconditional 77 x 768 context embedding), with `skip_vae=True`, its own switch for training
on latents: no first-stage model is built, and the latents go through its preprocessing
(scale_factor, per-token L2 normalisation) as its training does. The train step calls
`BaseModel.forward` (its loss path: preprocess, FoPP draw, LatentDiffusion.p_losses) and steps
`torch.optim.AdamW` over `model.diffusion_model.parameters()` as diff_train.py does; the EMA
repeats the per-parameter update of its EMAModel (src/utils/training_utils.py, not imported: it
needs transformers). Sampling calls its fifo `DDIMSampler.sample` (src/ardiff/modules/
fifoddim.py) the way `BaseModel.sample_log` does, with the context `BaseModel.sample` builds;
what is skipped is `BaseModel.sample`'s identity pre/post-processing of the (absent) first
stage. Its sampler moves its buffers to "cuda": a subclass keeps them on the CPU.

The ardiff side is ardiff as it stands: its own DiT (RoPE, strictly causal, 1 learned context
token; not the "reference" variant) at the same hidden size, depth and heads, the jitted train
step with the state donated (FoPP inside XLA) and `sampling.make_sampler` with the KV cache on
and off. Compile time is reported apart and is not in the timed numbers.

The table gives seconds per train step or per video and the throughput ratio ardiff / reference
(the reference's seconds over ardiff's), with the float32 2048^2 matmul rate of both frameworks
measured in the same run: machines are shared and noisy, compare ratios, not absolute numbers.
Run it on a quiet machine: when other processes use the cores, torch's OpenMP threads wait for
each other at every op and its small ops slow down many times more than XLA's (it warns).
"""

import importlib
import logging
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff import sampling
from ardiff import sharding
from ardiff import train
from ardiff import train_state
from ardiff.models import build_model
from configs import common
from benchmarks import machine
from benchmarks import reference_parity

_REF_SRC = flags.DEFINE_string("ref_src", None, "A checkout of the reference repository.")
_THREADS = flags.DEFINE_integer("threads", 2, "CPU cores (and torch threads) both sides run on.")
_VIDEOS = flags.DEFINE_list("videos", ["1", "4"], "Videos per sampling batch: one table row each.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps (after one warm-up).")
_WHAT = flags.DEFINE_list("what", ["train", "sample"], "train and/or sample.")
_REMAT = flags.DEFINE_string(
    "ardiff_remat_policy", None,
    "Train ardiff's step with model.remat and this policy (e.g. dots_with_no_batch_dims_saveable:"
    " on a CPU, recomputing attention costs less than storing it); default: no remat.")
_SAMPLE_CASES = flags.DEFINE_list(
    "sample_cases", [], "Only these sampling rows, as model:ar_step (e.g. large:50); all if empty.")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny shapes: checks that the script runs (a minute or two).")

# (hidden size, layers, heads) of the two models; "small" is DiT-S's width at 6 layers,
# "large" the paper's width (DiT-XL's) at 2 of its 28 layers.
SIZES = {"small": (384, 6, 6), "large": (1152, 2, 16)}
QUICK_SIZES = {"small": (64, 2, 2), "large": (128, 2, 4)}
TRAIN_CASES = (("small", 8), ("large", 2))  # (model, batch)
SAMPLE_CASES = (("small", 0), ("small", 5), ("small", 50), ("large", 50))  # (model, ar_step)
CHANNELS = 4
CONTEXT_TOKENS, CONTEXT_DIM = 77, 768  # fixed by the reference's BaseModel (its context_emb)
# The reference's training hyperparameters (shell_scripts/stage2_ardiff_scripts/*/train_base_
# script.sh, diff_train.py's defaults); ardiff's side takes the same (they do not change the cost).
LEARNING_RATE, GRAD_CLIP, WEIGHT_DECAY, EMA_DECAY = 1e-4, 0.1, 1e-4, 0.9999
# Pip names of the reference's imports where they differ from the module's.
PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml"}


def shapes():
  """frames, tokens per frame, DDIM steps, model sizes."""
  if _QUICK.value:
    return 4, 32, 10, QUICK_SIZES
  return 16, 32, 50, SIZES


def reference_commit(path: str) -> str:
  """The commit of a git checkout at path (not of a repository that merely contains it)."""
  try:
    top = subprocess.run(["git", "-C", path, "rev-parse", "--show-toplevel"], capture_output=True,
                         text=True, check=True).stdout.strip()
    if os.path.realpath(top) != os.path.realpath(path):
      return "unknown"
    return subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def import_reference(ref_src: str):
  """torch and the reference's modules (base, fifoddim), or an exit that names what is missing."""
  if not os.path.isfile(os.path.join(ref_src, "src", "ardiff", "base.py")):
    sys.exit(f"--ref_src={ref_src} is not a checkout of iva-mzsun/AR-Diffusion"
             " (no src/ardiff/base.py).")
  try:
    torch = importlib.import_module("torch")
    # The torchvision workaround of torch+cpu, and the reference on sys.path.
    reference_parity._import_reference(ref_src)  # pylint: disable=protected-access
    importlib.import_module("accelerate").PartialState()  # its modules log through accelerate
    base = importlib.import_module("src.ardiff.base")
    fifoddim = importlib.import_module("src.ardiff.modules.fifoddim")
    importlib.import_module("src.ardiff.modules.dit_model")  # BaseModel imports it by name later
    omegaconf = importlib.import_module("omegaconf")
    logging.getLogger("src").setLevel(logging.WARNING)  # its "NOTE!!!" lines at every model built
  except ModuleNotFoundError as e:
    name = (e.name or "?").split(".")[0]
    sys.exit(f"The reference's code needs the Python package {name!r}, which is not installed:"
             f" pip install {PIP_NAMES.get(name, name)} (its model, loss and sampler import torch,"
             " torchvision, einops, omegaconf, timm, rotary_embedding_torch, accelerate, tqdm;"
             " torch+cpu from --index-url https://download.pytorch.org/whl/cpu).")
  return torch, base, fifoddim, omegaconf


# ----------------------------------------------------------------------------------------------
# The reference.


class Reference:
  """The reference's modules, and its models at the benchmark's shapes."""

  def __init__(self, torch, base, fifoddim, omegaconf):
    self.torch, self.base, self.omegaconf = torch, base, omegaconf

    class CpuDDIMSampler(fifoddim.DDIMSampler):
      def register_buffer(self, name, attr):  # the reference's moves every tensor to "cuda"
        setattr(self, name, attr)

    self.sampler_cls = CpuDDIMSampler

  def model(self, size, frames: int, tokens: int):
    """BaseModel as the released config builds it, at this size, on latents (skip_vae)."""
    hidden, depth, heads = size
    cfg = self.omegaconf.OmegaConf.create({
        "model_cfg": {"target": "src.ardiff.modules.dit_model.DiT_crossattn", "params": dict(
            num_frames=frames, in_channels=CHANNELS, n_token_per_frame=tokens,
            hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=4, learn_sigma=False,
            merge_mode="share_norm", causal_attn_mode="video_temporal_causal",
            context_token=CONTEXT_TOKENS, context_dim=CONTEXT_DIM)},
        "diffusion_cfg": {"target": "src.ardiff.modules.diffusion.LatentDiffusion", "params": dict(
            parameterization="x0", linear_start=1e-4, linear_end=0.02, timesteps=1000,
            learn_logvar=False, clip_denoised=True)},
    })
    return self.base.BaseModel(
        cfg.model_cfg, cfg.diffusion_cfg, in_channels=3, frame_resolution=256,
        num_frames=frames, n_token_per_frame=tokens, n_channel_per_token=CHANNELS,
        vae_cfg_file=None, vae_pth_path=None, skip_vae=True, scale_factor=0.5,
        noise_level="ar_diff_midsamplet", norm_preprocess=True, condition_mode="uncond")

  def time_train(self, size, batch: int, frames: int, tokens: int, steps: int) -> float:
    """Seconds per step: BaseModel.forward's loss, backward, clipping, AdamW, EMA."""
    torch = self.torch
    torch.manual_seed(0)
    model = self.model(size, frames, tokens).train()
    opt = torch.optim.AdamW(model.diffusion_model.parameters(), lr=LEARNING_RATE,
                            betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY, eps=1e-8)
    params = list(model.parameters())
    shadow = [p.detach().clone() for p in params]
    # [B, T, C, H, W] with H x W = 1 x tokens: its latent layout ('b t c h w -> b t (h w) c').
    data = {"frames": torch.randn(batch, frames, CHANNELS, 1, tokens)}

    def step(n: int):
      loss = model(data)["loss"]
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)  # accelerator.clip_grad_norm_ on 1 process
      opt.step()
      opt.zero_grad()
      # EMAModel.step (foreach=False, its default): decay min(0.9999, (1 + k) / (10 + k)).
      k = max(0, n - 1)
      one_minus_decay = 1.0 - (min(EMA_DECAY, (1 + k) / (10 + k)) if k > 0 else 0.0)
      with torch.no_grad():
        for s, p in zip(shadow, params):
          if p.requires_grad:
            s.sub_(one_minus_decay * (s - p))
          else:
            s.copy_(p)
      return loss

    step(1)  # warm-up
    start = time.perf_counter()
    for n in range(steps):
      step(n + 2)
    return (time.perf_counter() - start) / steps

  def time_sample(self, size, videos: int, frames: int, tokens: int, num_steps: int,
                  ar_step: int) -> tuple[float, int]:
    """Seconds per video of one fifo DDIM sampling call, and the DiT calls it made."""
    torch = self.torch
    torch.manual_seed(0)
    model = self.model(size, frames, tokens).eval()
    with torch.no_grad():  # random weights, as ardiff's side has (not a zero output layer)
      for p in model.diffusion_model.parameters():
        if p.requires_grad:  # not the fixed sin-cos positions
          p.normal_(std=(p.shape[1] if p.dim() > 1 else 50.0) ** -0.5)  # [out, in]: fan_in
    calls = []
    model.diffusion_model.model.register_forward_hook(lambda *_: calls.append(1))
    shape = (videos, frames, tokens, CHANNELS)
    with torch.no_grad():
      start = time.perf_counter()
      # BaseModel.sample (unconditional) and sample_log, less the first stage.
      context = model.context_emb[None].repeat(videos, 1, 1)
      sampler = self.sampler_cls(model.diffusion_model)
      x_t = torch.randn(shape)
      sampler.sample(num_steps, videos, frames, shape, {"c_crossattn": [context]}, x_T=x_t,
                     ardiff_step=ar_step, verbose=False, eta=0.0)
      seconds = time.perf_counter() - start
    return seconds / videos, len(calls)

  def matmul_flops_per_sec(self, n: int = 2048, reps: int = 10) -> float:
    """As machine.matmul_flops_per_sec, in torch."""
    a = self.torch.ones((n, n), dtype=self.torch.float32)
    a @ a  # pylint: disable=pointless-statement
    start = time.perf_counter()
    for _ in range(reps):
      a @ a  # pylint: disable=pointless-statement
    return 2 * n**3 * reps / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------
# ardiff.


def ardiff_config(size, frames: int, tokens: int, batch: int, num_steps: int):
  """The paper's stage-2 config at this size: ardiff's own DiT, 1 context token, float32."""
  c = common.get_paper_config("synthetic", learning_rate=LEARNING_RATE, grad_clip=GRAD_CLIP)
  c.num_frames = frames  # the model's window follows
  c.global_batch_size = batch
  m = c.model
  m.tokens_per_frame, m.in_channels = tokens, CHANNELS
  m.hidden_size, m.depth, m.num_heads = size
  m.dtype = "float32"
  if _REMAT.value:
    m.remat, m.remat_policy = True, _REMAT.value
  c.optimizer.weight_decay = WEIGHT_DECAY
  c.optimizer.ema_decay = EMA_DECAY
  c.sampling.num_steps = num_steps
  return c


def ardiff_train(config, steps: int) -> tuple[float, float]:
  """Compile seconds and seconds per step of the jitted train step (as benchmarks/train_step)."""
  mesh = sharding.make_mesh(config.mesh)
  model, tx = build_model(config), train_state.make_optimizer(config)
  state = train_state.create_train_state(config, mesh, jax.random.key(0))
  m, b = config.model, config.global_batch_size
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((b, config.num_frames, m.tokens_per_frame, m.in_channels))
  batch = {"latents": jnp.asarray(latents, jnp.float32), "label": jnp.zeros((b,), jnp.int32)}
  step = train.jit_train_step(config, mesh, model, tx,
                              train.batch_shardings(config, mesh, latents=True))
  start = time.perf_counter()
  with sharding.mesh_context(config, mesh):
    compiled = step.lower(state, batch, jax.random.key(1)).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batch, jax.random.key(1))  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics)
  return compile_s, (time.perf_counter() - start) / steps


def random_params(model, config):
  """Weights ~ N(0, 1/fan_in), as benchmarks/sampling (whose flags clash with this module's)."""
  m = config.model
  x = jnp.zeros((1, m.num_frames, m.tokens_per_frame, m.in_channels))
  t = jnp.zeros((1, m.num_frames), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), x, t)
  leaves, tree = jax.tree.flatten(nn.unbox(abstract)["params"])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return {"params": tree.unflatten(
      [jax.random.normal(k, a.shape, a.dtype) / np.sqrt(a.shape[0] if a.ndim > 1 else 50.0)
       for k, a in zip(keys, leaves)])}


def ardiff_sample(config, videos: int, kv_cache: bool) -> tuple[float, float, int]:
  """Compile seconds, seconds per video and model calls of one sampling call."""
  model = build_model(config)
  params = random_params(model, config)
  sampler = sampling.make_sampler(model, config, kv_cache=kv_cache)
  keys = jax.random.split(jax.random.key(0), videos)
  start = time.perf_counter()
  compiled = jax.jit(sampler.fn).lower(params, keys, None, None).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(compiled(params, keys, None, None))
  return compile_s, (time.perf_counter() - start) / videos, sampler.num_model_calls_for(False)


# ----------------------------------------------------------------------------------------------


def restrict_cores(threads: int) -> int:
  """Runs this process (both frameworks' thread pools, started later) on `threads` cores."""
  cores = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cores)
  return len(cores)


def row(what, calls, ref_s, ardiff_s, compile_s):
  print(f"| {what} | {calls} | {ref_s:.3f} | {ardiff_s:.3f} | {compile_s:.1f} |"
        f" {ref_s / ardiff_s:.2f} |", flush=True)


def main(argv):
  del argv
  if not _REF_SRC.value:
    sys.exit("--ref_src=PATH (a checkout of iva-mzsun/AR-Diffusion) is required.")
  # Before anything starts a thread pool: jax's backend and torch's pool start on first use.
  threads = restrict_cores(_THREADS.value)
  load = os.getloadavg()[0]  # of the other processes: this one has not computed anything yet
  if load > 0.5:
    # torch's OpenMP threads wait for each other at every op: on busy cores its small ops get
    # many times slower (100x seen at --quick), XLA's far less. The ratios are then meaningless.
    print(f"WARNING: load average {load:.1f} before starting: other processes are using the"
          " cores; run this on a quiet machine.", flush=True)
  ref = Reference(*import_reference(_REF_SRC.value))
  ref.torch.set_num_threads(threads)
  frames, tokens, num_steps, sizes = shapes()
  print(f"reference: iva-mzsun/AR-Diffusion {reference_commit(_REF_SRC.value)}, torch"
        f" {ref.torch.__version__}; ardiff: jax {jax.__version__} ({jax.default_backend()});"
        f" float32, {threads} threads{' (--quick: tiny shapes)' if _QUICK.value else ''}")
  print(f"matmul 2048^2 float32: torch {ref.matmul_flops_per_sec() / 1e9:.1f} GFLOP/s, jax"
        f" {machine.matmul_flops_per_sec() / 1e9:.1f} GFLOP/s")
  print(f"{frames} frames x {tokens} latent tokens x {CHANNELS} channels, x0, FoPP, AdamW"
        f" (+ clipping, EMA); DDIM {num_steps} steps, no guidance. Conditioning: the reference's"
        f" {CONTEXT_TOKENS} context tokens of width {CONTEXT_DIM}, ardiff's own DiT with 1 learned"
        " context token. Seconds per train step / per video; compile s is ardiff's, not timed.")
  print("| what | model calls (reference / ardiff) | reference s | ardiff s | ardiff compile s |"
        " ardiff / reference throughput |")
  print("|---|---|---|---|---|---|")
  if "train" in _WHAT.value:
    for name, batch in TRAIN_CASES:
      size = sizes[name]
      if _QUICK.value:
        batch = 2
      ref_s = ref.time_train(size, batch, frames, tokens, _STEPS.value)
      config = ardiff_config(size, frames, tokens, batch, num_steps)
      compile_s, ardiff_s = ardiff_train(config, _STEPS.value)
      remat = f", ardiff remat {_REMAT.value}" if _REMAT.value else ""
      row(f"train step, hidden {size[0]}, {size[1]} layers, {size[2]} heads, batch {batch}{remat}",
          "-",
          ref_s, ardiff_s, compile_s)
  if "sample" in _WHAT.value:
    for videos in (int(v) for v in _VIDEOS.value):
      for name, ar_step in SAMPLE_CASES:
        if _SAMPLE_CASES.value and f"{name}:{ar_step}" not in _SAMPLE_CASES.value:
          continue
        size, ar_step = sizes[name], min(ar_step, num_steps)  # --quick: 50 = frame by frame
        ref_s, ref_calls = ref.time_sample(size, videos, frames, tokens, num_steps, ar_step)
        config = ardiff_config(size, frames, tokens, 1, num_steps)
        config.sampling.ar_step = ar_step
        for cache in (True, False):
          compile_s, ardiff_s, calls = ardiff_sample(config, videos, cache)
          row(f"sample, {videos} video{'s' if videos > 1 else ''} per batch, hidden {size[0]},"
              f" {size[1]} layers, ar_step {ar_step}, KV cache {'on' if cache else 'off'}",
              f"{ref_calls} / {calls}", ref_s, ardiff_s, compile_s)
  print(f"matmul measured again: torch {ref.matmul_flops_per_sec() / 1e9:.1f} GFLOP/s, jax"
        f" {machine.matmul_flops_per_sec() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
  app.run(main)
