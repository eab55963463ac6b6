"""Malformed calls must raise ValueError/TypeError naming the culprit; unusual but valid calls
must work.  Big sizes must be refused before anything is allocated."""

import math
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastpool
import reference as R

SHAPES = {1: (2, 3, 8), 2: (2, 3, 8, 9), 3: (2, 3, 5, 6, 7)}
WINDOW_OPS = ["max_pool", "avg_pool", "lp_pool"]


def X(nd, dtype=np.float32):
    return np.arange(math.prod(SHAPES[nd]), dtype=np.float64).reshape(SHAPES[nd]).astype(dtype)


def call(op, nd, x, *args, **kw):
    fn = getattr(fastpool, f"{op}{nd}d")
    if op == "lp_pool":
        return fn(x, kw.pop("norm_type", 2), *args, **kw)
    return fn(x, *args, **kw)


def window_kw(op, **kw):
    """Default kernel 2 unless given."""
    kw.setdefault("kernel_size", 2)
    return kw


# ---------------------------------------------------------------------------------------------
# kernel_size / stride / dilation / padding
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", WINDOW_OPS)
@pytest.mark.parametrize("name,value", [
    ("kernel_size", 0), ("kernel_size", -1), ("stride", 0), ("stride", -2), ("dilation", 0),
    ("dilation", -1), ("padding", -1),
])
def test_nonpositive_window_parameters(op, nd, name, value):
    kw = window_kw(op, **{name: value})
    with pytest.raises(ValueError, match=name):
        call(op, nd, X(nd), **kw)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", WINDOW_OPS)
@pytest.mark.parametrize("name", ["kernel_size", "stride", "dilation", "padding"])
def test_zero_or_negative_entry_in_tuple(op, nd, name):
    good = {"kernel_size": 2, "stride": 1, "dilation": 1, "padding": 0}[name]
    bad = -1 if name == "padding" else 0
    value = (good,) * (nd - 1) + (bad,)
    with pytest.raises(ValueError, match=name):
        call(op, nd, X(nd), **window_kw(op, **{name: value}))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", WINDOW_OPS)
@pytest.mark.parametrize("name", ["kernel_size", "stride", "dilation", "padding"])
def test_wrong_tuple_length(op, nd, name):
    value = {"kernel_size": 2, "stride": 1, "dilation": 1, "padding": 0}[name]
    with pytest.raises(ValueError, match=name):
        call(op, nd, X(nd), **window_kw(op, **{name: (value,) * (nd + 1)}))
    if nd > 2:
        with pytest.raises(ValueError, match=name):
            call(op, nd, X(nd), **window_kw(op, **{name: (value,) * (nd - 1)}))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
def test_int_padding_over_half_kernel(op, nd):
    # PyTorch's rule for int / tuple-of-int padding: padding <= kernel_size // 2
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=3, padding=2)
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=2, padding=(0,) * (nd - 1) + (2,))
    # pairs follow ONNX: no half-kernel limit
    pads = ((2, 2),) * nd
    res = call(op, nd, X(nd), kernel_size=3, padding=pads)
    ref = (R.ref_max_pool(X(nd), (3,) * nd, None, pads, None, False)[0] if op == "max_pool"
           else R.ref_avg_pool(X(nd), (3,) * nd, None, pads))
    np.testing.assert_allclose(res, ref, rtol=1e-6)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", WINDOW_OPS)
def test_bad_padding_pairs(op, nd):
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=2, padding=((0, 0),) * (nd - 1) + ((-1, 0),))
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=2, padding=((0, 0),) * (nd + 1))
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=2, padding=((0, 0, 0),) * nd)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", WINDOW_OPS)
def test_window_in_padding_only(op, nd):
    # ONNX-style pairs: a window that holds no input cell is an error
    pads = ((0, 0),) * (nd - 1) + ((3, 0),)
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=2, stride=1, padding=pads)
    pads = ((0, 0),) * (nd - 1) + ((0, 4),)
    with pytest.raises(ValueError, match="padding"):
        call(op, nd, X(nd), kernel_size=2, stride=2, padding=pads)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("op", WINDOW_OPS)
def test_window_larger_than_padded_input(op, nd):
    big = max(SHAPES[nd][2:]) + 3
    with pytest.raises(ValueError, match="kernel_size|input|padding"):
        call(op, nd, X(nd), kernel_size=big)
    with pytest.raises(ValueError, match="kernel_size|dilation|input|padding"):
        call(op, nd, X(nd), kernel_size=3, dilation=max(SHAPES[nd][2:]))


@pytest.mark.parametrize("op", WINDOW_OPS)
@pytest.mark.parametrize("mode", ["full", "bogus", "", "SAME-ISH"])
def test_unknown_padding_string(op, mode):
    with pytest.raises(ValueError, match="padding"):
        call(op, 2, X(2), kernel_size=2, padding=mode)


