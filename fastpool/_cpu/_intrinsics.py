"""float16 load/store intrinsics for the CPU kernels (llvmlite ``fpext``/``fptrunc``).

``marker`` is ``_dtypes.HALF`` (an empty tuple) for arrays of float16 bits held as ``uint16``,
``None`` otherwise; the choice is made at compile time from the marker's type.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


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
