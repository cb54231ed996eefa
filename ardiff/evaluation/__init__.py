"""Video metrics: FVD on Kinetics-400 I3D features, and frame-wise PSNR / SSIM / LPIPS.

No frame-level FID: no PyPI package ships the Inception-v3 weights of FID; the FID libraries
(pytorch-fid, clean-fid, torch-fidelity, jax-fid, ...) download them at run time.
"""

from ardiff.evaluation.fvd import compute_fvd
from ardiff.evaluation.fvd import feature_statistics
from ardiff.evaluation.fvd import frechet_distance
from ardiff.evaluation.fvd import fvd_from_features
from ardiff.evaluation.i3d import i3d_features
from ardiff.evaluation.metrics import lpips
from ardiff.evaluation.metrics import psnr
from ardiff.evaluation.metrics import ssim

__all__ = [
    "compute_fvd",
    "feature_statistics",
    "frechet_distance",
    "fvd_from_features",
    "i3d_features",
    "lpips",
    "psnr",
    "ssim",
]