@pytest.mark.parametrize("op", WINDOW_OPS)
def test_non_integer_kernel(op):
    with pytest.raises((TypeError, ValueError), match="kernel_size"):
        call(op, 2, X(2), kernel_size=2.5)
    with pytest.raises((TypeError, ValueError), match="stride"):
        call(op, 2, X(2), kernel_size=2, stride=(1, 1.5))


# ---------------------------------------------------------------------------------------------
# input rank and dtype
# ---------------------------------------------------------------------------------------------

ALL_OPS = ["max_pool", "avg_pool", "lp_pool", "adaptive_max_pool", "adaptive_avg_pool",
           "fractional_max_pool"]


def any_call(op, nd, x, **kw):
    fn = getattr(fastpool, f"{op}{nd}d")
    if op in ("max_pool", "avg_pool"):
        return fn(x, 1, **kw)
    if op == "lp_pool":
        return fn(x, 2, 1, **kw)
    if op.startswith("adaptive"):
        return fn(x, 1, **kw)
    if op == "fractional_max_pool":
        return fn(x, 1, output_size=1, **kw)
    raise ValueError(op)


def op_ranks(op):
    return [2, 3] if op == "fractional_max_pool" else [1, 2, 3]


@pytest.mark.parametrize("op", ALL_OPS)
def test_wrong_rank(op):
    for nd in op_ranks(op):
        for ndim in (nd, nd + 3, 0):
            x = np.zeros((3,) * ndim, np.float32)
            with pytest.raises(ValueError, match=r"(?i)input|dim|shape|rank"):
                any_call(op, nd, x)
            with pytest.raises(ValueError, match=r"(?i)input|dim|shape|rank"):
                any_call(op, nd, x, channels_last=True)


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("dtype", ["complex64", "complex128", "bool", "object", "datetime64[s]",
                                   "U3"])
def test_unsupported_dtype(op, dtype):
    x = np.zeros((2, 3, 4, 4), dtype=dtype)
    name = {"U3": "str|U3|<U", "object": "object", "datetime64[s]": "datetime64"}.get(
        dtype, dtype)
    with pytest.raises(TypeError, match=name):
        any_call(op, 2, x)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64", "uint16"])
def test_lp_rejects_integers(dtype):
    x = np.ones((2, 3, 4, 4), dtype=dtype)
    with pytest.raises(TypeError, match=dtype):
        fastpool.lp_pool2d(x, 2, 2)


@pytest.mark.parametrize("dtype", ["uint32", "uint64", "float128"] if hasattr(np, "float128")
                         else ["uint32", "uint64"])
def test_dtypes_outside_the_list(dtype):
    # the contract lists the supported dtypes; anything else is a TypeError naming it
    x = np.ones((2, 3, 4, 4), dtype=dtype)
    for op in ("max_pool", "avg_pool", "adaptive_max_pool"):
        with pytest.raises(TypeError, match=dtype):
            any_call(op, 2, x)


# ---------------------------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------------------------

