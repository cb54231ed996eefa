"""cpu_lowering: threefry unrolled on CPU draws JAX's bits without JAX's loop."""

import functools
import re

import jax
import numpy as np
import pytest

from ardiff import cpu_lowering
from ardiff import timesteps

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU lowering")


@pytest.fixture(autouse=True)
def jax_default_afterwards():
  yield
  cpu_lowering.unroll_threefry(False)  # JAX's own CPU lowering for the tests after these
  jax.clear_caches()


def _compile(fn, *args, unrolled: bool):
  """fn jitted and compiled under the chosen lowering: (compiled, number of loops in it)."""
  assert cpu_lowering.unroll_threefry(unrolled)
  jax.clear_caches()  # nested jits (jax.random's) would keep the lowering they were built with
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, len(re.findall(r" while\(", compiled.as_text()))


def _draws(key):
  k_bits, k_normal = jax.random.split(key)
  return (jax.random.bits(k_bits, (1000,)), jax.random.normal(k_normal, (7, 33)),
          jax.random.randint(jax.random.fold_in(key, 3), (50,), 0, 1000),
          jax.random.uniform(key, (5,)))


def test_the_same_bits_without_a_loop():
  key = jax.random.key(7)
  looped, loops_before = _compile(_draws, key, unrolled=False)
  flat, loops_after = _compile(_draws, key, unrolled=True)
  assert loops_before >= 4 and loops_after == 0
  for seed in (0, 7, 2**31 - 1):
    for a, b in zip(looped(jax.random.key(seed)), flat(jax.random.key(seed))):
      np.testing.assert_array_equal(a, b)


def test_fopp_draws_in_a_program_without_loops():
  """FoPP's frames unrolled and its hashes too: no loop left, the draws as with JAX's loop."""
  fopp = functools.partial(timesteps.sample_train_timesteps, kind="fopp", batch_size=4,
                           num_frames=4, num_timesteps=1000, clean_prefix_prob=0.25)
  key = jax.random.key(3)
  looped, _ = _compile(fopp, key, unrolled=False)
  flat, loops = _compile(fopp, key, unrolled=True)
  assert loops == 0
  for seed in range(5):
    np.testing.assert_array_equal(looped(jax.random.key(seed)), flat(jax.random.key(seed)))


def test_back_to_jax_lowering():
  _, loops = _compile(_draws, jax.random.key(0), unrolled=True)
  assert loops == 0
  _, loops = _compile(_draws, jax.random.key(0), unrolled=False)
  assert loops >= 4
