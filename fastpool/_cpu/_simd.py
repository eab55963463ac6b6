"""Explicit vector code for rows of windows (llvmlite), for the channels-first kernels.

The compiler leaves a row of stride-2 windows scalar: its loads are strided, and a short row
(28 outputs) is shorter than its 32-wide vector loop anyway.  Each intrinsic here computes one
vector of outputs (8 float32 / float16, 4 float64) of such a row: it loads the taps' unit-stride
vectors, splits them into even and odd lanes, and reduces them in the scalar kernels' order, so
that the results are the same bits:

- ``max``: the NaN-propagating first max, ``v if (v > m or v != v) else m``, taps in row-major
  order (the tie rule keeps the first of equal values, hence the sign of a zero);
- ``avg``: +0.0 plus the taps in row-major order (as the scalar loops, which start their sums
  at +0.0), divided by ``div`` in the compute type; ``sum``: the same, not divided.

``hwin{K}2_max(src, i, dst, j, div, marker)`` (K = 3, 2): output ``o`` of the vector (at
``dst[j] + o``) reduces ``src[i + 2 * o + c]``, ``c < K`` (one row: the horizontal pass over a
scratch row of the vertical pass's results; ``div`` unused).  ``fwin22_{max,avg}(src, i0, i1,
dst, j, div, marker)``: the 2 x 2 windows over the rows at ``src[i0]`` and ``src[i1]``, reduced
straight from the input.  Indices are ints or tuples of ints (one per dimension); the last
dimension must be unit-stride in both arrays (the caller checks).  A vector reads
``src[i + 2 * L + K - 3]`` last, its last output's last tap (``L`` lanes): nothing past the
row.  float16 travels as ``uint16`` bits (with the ``HALF`` marker) and is computed in float32.
Vectors of another width compile too (LLVM splits or widens them), only slower or faster.
``vcol{R}_{op}`` reduce R rows column by column (the vertical pass), and ``prefetch`` hints a
cache line ahead of use.

Stride-1 windows (``make_same``): ``hwin{K}1_{max,pmax}`` reduce K consecutive cells per
output; ``vpair_{max,pmax}`` the vertical pass of two output rows at once; ``rows_nan`` tells
which lanes of two rows hold a NaN.  ``pmax`` is the plain first max (``v if v > m else m``,
no NaN rule), the same bits as ``max`` on taps without a NaN: the kernel checks for NaN itself
and uses ``max`` where one is.

``vtile_col``, ``vtile_merge3`` and ``vtile_rows3`` are the passes of the tiled max backward
(``window.make_max_backward_tiled``) over a vector of columns or windows.
``vdiv`` divides a vector of cells by arrays or numbers (the compiler leaves division loops
scalar); ``vspread`` picks a vector of cells from a row that fits one register (a permute);
``ipair_row`` reduces an integer row's pairs (``int_lanes`` outputs a vector).
``stream_upto`` copies a task's results from scratch to the output with
non-temporal vector stores over the vector-aligned middle, ``stream_lines`` (a copy) and
``stream_sum`` (the sum of one or two rows) over the destination's whole 64-byte lines,
``sfence`` ending the task: intrinsics that emit the loops, since a jitted helper taking
arrays costs ~150 ns a call.  ``vring_add`` adds a vector of channels' gradients to the cells
their indices name (a gather, an add and a scatter: the channels-last max gradients).
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._intrinsics import _is_half

BYTES = 32  # one AVX2 register: 8 float32 lanes, 4 float64
AHEAD = 8192  # prefetch distance, bytes (make_adaptive: 4-16 KiB alike; make_same: 16 KiB worse)
# ``stream_upto`` streams once this many cells are pending: the average gradient's rows then
# go out every row or two, their streaming stores draining while the next rows are summed
# (paired A/B, one process, 32x64x56x56 k3s2p1: float32 0.83-0.86x the time at 64 and 32
# cells, 0.99x at 128, against 256; 64x64x56x56 0.81-0.87x; float16 0.92x, float64 0.85-0.97x;
# one thread 0.83x.  The tiled max gradient, the scatter, the adaptive average gradient and
# the 1-d average gradient stream whole planes or more at a time: 0.99-1.02x)
STREAM_PENDING = 64


def lanes(compute_bytes):
    """Outputs per vector for a compute type of ``compute_bytes`` bytes."""
    return BYTES // compute_bytes


def _host_has(*features):
    """Whether the code Numba emits may use all these CPU features (``"avx2"``, ...): it
    compiles for the host unless told a CPU."""
    from numba.core import config
    if config.CPU_NAME not in (None, "host"):
        return False
    from llvmlite import binding
    have = binding.get_host_cpu_features().flatten().split(",")
    return all("+" + f in have for f in features)


# The tiled 3x3 / 2x2 max kernels (``vtile_col``, ``vtile_merge3``, ``vtile_rows3``) work in
# vectors of TILE_BYTES: 64 (16 float32 lanes) where AVX-512 is there.  Their gradient, which
# is compute-bound (its three passes over each plane), took 0.89x the time with them on a
# 2-core EPYC (32x64x112x112 float32, paired in one process); the other kernels keep 32-byte
# vectors (0.98-1.09x with 64 there).
TILE_BYTES = 64 if _host_has("avx512f", "avx512bw") else BYTES


def tile_lanes_for(compute_bytes):
    """Windows per vector of the tiled kernels for a compute type of ``compute_bytes`` bytes."""
    return TILE_BYTES // compute_bytes


def _half(arrty, marker):
    return _is_half(marker) and arrty.dtype == types.uint16


def _compute(arrty, marker):
    """(numba compute type, llvm type) of an array's elements."""
    if _half(arrty, marker):
        return types.float32, ir.FloatType()
    if arrty.dtype == types.float32:
        return types.float32, ir.FloatType()
    return types.float64, ir.DoubleType()


def _pointer(context, builder, arrty, arr, idxty, idx):
    ary = context.make_array(arrty)(context, builder, arr)
    if isinstance(idxty, types.BaseTuple):
        vals, tys = cgutils.unpack_tuple(builder, idx, len(idxty)), list(idxty)
    else:
        vals, tys = [idx], [idxty]
    inds = [context.cast(builder, v, t, types.intp) for v, t in zip(vals, tys)]
    return cgutils.get_item_pointer(context, builder, arrty, ary, inds, wraparound=False)


def _load(context, builder, arrty, marker, ptr, n, offset):
    """``n`` consecutive elements from ``ptr + offset`` as a vector of the compute type."""
    half = _half(arrty, marker)
    elt = ir.IntType(16) if half else context.get_data_type(arrty.dtype)
    p = builder.gep(builder.bitcast(ptr, elt.as_pointer()), [ir.Constant(ir.IntType(64), offset)])
    v = builder.load(builder.bitcast(p, ir.VectorType(elt, n).as_pointer()), align=1)
    if half:
        v = builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), n)),
                          ir.VectorType(ir.FloatType(), n))
    return v


def _store(context, builder, arrty, marker, ptr, v, n):
    if _half(arrty, marker):
        v = builder.bitcast(builder.fptrunc(v, ir.VectorType(ir.HalfType(), n)),
                            ir.VectorType(ir.IntType(16), n))
        elt = ir.IntType(16)
    else:
        elt = context.get_data_type(arrty.dtype)
        if v.type.element != elt:
            v = builder.fptrunc(v, ir.VectorType(elt, n))
    builder.store(v, builder.bitcast(ptr, ir.VectorType(elt, n).as_pointer()), align=1)