def test_out_wrong_shape_dtype_layout():
    x = X(2)  # (2, 3, 8, 9) float32 -> k2: (2, 3, 4, 4)
    with pytest.raises(ValueError, match="out"):
        fastpool.max_pool2d(x, 2, out=np.empty((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="out"):
        fastpool.max_pool2d(x, 2, out=np.empty((2, 3, 4, 4), np.float64))
    with pytest.raises(ValueError, match="out"):  # Fortran order for a C-contiguous input
        fastpool.max_pool2d(x, 2, out=np.asfortranarray(np.empty((2, 3, 4, 4), np.float32)))
    with pytest.raises(ValueError, match="out"):  # non-contiguous view
        fastpool.avg_pool2d(x, 2, out=np.empty((2, 3, 4, 8), np.float32)[..., ::2])
    with pytest.raises(ValueError, match="out"):  # channels-first shape for channels_last
        fastpool.avg_pool2d(np.ascontiguousarray(np.moveaxis(x, 1, -1)), 2, channels_last=True,
                            out=np.empty((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="out"):
        fastpool.adaptive_avg_pool2d(x, 3, out=np.empty((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="out"):
        fastpool.lp_pool2d(x, 2, 2, out=np.empty((2, 3, 4, 4), np.float16))
    with pytest.raises(ValueError, match="out"):  # read-only
        o = np.empty((2, 3, 4, 4), np.float32)
        o.setflags(write=False)
        fastpool.max_pool2d(x, 2, out=o)


def test_out_with_indices():
    x = X(2)
    v = np.empty((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="out"):  # needs a (values, indices) pair
        fastpool.max_pool2d(x, 2, return_indices=True, out=v)
    with pytest.raises(ValueError, match="out"):
        fastpool.max_pool2d(x, 2, return_indices=True, out=(v, np.empty((2, 3, 4, 4),
                                                                         np.float64)))
    with pytest.raises(ValueError, match="out"):  # int32 indices but index_dtype int64
        fastpool.max_pool2d(x, 2, return_indices=True, out=(v, np.empty((2, 3, 4, 4),
                                                                         np.int32)))
    with pytest.raises(ValueError, match="out"):
        fastpool.adaptive_max_pool2d(x, 4, return_indices=True,
                                     out=(v, np.empty((2, 3, 4, 3), np.int64)))
    # the right pair works, in place
    i = np.empty((2, 3, 4, 4), np.int32)
    rv, ri = fastpool.max_pool2d(x, 2, return_indices=True, out=(v, i), index_dtype=np.int32)
    assert rv is v and ri is i
    ref_v, ref_i = R.ref_max_pool(x, (2, 2), None, None, None, False)
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(i, ref_i)


def test_unpool_out_wrong():
    x = np.ones((2, 3, 4, 4), np.float32)
    idx = np.zeros((2, 3, 4, 4), np.int64)
    with pytest.raises(ValueError, match="out"):
        fastpool.max_unpool2d(x, idx, 2, out=np.empty((2, 3, 8, 7), np.float32))
    with pytest.raises(ValueError, match="out"):
        fastpool.max_unpool2d(x, idx, 2, out=np.empty((2, 3, 8, 8), np.int32))


def test_out_overlapping_what_is_read():
    """out= sharing memory with the input, with unpooling's indices, or values with indices
    would overwrite what is still to be read: a ValueError, nothing written."""
    x = X(1)  # (2, 3, 8) float32
    with pytest.raises(ValueError, match="out must not overlap the input"):
        fastpool.max_pool1d(x, 2, out=x[..., :4])
    buf = np.zeros(2 * 3 * 4 * 2, np.int64)
    vals, inds = buf.view(np.float64)[:24].reshape(2, 3, 4), buf[24:].reshape(2, 3, 4)
    xd = x.astype(np.float64)
    with pytest.raises(ValueError, match=r"out\[0\], out\[1\]"):  # one buffer
        fastpool.max_pool1d(xd, 2, return_indices=True, out=(buf.view(np.float64)[:24].reshape(
            2, 3, 4), buf[:24].reshape(2, 3, 4)))
    o = np.zeros((2, 3, 4), np.int64)
    with pytest.raises(ValueError, match=r"out\[0\], out\[1\]"):  # the same array twice
        fastpool.max_pool1d((x * 10).astype(np.int64), 2, return_indices=True, out=(o, o))
    v, i = fastpool.max_pool1d(xd, 2, return_indices=True, out=(vals, inds))  # disjoint: fine
    np.testing.assert_array_equal(v, fastpool.max_pool1d(xd, 2))
    mem = np.zeros(16, np.int64)
    idx = mem[8:12].reshape(1, 1, 4)
    idx[...] = [1, 2, 5, 6]
    with pytest.raises(ValueError, match="out must not overlap indices"):
        fastpool.max_unpool1d(np.arange(1, 5).reshape(1, 1, 4), idx, 2,
                              out=mem[6:14].reshape(1, 1, 8))
    np.testing.assert_array_equal(idx.ravel(), [1, 2, 5, 6])  # untouched


# ---------------------------------------------------------------------------------------------
# op-specific parameters
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_divisor_override_zero(nd):
    with pytest.raises(ValueError, match="divisor_override"):
        getattr(fastpool, f"avg_pool{nd}d")(X(nd), 2, divisor_override=0)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_norm_type_zero(nd):
    with pytest.raises(ValueError, match="norm_type"):
        getattr(fastpool, f"lp_pool{nd}d")(X(nd), 0, 2)
    with pytest.raises(ValueError, match="norm_type"):
        getattr(fastpool, f"lp_pool{nd}d")(X(nd), 0.0, 2)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_bad_output_size(nd):
    for op in ("adaptive_max_pool", "adaptive_avg_pool"):
        fn = getattr(fastpool, f"{op}{nd}d")
        with pytest.raises(ValueError, match="output_size"):
            fn(X(nd), -1)
        with pytest.raises(ValueError, match="output_size"):
            fn(X(nd), (2,) * (nd + 1))
        with pytest.raises(ValueError, match="output_size"):
            fn(X(nd), (2,) * (nd - 1) + (-3,))


@pytest.mark.parametrize("index_dtype", [np.float32, np.int16, np.uint32, "int8", bool])
def test_bad_index_dtype(index_dtype):
    with pytest.raises((ValueError, TypeError), match="index_dtype"):
        fastpool.max_pool2d(X(2), 2, return_indices=True, index_dtype=index_dtype)
    with pytest.raises((ValueError, TypeError), match="index_dtype"):
        fastpool.adaptive_max_pool1d(X(1), 2, return_indices=True, index_dtype=index_dtype)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unpool_bad_indices(nd):
    fn = getattr(fastpool, f"max_unpool{nd}d")
    x = np.ones((2, 3) + (3,) * nd, np.float32)
    size = 6 ** nd  # default output (3 - 1) * 2 + 2 = 6 per dim
    idx = np.zeros(x.shape, np.int64)
    idx.flat[5] = size  # one past the end
    with pytest.raises(ValueError, match="indices"):
        fn(x, idx, 2)
    idx.flat[5] = -1
    with pytest.raises(ValueError, match="indices"):
        fn(x, idx, 2)
    with pytest.raises((TypeError, ValueError), match="indices"):
        fn(x, np.zeros(x.shape, np.float64), 2)
    with pytest.raises(ValueError, match="indices"):  # shape mismatch
        fn(x, np.zeros(x.shape[:-1] + (2,), np.int64), 2)
    # in range just below the end: fine
    idx.flat[5] = size - 1
    out = fn(x, idx, 2)
    assert out.shape == (2, 3) + (6,) * nd


@pytest.mark.parametrize("nd", [2, 3])
def test_fractional_bad_sizes(nd):
    fn = getattr(fastpool, f"fractional_max_pool{nd}d")
    x = X(nd)
    for ratio in (0.0, 1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="output_ratio"):
            fn(x, 2, output_ratio=ratio)
        with pytest.raises(ValueError, match="output_ratio"):
            fn(x, 2, output_ratio=(0.5,) * (nd - 1) + (ratio,))
    big = tuple(n for n in x.shape[2:])  # out + k - 1 > in for k=2
    with pytest.raises(ValueError, match="output_size"):
        fn(x, 2, output_size=big)
    with pytest.raises(ValueError, match="output_size|output_ratio"):
        fn(x, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        fn(x, 0, output_size=2)


@pytest.mark.parametrize("nd", [2, 3])
def test_fractional_bad_samples(nd):
    fn = getattr(fastpool, f"fractional_max_pool{nd}d")
    x = X(nd)
    good = np.full((2, 3, nd), 0.5)
    fn(x, 2, output_size=2, random_samples=good)
    for bad in (np.full((2, 3, nd + 1), 0.5), np.full((1, 3, nd), 0.5), np.full((2, 3), 0.5)):
        with pytest.raises(ValueError, match="samples"):
            fn(x, 2, output_size=2, random_samples=bad)
    for value in (1.0, -0.1, np.nan):
        s = good.copy()
        s[1, 2, 0] = value
        with pytest.raises(ValueError, match="samples"):
            fn(x, 2, output_size=2, random_samples=s)


# ---------------------------------------------------------------------------------------------
# huge sizes: refuse quickly, allocate nothing
# ---------------------------------------------------------------------------------------------

def test_huge_padding_pairs_refused_quickly():
    t0 = time.perf_counter()
    with pytest.raises(ValueError):
        fastpool.max_pool2d(X(2), 2, padding=((10**12, 10**12), (0, 0)))
    with pytest.raises(ValueError):
        fastpool.avg_pool1d(X(1), 2, 1, padding=((0, 10**15),))
    with pytest.raises(ValueError):
        fastpool.max_pool2d(X(2), 10**12)
    assert time.perf_counter() - t0 < 5


def test_parameters_past_int64_are_value_errors():
    """Sizes are int64 in the kernels: 2**62 and beyond is a ValueError naming the parameter
    (not an OverflowError from a conversion), in forward and backward calls alike."""
    x = X(1)
    g = np.zeros((2, 3, 4), np.float32)
    for call, name in ((lambda: fastpool.max_pool1d(x, 2, stride=2**63), "stride"),
                       (lambda: fastpool.avg_pool1d(x, 2, stride=-2**64), "stride"),
                       (lambda: fastpool.max_pool1d(x, (2**62,)), "kernel_size"),
                       (lambda: fastpool.avg_pool2d(X(2), 3, 2, 1, divisor_override=2**63),
                        "divisor_override"),
                       (lambda: fastpool.avg_pool1d_backward(g, x, 2, divisor_override=2**70),
                        "divisor_override"),
                       (lambda: fastpool.max_unpool1d(x, np.zeros(x.shape, np.int64), 2,
                                                      stride=2**63), "stride")):
        with pytest.raises(ValueError, match=name):
            call()


def test_one_element_tuples_as_pytorch_takes_them():
    """PyTorch's max and average pooling spread a one-element size tuple over every dim; its
    Lp kernel size, adaptive output sizes, fractional and unpooling sizes refuse it, and so
    does fastpool (a ValueError naming the parameter)."""
    x2, x3 = X(2), X(3)
    assert fastpool.max_pool2d(x2, (2,), (2,), (1,), (1,)).shape == \
        fastpool.max_pool2d(x2, 2, 2, 1, 1).shape
    assert fastpool.avg_pool3d(x3, (2,)).shape == fastpool.avg_pool3d(x3, 2).shape
    assert fastpool.lp_pool2d(x2, 2, 2, (2,)).shape == fastpool.lp_pool2d(x2, 2, 2, 2).shape
    y, i = fastpool.max_pool2d(x2, 2, return_indices=True)
    for call, name in ((lambda: fastpool.lp_pool2d(x2, 2, (2,)), "kernel_size"),
                       (lambda: fastpool.adaptive_avg_pool2d(x2, (3,)), "output_size"),
                       (lambda: fastpool.adaptive_max_pool3d(x3, (3,)), "output_size"),
                       (lambda: fastpool.fractional_max_pool2d(x2, (2,), output_size=3),
                        "kernel_size"),
                       (lambda: fastpool.fractional_max_pool3d(x3, 2, output_size=(2,)),
                        "output_size"),
                       (lambda: fastpool.fractional_max_pool2d(x2, 2, output_ratio=(0.5,)),
                        "output_ratio"),
                       (lambda: fastpool.max_unpool2d(y, i, (2,)), "kernel_size"),
                       (lambda: fastpool.max_unpool2d(y, i, 2, (2,)), "stride"),
                       (lambda: fastpool.max_unpool2d(y, i, 2, output_size=(8,)), "output_size")):
        with pytest.raises(ValueError, match=name):
            call()


def test_unpool_output_size_entries_and_empty_results():
    """``output_size`` takes the spatial size or a full (N, C, *spatial) shape, as PyTorch, and
    refuses other lengths (an unbatched input's (C, *spatial) included); an output size of 0
    along a dim is an empty result, as PyTorch's (with or without ``out=``); padding takes
    integer arrays as the other size parameters do."""
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 7)).astype(np.float32)  # unbatched
    v, i = fastpool.max_pool2d(x, 2, return_indices=True)
    tv, ti = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    for osz in ((6, 7), (1, 3, 6, 7), (9, 9, 7, 7)):
        got = fastpool.max_unpool2d(v, i, 2, output_size=osz)
        assert np.array_equal(got, F.max_unpool2d(tv, ti, 2, output_size=osz).numpy()), osz
    for osz in ((3, 6, 7), (7,), (1, 1, 1, 6, 7)):
        with pytest.raises(ValueError, match=r"max_unpool2d: output_size must have 2 or 4"):
            fastpool.max_unpool2d(v, i, 2, output_size=osz)
    v1, i1 = fastpool.max_pool1d(x[0], 2, return_indices=True)  # unbatched (C, L) = (6, 7)
    with pytest.raises(ValueError, match=r"max_unpool1d: output_size must have 1 or 3"):
        fastpool.max_unpool1d(v1, i1, 2, output_size=(6, 7))
    assert fastpool.max_unpool1d(v1, i1, 2, output_size=(1, 6, 7)).shape == (6, 7)
    # stride 2, padding 1 over one row of windows: (1 - 1) * 2 - 2 + 2 = 0 rows
    x4 = rng.standard_normal((2, 5, 1, 14)).astype(np.float32)
    v4, i4 = fastpool.max_pool2d(x4, 2, None, 1, return_indices=True)
    tv4, ti4 = F.max_pool2d(torch.from_numpy(x4), 2, None, 1, return_indices=True)
    want = F.max_unpool2d(tv4, ti4, 2, None, 1).shape
    assert fastpool.max_unpool2d(v4, i4, 2, None, 1).shape == tuple(want) == (2, 5, 0, 14)
    out = np.empty((2, 5, 0, 14), np.float32)
    assert fastpool.max_unpool2d(v4, i4, 2, None, 1, out=out) is out
    with pytest.raises(ValueError, match=r"output size \(-8, 6\) must be non-negative"):
        fastpool.max_unpool2d(v4, i4, 2, None, 5)
    x2 = rng.standard_normal((1, 2, 7, 9)).astype(np.float32)
    for pad in (np.array([1, 0]), np.array(1), np.array([1, 1], np.uint8)):
        want = fastpool.max_pool2d(x2, 3, padding=tuple(np.broadcast_to(pad, 2).tolist()))
        assert np.array_equal(fastpool.max_pool2d(x2, 3, padding=pad), want)


def test_unpool_output_size_and_index_dtype_messages():
    x = np.zeros((1, 1, 4), np.float32)
    idx = np.zeros((1, 1, 4), np.int64)
    for bad in (8.0, float("nan"), True, np.bool_(True), 2 + 0j, np.float32(8)):
        with pytest.raises(TypeError, match="max_unpool1d: output_size"):
            fastpool.max_unpool1d(x, idx, 2, output_size=bad)
    # integer arrays are sequences of ints, as in PyTorch
    assert fastpool.max_unpool1d(x, idx, 2, output_size=np.array(8)).shape == (1, 1, 8)
    assert fastpool.adaptive_avg_pool2d(np.ones((1, 1, 4, 4)), np.array([2, 1])).shape == \
        (1, 1, 2, 1)
    with pytest.raises(ValueError, match=r"padding \(2147483648,\)"):
        fastpool.max_unpool1d(x, idx, 2, padding=2**31)
    with pytest.raises(TypeError, match="index_dtype"):
        fastpool.max_pool1d(X(1), 2, return_indices=True, index_dtype="foo")


def test_huge_stride_is_one_window():
    x = X(2)
    for s in (10**6, 2**40):
        v = fastpool.max_pool2d(x, 2, stride=s)
        np.testing.assert_array_equal(v, x[:, :, :2, :2].max(axis=(2, 3), keepdims=True))


_LIMITED = textwrap.dedent("""
    import resource, sys, time, tracemalloc
    import numpy as np
    import fastpool
    # a warm-up call so that compiling is not measured, then cap the heap
    fastpool.max_pool2d(np.zeros((1, 1, 2, 2), np.uint8), 2, return_indices=True)
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (3 << 29, hard))  # 1.5 GiB
    ok = True
    def expect(fn, excs, label):
        global ok
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            fn()
        except excs as exc:
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1]
            print(label, "raised", type(exc).__name__, str(exc)[:120],
                  "in %.3fs, peak %.1f MiB traced" % (dt, peak / 2**20))
            if dt > 2 or peak > 64 * 2**20:
                print("   ^ too slow or allocated too much before refusing")
                ok = False
        except BaseException as exc:
            print(label, "WRONG EXCEPTION", type(exc).__name__, str(exc)[:200])
            ok = False
        else:
            print(label, "DID NOT RAISE")
            ok = False
        finally:
            tracemalloc.stop()
    # a plane of 2**31 cells (a zero-stride view): int32 indices cannot address it
    big = np.broadcast_to(np.zeros((1,), np.uint8), (1, 1, 2**16, 2**15))
    expect(lambda: fastpool.max_pool2d(big, (2**16, 2**15), return_indices=True,
                                       index_dtype=np.int32), ValueError, "int32-index")
    expect(lambda: fastpool.adaptive_max_pool2d(big, 1, return_indices=True,
                                                index_dtype=np.int32), ValueError, "int32-adapt")
    x = np.ones((1, 1, 4, 4), np.float32)
    i = np.zeros((1, 1, 4, 4), np.int64)
    expect(lambda: fastpool.max_unpool2d(x, i, 2, output_size=(10**7, 10**7)),
           (ValueError, MemoryError), "unpool-huge")
    expect(lambda: fastpool.adaptive_avg_pool2d(x, (10**7, 10**7)), (ValueError, MemoryError),
           "adaptive-huge")
    expect(lambda: fastpool.max_pool2d(x, 2, padding=((0, 0), (10**10, 10**10))), ValueError,
           "pairs-huge")
    sys.exit(0 if ok else 1)
""")


def test_huge_sizes_refused_without_allocating():
    """Runs in a subprocess whose heap is capped at 1.5 GiB: a would-be copy or allocation of
    the refused problem shows up as a MemoryError instead of eating the machine, and the
    traced peak (NumPy reports to tracemalloc) must stay small."""
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = "1"
    p = subprocess.run([sys.executable, "-c", _LIMITED], capture_output=True, text=True,
                       timeout=300, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert p.returncode == 0, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------
# unusual but valid
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_kernel_is_whole_input(nd):
    x = X(nd)
    k = SHAPES[nd][2:]
    v, i = getattr(fastpool, f"max_pool{nd}d")(x, k, return_indices=True)
    rv, ri = R.ref_max_pool(x, k, None, None, None, False)
    np.testing.assert_array_equal(v, rv)
    np.testing.assert_array_equal(i, ri)
    a = getattr(fastpool, f"avg_pool{nd}d")(x, k, padding="valid")
    np.testing.assert_allclose(a, R.ref_avg_pool(x, k), rtol=1e-6)
    lp = getattr(fastpool, f"lp_pool{nd}d")(x, 2, k)
    np.testing.assert_allclose(lp, R.ref_lp_pool(x, 2, k), rtol=1e-5)
    assert v.shape == (2, 3) + (1,) * nd


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_stride_larger_than_kernel(nd):
    x = X(nd, np.float64)
    v, i = getattr(fastpool, f"max_pool{nd}d")(x, 2, 3, return_indices=True)
    rv, ri = R.ref_max_pool(x, 2, 3, None, None, False)
    np.testing.assert_array_equal(v, rv)
    np.testing.assert_array_equal(i, ri)
    a = getattr(fastpool, f"avg_pool{nd}d")(x, 1, 4, ceil_mode=True)
    np.testing.assert_allclose(a, R.ref_avg_pool(x, 1, 4, None, True))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_one_element_planes(nd):
    x = np.arange(6, dtype=np.float32).reshape((2, 3) + (1,) * nd)
    v, i = getattr(fastpool, f"max_pool{nd}d")(x, 1, return_indices=True)
    np.testing.assert_array_equal(v, x)
    assert (i == 0).all()
    np.testing.assert_array_equal(getattr(fastpool, f"avg_pool{nd}d")(x, 1), x)
    if nd < 3:
        np.testing.assert_array_equal(getattr(fastpool, f"avg_pool{nd}d")(
            x, 3, 1, 1, count_include_pad=False), x)
    else:  # (PyTorch's avg_pool3d refuses an input smaller than the kernel, padding or not)
        with pytest.raises(ValueError, match=r"input size \(1, 1, 1\) is smaller than "
                                             r"kernel_size \(3, 3, 3\)"):
            fastpool.avg_pool3d(x, 3, 1, 1, count_include_pad=False)
        # ((before, after) pairs, which PyTorch lacks: ONNX's rules, no such limit)
        np.testing.assert_array_equal(fastpool.avg_pool3d(x, 3, 1, ((1, 1),) * 3,
                                                          count_include_pad=False), x)
    av = getattr(fastpool, f"adaptive_avg_pool{nd}d")(x, 3)
    np.testing.assert_array_equal(av, np.broadcast_to(x, (2, 3) + (3,) * nd))
    mv, mi = getattr(fastpool, f"adaptive_max_pool{nd}d")(x, 2, return_indices=True)
    np.testing.assert_array_equal(mv, np.broadcast_to(x, (2, 3) + (2,) * nd))
    assert (mi == 0).all()
    u = getattr(fastpool, f"max_unpool{nd}d")(x, np.zeros(x.shape, np.int64), 1)
    np.testing.assert_array_equal(u, x)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_empty_batch(nd):
    x = np.zeros((0, 3) + SHAPES[nd][2:], np.float32)
    osp = tuple(n // 2 for n in SHAPES[nd][2:])
    v, i = getattr(fastpool, f"max_pool{nd}d")(x, 2, return_indices=True)
    assert v.shape == i.shape == (0, 3) + osp
    assert getattr(fastpool, f"avg_pool{nd}d")(x, 2).shape == (0, 3) + osp
    assert getattr(fastpool, f"lp_pool{nd}d")(x, 2, 2).shape == (0, 3) + osp
    assert getattr(fastpool, f"adaptive_avg_pool{nd}d")(x, 2).shape == (0, 3) + (2,) * nd
    assert getattr(fastpool, f"adaptive_max_pool{nd}d")(x, 2).shape == (0, 3) + (2,) * nd
    xc = np.zeros((0,) + SHAPES[nd][2:] + (3,), np.float32)
    assert getattr(fastpool, f"max_pool{nd}d")(xc, 2, channels_last=True).shape == (
        (0,) + osp + (3,))


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_inputs_without_channels(nd):
    """PyTorch's adaptive ops take an unbatched input without channels as an empty batch (its
    1-d and 2-d average also a batched one, its 3-d average one whose output is 1 x 1 x 1):
    an empty result of the output size, forward and backward (zeros, where PyTorch's backward
    refuses some), out= honoured; the other ops (and PyTorch's) refuse such inputs."""
    torch = pytest.importorskip("torch")
    sp = SHAPES[nd][2:]
    for cl in (False, True):
        kw = {"channels_last": cl}
        for shape, batched in (((0,) + sp, False), ((2, 0) + sp, True)):
            if cl:
                shape = shape[:-nd - 1] + sp + (0,)
            x = np.zeros(shape, np.float32)
            t = torch.from_numpy(np.moveaxis(x, -1, len(shape) - nd - 1) if cl else x)
            for kind, osz in (("avg", 3), ("max", 3), ("avg", 1)):
                expect = shape[:len(shape) - nd - 1] + ((osz,) * nd + (0,) if cl else
                                                        (0,) + (osz,) * nd)
                fn = getattr(fastpool, f"adaptive_{kind}_pool{nd}d")
                tfn = getattr(torch.nn.functional, f"adaptive_{kind}_pool{nd}d")
                try:
                    tfn(t, osz)
                    torch_ok = True
                except RuntimeError:
                    torch_ok = False
                if not torch_ok:
                    with pytest.raises(ValueError, match="non-zero"):
                        fn(x, osz, **kw)
                    continue
                y = fn(x, osz, **kw)
                assert y.shape == expect and y.dtype == x.dtype, (kind, shape, cl)
                o = np.empty(expect, np.float32)
                assert fn(x, osz, out=o, **kw) is o
                with pytest.raises(ValueError, match="out"):
                    fn(x, osz, out=np.empty((1,) + expect, np.float32), **kw)
                g = getattr(fastpool, f"adaptive_{kind}_pool{nd}d_backward")(y, x, osz, **kw)
                assert g.shape == x.shape and g.dtype == x.dtype
                if kind == "max":
                    v, i = fn(x, osz, return_indices=True, **kw)
                    assert v.shape == i.shape == expect and i.dtype == np.int64
    with pytest.raises(ValueError, match="non-zero"):
        getattr(fastpool, f"max_pool{nd}d")(np.zeros((0,) + sp, np.float32), 2)


@pytest.mark.parametrize("nd", [2, 3])
def test_fractional_output_one_and_full(nd):
    x = X(nd, np.float64)
    fn = getattr(fastpool, f"fractional_max_pool{nd}d")
    s = np.full((2, 3, nd), 0.3)
    v = fn(x, 2, output_size=1, random_samples=s)
    assert v.shape == (2, 3) + (1,) * nd
    # out + k - 1 == in (stride-1 windows) is valid in PyTorch's 2-d op; its 3-d op wants
    # out + k - 1 < in, so stay one below there
    full = tuple(n - 1 if nd == 2 else n - 2 for n in x.shape[2:])
    v, i = fn(x, 2, output_size=full, random_samples=s, return_indices=True)
    rv, ri = R.ref_fractional_max_pool(x, 2, full, s)
    np.testing.assert_array_equal(v, rv)
    np.testing.assert_array_equal(i, ri)


def test_index_dtype_int32_everywhere():
    x = X(2)
    for fn, args in [(fastpool.max_pool2d, (3, 2, 1)), (fastpool.adaptive_max_pool2d, (3,))]:
        v, i = fn(x, *args, return_indices=True, index_dtype=np.int32)
        v64, i64 = fn(x, *args, return_indices=True)
        assert i.dtype == np.int32 and i64.dtype == np.int64
        np.testing.assert_array_equal(i, i64)
        np.testing.assert_array_equal(v, v64)
    # int32 indices feed unpooling
    v, i = fastpool.max_pool2d(x, 2, return_indices=True, index_dtype=np.int32)
    u = fastpool.max_unpool2d(v, i, 2, output_size=x.shape[2:])
    np.testing.assert_array_equal(u, R.ref_max_unpool(v, i.astype(np.int64), x.shape[2:]))


def test_lists_and_numpy_ints_as_parameters():
    x = X(2)
    ref = fastpool.max_pool2d(x, (3, 2), (2, 1), (1, 0))
    np.testing.assert_array_equal(fastpool.max_pool2d(x, [3, 2], [2, 1], [1, 0]), ref)
    np.testing.assert_array_equal(
        fastpool.max_pool2d(x, (np.int64(3), np.int32(2)), (np.int8(2), 1), (np.int64(1), 0)),
        ref)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_adaptive_output_size_zero(nd):
    """An output size of 0 along a dim gives an empty result, as PyTorch (an internal TypeError
    came out of the kernel choice in 1-d and 2-d before); gradients of it are zeros."""
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3) + (5,) * nd).astype(np.float32)
    osz = (0,) + (2,) * (nd - 1)
    want = (2, 3) + osz
    assert getattr(fastpool, f"adaptive_avg_pool{nd}d")(x, osz).shape == want
    v, i = getattr(fastpool, f"adaptive_max_pool{nd}d")(x, osz, return_indices=True)
    assert v.shape == i.shape == want
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    assert getattr(fastpool, f"adaptive_avg_pool{nd}d")(xl, osz, channels_last=True).shape == \
        (2,) + osz + (3,)
    for kind in ("avg", "max"):
        gin = getattr(fastpool, f"adaptive_{kind}_pool{nd}d_backward")(
            np.zeros(want, np.float32), x, osz)
        assert gin.shape == x.shape and not gin.any()


@pytest.mark.parametrize("nd", [2, 3])
def test_fractional_output_size_zero(nd):
    """Fractional max pooling to an output size of 0 along a dim (given, or from a ratio
    rounding down) gives an empty result, as PyTorch; its gradient is zeros; a negative size
    is an error naming it."""
    rng = np.random.default_rng(nd)
    x = rng.standard_normal((2, 3, 8, 2) + (6,) * (nd - 2)).astype(np.float32)
    s = rng.random((2, 3, nd)).astype(np.float32)
    fn = getattr(fastpool, f"fractional_max_pool{nd}d")
    for kw in (dict(output_ratio=(0.4,) * nd), dict(output_size=(3, 0) + (2,) * (nd - 2))):
        want = (2, 3, 3, 0) + (2,) * (nd - 2)
        v, i = fn(x, 1, return_indices=True, random_samples=s, **kw)
        assert v.shape == i.shape == want
        torch = pytest.importorskip("torch")
        tv = getattr(torch.nn.functional, f"fractional_max_pool{nd}d")(
            torch.from_numpy(x), 1, _random_samples=torch.from_numpy(s), **kw)
        assert tuple(tv.shape) == want
        gin = getattr(fastpool, f"fractional_max_pool{nd}d_backward")(
            np.zeros(want, np.float32), x, 1, random_samples=s, **kw)
        assert gin.shape == x.shape and not gin.any()
    with pytest.raises(ValueError, match="output_size must be non-negative"):
        fn(x, 1, output_size=(3, -1) + (2,) * (nd - 2), random_samples=s)
