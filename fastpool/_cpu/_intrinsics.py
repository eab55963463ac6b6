"""Intrinsics for the CPU kernels: float16 loads and stores (llvmlite ``fpext``/``fptrunc``),
and scratch arrays and flat views that compile without NumPy's overloads.

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


# Scratch arrays and flat views.  NumPy's own np.full / np.empty / np.zeros and ndarray.reshape
# are overloads that Numba compiles (and types) anew in every process, once per signature:
# with them, a kernel's first call with an empty cache took 0.4-0.5 s longer (paired runs;
# a profile put reshape at 0.7 s and np.full at 0.5 s, with the profiler's overhead).

def _count(context, builder, n, nty):
    """``n`` as intp; a negative count raises ValueError as NumPy does."""
    cnt = context.cast(builder, n, nty, types.intp)
    with builder.if_then(builder.icmp_signed("<", cnt, cnt.type(0)), likely=False):
        context.call_conv.return_user_exc(builder, ValueError,
                                          ("negative dimensions not allowed",))
    return cnt


def _new_array(context, builder, retty, cnt):
    from numba.np.arrayobj import _empty_nd_impl
    return _empty_nd_impl(context, builder, retty, [cnt])


@intrinsic
def new_full(typingctx, n, value):
    """``np.full(n, value)``: a new 1-d C array of ``value``'s type."""
    if not isinstance(n, types.Integer) or not isinstance(value, (types.Number, types.Boolean)):
        return None
    vty = types.unliteral(value)
    retty = types.Array(vty, 1, "C")

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        from numba.core.imputils import impl_ret_new_ref
        cnt = _count(context, builder, args[0], signature.args[0])
        ary = _new_array(context, builder, retty, cnt)
        v = context.cast(builder, args[1], signature.args[1], vty)
        with cgutils.for_range(builder, cnt) as loop:
            context.pack_value(builder, vty, v, builder.gep(ary.data, [loop.index]))
        return impl_ret_new_ref(context, builder, retty, ary._getvalue())
    return retty(n, value), codegen


def _on_line_view(context, builder, retty, ary, n, lead):
    """A view of ``n`` cells of the new 1-d array ``ary`` (which has 64 bytes more) from the
    first cell at which cell ``lead`` starts a 64-byte cache line."""
    from numba.np.arrayobj import make_array, populate_array
    i64 = ir.IntType(64)
    isz = context.get_abi_sizeof(context.get_data_type(retty.dtype))
    at = builder.add(builder.ptrtoint(ary.data, i64), builder.mul(lead, i64(isz)))
    skip = builder.urem(builder.sub(i64(64), builder.urem(at, i64(64))), i64(64))
    ret = make_array(retty)(context, builder)
    populate_array(ret, data=builder.gep(ary.data, [builder.udiv(skip, i64(isz))]), shape=[n],
                   strides=[ary.itemsize], itemsize=ary.itemsize, meminfo=ary.meminfo,
                   parent=None)
    return ret


