"""Element types: which dtypes each op family accepts, and the float16 load/store intrinsics.

Numba cannot load or store ``float16`` on the CPU, so float16 arrays travel through the kernels
as ``uint16`` views.  Every kernel takes a *marker* argument that tells, at the type level, how to
read its input: ``None`` for arrays used as they are, ``HALF`` (an empty tuple) for float16 bits.
Because the marker is part of the signature, each variant is compiled and cached on its own.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

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


def _is_half(marker):
    return isinstance(marker, types.BaseTuple)


@intrinsic
def load(typingctx, value, marker):
    """Value of one stored element in the compute type (float16 bits -> float32)."""
    if _is_half(marker):
        def codegen(context, builder, signature, args):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return types.float32(value, marker), codegen

    def codegen(context, builder, signature, args):
        return args[0]
    return value(value, marker), codegen


def acc_dtype(dtype):
    """Accumulator for sums: float64 for float64, int64 for integers, float32 otherwise."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64
    if dtype.kind in "iu":
        return np.int64
    return np.float32


@intrinsic
def to_storage(typingctx, value, marker):
    """Compute-type value -> stored element (float32 -> float16 bits for the HALF marker)."""
    if _is_half(marker):
        def codegen(context, builder, signature, args):
            v = args[0]
            if isinstance(signature.args[0], types.Float) and signature.args[0].bitwidth == 64:
                v = builder.fptrunc(v, ir.FloatType())
            elif not isinstance(signature.args[0], types.Float):
                raise TypeError("to_storage: float value expected for float16 output")
            return builder.bitcast(builder.fptrunc(v, ir.HalfType()), ir.IntType(16))
        return types.uint16(value, marker), codegen

    def codegen(context, builder, signature, args):
        return args[0]
    return value(value, marker), codegen
