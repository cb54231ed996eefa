"""XLA's CPU backend: the programs without loops where JAX would emit small ones.

On CPU JAX lowers the threefry2x32 hash behind every `jax.random` draw as a loop over its five
rounds (a smaller program; GPUs and TPUs get the rounds unrolled). XLA's CPU runtime runs a loop
as a unit: its iterations one after another, each deciding on the next, and nothing else of the
program alongside. The demo's train step draws in 15 places (FoPP's timesteps, the clean-prefix
choice, the noise), small work whose loops kept the two cores waiting on one another; unrolled,
with FoPP's loop over frames unrolled too (`timesteps.py`), the step has no loop left and runs
1.1 times as fast on a 2-core CPU, the same bits drawn (BENCHMARKS.md, "Without loops").
`ardiff.main` calls `unroll_threefry()` before anything compiles.
"""

from absl import logging
from jax.extend import random as jex_random
from jax.interpreters import mlir

try:  # JAX's own lowerings of the hash (jax is pinned in setup.py): unrolled, and CPU's loop.
  from jax._src.random.threefry2x32 import _threefry2x32_cpu_lowering_rule as _ROLLED
  from jax._src.random.threefry2x32 import _threefry2x32_lowering_rule as _UNROLLED
except ImportError:  # another JAX: keep its CPU lowering (slower, the same bits)
  _ROLLED = _UNROLLED = None


def unroll_threefry(enabled: bool = True) -> bool:
  """Lowers threefry on CPU unrolled (enabled) or as JAX's loop (False), for what compiles
  from now on in this process. Other backends are left as they are. Returns whether the choice
  applies (False where this JAX has no such lowering to choose)."""
  if _UNROLLED is None:
    logging.warning("cpu_lowering: this JAX has no unrolled threefry lowering to choose; CPU"
                    " programs keep its loop (the same random bits, a slower step).")
    return False
  mlir.register_lowering(jex_random.threefry2x32_p, _UNROLLED if enabled else _ROLLED,
                         platform="cpu", inline=not enabled)
  return True
