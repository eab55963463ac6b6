"""Element types: which dtypes each op family accepts, and the float16 load/store intrinsics.

Numba cannot load or store ``float16`` on the CPU, so float16 arrays travel through the kernels
as ``uint16`` views.  Every kernel takes a *marker* argument that tells, at the type level, how to
read its input: ``None`` for arrays used as they are, ``HALF`` (an empty tuple) for float16 bits.
Because the marker is part of the signature, each variant is compiled and cached on its own.
The intrinsics that read and write those bits live in ``_cpu/_intrinsics.py`` (this module stays
free of Numba so that ``import fastpool`` is fast).
"""
import numpy as np

HALF = ()  # marker value: the array holds float16 bits in uint16 storage
PLAIN = None  # marker value: the array is used as it is

MAX_DTYPES = tuple(np.dtype(t) for t in (
    "float16", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64"))
FLOAT_DTYPES = tuple(np.dtype(t) for t in ("float16", "float32", "float64"))
AVG_DTYPES = MAX_DTYPES
LP_DTYPES = FLOAT_DTYPES


def check_dtype(dtype, allowed, op):
    """Raise TypeError unless ``dtype`` is one of ``allowed``."""
    dtype = np.dtype(dtype)
    if dtype not in allowed:
        names = ", ".join(d.name for d in allowed)
        raise TypeError(f"{op}: input dtype {dtype} is not supported (supported: {names})")
    return dtype


def storage(a):
    """The array a kernel sees (float16 as uint16 bits) and its marker."""
    if a.dtype == np.float16:
        return a.view(np.uint16), HALF
    return a, PLAIN


def acc_dtype(dtype):
    """Accumulator for sums: float64 for float64, int64 for integers, float32 otherwise."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64
    if dtype.kind in "iu":
        return np.int64
    return np.float32
