"""Forward operators of fastpool against the NumPy oracle (tests/reference.py) and PyTorch.

Every test draws one configuration from a seeded RNG: op x rank x layout x dtype x mode.
Shapes stay tiny (N=2, C=3, spatial 5..11, 3-d smaller) because each (op, layout, dtype)
compiles a kernel; the number of seeds per family keeps the suite to a few minutes.
"""

import functools
import math

import numpy as np
import pytest

import fastpool
import reference as R
from conftest import FLOAT_DTYPES, INT_DTYPES, MAX_DTYPES, make_input, windows_hit_input

AVG_DTYPES = FLOAT_DTYPES + INT_DTYPES

# channels-first C-contiguous; channels_last=True (N, *sp, C); a logical NC* view of
# channels-last memory; negative strides; a strided slice; Fortran order; unbatched (C, *sp)
# and unbatched channels-last (*sp, C)
LAYOUTS = ["cf", "cl", "cl_view", "neg", "slice", "fortran", "unbatched", "unbatched_cl"]
OUT_LAYOUTS = {"cf", "cl", "cl_view", "unbatched", "unbatched_cl"}


# ---------------------------------------------------------------------------------------------
# layout helpers
# ---------------------------------------------------------------------------------------------

def to_layout(x, layout):
    """``x`` is canonical (N, C, *sp), C-contiguous.  Returns (array to pass, channels_last)."""
    nsp = x.ndim - 2
    if layout == "cf":
        return x.copy(), False
    if layout == "cl":
        return np.ascontiguousarray(np.moveaxis(x, 1, -1)), True
    if layout == "cl_view":
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1), False
    if layout == "neg":
        sl = (slice(None), slice(None, None, -1)) + (slice(None, None, -1),) * nsp
        return np.ascontiguousarray(x[sl])[sl], False
    if layout == "slice":
        big_shape = (x.shape[0] + 1, 2 * x.shape[1]) + tuple(2 * n + 1 for n in x.shape[2:])
        big = np.full(big_shape, 3 if x.dtype.kind in "iu" else np.nan, dtype=x.dtype)
        sl = (slice(1, None), slice(0, None, 2)) + tuple(slice(1, 1 + 2 * n, 2)
                                                         for n in x.shape[2:])
        big[sl] = x
        return big[sl], False
    if layout == "fortran":
        return np.asfortranarray(x), False
    if layout == "unbatched":
        return x[0].copy(), False
    if layout == "unbatched_cl":
        return np.ascontiguousarray(np.moveaxis(x[0], 0, -1)), True
    raise ValueError(layout)


def ref_batch(ref, layout):
    """Reference results computed on the whole batch, cut down for unbatched layouts."""
    return ref[:1] if layout.startswith("unbatched") else ref


def from_layout(res, layout, nsp, what="result"):
    """Back to canonical (N, C, *sp), checking the layout promised by the contract."""
    assert type(res) is np.ndarray, f"{what}: expected a numpy.ndarray, got {type(res)}"
    if layout == "cf":
        assert res.ndim == nsp + 2
        assert res.flags.c_contiguous, f"{what} of a C-contiguous input is not C-contiguous"
        return res
    if layout == "cl":
        assert res.ndim == nsp + 2
        assert res.flags.c_contiguous, f"{what} of channels_last=True is not C-contiguous"
        return np.moveaxis(res, -1, 1)
    if layout == "cl_view":
        assert res.ndim == nsp + 2
        assert np.moveaxis(res, 1, -1).flags.c_contiguous, (
            f"{what} of a channels-last-strided NC* view is not channels-last strided "
            f"(strides {res.strides})")
        return res
    if layout == "unbatched":
        assert res.ndim == nsp + 1
        return res[None]
    if layout == "unbatched_cl":
        assert res.ndim == nsp + 1
        return np.moveaxis(res, -1, 0)[None]
    assert res.ndim == nsp + 2
    return res


def make_out(shape, dtype, layout):
    """A preallocated result (canonical ``shape``) in the layout the op returns."""
    fill = 77 if np.dtype(dtype).kind in "iu" else -77.0
    n, c, sp = shape[0], shape[1], tuple(shape[2:])
    if layout == "cf":
        return np.full(shape, fill, dtype)
    if layout == "cl":
        return np.full((n,) + sp + (c,), fill, dtype)
    if layout == "cl_view":
        return np.moveaxis(np.full((n,) + sp + (c,), fill, dtype), -1, 1)
    if layout == "unbatched":
        return np.full((c,) + sp, fill, dtype)
    if layout == "unbatched_cl":
        return np.full(sp + (c,), fill, dtype)
    raise ValueError(layout)


class Untouched:
    """Snapshot of an input (values and strides) to check it is never modified."""

    def __init__(self, a):
        self.a = a
        self.copy = np.array(a, copy=True)
        self.strides = a.strides

    def check(self):
        np.testing.assert_array_equal(self.a, self.copy, err_msg="the input was modified")
        assert self.a.strides == self.strides


# ---------------------------------------------------------------------------------------------
# comparison helpers
# ---------------------------------------------------------------------------------------------

def assert_values(got, ref, dtype, what="", exact=False, rtol=None, atol=None):
    dtype = np.dtype(dtype)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype} != {dtype}"
    if exact or dtype.kind in "iu":
        np.testing.assert_array_equal(got, ref, err_msg=what)
        return
    default = {np.float16: (1e-3, 1e-3), np.float32: (1e-5, 1e-5), np.float64: (1e-12, 1e-12)}
    r, a = default[dtype.type]
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64),
                               rtol=r if rtol is None else rtol, atol=a if atol is None else atol,
                               equal_nan=True, err_msg=what)


def as_arg(rng, vals):
    """Pass a per-dim value as an int when all entries agree (half the time), else a tuple."""
    vals = tuple(int(v) for v in vals)
    if len(set(vals)) == 1 and rng.random() < 0.5:
        return vals[0]
    return vals