def _masks(L, E):
    """Stride-2 lane masks over two L-lane vectors (A, B) of 16-byte lanes of E elements.

    ``pick[r]`` takes the elements ``r, r + 2, ...`` of each 16-byte lane of A, then of B, lane
    by lane: one in-lane shuffle (``vshufps`` / ``vunpcklpd``) instead of a cross-lane one per
    tap.  Output ``o`` (element ``2 * o + r`` of A:B) lands in lane ``order[o]``; ``fix``
    restores output order once, after the reduction (elementwise, so lane order is free)."""
    pick = []
    for r in range(2):
        m = []
        for lane in range(L // E):
            m += [lane * E + r + 2 * i for i in range(E // 2)]
            m += [L + lane * E + r + 2 * i for i in range(E // 2)]
        pick.append(m)
    fix = [next(k for k, e in enumerate(pick[0]) if e // 2 == o) for o in range(L)]
    return pick, fix


def _taps(context, builder, arrty, marker, ptr, K, S, L, E):
    """The K tap vectors of one row, tap c holding src[S * o + c] of output o: at unit stride
    one load per tap, at stride 2 in the lane order of ``_masks``."""
    if S == 1:
        return [_load(context, builder, arrty, marker, ptr, L, c) for c in range(K)]
    assert S == 2
    pick, _ = _masks(L, E)
    loads = {}
    out = []
    for c in range(K):
        off = max(0, c - (S - 1))  # the last tap's loads end exactly at the last needed cell
        if off not in loads:
            loads[off] = (_load(context, builder, arrty, marker, ptr, L, off),
                          _load(context, builder, arrty, marker, ptr, L, off + L))
        a, b = loads[off]
        mask = ir.Constant(ir.VectorType(ir.IntType(32), L), pick[c - off])
        out.append(builder.shuffle_vector(a, b, mask))
    return out


def _splat(builder, val, L):
    """A vector of L copies of the scalar ``val``."""
    i32 = ir.IntType(32)
    v = builder.insert_element(ir.Constant(ir.VectorType(val.type, L), ir.Undefined), val,
                               i32(0))
    return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, L), [0] * L))


def _takes(builder, v, m):
    """The NaN-propagating first max's rule, lane by lane: ``v > m or v != v``."""
    return builder.or_(builder.fcmp_ordered(">", v, m), builder.fcmp_unordered("uno", v, v))


def _reduce(builder, taps, op):
    op = "max" if op == "maxfold" else op
    m = taps[0]
    if op not in ("max", "pmax"):  # sums start at +0, as the scalar kernels' (a -0.0 tap
        # sums to +0.0)
        m = builder.fadd(ir.Constant(m.type, None), m)
    for v in taps[1:]:
        if op == "max":
            m = builder.select(_takes(builder, v, m), v, m)
        elif op == "pmax":  # (no NaN rule: for rows known to hold no NaN)
            m = builder.select(builder.fcmp_ordered(">", v, m), v, m)
        else:
            m = builder.fadd(m, v)
    return m


def _codegen(K, S, R, op):
    def codegen(context, builder, sig, args):
        marker = sig.args[-1]
        if not (_float(sig.args[0], marker) and _float(sig.args[R + 1], marker)):
            return context.get_dummy_value()  # (integer arrays: never called)
        cty = _compute(sig.args[0], marker)[0]
        size = 4 if cty == types.float32 else 8
        L, E = lanes(size), 16 // size
        taps = []
        for r in range(R):
            p = _pointer(context, builder, sig.args[0], args[0], sig.args[1 + r], args[1 + r])
            taps += _taps(context, builder, sig.args[0], marker, p, K, S, L, E)
        m = _reduce(builder, taps, op)
        if S == 2:
            fix = ir.Constant(ir.VectorType(ir.IntType(32), L), _masks(L, E)[1])
            m = builder.shuffle_vector(m, ir.Constant(m.type, ir.Undefined), fix)
        if op == "avg":
            m = builder.fdiv(m, _splat(builder, context.cast(builder, args[R + 3],
                                                             sig.args[R + 3], cty), L))
        q = _pointer(context, builder, sig.args[R + 1], args[R + 1], sig.args[R + 2], args[R + 2])
        if op == "maxfold":  # the taps' maximum folded into dst's, which scanned before them
            a = _load(context, builder, sig.args[R + 1], marker, q, L, 0)
            m = builder.select(_takes(builder, m, a), m, a)
        _store(context, builder, sig.args[R + 1], marker, q, m, L)
        return context.get_dummy_value()
    return codegen


def _nlanes(arrty, marker):
    """Lanes of a vector of an array's compute type."""
    return lanes(4 if _compute(arrty, marker)[0] == types.float32 else 8)


def _tlanes(arrty, marker):
    """Lanes of a tiled kernel's vector of an array's compute type (TILE_BYTES)."""
    return tile_lanes_for(4 if _compute(arrty, marker)[0] == types.float32 else 8)


def _vectors2(context, builder, sig, args, marker):
    """The vectors at ``args[0][args[1]]`` and ``args[0][args[2]]`` (compute type), and their
    lane count."""
    src = sig.args[0]
    L = _nlanes(src, marker)
    a, b = (_load(context, builder, src, marker,
                  _pointer(context, builder, src, args[0], sig.args[k], args[k]), L, 0)
            for k in (1, 2))
    return a, b, L


def _float(arrty, marker):
    return _half(arrty, marker) or arrty.dtype in (types.float32, types.float64)


@intrinsic
def tile_lanes(typingctx, arr, marker):
    """Windows per vector of the tiled kernels for an array's compute type (a constant), 0
    for integer arrays (as ``vector_lanes``)."""
    n = _tlanes(arr, marker) if _float(arr, marker) else 0

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(arr, marker), codegen


@intrinsic
def vector_lanes(typingctx, arr, marker):
    """Outputs per vector for an array's compute type (a constant), 0 where no intrinsic here
    applies (integer arrays): ``if vector_lanes(a, marker):`` folds away for integers."""
    n = (lanes(4) if _compute(arr, marker)[0] == types.float32 else lanes(8)) \
        if _float(arr, marker) else 0

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(arr, marker), codegen


def _cells_intrinsic(nbytes, doc):
    def impl(typingctx, arr):
        n = max(nbytes // max(arr.dtype.bitwidth // 8, 1), 1)

        def codegen(context, builder, sig, args):
            return context.get_constant(types.intp, n)
        return types.intp(arr), codegen
    impl.__doc__ = doc
    return intrinsic(impl)


# Cells of an array's storage type in a cache line and in a prefetch distance, as constants:
# ``64 // a.itemsize`` is a value loaded at run time, so a loop stepping by it or a remainder by
# it stays a division inside the loops (8.8% of the adaptive average's time)
line_cells = _cells_intrinsic(64, "Cells of ``arr`` in a 64-byte cache line (a constant).")
ahead_cells = _cells_intrinsic(AHEAD, "Cells of ``arr`` in the prefetch distance ``AHEAD`` (a "
                               "constant).")


@intrinsic
def int_lanes(typingctx, arr, marker):
    """Outputs per vector of ``ipair_row`` for an integer array (a constant), 0 for others,
    float16 bits (``uint16`` with the ``HALF`` marker) included."""
    n = BYTES * 8 // arr.dtype.bitwidth \
        if isinstance(arr.dtype, types.Integer) and not _half(arr, marker) else 0

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, n)
    return types.intp(arr, marker), codegen


@intrinsic
def ipair_row(typingctx, src, i, dst, j, acc, marker):
    """One vector of maxima over pairs of an integer row (``int_lanes`` outputs): ``dst[j +
    o]`` = the larger of ``src[i + 2 * o]`` and ``src[i + 2 * o + 1]``, or of those and ``dst[j
    + o]`` itself where ``acc`` (the 2 x 2 windows' second row; for integers the order of the
    maxima does not change the result).  It reads ``src[i + 2 * L - 1]`` last, the last
    output's last tap.  Float arrays (float16 bits included) type-check and emit nothing
    (callers test ``int_lanes`` first)."""
    sig = types.void(src, i, dst, j, acc, marker)
    if not (isinstance(src.dtype, types.Integer) and src.dtype == dst.dtype) or \
            _half(src, marker):
        return _emits_nothing(sig)

    def codegen(context, builder, sig, args):
        elt = context.get_data_type(src.dtype)
        L = BYTES * 8 // src.dtype.bitwidth
        vt = ir.VectorType(elt, L)
        cmp = builder.icmp_signed if src.dtype.signed else builder.icmp_unsigned

        def vmax(a, b):
            return builder.select(cmp(">", b, a), b, a)
        p = builder.bitcast(_pointer(context, builder, src, args[0], sig.args[1], args[1]),
                            elt.as_pointer())
        lo, hi = [builder.load(builder.bitcast(builder.gep(p, [ir.IntType(64)(h * L)]),
                                               vt.as_pointer()), align=1) for h in range(2)]
        i32 = ir.IntType(32)
        even = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(i32, L),
                                                          [2 * o for o in range(L)]))
        odd = builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(i32, L),
                                                         [2 * o + 1 for o in range(L)]))
        m = vmax(even, odd)
        q = builder.bitcast(_pointer(context, builder, dst, args[2], sig.args[3], args[3]),
                            vt.as_pointer())
        a = context.cast(builder, args[4], sig.args[4], types.boolean)
        old = builder.load(q, align=1)
        builder.store(builder.select(a, vmax(old, m), m), q, align=1)
        return context.get_dummy_value()
    return sig, codegen


def _typed(src, dst, marker):
    """Any arrays type (the kernels compile one body for every dtype); the code is emitted only
    for float ones whose compute types agree (callers test ``vector_lanes`` first)."""
    return not (_float(src, marker) and _float(dst, marker)) or \
        _compute(src, marker)[0] == _compute(dst, marker)[0]


def _one_row(K, S, op):
    gen = _codegen(K, S, 1, op)

    def typer(typingctx, src, i, dst, j, div, marker):
        if not _typed(src, dst, marker):
            return None
        return types.void(src, i, dst, j, div, marker), gen
    typer.__name__ = f"hwin{K}{S}_{op}"
    return intrinsic(typer)


def _two_rows(K, S, op):
    gen = _codegen(K, S, 2, op)

    def typer(typingctx, src, i0, i1, dst, j, div, marker):
        if not _typed(src, dst, marker):
            return None
        return types.void(src, i0, i1, dst, j, div, marker), gen
    typer.__name__ = f"fwin{K}{S}_{op}"
    return intrinsic(typer)


