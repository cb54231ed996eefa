"""ardiff: AR-Diffusion (asynchronous video generation with auto-regressive diffusion) in JAX/Flax."""

__version__ = "0.1.0"
