r"""Parity with the reference implementation: its own models, run in torch, against ardiff's
conversion of their weights (not run in CI; needs a local checkout of the reference and torch).

  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy einops \
      omegaconf safetensors timm rotary_embedding_torch accelerate tqdm
  git -C <the reference's git dir> archive HEAD | tar -x -C /tmp/refsrc
  python benchmarks/reference_parity.py --ref_src=/tmp/refsrc \
      --torch_python=/tmp/torchenv/bin/python [--paper] [--write_fixture=tests/data]

Three phases, in two Python environments: ardiff's draws the initial noise of the sampling run
(sampling.initial_noise); the torch environment (a subprocess) builds the reference's models with
random weights, saves their state dicts as safetensors in the reference's layout and runs them;
ardiff's converts those files (ardiff.convert) and compares. Cases:
- dit_uncond, dit_class: DiT_crossattn (share_norm, video_temporal_causal) inside the reference's
  LatentDiffusion, tiny (3 frames x 4 tokens, hidden 32, depth 2, 5 x 24 context tokens):
  the forward pass on given x / t / context, and a DDIM run of its sampler (fifoddim.DDIMSampler,
  10 steps, ar_step 2; guidance 2 with the class model) against ardiff's sampler with
  config.sampling.timestep_grid = "reference" and finished_timestep = 1.
- autoencoder: TiTok_KL at the smallest size its code builds ("small" ViTs: width 512, 8 layers,
  8 heads; the hard-coded MaskGIT pixel decoder) on 32x32 frames, 8 latent tokens: the encoder's
  moments and the decoding of its posterior means.
- --paper: the DiT (1152 x 28, 16 x 32 tokens, 77 x 768 context) and TiTok_KL "large" on 256x256
  frames at the paper's shape, forward passes only.
Weights are drawn from numpy by a rule written down with the keys (`spec`: key, shape, offset,
scale), so tests/convert_test.py regenerates the autoencoder's 83M weights instead of keeping them.

--write_fixture copies what tests/convert_test.py reads: the tiny DiTs' model.safetensors, the
autoencoder's weight spec and every case's inputs and outputs (npz).

Two things of the environment, not of the reference: torchvision's PyPI wheels link CUDA torch,
so with torch+cpu its kernel library does not load and its import fails registering two ops;
timm (which the reference's DiT imports) needs torchvision's Python modules only, so their schemas
are declared first. The reference's DDIMSampler moves its buffers to "cuda"; a subclass keeps
them where they are. Its temporal autoencoder (titok_kl_wt / blocks_kl_wt) asks for the CUDA
device's properties when imported: not runnable here.
"""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

SEED = 0
TINY_DIT = dict(num_frames=3, n_token_per_frame=4, in_channels=4, hidden_size=32, depth=2,
                num_heads=4, mlp_ratio=4.0, context_token=5, context_dim=24)
PAPER_DIT = dict(num_frames=16, n_token_per_frame=32, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, context_token=77, context_dim=768)
NUM_CLASSES = 3  # the class-conditional tiny DiT
SAMPLING = dict(num_steps=10, ar_step=2, guidance_scale=2.0)
SMALL_AE = dict(model_size="small", image_size=32, num_latent_tokens=8, token_size=4, width=512,
                depth=8, num_heads=8)
PAPER_AE = dict(model_size="large", image_size=256, num_latent_tokens=32, token_size=4,
                width=1024, depth=24, num_heads=16)
BATCH = 2


def weight_spec(shapes: dict) -> list:
  """[key, shape, offset, scale] per reference tensor: weights ~ N(0, 1 / fan_in), norm scales
  1 + N(0, 0.1), biases N(0, 0.02), embeddings N(0, 0.5) (the context N(0, 0.1), as the
  reference draws it); pos_embed keeps the model's fixed sin-cos table."""
  spec = []
  for key, shape in shapes.items():
    name = key.rsplit(".", 1)[-1]
    parent = key.rsplit(".", 2)[-2] if key.count(".") >= 1 else ""
    if key.endswith("pos_embed"):
      continue
    if name == "weight" and (parent.startswith(("ln", "norm")) or len(shape) == 1):
      offset, scale = 1.0, 0.1
    elif key.endswith(("context_emb", "class_emb")):
      offset, scale = 0.0, 0.1
    elif len(shape) == 1:
      offset, scale = 0.0, 0.02
    elif name in ("weight", "in_proj_weight"):
      offset, scale = 0.0, float(np.prod(shape[1:])) ** -0.5
    else:  # class / positional embeddings, latent and mask tokens
      offset, scale = 0.0, 0.5
    spec.append([key, list(shape), offset, scale])
  return spec