def _columns(R, op):
    """``vcol{R}_{op}(src, i0, ..., i{R-1}, dst, j, marker)``: ``dst[j + o]`` (a vector of L
    columns) reduces ``src[i_r + o]`` over the R rows in order (the vertical pass of a window
    of R rows; unit stride along the row).  ``op``: "max" or "sum" (no divisor; one row:
    ``+0 + src``, converted to ``dst``'s type)."""
    gen = _codegen(1, 1, R, op)
    if R == 1:
        def typer(typingctx, src, i0, dst, j, marker):
            if not _typed(src, dst, marker):
                return None
            return types.void(src, i0, dst, j, marker), gen
    elif R == 2:
        def typer(typingctx, src, i0, i1, dst, j, marker):
            if not _typed(src, dst, marker):
                return None
            return types.void(src, i0, i1, dst, j, marker), gen
    elif R == 3:
        def typer(typingctx, src, i0, i1, i2, dst, j, marker):
            if not _typed(src, dst, marker):
                return None
            return types.void(src, i0, i1, i2, dst, j, marker), gen
    else:
        raise ValueError(R)
    typer.__name__ = f"vcol{R}_{op}"
    return intrinsic(typer)


vcol1_sum = _columns(1, "sum")
vcol2_max = _columns(2, "max")
vcol2_sum = _columns(2, "sum")
vcol3_max = _columns(3, "max")
vcol3_sum = _columns(3, "sum")
hwin32_max = _one_row(3, 2, "max")
hwin32_avg = _one_row(3, 2, "avg")
hwin22_max = _one_row(2, 2, "max")
hwin31_max = _one_row(3, 1, "max")
hwin31_pmax = _one_row(3, 1, "pmax")
hwin51_max = _one_row(5, 1, "max")
hwin51_pmax = _one_row(5, 1, "pmax")
hwin71_max = _one_row(7, 1, "max")
hwin71_pmax = _one_row(7, 1, "pmax")
fwin22_max = _two_rows(2, 2, "max")
# (dst[j + o] kept unless the two rows' 2 x 2 maximum is greater or NaN: the row-major scan of
# windows whose earlier taps dst holds)
fwin22_maxfold = _two_rows(2, 2, "maxfold")
fwin22_avg = _two_rows(2, 2, "avg")


def _four_rows(K, S, op):
    gen = _codegen(K, S, 4, op)

    def typer(typingctx, src, i0, i1, i2, i3, dst, j, div, marker):
        if not _typed(src, dst, marker):
            return None
        return types.void(src, i0, i1, i2, i3, dst, j, div, marker), gen
    typer.__name__ = f"fwin{K}{S}x4_{op}"
    return intrinsic(typer)


# 2 x 2 x 2 windows at stride 2: the four rows (depth, row) in row-major order
fwin22x4_max = _four_rows(2, 2, "max")


def _every(builder, vs, S, L):
    """Lanes 0, S, 2S, ... of the S consecutive L-lane vectors ``vs``: one L-lane vector."""
    if S == 1:
        return vs[0]
    i32v = ir.VectorType(ir.IntType(32), L)
    w = builder.shuffle_vector(vs[0], vs[1], ir.Constant(
        i32v, [o * S if o * S < 2 * L else 0 for o in range(L)]))
    for r in range(2, S):  # the lanes whose tap lies in the r-th vector
        w = builder.shuffle_vector(w, vs[r], ir.Constant(
            i32v, [L + o * S - r * L if r * L <= o * S < (r + 1) * L else o
                   for o in range(L)]))
    return w


def _loads_at(context, builder, arrty, marker, ptr, off, S, L):
    """The S consecutive L-lane vectors (compute type) from ``ptr`` + ``off`` cells (``off``
    an i64 value)."""
    half = _half(arrty, marker)
    elt = ir.IntType(16) if half else context.get_data_type(arrty.dtype)
    p = builder.gep(builder.bitcast(ptr, elt.as_pointer()), [off])
    return [_load(context, builder, arrty, marker, p, L, r * L) for r in range(S)]


def _no_unroll(module):
    """New loop metadata ``!{self, !{"llvm.loop.unroll.disable"}}`` (a loop's own ID)."""
    md = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop = ir.MDValue(module, [md], name=str(len(module.metadata)))
    loop.operands = (loop, md)
    return loop


def _window_run(S, op):
    """``vwin{S}_{op}(src, i, n, dw, dst, j, div, marker)``: ``dst[j + o]`` (a vector of L
    outputs) reduces ``src[i + S * o + c * dw]`` over the taps c < n in tap order (n >= 1 and
    dw at run time; src must hold ``S * L`` cells from each tap's first): windows S apart,
    dilated by dw.  ``op``: "max" (the NaN-propagating first max) or "avg" (the sum from +0,
    over ``div``)."""
    def codegen(context, builder, sig, args):
        src, dst, marker = sig.args[0], sig.args[4], sig.args[-1]
        if not (_float(src, marker) and _float(dst, marker)):
            return context.get_dummy_value()  # (integer arrays: never called)
        cty = _compute(src, marker)[0]
        L = _nlanes(src, marker)
        i64 = ir.IntType(64)
        p = _pointer(context, builder, src, args[0], sig.args[1], args[1])
        n = context.cast(builder, args[2], sig.args[2], types.int64)
        dw = context.cast(builder, args[3], sig.args[3], types.int64)
        m = _every(builder, _loads_at(context, builder, src, marker, p, i64(0), S, L), S, L)
        if op != "max":
            m = builder.fadd(ir.Constant(m.type, None), m)
        # the taps 1 .. n - 1: a loop that LLVM is told not to unroll (its copies, in every
        # caller, were most of a kernel's compile time)
        head = builder.basic_block
        cond = builder.append_basic_block("vwin.cond")
        body = builder.append_basic_block("vwin.body")
        done = builder.append_basic_block("vwin.done")
        builder.branch(cond)
        builder.position_at_end(cond)
        c = builder.phi(i64)
        acc = builder.phi(m.type)
        c.add_incoming(i64(1), head)
        acc.add_incoming(m, head)
        builder.cbranch(builder.icmp_signed("<", c, n), body, done)
        builder.position_at_end(body)
        v = _every(builder, _loads_at(context, builder, src, marker, p, builder.mul(c, dw), S,
                                      L), S, L)
        nxt = builder.select(_takes(builder, v, acc), v, acc) if op == "max" else \
            builder.fadd(acc, v)
        c.add_incoming(builder.add(c, i64(1)), builder.basic_block)
        acc.add_incoming(nxt, builder.basic_block)
        builder.branch(cond).set_metadata("llvm.loop", _no_unroll(builder.module))
        builder.position_at_end(done)
        m = acc
        if op != "max":
            m = builder.fdiv(m, _splat(builder, context.cast(builder, args[6], sig.args[6], cty),
                                       L))
        q = _pointer(context, builder, dst, args[4], sig.args[5], args[5])
        _store(context, builder, dst, marker, q, m, L)
        return context.get_dummy_value()

    def typer(typingctx, src, i, n, dw, dst, j, div, marker):
        if not _typed(src, dst, marker):
            return None
        return types.void(src, i, n, dw, dst, j, div, marker), codegen
    typer.__name__ = f"vwin{S}_{op}"
    return intrinsic(typer)


vwin1_max = _window_run(1, "max")
vwin1_avg = _window_run(1, "avg")
vwin2_max = _window_run(2, "max")
vwin2_avg = _window_run(2, "avg")
vwin3_max = _window_run(3, "max")
vwin3_avg = _window_run(3, "avg")


@intrinsic
def vcol_pair(typingctx, src, i0, i1, dst, j0, j1, marker):
    """Two rows at once from two source rows: ``dst[j0 + o] = +0 + src[i0 + o]`` and ``dst[j1 +
    o] = (+0 + src[i0 + o]) + src[i1 + o]`` (``vcol1_sum`` and ``vcol2_sum`` with the shared
    row loaded and added once: an input row under one window and the next one under that
    window and the one after)."""
    if not _typed(src, dst, marker) or not (_float(src, marker) and _float(dst, marker)):
        return None

    def codegen(context, builder, sig, args):
        a, b, L = _vectors2(context, builder, sig, args, marker)
        a = builder.fadd(ir.Constant(a.type, None), a)
        _store(context, builder, dst, marker,
               _pointer(context, builder, dst, args[3], sig.args[4], args[4]), a, L)
        _store(context, builder, dst, marker,
               _pointer(context, builder, dst, args[3], sig.args[5], args[5]),
               builder.fadd(a, b), L)
        return context.get_dummy_value()
    return types.void(src, i0, i1, dst, j0, j1, marker), codegen