def _lined(full):
    def typer(typingctx, n, value, lead):
        if full:
            if not isinstance(value, (types.Number, types.Boolean)):
                return None
            vty = types.unliteral(value)
        else:
            vty = _dtype_of(value)
        if not isinstance(n, types.Integer) or not isinstance(lead, types.Integer) or \
                vty is None:
            return None
        retty = types.Array(vty, 1, "C")

        def codegen(context, builder, signature, args):
            from numba.core import cgutils
            from numba.core.imputils import impl_ret_new_ref
            cnt = _count(context, builder, args[0], signature.args[0])
            isz = context.get_abi_sizeof(context.get_data_type(vty))
            ary = _new_array(context, builder, retty,
                             builder.add(cnt, cnt.type(max(64 // isz, 1))))
            lead = context.cast(builder, args[2], signature.args[2], types.int64)
            view = _on_line_view(context, builder, retty, ary, cnt, lead)
            if full:
                v = context.cast(builder, args[1], signature.args[1], vty)
                with cgutils.for_range(builder, cnt) as loop:
                    context.pack_value(builder, vty, v, builder.gep(view.data, [loop.index]))
            return impl_ret_new_ref(context, builder, retty, view._getvalue())
        return retty(n, value, lead), codegen
    return typer


lined_full = intrinsic(_lined(True))
lined_full.__doc__ = """``np.full(n, value)`` placed so that its cell ``lead`` starts a 64-byte
cache line (a view of a new array 64 bytes longer): vector loads and stores at ``lead`` plus
whole lines then stay in one line each.  (On a 2-core Xeon VM, the tiled kernels' vertical
pass in the cache, two 64-byte stores a vector: 9.5 ns a vector with the stores across two
lines, 3.9 within one; the tiled max gradient, 32x64x112x112 float32, 2 threads, paired in one
process, 0.79-0.89x the time, the tiled max with indices 0.81-0.86x.)  An intrinsic, so that
it costs a kernel's first compile nothing of its own: the jitted helper it replaces took
0.25-0.3 s per type of a fresh process's first call."""
lined_empty = intrinsic(_lined(False))
lined_empty.__doc__ = """``np.empty(n, dt)`` (``dt`` as for ``new_empty``) placed as
``lined_full`` places its cells."""


def _dtype_of(dt):
    """The element type named by a dtype argument: ``arr.dtype``, ``np.int64`` or an array."""
    if isinstance(dt, types.DType):
        return dt.dtype
    if isinstance(dt, types.NumberClass):
        return dt.instance_type
    if isinstance(dt, types.Array):
        return dt.dtype
    return None


def _allocator(zero):
    def typer(typingctx, n, dt):
        ety = _dtype_of(dt)
        if not isinstance(n, types.Integer) or ety is None:
            return None
        retty = types.Array(ety, 1, "C")

        def codegen(context, builder, signature, args):
            from numba.core import cgutils
            from numba.core.imputils import impl_ret_new_ref
            cnt = _count(context, builder, args[0], signature.args[0])
            ary = _new_array(context, builder, retty, cnt)
            if zero:
                cgutils.memset(builder, ary.data, builder.mul(cnt, ary.itemsize), 0)
            return impl_ret_new_ref(context, builder, retty, ary._getvalue())
        return retty(n, dt), codegen
    return typer


new_empty = intrinsic(_allocator(False))
new_empty.__doc__ = """``np.empty(n, dt)``: a new, uninitialised 1-d C array (``dt``: ``arr.dtype``, a
NumPy scalar type or an array, whose dtype is taken)."""
new_zeros = intrinsic(_allocator(True))
new_zeros.__doc__ = """``np.zeros(n, dt)``: a new 1-d C array of zeros (``dt`` as for ``new_empty``)."""


@intrinsic
def flat_view(typingctx, arr):
    """``arr.reshape(arr.size)`` for a C-contiguous array: a 1-d view of the same memory.  An
    array of layout "A" is checked at run time (ValueError if not C-contiguous)."""
    if not isinstance(arr, types.Array) or arr.layout == "F" and arr.ndim > 1:
        return None
    retty = types.Array(arr.dtype, 1, "C", readonly=not arr.mutable)

    def codegen(context, builder, signature, args):
        from numba.core import cgutils
        from numba.core.imputils import impl_ret_borrowed
        from numba.np.arrayobj import make_array, populate_array
        aty = signature.args[0]
        ary = make_array(aty)(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, ary.shape, aty.ndim)
        strides = cgutils.unpack_tuple(builder, ary.strides, aty.ndim)
        if aty.layout != "C":
            ok = cgutils.true_bit
            want = ary.itemsize
            for d in reversed(range(aty.ndim)):
                same = builder.icmp_signed("==", strides[d], want)
                ok = builder.and_(ok, builder.or_(same, builder.icmp_signed(
                    "<=", shape[d], shape[d].type(1))))
                want = builder.mul(want, shape[d])
            with builder.if_then(builder.not_(ok), likely=False):
                context.call_conv.return_user_exc(builder, ValueError,
                                                  ("flat_view: array is not C-contiguous",))
        ret = make_array(retty)(context, builder)
        populate_array(ret, data=ary.data, shape=[ary.nitems], strides=[ary.itemsize],
                       itemsize=ary.itemsize, meminfo=ary.meminfo, parent=ary.parent)
        return impl_ret_borrowed(context, builder, retty, ret._getvalue())
    return retty(arr), codegen


@intrinsic
def nonneg(typingctx, x):
    """``x`` (an integer known to be >= 0), with that fact handed to the compiler
    (``llvm.assume``): the split kernels' task index (``_specialise._split_prange``)."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        assume = builder.module.declare_intrinsic(
            "llvm.assume", fnty=ir.FunctionType(ir.VoidType(), [ir.IntType(1)]))
        builder.call(assume, [builder.icmp_signed(">=", v, ir.Constant(v.type, 0))])
        return v
    return x(x), codegen