def random_weights(spec: list, seed: int = SEED) -> dict:
  """The weights of a spec (weight_spec), float32 numpy, drawn in the spec's order."""
  rng = np.random.default_rng(seed)
  return {k: (offset + scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
          for k, shape, offset, scale in spec}


def reference_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """ardiff's labels (null = num_classes) -> the reference's class_emb rows (null = row 0)."""
  return np.where(labels == num_classes, 0, labels)


# ----------------------------------------------------------------------------------------------
# The torch phase (the reference's code).


def _import_reference(ref_src: str):
  import torch  # pylint: disable=g-import-not-at-top
  try:
    importlib.import_module("torchvision")
  except RuntimeError:  # module docstring: declare the two ops, import its Python modules
    for name in list(sys.modules):
      if name.startswith("torchvision"):
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")  # pylint: disable=unused-variable
    for op in ("nms", "qnms"):
      lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _import_reference.keep = lib
    importlib.import_module("torchvision")
  sys.path.insert(0, ref_src)


def _torch_dit_case(case: str, sizes: dict, inputs: dict, out_dir: str, sample: bool):
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  from src.ardiff.modules.diffusion import LatentDiffusion  # pylint: disable=g-import-not-at-top
  from src.ardiff.modules.dit_model import DiT_crossattn  # pylint: disable=g-import-not-at-top
  from src.ardiff.modules.fifoddim import DDIMSampler  # pylint: disable=g-import-not-at-top

  class CpuDDIMSampler(DDIMSampler):
    def register_buffer(self, name, attr):  # the reference's moves every tensor to "cuda"
      setattr(self, name, attr)

  dit = DiT_crossattn(learn_sigma=False, merge_mode="share_norm",
                      causal_attn_mode="video_temporal_causal", **sizes)
  wrapper = LatentDiffusion(dit, timesteps=1000, beta_schedule="linear", linear_start=1e-4,
                            linear_end=2e-2, parameterization="x0").eval()
  num_classes = NUM_CLASSES if case == "dit_class" else 0
  nc, dc = sizes["context_token"], sizes["context_dim"]
  context_key = "class_emb" if num_classes else "context_emb"
  shapes = {f"diffusion_model.model.{k}": tuple(v.shape) for k, v in dit.state_dict().items()}
  shapes[context_key] = (num_classes + 1, nc, dc) if num_classes else (nc, dc)
  weights = random_weights(weight_spec(shapes), SEED + (1 if num_classes else 0))
  dit.load_state_dict({k[len("diffusion_model.model."):]: torch.from_numpy(v)
                       for k, v in weights.items() if k != context_key}, strict=False)
  state = {f"diffusion_model.{k}": v.detach().contiguous()
           for k, v in wrapper.state_dict().items()}
  state[context_key] = torch.from_numpy(weights[context_key])
  save_file(state, os.path.join(out_dir, f"{case}.safetensors"))

  emb = state[context_key]
  def context(labels):  # the reference's conditioning: class_emb rows, or the learned context
    if num_classes:
      return emb[torch.from_numpy(reference_labels(labels, num_classes))]
    return emb[None].repeat(len(labels), 1, 1)

  x = torch.from_numpy(inputs[f"{case}/x"])
  t = torch.from_numpy(inputs[f"{case}/t"]).long()
  labels = inputs[f"{case}/labels"]
  results = {}
  start = time.time()
  with torch.no_grad():
    results[f"{case}/out"] = dit(x, t, context(labels)).numpy()
    results[f"{case}/forward_seconds"] = np.float64(time.time() - start)
    if sample:
      sampler = CpuDDIMSampler(wrapper)
      x_t = torch.from_numpy(inputs[f"{case}/x_T"])
      cond = {"c_crossattn": [context(inputs[f"{case}/sample_labels"])]}
      guided = dict(unconditional_guidance_scale=1.0)
      if num_classes:
        null = np.full(len(x_t), num_classes)
        guided = dict(unconditional_guidance_scale=SAMPLING["guidance_scale"],
                      unconditional_conditioning={"c_crossattn": [context(null)]})
      samples, _ = sampler.sample(SAMPLING["num_steps"], len(x_t), sizes["num_frames"],
                                  tuple(x_t.shape), cond, eta=0.0, x_T=x_t.clone(),
                                  ardiff_step=SAMPLING["ar_step"], verbose=False, **guided)
      results[f"{case}/samples"] = samples.numpy()
  return results


def _torch_autoencoder_case(case: str, sizes: dict, inputs: dict, out_dir: str):
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  from src.vae.titok_kl import TiTok_KL  # pylint: disable=g-import-not-at-top

  model = TiTok_KL(image_size=sizes["image_size"], token_size=sizes["token_size"],
                   vit_enc_model_size=sizes["model_size"], vit_dec_model_size=sizes["model_size"],
                   num_latent_tokens=sizes["num_latent_tokens"], use_checkpoint=False).eval()
  spec = weight_spec({k: tuple(v.shape) for k, v in model.state_dict().items()})
  weights = random_weights(spec)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  save_file({k: torch.from_numpy(v) for k, v in weights.items()},
            os.path.join(out_dir, f"{case}.safetensors"))
  pixels = torch.from_numpy(inputs[f"{case}/pixels"])  # [B, T, 3, H, W] in [0, 1]
  b, f = pixels.shape[:2]
  start = time.time()
  with torch.no_grad():
    moments = model.encoder(pixel_values=pixels.flatten(0, 1), latent_tokens=model.latent_tokens)
    z = model.encode(pixels)  # the posterior mode: [B, T, C, 1, N]
    decoded = model.decode(z)  # [B, T, 3, H, W]
  return {f"{case}/spec": np.asarray(json.dumps(spec)),
          f"{case}/moments": moments.reshape(b, f, *moments.shape[1:]).numpy(),
          f"{case}/decoded": decoded.numpy(),
          f"{case}/forward_seconds": np.float64(time.time() - start)}


def reference_phase(args):
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(SEED)
  _import_reference(args.ref_src)
  from accelerate import PartialState  # pylint: disable=g-import-not-at-top
  PartialState()  # the reference's modules log through accelerate, as its scripts set up
  inputs = dict(np.load(os.path.join(args.tmp, "inputs.npz")))
  results = {}
  results.update(_torch_dit_case("dit_uncond", TINY_DIT, inputs, args.tmp, sample=True))
  results.update(_torch_dit_case("dit_class", TINY_DIT, inputs, args.tmp, sample=True))
  results.update(_torch_autoencoder_case("autoencoder", SMALL_AE, inputs, args.tmp))
  if args.paper:
    results.update(_torch_dit_case("dit_paper", PAPER_DIT, inputs, args.tmp, sample=False))
    results.update(_torch_autoencoder_case("autoencoder_paper", PAPER_AE, inputs, args.tmp))
  results["reference_torch"] = np.asarray(torch.__version__)
  np.savez(os.path.join(args.tmp, "reference.npz"), **results)


# ----------------------------------------------------------------------------------------------
# The JAX phases (ardiff).


def dit_config(sizes: dict, num_classes: int):
  """ardiff's config of the reference variant at the sizes of a reference DiT_crossattn."""
  from ardiff import default_config  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  c = common.reference_variant(default_config.get_default_config())
  c.num_frames = sizes["num_frames"]
  m = c.model
  m.tokens_per_frame, m.in_channels = sizes["n_token_per_frame"], sizes["in_channels"]
  m.hidden_size, m.depth, m.num_heads = sizes["hidden_size"], sizes["depth"], sizes["num_heads"]
  m.mlp_ratio, m.num_classes = sizes["mlp_ratio"], num_classes
  m.reference_context_tokens, m.reference_context_dim = sizes["context_token"], sizes["context_dim"]
  c.sampling.num_steps, c.sampling.ar_step = SAMPLING["num_steps"], SAMPLING["ar_step"]
  c.sampling.guidance_scale = SAMPLING["guidance_scale"] if num_classes else 1.0
  c.sampling.clip_denoised = False
  return c


def autoencoder_config(sizes: dict):
  """ardiff's config of a FrameAutoencoder at the sizes of a reference TiTok_KL."""
  from ardiff import default_config  # pylint: disable=g-import-not-at-top
  c = default_config.get_default_config()
  c.trainer, c.num_frames = "autoencoder", 1
  c.data.resolution = sizes["image_size"]  # autoencoder.image_size follows
  ae = c.autoencoder
  ae.width, ae.num_heads = sizes["width"], sizes["num_heads"]
  ae.encoder_depth = ae.decoder_depth = sizes["depth"]
  ae.num_latent_tokens, ae.token_channels = sizes["num_latent_tokens"], sizes["token_size"]
  return c


def make_inputs(path: str, paper: bool):
  """Model inputs of every case, and the initial noise of the sampling runs as ardiff draws it."""
  import jax  # pylint: disable=g-import-not-at-top
  from ardiff import sampling  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(SEED + 10)
  inputs = {}
  cases = [("dit_uncond", TINY_DIT, 0), ("dit_class", TINY_DIT, NUM_CLASSES)]
  cases += [("dit_paper", PAPER_DIT, 0)] if paper else []
  for case, sizes, num_classes in cases:
    f, l, ch = sizes["num_frames"], sizes["n_token_per_frame"], sizes["in_channels"]
    inputs[f"{case}/x"] = rng.standard_normal((BATCH, f, l, ch), dtype=np.float32)
    inputs[f"{case}/t"] = np.sort(rng.integers(0, 1000, (BATCH, f)), axis=1).astype(np.int32)
    inputs[f"{case}/labels"] = (np.array([2, num_classes], np.int32) if num_classes
                                else np.zeros(BATCH, np.int32))
    inputs[f"{case}/sample_labels"] = np.array([1, 2], np.int32)
    keys = jax.random.split(jax.random.key(SEED), BATCH)
    inputs[f"{case}/x_T"] = np.asarray(sampling.initial_noise(keys, (f, l, ch)))
  for case, sizes in [("autoencoder", SMALL_AE)] + ([("autoencoder_paper", PAPER_AE)] if paper else []):
    r = sizes["image_size"]
    frames = 1 if case.endswith("paper") else 2
    pixels = np.random.default_rng(SEED + 20)  # the same frames with and without --paper
    inputs[f"{case}/pixels"] = pixels.uniform(0, 1, (1, frames, 3, r, r)).astype(np.float32)
  np.savez(path, **inputs)


def _errors(got, want) -> dict:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  err = np.abs(got - want).max()
  return {"max_abs": float(err), "relative": float(err / max(np.abs(want).max(), 1e-30)),
          "scale": float(np.abs(want).max())}


def compare(tmp: str, paper: bool) -> dict:
  """ardiff's outputs on the converted weights against the reference's: errors per output."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ardiff import convert  # pylint: disable=g-import-not-at-top
  from ardiff import sampling  # pylint: disable=g-import-not-at-top
  from ardiff.models import autoencoder as autoencoder_lib  # pylint: disable=g-import-not-at-top
  from ardiff.models import build_model  # pylint: disable=g-import-not-at-top
  inputs = dict(np.load(os.path.join(tmp, "inputs.npz")))
  ref = dict(np.load(os.path.join(tmp, "reference.npz")))
  report = {"torch": str(ref["reference_torch"])}
  cases = [("dit_uncond", TINY_DIT, 0), ("dit_class", TINY_DIT, NUM_CLASSES)]
  cases += [("dit_paper", PAPER_DIT, 0)] if paper else []
  for case, sizes, num_classes in cases:
    config = dit_config(sizes, num_classes)
    model = build_model(config)
    params = convert.convert_checkpoint(os.path.join(tmp, f"{case}.safetensors"), config, "dit")
    variables = {"params": params}
    labels = jnp.asarray(inputs[f"{case}/labels"]) if num_classes else None
    start = time.time()
    out = jax.jit(model.apply)(variables, inputs[f"{case}/x"], inputs[f"{case}/t"], labels)
    out = np.asarray(out)
    report[f"{case}/forward"] = dict(_errors(out, ref[f"{case}/out"]),
                                     ardiff_seconds=time.time() - start,
                                     reference_seconds=float(ref[f"{case}/forward_seconds"]))
    if f"{case}/samples" in ref:
      labels = jnp.asarray(inputs[f"{case}/sample_labels"]) if num_classes else None
      samples = sampling.sample(model, variables, config, jax.random.key(SEED), num_videos=BATCH,
                                labels=labels)
      report[f"{case}/ddim_sampling"] = _errors(samples, ref[f"{case}/samples"])
  for case, sizes in [("autoencoder", SMALL_AE)] + ([("autoencoder_paper", PAPER_AE)] if paper else []):
    config = autoencoder_config(sizes)
    model = autoencoder_lib.build_autoencoder(config.autoencoder)
    params = convert.convert_checkpoint(os.path.join(tmp, f"{case}.safetensors"), config,
                                        "autoencoder")
    pixels = inputs[f"{case}/pixels"].transpose(0, 1, 3, 4, 2)  # NCHW -> NHWC
    start = time.time()
    mean, logvar = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, pixels)
    decoded = jax.jit(lambda p, z: model.apply({"params": p}, z, method="decode"))(params, mean)
    seconds = time.time() - start
    moments = ref[f"{case}/moments"]  # [B, T, 2C, 1, N]
    c = moments.shape[2] // 2
    want_mean = moments[:, :, :c, 0].transpose(0, 1, 3, 2)
    want_logvar = np.clip(moments[:, :, c:, 0].transpose(0, 1, 3, 2), -30.0, 20.0)
    report[f"{case}/encode_mean"] = _errors(mean, want_mean)
    report[f"{case}/encode_logvar"] = _errors(logvar, want_logvar)
    report[f"{case}/decode"] = dict(
        _errors(np.asarray(decoded).transpose(0, 1, 4, 2, 3), ref[f"{case}/decoded"]),
        ardiff_seconds=seconds, reference_seconds=float(ref[f"{case}/forward_seconds"]))
  return report


def write_fixture(tmp: str, directory: str):
  """What tests/convert_test.py reads: the tiny DiTs' safetensors, the autoencoder's weight spec,
  inputs and outputs of the small cases."""
  os.makedirs(directory, exist_ok=True)
  inputs = dict(np.load(os.path.join(tmp, "inputs.npz")))
  ref = dict(np.load(os.path.join(tmp, "reference.npz")))
  keep = lambda k: k.split("/")[0] in ("dit_uncond", "dit_class", "autoencoder") and (
      not k.endswith("_seconds"))
  arrays = {k: v for k, v in {**inputs, **ref}.items() if keep(k)}
  arrays["reference_torch"] = ref["reference_torch"]
  np.savez_compressed(os.path.join(directory, "reference_parity.npz"), **arrays)
  for case in ("dit_uncond", "dit_class"):
    shutil.copy(os.path.join(tmp, f"{case}.safetensors"),
                os.path.join(directory, f"reference_{case}.safetensors"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--ref_src", required=True, help="A checkout of the reference repository.")
  parser.add_argument("--torch_python", default=sys.executable,
                      help="The Python of an environment with torch (the reference's side).")
  parser.add_argument("--paper", action="store_true", help="Also the paper-size forward passes.")
  parser.add_argument("--write_fixture", default=None, help="e.g. tests/data")
  parser.add_argument("--phase", default="all", choices=["all", "reference"])
  parser.add_argument("--tmp", default=None)
  args = parser.parse_args()
  if args.phase == "reference":
    return reference_phase(args)
  tmp = args.tmp or tempfile.mkdtemp(prefix="reference_parity_")
  os.makedirs(tmp, exist_ok=True)
  make_inputs(os.path.join(tmp, "inputs.npz"), args.paper)
  command = [args.torch_python, os.path.abspath(__file__), "--phase=reference",
             f"--ref_src={args.ref_src}", f"--tmp={tmp}"] + (["--paper"] if args.paper else [])
  subprocess.run(command, check=True)
  report = compare(tmp, args.paper)
  print(json.dumps(report, indent=2))
  if args.write_fixture:
    write_fixture(tmp, args.write_fixture)
    print(f"Wrote the fixture to {args.write_fixture}.")


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