@intrinsic
def prefetch(typingctx, arr, idx):
    """A read prefetch of the cache line of ``arr[idx]`` (an int or a tuple of ints; no fault
    past the array's end)."""
    def codegen(context, builder, sig, args):
        p = _pointer(context, builder, sig.args[0], args[0], sig.args[1], args[1])
        p = builder.bitcast(p, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [p, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(arr, idx), codegen


def _nan_mask(context, builder, u, L):
    """An <L x i1> mask as an int (bit o: lane o)."""
    return builder.zext(builder.bitcast(u, ir.IntType(L)), context.get_value_type(types.intp))


def _row_pair(op):
    def codegen(context, builder, sig, args):
        src, q, rows, col, dst, j0, j1, marker = sig.args
        if not (_float(src, marker) and _float(dst, marker)):
            return context.get_constant(types.intp, 0)
        cty, _ = _compute(src, marker)
        size = 4 if cty == types.float32 else 8
        L = lanes(size)
        R = len(rows)
        offs = cgutils.unpack_tuple(builder, args[2], R)
        colv = context.cast(builder, args[3], col, types.intp)
        taps = []
        for r in range(R):
            i = builder.add(context.cast(builder, offs[r], rows[r], types.intp), colv)
            idx = context.make_tuple(builder, types.UniTuple(types.intp, 2),
                                     [context.cast(builder, args[1], q, types.intp), i])
            p = _pointer(context, builder, src, args[0], types.UniTuple(types.intp, 2), idx)
            taps.append(_load(context, builder, src, marker, p, L, 0))
        if R > 2:  # the rows both windows share, reduced once
            c = _reduce(builder, taps[1:R - 1], op)
            a = _reduce(builder, [taps[0], c], op)
            b = _reduce(builder, [c, taps[R - 1]], op)
        else:
            a, b = taps
        for v, k in ((a, 5), (b, 6)):
            p = _pointer(context, builder, dst, args[4], sig.args[k], args[k])
            _store(context, builder, dst, marker, p, v, L)
        if op != "pmax":
            return context.get_constant(types.intp, 0)
        return _nan_mask(context, builder,
                         builder.fcmp_unordered("uno", taps[R - 2], taps[R - 1]), L)
    return codegen


def _pair_typer(op):
    gen = _row_pair(op)

    def typer(typingctx, src, q, rows, col, dst, j0, j1, marker):
        if not isinstance(rows, types.UniTuple) or len(rows) < 2 or not _typed(src, dst, marker):
            return None
        return types.intp(src, q, rows, col, dst, j0, j1, marker), gen
    typer.__name__ = f"vpair_{op}"
    return intrinsic(typer)


# ``vpair_{op}(src, q, rows, col, dst, j0, j1, marker)``: the vertical pass of two consecutive
# output rows of a stride-1 window of R - 1 rows (``rows``: the R row offsets, in order, of
# plane ``q`` of a 2-d ``src``): ``dst[j0 + o]`` reduces ``src[q, rows[r] + col + o]`` over
# r < R - 1 and ``dst[j1 + o]`` over 0 < r, the R - 2 rows they share reduced once.  ``max``:
# the NaN-propagating first max, returns 0; ``pmax``: the plain first max (no NaN rule), and
# returns the lanes' mask of a NaN in the last two rows (the rows that the pair adds to the
# previous pair's).
vpair_max = _pair_typer("max")
vpair_pmax = _pair_typer("pmax")


def _tile_typed(*arrs):
    """Arrays of one float accumulation type (the tiled kernels' scratch)."""
    return all(isinstance(a, types.Array) and a.dtype == arrs[0].dtype and
               a.dtype in (types.float32, types.float64) for a in arrs)


@intrinsic
def vsum_run(typingctx, src, i, n, marker):
    """The sum of the run ``src[i] .. src[i + n - 1]`` (``i`` an index of ``src``, the run
    contiguous) in the compute type, in a fixed order for every ``n``: vectors of ``L`` cells
    alternately into two vector sums started at +0, the two added, their lanes added in a
    tree, then the remaining ``n % L`` cells one by one.  (A plane of 49 cells left the
    compiler's loop one 32-wide pass, a 4-wide loop and a scalar one, in a chain.)"""
    if not isinstance(src, types.Array):
        return None
    if not _float(src, marker):  # (integer arrays: never called, the caller tests
        def nothing(context, builder, sig, args):  # vector_lanes first)
            return context.get_constant(types.float64, 0.0)
        return types.float64(src, i, n, marker), nothing
    ct = _compute(src, marker)[0]

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        L = _nlanes(src, marker)
        ft = context.get_value_type(ct)
        vt = ir.VectorType(ft, L)
        p = _elt_ptr(context, builder, src, marker,
                     _pointer(context, builder, src, args[0], sig.args[1], args[1]))
        nn = context.cast(builder, args[2], sig.args[2], types.int64)
        nv = builder.sdiv(nn, i64(L))
        acc = [cgutils.alloca_once_value(builder, ir.Constant(vt, None)) for _ in range(2)]
        half = builder.sdiv(nv, i64(2))
        with cgutils.for_range(builder, half, intp=i64) as loop:
            base = builder.mul(loop.index, i64(2 * L))
            for r in range(2):
                q = builder.gep(p, [builder.add(base, i64(r * L))])
                v = _load(context, builder, src, marker, q, L, 0)
                builder.store(builder.fadd(builder.load(acc[r]), v), acc[r])
        with builder.if_then(builder.icmp_signed("!=", builder.mul(half, i64(2)), nv)):
            q = builder.gep(p, [builder.mul(builder.sub(nv, i64(1)), i64(L))])
            v = _load(context, builder, src, marker, q, L, 0)
            builder.store(builder.fadd(builder.load(acc[0]), v), acc[0])
        a = builder.fadd(builder.load(acc[0]), builder.load(acc[1]))
        i32 = ir.IntType(32)
        w = L
        while w > 1:
            w //= 2
            hi = builder.shuffle_vector(a, ir.Constant(vt, ir.Undefined),
                                        ir.Constant(ir.VectorType(i32, L),
                                                    [w + k if k < w else k for k in range(L)]))
            a = builder.fadd(a, hi)
        tot = cgutils.alloca_once_value(builder, builder.extract_element(a, i32(0)))
        start = builder.mul(nv, i64(L))
        with cgutils.for_range(builder, builder.sub(nn, start), intp=i64) as loop:
            q = builder.gep(p, [builder.add(start, loop.index)])
            v = _load(context, builder, src, marker, q, 1, 0)
            builder.store(builder.fadd(builder.load(tot), builder.extract_element(v, i32(0))),
                          tot)
        return builder.load(tot)
    return ct(src, i, n, marker), codegen


def _elt_ptr(context, builder, arrty, marker, p):
    """``p`` as a pointer to the array's stored elements (uint16 bits for float16)."""
    elt = ir.IntType(16) if _half(arrty, marker) else context.get_data_type(arrty.dtype)
    return builder.bitcast(p, elt.as_pointer())


@intrinsic
def vtile_col(typingctx, src, i0, i1, i2, V, A, j, codes, marker):
    """The tiled kernels' vertical pass for ``L`` columns: over the rows at ``src[i0]``,
    ``src[i1]`` and (three codes) ``src[i2]``, in order, each column's first max / last NaN
    (``v > m or v != v``) to ``V[j]`` and the code of its row (``codes[r]``) to ``A[j]``."""
    if not (_float(src, marker) and _tile_typed(V, A) and
            _compute(src, marker)[0] == V.dtype and isinstance(codes, types.UniTuple) and
            len(codes) in (2, 3)):
        return None
    R = len(codes)

    def codegen(context, builder, sig, args):
        L = _tlanes(src, marker)
        rows = [_load(context, builder, src, marker,
                      _pointer(context, builder, src, args[0], sig.args[1 + r], args[1 + r]),
                      L, 0) for r in range(R)]
        code = [_splat(builder, context.cast(builder, c, codes.dtype, V.dtype), L)
                for c in cgutils.unpack_tuple(builder, args[7], R)]
        m, a = rows[0], code[0]
        for v, c in zip(rows[1:], code[1:]):
            take = _takes(builder, v, m)
            m = builder.select(take, v, m)
            a = builder.select(take, c, a)
        for arr, v in ((4, m), (5, a)):
            p = _pointer(context, builder, sig.args[arr], args[arr], sig.args[6], args[6])
            _store(context, builder, sig.args[arr], marker, p, v, L)
        return context.get_dummy_value()
    return types.void(src, i0, i1, i2, V, A, j, codes, marker), codegen


@intrinsic
def vtile_merge3(typingctx, V, A, k, CD, c1, c2, marker):
    """The codes of ``L`` consecutive 3-wide windows at stride 2 (``make_max_backward_tiled``'s
    merge loop, windows ``k .. k + L - 1``): window ``j`` merges the columns ``2 j``, ``2 j +
    1``, ``2 j + 2`` of the row maxima ``V`` and their row codes ``A`` (``+ c1``, ``+ c2`` for
    the second and third column) with ``window._merge``'s rule, in that order, and its code
    goes to ``CD[j]``.  Reads ``V[2 k .. 2 k + 2 L + 1]``."""
    if not _tile_typed(V, A, CD):
        return None

    def codegen(context, builder, sig, args):
        Vt = sig.args[0]
        L = _tlanes(Vt, marker)
        i32 = ir.IntType(32)
        kk = context.cast(builder, args[2], sig.args[2], types.intp)
        k2 = builder.mul(kk, ir.Constant(kk.type, 2))
        ev = ir.Constant(ir.VectorType(i32, L), list(range(0, 2 * L, 2)))
        od = ir.Constant(ir.VectorType(i32, L), list(range(1, 2 * L, 2)))

        def columns(arr):
            p = _pointer(context, builder, Vt, arr, types.intp, k2)
            a, b = (_load(context, builder, Vt, marker, p, L, o) for o in (0, L))
            a2, b2 = (_load(context, builder, Vt, marker, p, L, o) for o in (2, L + 2))
            return (builder.shuffle_vector(a, b, ev), builder.shuffle_vector(a, b, od),
                    builder.shuffle_vector(a2, b2, ev))
        v0, v1, v2 = columns(args[0])
        a0, a1, a2 = columns(args[1])
        a1 = builder.fadd(a1, _splat(builder, context.cast(builder, args[4], sig.args[4],
                                                           Vt.dtype), L))
        a2 = builder.fadd(a2, _splat(builder, context.cast(builder, args[5], sig.args[5],
                                                           Vt.dtype), L))
        m, mi = v0, a0
        for v, ci in ((v1, a1), (v2, a2)):
            take = builder.or_(
                builder.or_(builder.fcmp_ordered(">", v, m),
                            builder.and_(builder.fcmp_ordered("==", v, m),
                                         builder.fcmp_ordered("<", ci, mi))),
                builder.and_(builder.fcmp_unordered("uno", v, v),
                             builder.or_(builder.fcmp_ordered("ord", m, m),
                                         builder.fcmp_ordered(">", ci, mi))))
            m = builder.select(take, v, m)
            mi = builder.select(take, ci, mi)
        q = _pointer(context, builder, sig.args[3], args[3], types.intp, kk)
        _store(context, builder, sig.args[3], marker, q, mi, L)
        return context.get_dummy_value()
    return types.void(V, A, k, CD, c1, c2, marker), codegen


@intrinsic
def vtile_rows3(typingctx, CD, G, b, bn, codes, dst, o0, o1, marker):
    """Two input rows of ``make_max_backward_tiled``'s 3 x 3 windows (padding 1) at once, for
    ``L`` windows of a row: window ``j`` (codes ``CD[b + j]``, gradients ``G[b + j]``; the next
    output row's at ``bn + j``) gives cells ``2 j`` and ``2 j + 1`` of the rows at ``dst[o0]`` and
    ``dst[o1]``, each the sum, started at +0 and in output order, of the gradients of the
    windows whose code (``codes``: the 9 taps' codes, a tuple) names that cell, as the scalar
    loops add them.  Writes ``2 L`` cells of each row."""
    if not (_tile_typed(CD, G) and _float(dst, marker) and
            _compute(dst, marker)[0] == CD.dtype and isinstance(codes, types.UniTuple) and
            len(codes) == 9):
        return None

    def codegen(context, builder, sig, args):
        At = sig.args[0]
        L = _tlanes(At, marker)
        i32 = ir.IntType(32)
        vec = {}
        for nm, ai, bi, off in (("k00", 0, 2, 0), ("k01", 0, 2, 1), ("k10", 0, 3, 0),
                                ("k11", 0, 3, 1), ("g00", 1, 2, 0), ("g01", 1, 2, 1),
                                ("g10", 1, 3, 0), ("g11", 1, 3, 1)):
            p = _pointer(context, builder, sig.args[ai], args[ai], sig.args[bi], args[bi])
            vec[nm] = _load(context, builder, sig.args[ai], marker, p, L, off)
        code = [_splat(builder, context.cast(builder, c, sig.args[4].dtype, At.dtype), L)
                for c in cgutils.unpack_tuple(builder, args[4], 9)]
        zero = ir.Constant(vec["k00"].type, None)

        def share(k, c, g):  # the gradient where the window's code names the cell, else +0
            return builder.select(builder.fcmp_ordered("==", vec[k], code[c]), vec[g], zero)

        def total(terms):
            t = builder.fadd(zero, share(*terms[0]))
            for term in terms[1:]:
                t = builder.fadd(t, share(*term))
            return t
        rows = (
            (total([("k00", 4, "g00")]),
             total([("k00", 5, "g00"), ("k01", 3, "g01")])),
            (total([("k00", 7, "g00"), ("k10", 1, "g10")]),
             total([("k00", 8, "g00"), ("k01", 6, "g01"), ("k10", 2, "g10"),
                    ("k11", 0, "g11")])),
        )
        H = L // 2
        lo = ir.Constant(ir.VectorType(i32, L), [x for o in range(H) for x in (o, L + o)])
        hi = ir.Constant(ir.VectorType(i32, L), [x for o in range(H, L) for x in (o, L + o)])
        for (e, o), di in zip(rows, (6, 7)):
            p = _pointer(context, builder, sig.args[5], args[5], sig.args[di], args[di])
            _store(context, builder, sig.args[5], marker, p, builder.shuffle_vector(e, o, lo), L)
            et = context.get_data_type(sig.args[5].dtype)
            p2 = builder.gep(builder.bitcast(p, et.as_pointer()), [ir.Constant(ir.IntType(64), L)])
            _store(context, builder, sig.args[5], marker, p2, builder.shuffle_vector(e, o, hi), L)
        return context.get_dummy_value()
    return types.void(CD, G, b, bn, codes, dst, o0, o1, marker), codegen


@intrinsic
def vpair_cells(typingctx, G, K, ka, kb, w, ROW, rb, codes):
    """``make_max_recompute_pairs``' pass over the ``w`` channels of one window pair: with the
    upper covering row's gradients and codes at ``G[ka]``, ``K[ka]`` (window ``i - 1``) and
    ``G[ka + w]``, ``K[ka + w]`` (window ``i``), the lower row's at ``kb``, cell ``ROW[rb + c]``
    is the sum, from +0 in output order, of the gradients whose code names it (``codes``: a0,
    a1, a2, b0, b1, b2), and ``ROW[rb + w + c]`` likewise.  In vectors of TILE_BYTES (AVX-512:
    16 float32 lanes, where the compiler's loop took 8), the last ``w % L`` channels one by
    one: the same additions as the scalar loop, bit for bit."""
    if not (_tile_typed(G, ROW) and isinstance(K, types.Array) and K.dtype == types.int32 and
            isinstance(codes, types.UniTuple) and len(codes) == 6):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        L = tile_lanes_for(context.get_abi_sizeof(context.get_data_type(G.dtype)))
        ft = context.get_data_type(G.dtype)
        i32 = ir.IntType(32)

        def base(ai):
            return builder.bitcast(
                _pointer(context, builder, sig.args[ai], args[ai], types.intp,
                         context.get_constant(types.intp, 0)),
                (i32 if ai == 1 else ft).as_pointer())
        pg, pk, pr = base(0), base(1), base(5)
        ka, kb, w, rb = (context.cast(builder, args[j], sig.args[j], types.int64)
                         for j in (2, 3, 4, 6))
        cs = [context.cast(builder, c, codes.dtype, types.int32)
              for c in cgutils.unpack_tuple(builder, args[7], 6)]

        def cells(c, n):
            def at(ptr, off, ty):
                q = builder.gep(ptr, [builder.add(off, c)])
                return builder.load(builder.bitcast(q, ir.VectorType(ty, n).as_pointer()),
                                    align=1)
            kw, kbw = builder.add(ka, w), builder.add(kb, w)
            ga0, ka0 = at(pg, ka, ft), at(pk, ka, i32)
            ga1, ka1 = at(pg, kw, ft), at(pk, kw, i32)
            gb0, kb0 = at(pg, kb, ft), at(pk, kb, i32)
            gb1, kb1 = at(pg, kbw, ft), at(pk, kbw, i32)
            zero = ir.Constant(ir.VectorType(ft, n), None)

            def share(k, code, g):
                return builder.select(builder.icmp_signed("==", k, _splat(builder, code, n)),
                                      g, zero)
            a0, a1, a2, b0, b1, b2 = cs
            sm = zero
            for k, code, g in ((ka0, a2, ga0), (ka1, a0, ga1), (kb0, b2, gb0), (kb1, b0, gb1)):
                sm = builder.fadd(sm, share(k, code, g))
            so = zero
            for k, code, g in ((ka1, a1, ga1), (kb1, b1, gb1)):
                so = builder.fadd(so, share(k, code, g))
            for off, v in ((rb, sm), (builder.add(rb, w), so)):
                q = builder.gep(pr, [builder.add(off, c)])
                builder.store(v, builder.bitcast(q, v.type.as_pointer()), align=1)
        nv = builder.sdiv(w, i64(L))
        with cgutils.for_range(builder, nv, intp=i64) as loop:
            cells(builder.mul(loop.index, i64(L)), L)
        done = builder.mul(nv, i64(L))
        with cgutils.for_range(builder, builder.sub(w, done), intp=i64) as loop:
            cells(builder.add(done, loop.index), 1)
        return context.get_dummy_value()
    return types.void(G, K, ka, kb, w, ROW, rb, codes), codegen


@intrinsic
def rows_nan(typingctx, src, i, j, marker):
    """Mask of the lanes (a vector from ``src[i]`` and one from ``src[j]``) holding a NaN."""
    if not _float(src, marker):
        def none(context, builder, sig, args):
            return context.get_constant(types.intp, 0)
        return types.intp(src, i, j, marker), none

    def codegen(context, builder, sig, args):
        a, b, L = _vectors2(context, builder, sig, args, marker)
        return _nan_mask(context, builder, builder.fcmp_unordered("uno", a, b), L)
    return types.intp(src, i, j, marker), codegen


@intrinsic
def fwin22_maxi(typingctx, src, i0, i1, dst, j, idst, k, base, width, marker):
    """The 2 x 2 windows of ``fwin22_max`` with their argmax: ``idst[k + o]`` gets the plane
    position of output ``o``'s maximum, ``base + 2 * o + r * width + c`` for its tap (r, c) (the
    first max, or the last NaN, in row-major order, as the scalar kernels pick it)."""
    if not (_float(src, marker) and _float(dst, marker) and _typed(src, dst, marker)
            and isinstance(idst.dtype, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        cty, _ = _compute(src, marker)
        size = 4 if cty == types.float32 else 8
        L, E = lanes(size), 16 // size
        taps = []
        for r in range(2):
            p = _pointer(context, builder, src, args[0], sig.args[1 + r], args[1 + r])
            taps += _taps(context, builder, src, marker, p, 2, 2, L, E)
        i32 = ir.IntType(32)
        m = taps[0]
        code = ir.Constant(ir.VectorType(i32, L), [0] * L)
        for c in range(1, 4):  # tap c: row c // 2, column c % 2
            v = taps[c]
            take = _takes(builder, v, m)
            m = builder.select(take, v, m)
            code = builder.select(take, ir.Constant(ir.VectorType(i32, L), [c] * L), code)
        fix = ir.Constant(ir.VectorType(i32, L), _masks(L, E)[1])
        m = builder.shuffle_vector(m, ir.Constant(m.type, ir.Undefined), fix)
        code = builder.shuffle_vector(code, ir.Constant(code.type, ir.Undefined), fix)
        q = _pointer(context, builder, dst, args[3], sig.args[4], args[4])
        _store(context, builder, dst, marker, q, m, L)
        i64 = ir.IntType(64)
        v64 = ir.VectorType(i64, L)

        def splat(val):
            vec = ir.Constant(v64, ir.Undefined)
            for o in range(L):
                vec = builder.insert_element(vec, val, i32(o))
            return vec
        c64 = builder.sext(code, v64)
        row = builder.lshr(c64, ir.Constant(v64, [1] * L))
        col = builder.and_(c64, ir.Constant(v64, [1] * L))
        b = splat(context.cast(builder, args[7], sig.args[7], types.int64))
        w = splat(context.cast(builder, args[8], sig.args[8], types.int64))
        pos = builder.add(builder.add(b, ir.Constant(v64, [2 * o for o in range(L)])),
                          builder.add(builder.mul(row, w), col))
        ity = context.get_data_type(idst.dtype)
        if ity.width != 64:
            pos = builder.trunc(pos, ir.VectorType(ity, L))
        ip = _pointer(context, builder, idst, args[5], sig.args[6], args[6])
        builder.store(pos, builder.bitcast(ip, ir.VectorType(ity, L).as_pointer()), align=1)
        return context.get_dummy_value()
    return types.void(src, i0, i1, dst, j, idst, k, base, width, marker), codegen


@intrinsic
def vdiv(typingctx, src, i, dens, j, dst, k, marker):
    """One vector of quotients: ``dst[k + o] = (+0 + src[i + o]) / d0 / d1 ...`` for the
    entries of the tuple ``dens``, each an array (``d[j + o]``, of the compute type) or a number
    (every lane), in that order.  The compiler leaves a loop of divisions scalar (its cost model
    prices a vector division too high), at 4-5 cycles a quotient; the same divisions in one
    vector instruction give the same bits (IEEE division is correctly rounded per lane).
    Integer arrays type-check and emit nothing (callers test ``vector_lanes`` first)."""
    if not isinstance(dens, types.BaseTuple):
        return None
    if not (_float(src, marker) and _float(dst, marker)):
        return _emits_nothing(types.void(src, i, dens, j, dst, k, marker))
    if not _typed(src, dst, marker):
        return None
    cty, _ = _compute(src, marker)
    for d in dens:
        if isinstance(d, types.Array):
            if d.dtype != cty:
                return None
        elif not isinstance(d, (types.Float, types.Integer)):
            return None

    def codegen(context, builder, sig, args):
        cty = _compute(src, marker)[0]
        L = _nlanes(src, marker)
        p = _pointer(context, builder, src, args[0], sig.args[1], args[1])
        m = _load(context, builder, src, marker, p, L, 0)
        m = builder.fadd(ir.Constant(m.type, None), m)  # (as the scalar loops' +0 start)
        vals = cgutils.unpack_tuple(builder, args[2], len(dens))
        for d, v in zip(dens, vals):
            if isinstance(d, types.Array):
                q = _pointer(context, builder, d, v, sig.args[3], args[3])
                dv = _load(context, builder, d, marker, q, L, 0)
            else:
                dv = _splat(builder, context.cast(builder, v, d, cty), L)
            m = builder.fdiv(m, dv)
        q = _pointer(context, builder, dst, args[4], sig.args[5], args[5])
        _store(context, builder, dst, marker, q, m, L)
        return context.get_dummy_value()
    return types.void(src, i, dens, j, dst, k, marker), codegen


def _avx2():
    """Whether the code Numba emits may use AVX2."""
    return _host_has("avx2")


def _permute(builder, v, iv, L):
    """``v[iv[o]]`` for every lane ``o`` (indices taken modulo L): one ``vpermps`` with AVX2
    (float64 lanes as pairs of float32 ones), else one select per source lane."""
    i32 = ir.IntType(32)
    wide = 2 if isinstance(v.type.element, ir.DoubleType) else 1
    iv = builder.and_(iv, ir.Constant(iv.type, [L - 1] * L))
    if _avx2() and L * wide == 8:
        v8 = builder.bitcast(v, ir.VectorType(ir.FloatType(), 8))
        if L == 4:  # double lane o -> float lanes 2 * iv[o], 2 * iv[o] + 1
            iv = builder.shuffle_vector(iv, iv, ir.Constant(ir.VectorType(i32, 8),
                                                            [o // 2 for o in range(8)]))
            iv = builder.add(builder.shl(iv, ir.Constant(iv.type, [1] * 8)),
                             ir.Constant(iv.type, [o % 2 for o in range(8)]))
        fnty = ir.FunctionType(v8.type, [v8.type, iv.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx2.permps")
        return builder.bitcast(builder.call(fn, [v8, iv]), v.type)
    r = ir.Constant(v.type, None)
    for j in range(L):
        sp = _splat(builder, builder.extract_element(v, i32(j)), L)
        r = builder.select(builder.icmp_unsigned("==", iv, ir.Constant(iv.type, [j] * L)), sp, r)
    return r


@intrinsic
def vspread(typingctx, src, s0, nsrc, idx, i0, dst, d0, first, marker):
    """One vector of picks from a short row: ``dst[d0 + o] = (+0 if first else dst[d0 + o]) +
    (src[s0 + idx[i0 + o]] if 0 <= idx[i0 + o] < nsrc else +0)``, for compute-type arrays
    ``src``/``dst`` and an int32 ``idx``; ``nsrc`` at most a vector's lanes (the row lies in one
    register, and the picks are one permute instead of a load per cell).  ``src[s0:]`` must
    hold a whole vector.  Integer arrays type-check and emit nothing."""
    if not (_float(src, marker) and _float(dst, marker)):
        return _emits_nothing(types.void(src, s0, nsrc, idx, i0, dst, d0, first, marker))
    if not (_typed(src, dst, marker) and isinstance(idx, types.Array)
            and idx.dtype == types.int32):
        return None

    def codegen(context, builder, sig, args):
        L = _nlanes(src, marker)
        v = _load(context, builder, src, marker,
                  _pointer(context, builder, src, args[0], sig.args[1], args[1]), L, 0)
        ip = _pointer(context, builder, idx, args[3], sig.args[4], args[4])
        vty = ir.VectorType(ir.IntType(32), L)
        iv = builder.load(builder.bitcast(ip, vty.as_pointer()), align=1)
        n = context.cast(builder, args[2], sig.args[2], types.int32)
        pick = builder.select(builder.icmp_unsigned("<", iv, _splat(builder, n, L)),
                              _permute(builder, v, iv, L), ir.Constant(v.type, None))
        dp = _pointer(context, builder, dst, args[5], sig.args[6], args[6])
        old = _load(context, builder, dst, marker, dp, L, 0)
        f = context.cast(builder, args[7], sig.args[7], types.boolean)
        base = builder.select(f, ir.Constant(v.type, None), old)
        _store(context, builder, dst, marker, dp, builder.fadd(base, pick), L)
        return context.get_dummy_value()
    return types.void(src, s0, nsrc, idx, i0, dst, d0, first, marker), codegen


# ----------------------------------------------------------------------------- streaming stores

def call_void(builder, name):
    """Emit a call of the argument-less, void LLVM intrinsic ``name``."""
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []), name)
    builder.call(fn, [])


@intrinsic
def sfence(typingctx):
    """Orders the streaming stores before every later store (end of a task)."""
    def codegen(context, builder, sig, args):
        call_void(builder, "llvm.x86.sse.sfence")
        return context.get_dummy_value()
    return types.void(), codegen


def _emit_stream(context, builder, src, sarr, s0, dst, darr, d0, n, marker, lines=False,
                 add=None, dty=types.int64):
    """IR of ``dst[d0:d0 + n] = src[s0:s0 + n]`` (1-d arrays of the same type, i64 indices):
    streaming vectors over the aligned middle, plain stores over the cells before and after it
    (all of them where ``dst`` is not aligned to its element size).  ``lines``: the middle is
    whole 64-byte lines, so that a line the copy shares with another one gets plain stores
    only (a line written half by streaming stores and half by plain ones costs ~150 ns).
    ``add`` (i64 ``s1``, i1 ``two``): the cells are ``(+0 + src[s0 + k])``, plus
    ``src[s1 + k]`` where ``two`` (float arrays of one type).  ``dty``: the type of ``d0``, an
    index of ``dst`` (a tuple of ints for an n-d ``dst`` whose last dim has unit stride)."""
    i64 = ir.IntType(64)
    elt = context.get_data_type(dst.dtype)
    isz = context.get_abi_sizeof(elt)
    L = _nlanes(dst, marker)
    vt = ir.VectorType(elt, L)
    ps = builder.bitcast(_pointer(context, builder, src, sarr, types.int64, s0), elt.as_pointer())
    pd = builder.bitcast(_pointer(context, builder, dst, darr, dty, d0), elt.as_pointer())
    a = builder.ptrtoint(pd, i64)
    A = i64(max(L * isz, 64) if lines else L * isz)
    ok = builder.icmp_unsigned("==", builder.urem(a, i64(isz)), i64(0))
    mis = builder.udiv(builder.urem(builder.sub(A, builder.urem(a, A)), A), i64(isz))
    h = builder.select(ok, builder.select(builder.icmp_signed("<", mis, n), mis, n), n)
    per = A.constant // isz  # cells per aligned block (a whole number of vectors)
    nv = builder.mul(builder.sdiv(builder.sub(n, h), i64(per)), i64(per // L))
    m = builder.add(h, builder.mul(nv, i64(L)))
    nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
    if add is not None:
        ps1 = builder.bitcast(_pointer(context, builder, src, sarr, types.int64, add[0]),
                              elt.as_pointer())

    def value(k, ty, align):
        v = builder.load(builder.bitcast(builder.gep(ps, [k]), ty.as_pointer()), align=align)
        if add is None:
            return v
        v = builder.fadd(ir.Constant(ty, None), v)
        w = builder.load(builder.bitcast(builder.gep(ps1, [k]), ty.as_pointer()), align=align)
        return builder.select(add[1], builder.fadd(v, w), v)

    def copy(k):
        builder.store(value(k, elt, isz), builder.gep(pd, [k]))
    with cgutils.for_range(builder, h, intp=i64) as loop:
        copy(loop.index)
    with cgutils.for_range(builder, nv, intp=i64) as loop:
        k = builder.add(h, builder.mul(loop.index, i64(L)))
        v = value(k, vt, isz)
        st = builder.store(v, builder.bitcast(builder.gep(pd, [k]), vt.as_pointer()),
                           align=L * isz)
        st.set_metadata("nontemporal", nontemporal)
    with cgutils.for_range(builder, builder.sub(n, m), intp=i64) as loop:
        copy(builder.add(m, loop.index))


def _stream_types(src, dst, marker):
    return isinstance(src, types.Array) and isinstance(dst, types.Array) and \
        src.dtype == dst.dtype and _float(dst, marker)


def _emits_nothing(sig):
    """The typing of a void intrinsic that emits no code for these arrays (integer arrays for a
    float intrinsic or the reverse: the caller tests ``vector_lanes`` / ``int_lanes`` first)."""
    def nothing(context, builder, sig, args):
        return context.get_dummy_value()
    return sig, nothing


def _not_streamed(sig):
    """The typing of a streaming intrinsic that writes nothing and returns False (arrays of
    different types: the caller's plain loop runs, decided at compile time)."""
    def nothing(context, builder, sig, args):
        return context.get_constant(types.boolean, False)
    return sig, nothing


@intrinsic
def stream_lines(typingctx, src, s0, dst, d0, n, marker):
    """``dst[d0:d0 + n] = src[s0:s0 + n]`` with streaming stores over the whole 64-byte lines
    of the destination, plain ones over the partial lines at its two ends; True.  ``d0``: an
    int, or a tuple of ints indexing an n-d ``dst`` whose last dim has unit stride (the cells
    then run along that dim).  False, and nothing copied, where the arrays' types differ
    (float16 results of float32 scratch): the caller's plain loop then runs, decided at compile
    time."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
        return None
    if not _stream_types(src, dst, marker):
        return _not_streamed(types.boolean(src, s0, dst, d0, n, marker))
    tup = isinstance(d0, types.BaseTuple)

    def codegen(context, builder, sig, args):
        s0_, n_ = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 4))
        d0_ = args[3] if tup else context.cast(builder, args[3], sig.args[3], types.int64)
        _emit_stream(context, builder, src, args[0], s0_, dst, args[2], d0_, n_, marker,
                     lines=True, dty=sig.args[3] if tup else types.int64)
        return context.get_constant(types.boolean, True)
    return types.boolean(src, s0, dst, d0, n, marker), codegen


@intrinsic
def streams(typingctx, src, dst, marker):
    """Whether ``stream_lines(src, ..., dst, ..., marker)`` streams (True) or leaves the copy to
    the caller (False): a constant, known at compile time."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
        return None
    ok = _stream_types(src, dst, marker)

    def codegen(context, builder, sig, args):
        return context.get_constant(types.boolean, ok)
    return types.boolean(src, dst, marker), codegen


@intrinsic
def stream_sum(typingctx, src, s0, s1, two, dst, d0, n, marker):
    """``dst[d0 + k] = (+0 + src[s0 + k])``, ``+ src[s1 + k]`` where ``two``, for k < n, the
    order and bits of the scalar loops; streaming stores over the destination's whole lines,
    plain ones over the partial lines at its ends.  True; False and nothing written where the
    arrays' types differ (float16 results of float32 rows: the caller's loop runs)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)):
        return None
    sig = types.boolean(src, s0, s1, two, dst, d0, n, marker)
    if not _stream_types(src, dst, marker) or _is_half(marker):
        return _not_streamed(sig)

    def codegen(context, builder, sig, args):
        s0_, s1_, d0_, n_ = (context.cast(builder, args[k], sig.args[k], types.int64)
                             for k in (1, 2, 5, 6))
        two_ = context.cast(builder, args[3], sig.args[3], types.boolean)
        _emit_stream(context, builder, src, args[0], s0_, dst, args[4], d0_, n_, marker,
                     lines=True, add=(s1_, two_))
        return context.get_constant(types.boolean, True)
    return sig, codegen


@intrinsic
def stream_upto(typingctx, src, done, have, dst, d0, marker):
    """Streams ``src[done:have]`` to ``dst[d0 + done:]`` up to the last vector boundary of the
    destination before ``have`` (all of it where ``have`` is negative: up to ``-have``), once
    at least ``STREAM_PENDING`` cells are pending; returns the new ``done``.  A task that
    builds its results in scratch streams them out as it goes, so that its writes overlap its
    compute."""
    if not _stream_types(src, dst, marker):
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        done_, have_, d0_ = (context.cast(builder, args[k], sig.args[k], types.int64)
                             for k in (1, 2, 4))
        elt = context.get_data_type(dst.dtype)
        isz = context.get_abi_sizeof(elt)
        L = _nlanes(dst, marker)
        A = i64(L * isz)
        final = builder.icmp_signed("<", have_, i64(0))
        last = builder.select(final, builder.neg(have_), have_)
        # the last vector boundary of dst before ``last`` (none, or dst not aligned to its
        # elements: nothing until the end)
        pe = _pointer(context, builder, dst, args[3], types.int64, builder.add(d0_, last))
        a = builder.ptrtoint(pe, i64)
        ok = builder.icmp_unsigned("==", builder.urem(a, i64(isz)), i64(0))
        back = builder.udiv(builder.urem(a, A), i64(isz))
        end = builder.select(ok, builder.sub(last, back), done_)
        few = builder.icmp_signed("<", builder.sub(end, done_), i64(STREAM_PENDING))
        end = builder.select(final, last, builder.select(few, done_, end))
        _emit_stream(context, builder, src, args[0], done_, dst, args[3],
                     builder.add(d0_, done_), builder.sub(end, done_), marker)
        return end
    return types.int64(src, done, have, dst, d0, marker), codegen


# channels per ``vring_add`` (float32: one AVX-512 register; 8 lanes took 0.9-1.1x the time)
RING_LANES = 16


def _sfx(t):
    """An LLVM intrinsic's name suffix of vector type ``t`` (elements float, double or int)."""
    e = t.element
    es = "f32" if isinstance(e, ir.FloatType) else "f64" if isinstance(e, ir.DoubleType) \
        else f"i{e.width}"
    return f"v{t.count}{es}.v{t.count}p0"


def _gather(builder, ptrs, mask, vt, align):
    """``llvm.masked.gather``: the lanes of ``vt`` at ``ptrs`` where ``mask``, else zero."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vt, [ptrs.type, ir.IntType(32), mask.type, vt]),
        "llvm.masked.gather." + _sfx(vt))
    return builder.call(fn, [ptrs, ir.IntType(32)(align), mask, ir.Constant(vt, None)])


def _scatter(builder, v, ptrs, mask, align):
    """``llvm.masked.scatter``: the lanes of ``v`` to ``ptrs`` where ``mask``."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [v.type, ptrs.type, ir.IntType(32),
                                                        mask.type]),
        "llvm.masked.scatter." + _sfx(v.type))
    builder.call(fn, [v, ptrs, ir.IntType(32)(align), mask])


def _lane_pointers(context, builder, arrty, arr, cell, L):
    """Pointers to ``arr[cell[l]]`` (a 1-d array, ``cell`` an <L x i64> vector)."""
    i64 = ir.IntType(64)
    et = context.get_data_type(arrty.dtype)
    base = builder.ptrtoint(_pointer(context, builder, arrty, arr, types.intp,
                                     context.get_constant(types.intp, 0)), i64)
    size = context.get_abi_sizeof(et)
    return builder.inttoptr(
        builder.add(_splat(builder, base, L), builder.mul(cell, ir.Constant(cell.type,
                                                                            [size] * L))),
        ir.VectorType(et.as_pointer(), L)), size


def _index_vector(context, builder, arrty, ptr, L):
    """``L`` consecutive indices from ``ptr`` as <L x i64> (signed or unsigned types)."""
    ity = context.get_data_type(arrty.dtype)
    iv = builder.load(builder.bitcast(ptr, ir.VectorType(ity, L).as_pointer()), align=1)
    if ity.width < 64:
        ext = builder.sext if arrty.dtype.signed else builder.zext
        iv = ext(iv, ir.VectorType(ir.IntType(64), L))
    return iv


@intrinsic
def vscatter_set(typingctx, dst, idx, at, src, sat, C, c, T):
    """Max unpooling's stores for ``RING_LANES`` channels ``c ..`` of one input cell
    (channels-last): lane ``l`` takes ``i = idx[at + l]`` and, where ``0 <= i < T``, stores
    ``src[sat + l]`` to ``dst[i * C + c + l]`` (one scatter: distinct channels, so no two
    lanes meet)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and
            dst.dtype == src.dtype and isinstance(idx, types.Array) and
            isinstance(idx.dtype, types.Integer) and dst.ndim == 1):
        return None
    L = RING_LANES

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        v64 = ir.VectorType(i64, L)
        iv = _index_vector(context, builder, sig.args[1],
                           _pointer(context, builder, sig.args[1], args[1], sig.args[2],
                                    args[2]), L)
        cc, cl, tt = (_splat(builder, context.cast(builder, args[k], sig.args[k], types.int64),
                             L) for k in (5, 6, 7))
        ok = builder.icmp_unsigned("<", iv, tt)
        cell = builder.add(builder.add(builder.mul(iv, cc), cl), ir.Constant(v64, list(range(L))))
        ptrs, size = _lane_pointers(context, builder, sig.args[0], args[0], cell, L)
        et = context.get_data_type(sig.args[3].dtype)
        ps = _pointer(context, builder, sig.args[3], args[3], sig.args[4], args[4])
        v = builder.load(builder.bitcast(ps, ir.VectorType(et, L).as_pointer()), align=1)
        _scatter(builder, v, ptrs, ok, size)
        return context.get_dummy_value()
    return types.void(dst, idx, at, src, sat, C, c, T), codegen


@intrinsic
def vring_add(typingctx, ring, idx, at, g, gat, off, lim, hc, wrap, C, c, marker):
    """``make_max_ring``'s adds for ``RING_LANES`` channels ``c ..`` of one output cell, as a
    gather, an add and a scatter: lane ``l`` takes ``j = idx[at + l] - off``; where
    ``0 <= j < lim``, ring cell ``(q * C + c + l)``, ``q = j + hc`` less ``wrap`` once it
    reaches ``wrap``, gets ``g[gat + l]`` added (the scalar loop's one add, the same bits).
    Lanes are distinct channels, hence distinct cells: no two lanes meet.  Returns whether
    every lane's ``j`` was in range (else the lanes out of range added nothing)."""
    if not (isinstance(ring, types.Array) and ring.dtype in (types.float32, types.float64) and
            isinstance(idx, types.Array) and isinstance(idx.dtype, types.Integer) and
            isinstance(g, types.Array) and _float(g, marker) and
            _compute(g, marker)[0] == ring.dtype):
        return None
    L = RING_LANES

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        v64 = ir.VectorType(i64, L)
        ft = context.get_value_type(sig.args[0].dtype)
        iv = _index_vector(context, builder, sig.args[1],
                           _pointer(context, builder, sig.args[1], args[1], sig.args[2],
                                    args[2]), L)

        def splat(k):
            return _splat(builder, context.cast(builder, args[k], sig.args[k], types.int64), L)
        j = builder.sub(iv, splat(5))
        ok = builder.icmp_unsigned("<", j, splat(6))
        q = builder.add(j, splat(7))
        w = splat(8)
        q = builder.select(builder.icmp_signed(">=", q, w), builder.sub(q, w), q)
        cell = builder.add(builder.add(builder.mul(q, splat(9)), splat(10)),
                           ir.Constant(v64, list(range(L))))
        ptrs, size = _lane_pointers(context, builder, sig.args[0], args[0], cell, L)
        old = _gather(builder, ptrs, ok, ir.VectorType(ft, L), size)
        gp = _pointer(context, builder, sig.args[3], args[3], sig.args[4], args[4])
        _scatter(builder, builder.fadd(old, _load(context, builder, sig.args[3], marker, gp, L,
                                                  0)), ptrs, ok, size)
        return builder.icmp_signed("==", builder.bitcast(ok, ir.IntType(L)),
                                   ir.Constant(ir.IntType(L), -1))
    return types.boolean(ring, idx, at, g, gat, off, lim, hc, wrap, C, c, marker), codegen


@intrinsic
def vrun_argmax(typingctx, src, i, n, marker):
    """The first maximum / last NaN of the run ``src[i] .. src[i + n - 1]`` (a float array, ``i``
    an index or a tuple of them, the run unit-stride; ``n`` at least a vector) and its offset in the run, as scanning it in order with
    ``v > m or v != v`` finds them: each lane of a vector keeps its own over the run's vectors,
    the lanes are merged (a larger value, an equal one at a smaller offset, a NaN at a larger
    one), then the cells after the last whole vector are scanned in order.  Integer arrays: a
    typing only (never called: the caller tests ``vector_lanes`` first)."""
    if not isinstance(src, types.Array) or (src.ndim != 1 and src.layout != "C"):
        return None
    if not _float(src, marker):
        def nothing(context, builder, sig, args):
            return context.make_tuple(builder, sig.return_type, [
                context.get_constant(sig.return_type[0], 0),
                context.get_constant(types.int64, 0)])
        return types.Tuple((src.dtype, types.int64))(src, i, n, marker), nothing
    ct = _compute(src, marker)[0]
    rty = types.Tuple((ct, types.int64))

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        L = _nlanes(src, marker)
        v64 = ir.VectorType(i64, L)
        p = _elt_ptr(context, builder, src, marker,
                     _pointer(context, builder, src, args[0], sig.args[1], args[1]))
        nn = context.cast(builder, args[2], sig.args[2], types.int64)
        nv = builder.sdiv(nn, i64(L))
        m = cgutils.alloca_once_value(builder, _load(context, builder, src, marker, p, L, 0))
        pos = cgutils.alloca_once_value(builder, ir.Constant(v64, list(range(L))))
        with cgutils.for_range(builder, builder.sub(nv, i64(1)), intp=i64) as loop:
            k = builder.add(loop.index, i64(1))
            q = builder.gep(p, [builder.mul(k, i64(L))])
            v = _load(context, builder, src, marker, q, L, 0)
            mv = builder.load(m)
            take = builder.or_(builder.fcmp_ordered(">", v, mv),
                               builder.fcmp_unordered("uno", v, v))
            builder.store(builder.select(take, v, mv), m)
            at = builder.add(_splat(builder, builder.mul(k, i64(L)), L),
                             ir.Constant(v64, list(range(L))))
            builder.store(builder.select(take, at, builder.load(pos)), pos)
        mv, pv = builder.load(m), builder.load(pos)
        bm = cgutils.alloca_once_value(builder, builder.extract_element(mv, i32(0)))
        bp = cgutils.alloca_once_value(builder, builder.extract_element(pv, i32(0)))
        for lane in range(1, L):  # (the lanes merged: offsets are distinct)
            v = builder.extract_element(mv, i32(lane))
            c = builder.extract_element(pv, i32(lane))
            a, ai = builder.load(bm), builder.load(bp)
            nan_v = builder.fcmp_unordered("uno", v, v)
            num_a = builder.fcmp_ordered("ord", a, a)
            take = builder.or_(builder.or_(
                builder.fcmp_ordered(">", v, a),
                builder.and_(builder.fcmp_ordered("==", v, a),
                             builder.icmp_signed("<", c, ai))),
                builder.and_(nan_v, builder.or_(num_a, builder.icmp_signed(">", c, ai))))
            builder.store(builder.select(take, v, a), bm)
            builder.store(builder.select(take, c, ai), bp)
        start = builder.mul(nv, i64(L))
        with cgutils.for_range(builder, builder.sub(nn, start), intp=i64) as loop:
            k = builder.add(start, loop.index)
            v = builder.extract_element(
                _load(context, builder, src, marker, builder.gep(p, [k]), 1, 0), i32(0))
            a = builder.load(bm)
            take = builder.or_(builder.fcmp_ordered(">", v, a), builder.fcmp_unordered("uno", v, v))
            builder.store(builder.select(take, v, a), bm)
            builder.store(builder.select(take, k, builder.load(bp)), bp)
        return context.make_tuple(builder, rty, [builder.load(bm), builder.load(bp)])
    return rty(src, i, n, marker), codegen
