"""lightning_ttn: temporally factorized 3D convolutions (Ras et al., 2019) in PyTorch Lightning."""

from lightning_ttn.convert import Conv3dConversion, convert_conv3d
from lightning_ttn.functional import build_tt_kernel, similarity_theta, tt_conv3d
from lightning_ttn.layers import TTConv3d

__all__ = [
    "Conv3dConversion", "TTConv3d", "build_tt_kernel", "convert_conv3d", "similarity_theta",
    "tt_conv3d",
]
__version__ = "0.1.0"
