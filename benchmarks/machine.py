"""What every benchmark reports next to its numbers: the matmul rate this machine reaches now
(machines are shared and noisy: compare a benchmark's ratio to it, not absolute numbers)."""

import time

import jax
import jax.numpy as jnp


def matmul_flops_per_sec(n: int = 2048, dtype=jnp.float32, reps: int = 10) -> float:
  """FLOP/s of an n x n matmul in dtype, jitted, after one warm-up call."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - start)
