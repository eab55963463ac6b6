"""fastpool: pooling kernels (max, average, Lp, adaptive, fractional, unpooling) in Numba.

Every public function mirrors ``torch.nn.functional``; see the API contract for the extensions
(ONNX/TF padding, dilation for average and Lp, integer and float16 inputs, ``out=``).
"""
__version__ = "0.1.0"

from .functional import (  # noqa: F401
    adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d,
    adaptive_max_pool1d, adaptive_max_pool2d, adaptive_max_pool3d,
    avg_pool1d, avg_pool2d, avg_pool3d,
    fractional_max_pool2d, fractional_max_pool3d,
    lp_pool1d, lp_pool2d, lp_pool3d,
    max_pool1d, max_pool2d, max_pool3d,
    max_unpool1d, max_unpool2d, max_unpool3d,
)

__all__ = [n for n in dir() if not n.startswith("_")]