def draw_geometry(rng, nd, op, dilation=True):
    """Kernel, stride, padding (all forms), dilation, ceil_mode and spatial sizes.

    Returns a dict with the public arguments and the resolved (before, after) pads; every
    window holds at least one input cell.
    """
    while True:
        k = [int(rng.integers(1, 5 if nd < 3 else 4)) for _ in range(nd)]
        s = [int(rng.choice([1, 2, 3, kk, kk + 1])) for kk in k]
        d = [int(rng.integers(1, 3)) if dilation and rng.random() < 0.4 else 1 for _ in k]
        sp = tuple(int(rng.integers(5, 12 if nd < 3 else 8)) for _ in k)
        kind = rng.choice(["int", "tuple", "pairs", "same", "same_lower", "valid", "none"],
                          p=[0.2, 0.2, 0.2, 0.12, 0.1, 0.08, 0.1])
        if kind == "int":
            padding = int(rng.integers(0, min(k) // 2 + 1))
        elif kind == "tuple":
            padding = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        elif kind == "pairs":
            padding = tuple((int(rng.integers(0, (kk - 1) * dd + 1)),
                             int(rng.integers(0, (kk - 1) * dd + 1))) for kk, dd in zip(k, d))
        elif kind == "none":
            padding = 0
        else:
            padding = str(kind)
        ceil_mode = bool(rng.random() < 0.4) and kind not in ("same", "same_lower")
        stride_arg = None if (s == k and rng.random() < 0.5) else as_arg(rng, s)
        try:
            pads = R.resolve_pads(padding, sp, k, s, d)
            if not windows_hit_input(sp, k, s, pads, d, ceil_mode):
                continue
        except ValueError:  # window larger than the padded input
            continue
        return dict(k=tuple(k), s=tuple(s), d=tuple(d), sp=sp, pads=pads, padding=padding,
                    kind=str(kind), ceil_mode=ceil_mode, kernel_arg=as_arg(rng, k),
                    stride_arg=stride_arg, dilation_arg=as_arg(rng, d))


def describe(**kw):
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


# ---------------------------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_max_pool(seed):
    rng = np.random.default_rng(seed)
    nd = 1 + seed % 3
    layout = LAYOUTS[seed % len(LAYOUTS)]
    dtype = np.dtype(MAX_DTYPES[(seed // 3) % len(MAX_DTYPES)])
    g = draw_geometry(rng, nd, "max")
    x = make_input(rng, (2, 3) + g["sp"], dtype)
    xin, cl = to_layout(x, layout)
    guard = Untouched(xin)
    return_indices = bool(rng.random() < 0.6)
    index_dtype = np.int32 if (return_indices and rng.random() < 0.3) else None
    use_out = layout in OUT_LAYOUTS and rng.random() < 0.3
    info = describe(layout=layout, dtype=dtype, **{k: g[k] for k in ("k", "s", "d", "sp",
                    "padding", "ceil_mode")}, return_indices=return_indices,
                    index_dtype=index_dtype, out=use_out)

    rv, ri = R.ref_max_pool(x, g["k"], g["s"], g["pads"], g["d"], g["ceil_mode"])
    rv, ri = ref_batch(rv, layout), ref_batch(ri, layout)
    kw = dict(channels_last=cl)
    if index_dtype is not None:
        kw["index_dtype"] = index_dtype
    if use_out:
        ov = make_out(rv.shape, dtype, layout)
        oi = make_out(rv.shape, index_dtype or np.int64, layout)
        kw["out"] = (ov, oi) if return_indices else ov
    fn = getattr(fastpool, f"max_pool{nd}d")
    if seed % 2:
        res = fn(xin, g["kernel_arg"], g["stride_arg"], g["padding"], g["dilation_arg"],
                 g["ceil_mode"], return_indices, **kw)
    else:
        res = fn(xin, kernel_size=g["kernel_arg"], stride=g["stride_arg"], padding=g["padding"],
                 dilation=g["dilation_arg"], ceil_mode=g["ceil_mode"],
                 return_indices=return_indices, **kw)
    guard.check()
    if return_indices:
        assert isinstance(res, tuple) and len(res) == 2, info
        v, i = res
        if use_out:
            assert v is ov and i is oi, "out= arrays must be written and returned"
        i = from_layout(i, layout, nd, "indices")
        assert i.dtype == np.dtype(index_dtype or np.int64), info
        np.testing.assert_array_equal(i, ri, err_msg=info)
    else:
        v = res
        if use_out:
            assert v is ov, "out= array must be written and returned"
    v = from_layout(v, layout, nd, "values")
    assert_values(v, rv, dtype, info, exact=True)


# ---------------------------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(40))
def test_avg_pool(seed):
    rng = np.random.default_rng(100 + seed)
    nd = 1 + seed % 3
    layout = LAYOUTS[(seed + 3) % len(LAYOUTS)]
    dtype = np.dtype(AVG_DTYPES[(seed // 3) % len(AVG_DTYPES)])
    g = draw_geometry(rng, nd, "avg")
    cip = bool(rng.random() < 0.5)
    numel = math.prod(g["k"])
    if dtype.kind in "iu":
        # keep integer averages in range (no wrap-around); still exercises truncation
        div = None if rng.random() < 0.6 else int(rng.choice([numel, numel + 3]))
        x = make_input(rng, (2, 3) + g["sp"], dtype, special=False)
    else:
        div = None if rng.random() < 0.7 else int(rng.choice([1, 2, 5]))
        x = make_input(rng, (2, 3) + g["sp"], dtype)
    xin, cl = to_layout(x, layout)
    guard = Untouched(xin)
    use_out = layout in OUT_LAYOUTS and rng.random() < 0.3
    info = describe(layout=layout, dtype=dtype, **{k: g[k] for k in ("k", "s", "d", "sp",
                    "padding", "ceil_mode")}, count_include_pad=cip, divisor_override=div,
                    out=use_out)
    ref = ref_batch(R.ref_avg_pool(x, g["k"], g["s"], g["pads"], g["ceil_mode"], cip, div,
                                   g["d"]), layout)
    kw = dict(channels_last=cl, dilation=g["dilation_arg"])
    if use_out:
        o = make_out(ref.shape, dtype, layout)
        kw["out"] = o
    fn = getattr(fastpool, f"avg_pool{nd}d")
    if seed % 2:
        res = fn(xin, g["kernel_arg"], g["stride_arg"], g["padding"], g["ceil_mode"], cip, div,
                 **kw)
    else:
        res = fn(xin, kernel_size=g["kernel_arg"], stride=g["stride_arg"], padding=g["padding"],
                 ceil_mode=g["ceil_mode"], count_include_pad=cip, divisor_override=div, **kw)
    guard.check()
    if use_out:
        assert res is o, "out= array must be written and returned"
    assert_values(from_layout(res, layout, nd), ref, dtype, info)


# ---------------------------------------------------------------------------------------------
# Lp pooling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(30))
def test_lp_pool(seed):
    rng = np.random.default_rng(200 + seed)
    nd = 1 + seed % 3
    layout = LAYOUTS[(seed + 5) % len(LAYOUTS)]
    dtype = np.dtype(FLOAT_DTYPES[(seed // 3) % 3])
    p = [1, 2, 3, 1.5, 4.0, 2][(seed // 2) % 6]
    g = draw_geometry(rng, nd, "lp")
    x = make_input(rng, (2, 3) + g["sp"], dtype, special=False)
    if seed % 4:
        x = np.abs(x)
    xin, cl = to_layout(x, layout)
    guard = Untouched(xin)
    use_out = layout in OUT_LAYOUTS and rng.random() < 0.3
    info = describe(layout=layout, dtype=dtype, p=p, **{k: g[k] for k in ("k", "s", "d", "sp",
                    "padding", "ceil_mode")}, out=use_out)
    ref = ref_batch(R.ref_lp_pool(x, p, g["k"], g["s"], g["pads"], g["d"], g["ceil_mode"]),
                    layout)
    kw = dict(channels_last=cl, padding=g["padding"], dilation=g["dilation_arg"])
    if use_out:
        o = make_out(ref.shape, dtype, layout)
        kw["out"] = o
    fn = getattr(fastpool, f"lp_pool{nd}d")
    if seed % 2:
        res = fn(xin, p, g["kernel_arg"], g["stride_arg"], g["ceil_mode"], **kw)
    else:
        res = fn(xin, norm_type=p, kernel_size=g["kernel_arg"], stride=g["stride_arg"],
                 ceil_mode=g["ceil_mode"], **kw)
    guard.check()
    if use_out:
        assert res is o
    rtol = {np.float16: 2e-3, np.float32: 3e-5, np.float64: 1e-10}[dtype.type]
    assert_values(from_layout(res, layout, nd), ref, dtype, info, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------------
# adaptive pooling
# ---------------------------------------------------------------------------------------------

def draw_output_size(rng, sp):
    out = [int(rng.integers(1, n + 4)) for n in sp]  # larger than the input too
    if rng.random() < 0.3:
        out[int(rng.integers(len(out)))] = None  # keep that input size
    if len(set(out)) == 1 and rng.random() < 0.5:
        return out[0]
    return tuple(out)


@pytest.mark.parametrize("seed", range(36))
def test_adaptive_max_pool(seed):
    rng = np.random.default_rng(300 + seed)
    nd = 1 + seed % 3
    layout = LAYOUTS[(seed + 1) % len(LAYOUTS)]
    dtype = np.dtype(MAX_DTYPES[(seed // 3) % len(MAX_DTYPES)])
    sp = tuple(int(rng.integers(1, 12 if nd < 3 else 8)) for _ in range(nd))
    osz = draw_output_size(rng, sp)
    x = make_input(rng, (2, 3) + sp, dtype)
    xin, cl = to_layout(x, layout)
    guard = Untouched(xin)
    return_indices = bool(rng.random() < 0.6)
    index_dtype = np.int32 if (return_indices and rng.random() < 0.3) else None
    use_out = layout in OUT_LAYOUTS and rng.random() < 0.3
    info = describe(layout=layout, dtype=dtype, sp=sp, output_size=osz,
                    return_indices=return_indices, index_dtype=index_dtype, out=use_out)
    rv, ri = R.ref_adaptive_max_pool(x, osz)
    rv, ri = ref_batch(rv, layout), ref_batch(ri, layout)
    kw = dict(channels_last=cl)
    if index_dtype is not None:
        kw["index_dtype"] = index_dtype
    if use_out:
        ov = make_out(rv.shape, dtype, layout)
        oi = make_out(rv.shape, index_dtype or np.int64, layout)
        kw["out"] = (ov, oi) if return_indices else ov
    res = getattr(fastpool, f"adaptive_max_pool{nd}d")(xin, osz, return_indices, **kw)
    guard.check()
    if return_indices:
        v, i = res
        if use_out:
            assert v is ov and i is oi
        i = from_layout(i, layout, nd, "indices")
        assert i.dtype == np.dtype(index_dtype or np.int64)
        np.testing.assert_array_equal(i, ri, err_msg=info)
    else:
        v = res
        if use_out:
            assert v is ov
    assert_values(from_layout(v, layout, nd), rv, dtype, info, exact=True)


@pytest.mark.parametrize("seed", range(36))
def test_adaptive_avg_pool(seed):
    rng = np.random.default_rng(400 + seed)
    nd = 1 + seed % 3
    layout = LAYOUTS[(seed + 6) % len(LAYOUTS)]
    dtype = np.dtype(AVG_DTYPES[(seed // 3) % len(AVG_DTYPES)])
    sp = tuple(int(rng.integers(1, 12 if nd < 3 else 8)) for _ in range(nd))
    osz = draw_output_size(rng, sp)
    x = make_input(rng, (2, 3) + sp, dtype, special=dtype.kind == "f")
    xin, cl = to_layout(x, layout)
    guard = Untouched(xin)
    use_out = layout in OUT_LAYOUTS and rng.random() < 0.3
    info = describe(layout=layout, dtype=dtype, sp=sp, output_size=osz, out=use_out)
    ref = ref_batch(R.ref_adaptive_avg_pool(x, osz), layout)
    kw = dict(channels_last=cl)
    if use_out:
        o = make_out(ref.shape, dtype, layout)
        kw["out"] = o
    res = getattr(fastpool, f"adaptive_avg_pool{nd}d")(xin, osz, **kw)
    guard.check()
    if use_out:
        assert res is o
    assert_values(from_layout(res, layout, nd), ref, dtype, info)


# ---------------------------------------------------------------------------------------------
# fractional max pooling
# ---------------------------------------------------------------------------------------------

def samples_for(rng, shape, dtype):
    """Samples in [0, 1) in the dtype PyTorch would hold them in (the input's float dtype)."""
    dtype = np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.dtype(np.float64)
    s = rng.random(shape).astype(dtype)
    s[s >= 1] = 0.5
    return s


@pytest.mark.parametrize("seed", range(36))
def test_fractional_max_pool(seed):
    rng = np.random.default_rng(500 + seed)
    nd = 2 + seed % 2
    layout = LAYOUTS[seed % len(LAYOUTS)]
    dtype = np.dtype(MAX_DTYPES[(seed // 2) % len(MAX_DTYPES)])
    k = tuple(int(rng.integers(1, 4)) for _ in range(nd))
    sp = tuple(int(rng.integers(kk + 1, kk + (10 if nd == 2 else 6))) for kk in k)
    x = make_input(rng, (2, 3) + sp, dtype)
    samples = samples_for(rng, (2, 3, nd), dtype)
    strict = int(nd == 3)  # (PyTorch's 3-d op: output + kernel - 1 < input, 2-d: <=)
    if rng.random() < 0.6:
        osz = tuple(int(rng.integers(1, n - kk + 2 - strict)) for n, kk in zip(sp, k))
        size_kw = dict(output_size=osz if len(set(osz)) > 1 else osz[0])
    else:
        while True:
            ratio = tuple(float(rng.uniform(0.3, 0.95)) for _ in range(nd))
            osz = tuple(int(n * r) for n, r in zip(sp, ratio))
            if all(1 <= o <= n - kk + 1 - strict for o, n, kk in zip(osz, sp, k)):
                break
        size_kw = dict(output_ratio=ratio)
    xin, cl = to_layout(x, layout)
    guard = Untouched(xin)
    s_in = samples[:1] if layout.startswith("unbatched") else samples
    samples_kw = {"random_samples" if seed % 3 else "_random_samples": s_in}
    return_indices = bool(rng.random() < 0.7)
    info = describe(layout=layout, dtype=dtype, k=k, sp=sp, osz=osz, **size_kw)
    res = getattr(fastpool, f"fractional_max_pool{nd}d")(
        xin, k if len(set(k)) > 1 else k[0], return_indices=return_indices, channels_last=cl,
        **size_kw, **samples_kw)
    guard.check()
    v, i = res if return_indices else (res, None)
    v = from_layout(v, layout, nd, "values")
    # float inputs: intervals in the input dtype (PyTorch); integers have no PyTorch
    # counterpart: accept float64 or float32 interval arithmetic
    cands = [None] if dtype.kind == "f" else [np.float64, np.float32]
    errors = []
    for cand in cands:
        rv, ri = R.ref_fractional_max_pool(x, k, osz, samples, interval_dtype=cand)
        rv, ri = ref_batch(rv, layout), ref_batch(ri, layout)
        try:
            assert_values(v, rv, dtype, info, exact=True)
            if return_indices:
                ii = from_layout(i, layout, nd, "indices")
                assert ii.dtype == np.int64
                np.testing.assert_array_equal(ii, ri, err_msg=info)
            return
        except AssertionError as exc:
            errors.append(exc)
    raise errors[0]


def test_fractional_max_pool_global_rng():
    """Without samples, NumPy's global generator draws them: reproducible under np.random.seed,
    and every output is the max of some kernel-sized window."""
    x = make_input(np.random.default_rng(0), (2, 3, 9, 10), np.float32, nan=False,
                   special=False)
    np.random.seed(1234)
    a, ia = fastpool.fractional_max_pool2d(x, 2, output_size=(4, 5), return_indices=True)
    np.random.seed(1234)
    b, ib = fastpool.fractional_max_pool2d(x, 2, output_size=(4, 5), return_indices=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ia, ib)
    assert a.shape == (2, 3, 4, 5) and ia.dtype == np.int64
    np.testing.assert_array_equal(np.take_along_axis(x.reshape(2, 3, -1),
                                                     ia.reshape(2, 3, -1), -1).reshape(a.shape),
                                  a)
    np.random.seed(99)
    c = fastpool.fractional_max_pool2d(x, 2, output_ratio=0.5)
    assert c.shape == (2, 3, 4, 5)


# ---------------------------------------------------------------------------------------------
# max unpooling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(36))
def test_max_unpool(seed):
    rng = np.random.default_rng(600 + seed)
    nd = 1 + seed % 3
    layout = LAYOUTS[(seed + 2) % len(LAYOUTS)]
    dtype = np.dtype(MAX_DTYPES[(seed // 3) % len(MAX_DTYPES)])
    k = tuple(int(rng.integers(1, 4)) for _ in range(nd))
    s = tuple(int(rng.choice([kk, kk + 1, max(kk - 1, 1)])) for kk in k)
    p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
    sp = tuple(int(rng.integers(kk + 2, kk + (9 if nd < 3 else 5))) for kk in k)
    base = make_input(rng, (2, 3) + sp, np.float64, special=False)
    _, idx = R.ref_max_pool(base, k, s, [(v, v) for v in p], (1,) * nd, False)
    x = make_input(rng, idx.shape, dtype, nan=False)
    default = tuple((i - 1) * ss - 2 * pp + kk for i, ss, pp, kk in zip(idx.shape[2:], s, p, k))
    # indices are flat positions: the default size may reinterpret them (still valid when
    # they fit), else pass the original size
    explicit = rng.random() < 0.5 or idx.max() >= math.prod(default)
    out_sp = sp if explicit else default
    if rng.random() < 0.3:
        idx = idx.astype(np.int32)
    xin, cl = to_layout(x, layout)
    iin, _ = to_layout(idx, layout)
    guard, iguard = Untouched(xin), Untouched(iin)
    use_out = layout in OUT_LAYOUTS and rng.random() < 0.3
    info = describe(layout=layout, dtype=dtype, k=k, s=s, p=p, sp=sp, output_size=out_sp,
                    index_dtype=idx.dtype, out=use_out)
    ref = ref_batch(R.ref_max_unpool(x, idx, out_sp), layout)
    kw = dict(channels_last=cl)
    if use_out:
        o = make_out(ref.shape, dtype, layout)
        kw["out"] = o
    osz_arg = out_sp if explicit else None
    res = getattr(fastpool, f"max_unpool{nd}d")(xin, iin, as_arg(rng, k), as_arg(rng, s),
                                                as_arg(rng, p), osz_arg, **kw)
    guard.check()
    iguard.check()
    if use_out:
        assert res is o
    assert_values(from_layout(res, layout, nd), ref, dtype, info, exact=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_long_one_row_windows_scan_in_vectors(dtype):
    """Adaptive and global max pooling of long rows scan each window in vectors whose lanes
    keep their own first max / last NaN, merged: the in-order scan's bits (the reference's),
    signed zeros and NaN payloads included, and its index."""
    rng = np.random.default_rng(np.dtype(dtype).num)
    L = 203  # (windows of 29-30 cells: vectors, then a scalar tail)
    x = -np.abs(rng.standard_normal((2, 3, L))).astype(dtype)
    z = rng.random(x.shape)
    x[z < 0.15] = 0.0
    x[z < 0.07] = -0.0  # (maxima of both zeros, either first)
    x[0, 0, 40:50] = np.nan
    bits = x.view(np.uint16 if dtype == np.float16 else
                  np.uint32 if dtype == np.float32 else np.uint64)
    bits[0, 0, 40:50] |= np.arange(1, 11, dtype=bits.dtype)  # (NaNs of distinct payloads)
    for o in (1, 7):
        ref_v, ref_i = R.ref_adaptive_max_pool(x, o)
        v, i = fastpool.adaptive_max_pool1d(x, o, return_indices=True)
        np.testing.assert_array_equal(i, ref_i)
        assert v.tobytes() == ref_v.tobytes(), (o, v, ref_v)
        assert fastpool.adaptive_max_pool1d(x, o).tobytes() == ref_v.tobytes()
    # global: the window is the whole plane
    assert fastpool.max_pool1d(x, L).tobytes() == R.ref_adaptive_max_pool(x, 1)[0].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.uint16, np.float64])
def test_max_unpool_channel_vectors_and_streamed_planes(dtype, monkeypatch):
    """Channels-last unpooling stores 16 channels at a time (one scatter), then the rest one by
    one; channels-first float results of 8 MiB and more are built plane by plane in scratch
    and streamed out.  Both give the reference's values (later cells win), whatever the index
    type; an index out of range in a vector's lane is reported with its plane (n * C + c)."""
    rng = np.random.default_rng(int(np.dtype(dtype).num))
    N, C, sp, osz = 2, 37, (7, 9), (15, 19)
    x = make_input(rng, (N, C) + sp, dtype, nan=False)
    idx = rng.integers(0, math.prod(osz), x.shape)
    idx[..., 0] = idx[..., -1]  # (duplicates: the later cell wins)
    for it in (np.int64, np.int32, np.uint16):
        ref = R.ref_max_unpool(x, idx.astype(np.int64), osz)
        xl, cl = to_layout(x, "cl")
        il, _ = to_layout(idx.astype(it), "cl")
        got = fastpool.max_unpool2d(xl, il, 2, output_size=osz, channels_last=True)
        assert_values(from_layout(got, "cl", 2), ref, dtype, f"cl {it}", exact=True)
    bad = idx.copy()
    bad[1, 20, 3, 4] = math.prod(osz) + 9
    with pytest.raises(ValueError, match=rf"holds {math.prod(osz) + 9} in plane {C + 20}\b"):
        fastpool.max_unpool2d(to_layout(x, "cl")[0], to_layout(bad, "cl")[0], 2,
                              output_size=osz, channels_last=True)
    # channels-first, a result past 8 MiB for float32 and float64 (the bound as on a machine
    # whose last-level cache is at most 128 MiB)
    from fastpool import functional as fpf
    monkeypatch.setattr(fpf, "_UNPOOL_STREAM_MIN", 8 << 20)
    monkeypatch.setattr(fpf, "_PLANS", {})
    x = make_input(rng, (4, 64, 32, 64), dtype, nan=False)
    osz = (64, 128)
    idx = rng.integers(0, math.prod(osz), x.shape)
    idx[..., 1] = idx[..., 0]
    got = fastpool.max_unpool2d(x, idx, 2, output_size=osz)
    assert_values(got, R.ref_max_unpool(x, idx, osz), dtype, "cf", exact=True)


def test_max_unpool_roundtrip_with_fastpool_indices():
    rng = np.random.default_rng(7)
    x = make_input(rng, (2, 3, 9, 8), np.float32, nan=False, special=False)
    v, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
    u = fastpool.max_unpool2d(v, i, 3, 2, 1, output_size=x.shape[2:])
    np.testing.assert_array_equal(u, R.ref_max_unpool(v, i, x.shape[2:]))
    # every nonzero of the unpooled plane is the input value at that place
    nz = u != 0
    np.testing.assert_array_equal(u[nz], x[nz])


# ---------------------------------------------------------------------------------------------
# semantics pinned by hand
# ---------------------------------------------------------------------------------------------

def test_max_nan_last_and_ties_first():
    x = np.array([[[1.0, np.nan, 3.0, np.nan, 2.0, 3.0, 3.0]]])
    v, i = fastpool.max_pool1d(x, 7, return_indices=True)
    assert np.isnan(v).all() and i.ravel().tolist() == [3]
    v, i = fastpool.max_pool1d(x[..., 4:], 3, return_indices=True)
    assert v.ravel().tolist() == [3.0] and i.ravel().tolist() == [1]
    v, i = fastpool.adaptive_max_pool1d(x, 1, return_indices=True)
    assert np.isnan(v).all() and i.ravel().tolist() == [3]


@pytest.mark.parametrize("dtype", [np.float32, np.int8, np.uint8, np.int64])
def test_max_padding_never_selected(dtype):
    lo = -np.inf if np.dtype(dtype).kind == "f" else np.iinfo(dtype).min
    x = np.full((1, 1, 4), lo, dtype=dtype)
    v, i = fastpool.max_pool1d(x, 3, 1, 1, return_indices=True)
    assert (v == lo).all()
    assert i.ravel().tolist() == [0, 0, 1, 2]
    v, i = fastpool.max_pool1d(x, 2, 1, ((1, 1),), return_indices=True)
    assert i.ravel().tolist() == [0, 0, 1, 2, 3]


def test_ceil_mode_drops_window_starting_in_padding():
    x = np.arange(5, dtype=np.float64).reshape(1, 1, 5)
    assert fastpool.max_pool1d(x, 2, 2, 1, ceil_mode=True).shape[-1] == 3
    assert fastpool.max_pool1d(x, 2, 2, 0, ceil_mode=True).shape[-1] == 3
    # avg: ceil-mode overhang is not counted, the padding is
    got = fastpool.avg_pool1d(x, 2, 2, 1, ceil_mode=True, count_include_pad=True)
    np.testing.assert_allclose(got.ravel(), [0 / 2, (1 + 2) / 2, (3 + 4) / 2])
    got = fastpool.avg_pool1d(x, 3, 3, 0, ceil_mode=True)
    np.testing.assert_allclose(got.ravel(), [1.0, 3.5])


def test_lp_partial_ceil_window_scaled():
    x = np.array([[[1.0, 2.0, 3.0, 4.0, 2.0]]])
    got = fastpool.lp_pool1d(x, 2, 2, 2, ceil_mode=True)
    # last window has one cell: 2**2 / 1 * 2 -> sqrt(8)
    np.testing.assert_allclose(got.ravel(), [math.sqrt(5), 5.0, math.sqrt(8)])


def test_integer_average_truncates_toward_zero():
    x = np.array([[[-7, -1, 7, 1, -2, 0]]], dtype=np.int64)
    got = fastpool.avg_pool1d(x, 3, 3)
    assert got.dtype == np.int64 and got.ravel().tolist() == [0, 0]
    got = fastpool.avg_pool1d(x, 2, 2)
    assert got.ravel().tolist() == [-4, 4, -1]
    got = fastpool.adaptive_avg_pool1d(x.astype(np.int16), 4)
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, R.ref_adaptive_avg_pool(x.astype(np.int16), 4))


@pytest.mark.parametrize("n,k,s,d", [(7, 3, 2, 1), (8, 3, 2, 1), (5, 2, 3, 1), (9, 3, 1, 2),
                                     (6, 4, 4, 1), (1, 3, 2, 1)])
@pytest.mark.parametrize("mode", ["same", "same_lower", "valid"])
def test_padding_strings(n, k, s, d, mode):
    x = np.arange(2 * n, dtype=np.float64).reshape(1, 2, n) * np.array([1, -1]).reshape(1, 2, 1)
    if mode == "valid" and (k - 1) * d + 1 > n:
        return
    pads = R.resolve_pads(mode, (n,), (k,), (s,), (d,))
    v, i = fastpool.max_pool1d(x, k, s, mode, d, return_indices=True)
    rv, ri = R.ref_max_pool(x, (k,), (s,), pads, (d,), False)
    np.testing.assert_array_equal(v, rv)
    np.testing.assert_array_equal(i, ri)
    if mode != "valid":
        assert v.shape[-1] == -(-n // s)
    a = fastpool.avg_pool1d(x, k, s, mode, dilation=d, count_include_pad=False)
    np.testing.assert_allclose(a, R.ref_avg_pool(x, (k,), (s,), pads, False, False, None, (d,)))


def test_same_pads_odd_cell_placement():
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 6)
    # k=2, s=1: one padded cell, at the end for "same", at the start for "same_lower"
    np.testing.assert_allclose(fastpool.avg_pool1d(x, 2, 1, "same").ravel(),
                               [0.5, 1.5, 2.5, 3.5, 4.5, 2.5])
    np.testing.assert_allclose(fastpool.avg_pool1d(x, 2, 1, "same_lower").ravel(),
                               [0.0, 0.5, 1.5, 2.5, 3.5, 4.5])


def test_adaptive_non_divisible_bounds():
    x = np.arange(10, dtype=np.float64).reshape(1, 1, 10)
    v, i = fastpool.adaptive_max_pool1d(x, 4, return_indices=True)
    # windows [0,3) [2,5) [5,8) [7,10)
    assert i.ravel().tolist() == [2, 4, 7, 9]
    np.testing.assert_allclose(fastpool.adaptive_avg_pool1d(x, 4).ravel(), [1, 3, 6, 8])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_global_average_every_plane_size(dtype):
    """Global average pooling sums each plane in explicit vectors (``_simd.vsum_run``: whole
    vectors into two sums, their lanes, then the rest one by one): every plane size from 1 to
    70 cells (no whole vector, whole vectors only, an odd count of them, a remainder) against
    the float64 mean, NaN and infinities propagating, the same bits on 1 and 2 threads."""
    import numba
    rng = np.random.default_rng(3)
    tol = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-14}[np.dtype(dtype).type]
    for n in range(1, 71):
        x = (rng.standard_normal((3, 700 if n == 9 else 5, n)) * 4).astype(dtype)
        if n in (17, 40):
            x[0, 1, n // 2] = np.nan
            x[1, 2, -1] = np.inf
        got = fastpool.adaptive_avg_pool1d(x, 1)[..., 0]
        ref = x.astype(np.float64).mean(axis=-1)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol,
                                   err_msg=str(n))
        if n == 9:  # (enough planes for the parallel kernel)
            prev = numba.get_num_threads()
            try:
                numba.set_num_threads(1)
                one = fastpool.adaptive_avg_pool1d(x, 1)
            finally:
                numba.set_num_threads(prev)
            assert one.tobytes() == fastpool.adaptive_avg_pool1d(x, 1).tobytes()


# ---------------------------------------------------------------------------------------------
# PyTorch directly: float16 and the common float32 path
# ---------------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_matches_torch(dtype, nd):
    rng = np.random.default_rng(nd + (10 if dtype == np.float16 else 0))
    sp = (9, 8, 7)[:nd] if nd < 3 else (7, 6, 5)
    x = make_input(rng, (2, 3) + sp, dtype)
    for k, s, p, d, ceil_mode in [(3, 2, 1, 1, True), (2, 2, 0, 1, False), (3, 1, 1, 2, False)]:
        tv, ti = getattr(F, f"max_pool{nd}d")(T(x), k, s, p, d, ceil_mode, return_indices=True)
        v, i = getattr(fastpool, f"max_pool{nd}d")(x, k, s, p, d, ceil_mode,
                                                   return_indices=True)
        np.testing.assert_array_equal(v, tv.numpy())
        np.testing.assert_array_equal(i, ti.numpy())
        tv, ti = getattr(F, f"adaptive_max_pool{nd}d")(T(x), 4, return_indices=True)
        v, i = getattr(fastpool, f"adaptive_max_pool{nd}d")(x, 4, return_indices=True)
        np.testing.assert_array_equal(v, tv.numpy())
        np.testing.assert_array_equal(i, ti.numpy())


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_avg_matches_torch(dtype, nd):
    rng = np.random.default_rng(20 + nd)
    sp = (9, 8, 7)[:nd] if nd < 3 else (7, 6, 5)
    x = make_input(rng, (2, 3) + sp, dtype, special=False)
    tol = 1e-3 if dtype == np.float16 else 1e-6
    for k, s, p, ceil_mode, cip in [(3, 2, 1, True, True), (3, 2, 1, True, False),
                                    (2, 3, 1, False, True)]:
        if not (nd == 3 and dtype == np.float16):  # torch lacks float16 avg_pool3d on the CPU
            ref = getattr(F, f"avg_pool{nd}d")(T(x), k, s, p, ceil_mode, cip).numpy()
            got = getattr(fastpool, f"avg_pool{nd}d")(x, k, s, p, ceil_mode, cip)
            assert got.dtype == dtype
            np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64),
                                       rtol=tol, atol=tol)
        ref = getattr(F, f"adaptive_avg_pool{nd}d")(T(x), 4).numpy()
        got = getattr(fastpool, f"adaptive_avg_pool{nd}d")(x, 4)
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol,
                                   atol=tol)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("nd", [2, 3])
def test_fractional_matches_torch(dtype, nd):
    rng = np.random.default_rng(30 + nd)
    sp = (13, 11) if nd == 2 else (7, 8, 9)
    x = make_input(rng, (2, 3) + sp, dtype)
    osz = (6, 5) if nd == 2 else (4, 5, 6)  # torch 3-d needs out + k - 1 < in
    for _ in range(4):
        s = samples_for(rng, (2, 3, nd), dtype)
        tv, ti = getattr(F, f"fractional_max_pool{nd}d")(T(x), 2, output_size=osz,
                                                          return_indices=True,
                                                          _random_samples=T(s))
        v, i = getattr(fastpool, f"fractional_max_pool{nd}d")(x, 2, output_size=osz,
                                                              return_indices=True,
                                                              _random_samples=s)
        np.testing.assert_array_equal(v, tv.numpy())
        np.testing.assert_array_equal(i, ti.numpy())


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_lp_matches_torch(nd):
    rng = np.random.default_rng(40 + nd)
    sp = (9, 8, 7)[:nd] if nd < 3 else (7, 6, 5)
    x = np.abs(make_input(rng, (2, 3) + sp, np.float32, nan=False, special=False))
    for p, k, s, ceil_mode in [(2, 3, 2, True), (1, 2, 2, False), (3, 2, 1, True)]:
        ref = getattr(F, f"lp_pool{nd}d")(T(x), p, k, s, ceil_mode).numpy()
        got = getattr(fastpool, f"lp_pool{nd}d")(x, p, k, s, ceil_mode)
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-5)


def test_lp_float16_rounds_once():
    # the contract computes float16 in float32 and rounds once; PyTorch rounds every step,
    # so compare with the reference (and loosely with PyTorch)
    rng = np.random.default_rng(5)
    x = np.abs(make_input(rng, (2, 3, 9, 8), np.float16, nan=False, special=False))
    got = fastpool.lp_pool2d(x, 2, 3, 2, True)
    ref = R.ref_lp_pool(x, 2, (3, 3), (2, 2), None, None, True)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=1e-3)
    tref = F.lp_pool2d(T(x), 2, 3, 2, True).numpy()
    np.testing.assert_allclose(got.astype(np.float64), tref.astype(np.float64), rtol=5e-3)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_unpool_matches_torch(nd):
    rng = np.random.default_rng(50 + nd)
    sp = (9, 8, 7)[:nd] if nd < 3 else (7, 6, 5)
    x = make_input(rng, (2, 3) + sp, np.float32, special=False)
    tv, ti = getattr(F, f"max_pool{nd}d")(T(x), 3, 2, 1, return_indices=True)
    ref = getattr(F, f"max_unpool{nd}d")(tv, ti, 3, 2, 1, output_size=sp).numpy()
    got = getattr(fastpool, f"max_unpool{nd}d")(tv.numpy(), ti.numpy(), 3, 2, 1,
                                                output_size=sp)
    np.testing.assert_array_equal(got, ref)


def test_fractional_float16_intervals_match_torch():
    # PyTorch computes the window starts in the input dtype: half arithmetic for float16
    # (it differs from float32 arithmetic for a fair share of samples at these sizes)
    rng = np.random.default_rng(60)
    for n in (23, 37, 50, 61):
        for o in (7, 15, n // 2, n - 3):
            x = make_input(rng, (1, 16, 1, n), np.float16, nan=False, special=False)
            s = samples_for(rng, (1, 16, 2), np.float16)
            tv, ti = F.fractional_max_pool2d(T(x), (1, 2), output_size=(1, o),
                                             return_indices=True, _random_samples=T(s))
            v, i = fastpool.fractional_max_pool2d(x, (1, 2), output_size=(1, o),
                                                  return_indices=True, random_samples=s)
            np.testing.assert_array_equal(i, ti.numpy(), err_msg=f"n={n} o={o}")
            np.testing.assert_array_equal(v, tv.numpy())


def test_ceil_mode_window_overhanging_the_padded_input():
    """In ceil mode a window wider than the padded input by less than a stride still makes one
    output cell (``ceil(span / s) + 1``, PyTorch's output size); by a stride or more it is an
    error, as always without ceil mode.  Forward and gradient against PyTorch, max (with
    dilation), average (both divisors) and Lp, 1-d to 3-d, random sizes."""
    rng = np.random.default_rng(77)
    seen = 0
    while seen < 24:
        nd = int(rng.integers(1, 4))
        sp = tuple(int(v) for v in rng.integers(1, 5, nd))
        k = tuple(int(v) for v in rng.integers(2, 7, nd))
        s = tuple(int(v) for v in rng.integers(1, 6, nd))
        d = tuple(int(v) for v in rng.integers(1, 3, nd))
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        over = [(kk - 1) * dd + 1 - (n + 2 * pp) for n, kk, dd, pp in zip(sp, k, d, p)]
        if max(over) <= 0:
            continue  # (no overhang: the other tests)
        op = ["max", "avg", "lp"][seen % 3]
        if op == "max":
            kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=True)
        elif op == "avg":
            kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=True,
                      count_include_pad=bool(rng.integers(2)))
        else:
            kw = dict(norm_type=2.0, kernel_size=k[0] if nd == 1 else k,
                      stride=s[0] if nd == 1 else s, ceil_mode=True)
        x = rng.standard_normal((2, 3) + sp).astype(np.float32)
        if op == "lp":
            x = np.abs(x)
        xt = torch.from_numpy(x).requires_grad_()
        name = f"{op}_pool{nd}d"
        try:
            want = getattr(F, name)(xt, **kw)
        except RuntimeError:
            with pytest.raises(ValueError):
                getattr(fastpool, name)(x, **kw)
            continue
        if op == "max" and not torch.isfinite(want).all():
            continue  # (a window without an input cell: PyTorch's -inf and stray index)
        got = getattr(fastpool, name)(x, **kw)
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-6, atol=1e-6)
        g = rng.standard_normal(got.shape).astype(np.float32)
        want.backward(torch.from_numpy(g))
        gin = getattr(fastpool, name + "_backward")(g, x, **kw)
        np.testing.assert_allclose(gin, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
        seen += 1
    # by a stride or more: the error names the window and the padded input
    with pytest.raises(ValueError, match=r"larger than the padded input .* by 2, at least "
                                         r"the stride 2 \(ceil_mode\)"):
        fastpool.max_pool1d(np.ones((1, 1, 2), np.float32), 6, 2, 1, ceil_mode=True)
    with pytest.raises(RuntimeError):
        F.max_pool1d(torch.ones((1, 1, 2)), 6, 2, 1, ceil_mode=True)


@pytest.mark.parametrize("op", ["avg", "lp"])
def test_3d_sum_pooling_refuses_inputs_smaller_than_the_kernel(op):
    """PyTorch's avg_pool3d (and lp_pool3d, built on it) refuse an input smaller than the
    kernel along any dim, padding or not, unlike the 1-d and 2-d ops: the same ValueError here,
    forward and gradient; the extensions PyTorch lacks (pairs, dilation) keep working."""
    x = np.random.default_rng(3).random((1, 2, 1, 4, 4)).astype(np.float32)
    args = (2.0,) if op == "lp" else ()
    # (Lp has no padding: its window overhangs the input in ceil mode)
    kw = dict(padding=1) if op == "avg" else dict(stride=2, ceil_mode=True)
    with pytest.raises(RuntimeError, match="smaller than kernel size"):
        getattr(F, f"{op}_pool3d")(torch.from_numpy(x), *args, kernel_size=2, **kw)
    for fn in (getattr(fastpool, f"{op}_pool3d"),
               functools.partial(getattr(fastpool, f"{op}_pool3d_backward"),
                                 np.ones((1, 2, 2, 3, 3) if op == "avg" else (1, 2, 1, 2, 2),
                                         np.float32))):
        with pytest.raises(ValueError, match=r"input size \(1, 4, 4\) is smaller than "
                                             r"kernel_size \(2, 2, 2\)"):
            fn(x, *args, kernel_size=2, **kw)
    # the same geometry in 2-d is PyTorch's too
    want = getattr(F, f"{op}_pool2d")(torch.from_numpy(x[:, :, 0]), *args, kernel_size=2, **kw)
    np.testing.assert_allclose(getattr(fastpool, f"{op}_pool2d")(x[:, :, 0], *args,
                                                                 kernel_size=2, **kw),
                               want.numpy(), rtol=1e-6)
    # ONNX-style pairs and dilation have no PyTorch counterpart: no such limit
    pairs = fastpool.avg_pool3d(x, 2, 1, ((1, 0), (0, 0), (0, 0))) if op == "avg" else \
        fastpool.lp_pool3d(x, 2.0, 2, padding=((1, 0), (0, 0), (0, 0)))
    assert np.isfinite(pairs).all()


def test_pairs_after_padding_and_ceil_mode_drop_rule():
    """ONNX pairs whose after-padding would leave a last window in the padding alone: an error
    without ceil mode, but in ceil mode that window starts at or past ``in + before`` and is
    dropped, so the last window kept holds an input cell: a result (against the reference)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 8, 7)).astype(np.float32)
    pads = ((0, 2), (1, 2))
    with pytest.raises(ValueError, match="leaves the last window"):
        fastpool.max_pool2d(x, 2, 1, pads)
    got = fastpool.max_pool2d(x, 2, 1, pads, ceil_mode=True)
    want, _ = R.ref_max_pool(x, (2, 2), (1, 1), pads, (1, 1), True)
    assert got.shape == want.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(got, want)
    for incl in (True, False):
        np.testing.assert_allclose(
            fastpool.avg_pool2d(x, 2, 1, pads, ceil_mode=True, count_include_pad=incl),
            R.ref_avg_pool(x, (2, 2), (1, 1), pads, True, incl, None, (1, 1)), rtol=1e-6,
            atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 4, 4), (2, 3, 1, 6, 10), (4, 64, 1, 8, 8),
                                   (2, 3, 1, 9, 7), (3, 2, 2, 6, 6)])
def test_avg3d_depth_padding_over_one_depth_row(shape):
    """3-d average whose windows span a depth-1 input and its depth padding (ONNX pairs or
    "same"): with ``count_include_pad`` the divisor counts the depth padding too, also where
    the H x W windows are the 2 x 2 pairs at stride 2 (a kernel of its own for small calls,
    which once divided by 4 there); small calls, the specialised kernel after them, both
    layouts, against the reference."""
    from fastpool import functional
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    xc = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    for k, pads in (((3, 2, 2), ((1, 1), (0, 0), (0, 0))), ((2, 2, 2), ((1, 0), (0, 0), (0, 0))),
                    ((3, 2, 2), "same"), ((3, 3, 3), ((1, 1), (0, 0), (1, 0)))):
        for incl in (True, False):
            want = R.ref_avg_pool(x, k, (1, 2, 2), R.resolve_pads(pads, x.shape[2:], k,
                                                                  (1, 2, 2)), False, incl)
            functional._PLANS.clear()
            for rep in range(3):
                got = fastpool.avg_pool3d(x, k, (1, 2, 2), pads, count_include_pad=incl)
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6,
                                           err_msg=f"{k} {pads} {incl} call {rep}")
            got = fastpool.avg_pool3d(xc, k, (1, 2, 2), pads, count_include_pad=incl,
                                      channels_last=True)
            np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, rtol=1e-6, atol=1e-6)


def test_windows_without_input_cells():
    """Dilation past a short input with PyTorch-style padding leaves windows without an input
    cell: max gives the dtype's lowest value (PyTorch's -inf for floats) with PyTorch's index;
    average gives 0 when the padding counts, NaN when it does not (0 for integers)."""
    x = np.arange(6, dtype=np.float32).reshape(1, 3, 2) + 1
    for dt in (np.float32, np.float64, np.int8, np.uint8, np.int32):
        got, idx = fastpool.max_pool1d(x.astype(dt), 2, 1, 1, dilation=3, return_indices=True)
        low = -np.inf if np.dtype(dt).kind == "f" else np.iinfo(dt).min
        assert got.dtype == dt and (got == low).all(), dt
        tv, ti = F.max_pool1d(torch.from_numpy(x.astype(np.float64)), 2, 1, 1, dilation=3,
                              return_indices=True)
        assert np.array_equal(idx, ti.numpy()) and (tv.numpy() == -np.inf).all()
    for dt in (np.float32, np.float16, np.int32):
        xi = x.astype(dt)
        with_pad = fastpool.avg_pool1d(xi, 2, 1, 1, count_include_pad=True, dilation=3)
        without = fastpool.avg_pool1d(xi, 2, 1, 1, count_include_pad=False, dilation=3)
        assert with_pad.dtype == without.dtype == dt and (with_pad == 0).all()
        assert (np.isnan(without) if np.dtype(dt).kind == "f" else without == 0).all(), dt


def test_fractional_window_span_limit_as_pytorch():
    """output_size + kernel_size - 1 may equal the input size in 2-d (PyTorch's 2-d op) but
    must stay below it in 3-d (PyTorch's 3-d op), forward and gradient."""
    rng = np.random.default_rng(4)
    x3 = rng.standard_normal((1, 2, 6, 6, 6)).astype(np.float32)
    s3 = rng.random((1, 2, 3)).astype(np.float32)
    for o in ((5, 4, 4), (4, 5, 4), (4, 4, 5)):
        with pytest.raises(RuntimeError, match="too large"):
            F.fractional_max_pool3d(torch.from_numpy(x3), 2, output_size=o,
                                    _random_samples=torch.from_numpy(s3))
        with pytest.raises(ValueError, match=r"output_size \+ kernel_size - 1 < input size"):
            fastpool.fractional_max_pool3d(x3, 2, output_size=o, random_samples=s3)
        with pytest.raises(ValueError, match="too large"):
            fastpool.fractional_max_pool3d_backward(np.ones((1, 2) + o, np.float32), x3, 2,
                                                    output_size=o, random_samples=s3)
    got = fastpool.fractional_max_pool3d(x3, 2, output_size=(4, 4, 4), random_samples=s3)
    want = F.fractional_max_pool3d(torch.from_numpy(x3), 2, output_size=(4, 4, 4),
                                   _random_samples=torch.from_numpy(s3))
    np.testing.assert_array_equal(got, want.numpy())
    x2, s2 = x3[:, :, 0], s3[:, :, :2]
    got = fastpool.fractional_max_pool2d(x2, 2, output_size=(5, 5), random_samples=s2)
    want = F.fractional_max_pool2d(torch.from_numpy(x2), 2, output_size=(5, 5),
                                   _random_samples=torch.from_numpy(s2))
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channels_last_one_row_windows_read_the_input_row(dtype):
    """Channels-last rows of 1-row windows (adaptive pooling, windows that are not hot, and the
    average's hot windows) skip the vertical pass and reduce straight from the input row:
    PyTorch's values (max exact, NaN included; average to rounding), parallel sizes, 1-d and
    2-d."""
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal((4, 40, 1001)).astype(dtype)
    x1[1, 3, 17] = np.nan
    x2 = rng.standard_normal((3, 24, 6, 401)).astype(dtype)
    x2[2, 5, 3, 100] = np.nan
    cases = [(x1, lambda a, cl: fastpool.adaptive_max_pool1d(a, 7, channels_last=cl),
              lambda t: F.adaptive_max_pool1d(t, 7)),
             (x1, lambda a, cl: fastpool.adaptive_avg_pool1d(a, 7, channels_last=cl),
              lambda t: F.adaptive_avg_pool1d(t, 7)),
             (x1, lambda a, cl: fastpool.max_pool1d(a, 4, 3, 1, ceil_mode=True, channels_last=cl),
              lambda t: F.max_pool1d(t, 4, 3, 1, ceil_mode=True)),
             (x1, lambda a, cl: fastpool.avg_pool1d(a, 4, 3, 1, True, False, channels_last=cl),
              lambda t: F.avg_pool1d(t, 4, 3, 1, True, False)),
             # hot windows' interior columns too (average: the scratch row is unpadded)
             (x1, lambda a, cl: fastpool.max_pool1d(a, 3, 2, 1, channels_last=cl),
              lambda t: F.max_pool1d(t, 3, 2, 1)),
             (x1, lambda a, cl: fastpool.avg_pool1d(a, 3, 2, 1, False, False, channels_last=cl),
              lambda t: F.avg_pool1d(t, 3, 2, 1, False, False)),
             (x1, lambda a, cl: fastpool.max_pool1d(a, 3, 1, 1, channels_last=cl),
              lambda t: F.max_pool1d(t, 3, 1, 1)),
             (x1, lambda a, cl: fastpool.avg_pool1d(a, 3, 1, 1, channels_last=cl),
              lambda t: F.avg_pool1d(t, 3, 1, 1)),
             (x2, lambda a, cl: fastpool.adaptive_max_pool2d(a, (6, 9), channels_last=cl),
              lambda t: F.adaptive_max_pool2d(t, (6, 9))),
             (x2, lambda a, cl: fastpool.adaptive_avg_pool2d(a, (6, 9), channels_last=cl),
              lambda t: F.adaptive_avg_pool2d(t, (6, 9)))]
    for i, (x, ours, theirs) in enumerate(cases):
        xl, cl = to_layout(x, "cl")
        got = np.moveaxis(ours(xl, cl), -1, 1)
        ref = theirs(T(x)).numpy()
        if i % 2 == 0:
            np.testing.assert_array_equal(got, ref, err_msg=str(i))
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=str(i))
