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
from .backward import (  # noqa: F401
    adaptive_avg_pool1d_backward, adaptive_avg_pool2d_backward, adaptive_avg_pool3d_backward,
    adaptive_max_pool1d_backward, adaptive_max_pool2d_backward, adaptive_max_pool3d_backward,
    avg_pool1d_backward, avg_pool2d_backward, avg_pool3d_backward,
    fractional_max_pool2d_backward, fractional_max_pool3d_backward,
    lp_pool1d_backward, lp_pool2d_backward, lp_pool3d_backward,
    max_pool1d_backward, max_pool2d_backward, max_pool3d_backward,
    max_unpool1d_backward, max_unpool2d_backward, max_unpool3d_backward,
)

from . import _route  # noqa: E402

# the public operators also take Dask and CUDA arrays (``_route``): the names below are those
# wrappers
for _name in [n for n in dir() if n.endswith(("pool1d", "pool2d", "pool3d", "_backward"))]:
    globals()[_name] = _route.aware(globals()[_name], int(_name.split("_backward")[0][-2]),
                                    _name)
del _name

from ._warmup import warmup  # noqa: F401,E402
from ._alloc import release_memory, set_output_cache  # noqa: F401,E402

__all__ = [n for n in dir() if not n.startswith("_")]

# Numba's one-time start-up now, not inside the first pooling call (``_runtime.start``)
from . import _runtime  # noqa: E402
_runtime.start()
