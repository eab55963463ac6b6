"""Gradients (``<op>_backward``) against PyTorch autograd, the NumPy oracle's backward and
finite differences, plus determinism across thread counts and the error catalogue.

Configurations are drawn from seeded RNGs (op x rank x layout x dtype x parameters) rather than
a cartesian product: every (kernel, layout, dtype) compiles once, so the file stays fast.
"""

import math

import numpy as np
import pytest

import fastpool
import reference as R
from conftest import make_input, windows_hit_input

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

OPS = ["max", "avg", "lp", "adaptive_max", "adaptive_avg", "fractional_max", "max_unpool"]
LAYOUTS = ["cf", "cl", "cl_view"]
TOL = {np.float16: (4e-3, 4e-3), np.float32: (2e-5, 2e-5), np.float64: (1e-11, 1e-12)}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def to_layout(a, layout):
    """Canonical (N, C, *sp) -> (array to pass, channels_last)."""
    if layout == "cf":
        return np.ascontiguousarray(a), False
    cl = np.ascontiguousarray(np.moveaxis(a, 1, -1))
    if layout == "cl":
        return cl, True
    return np.moveaxis(cl, -1, 1), False  # logical NC* view of channels-last memory


def from_layout(res, layout, like):
    """Back to canonical, checking the result's dtype and memory layout."""
    assert type(res) is np.ndarray
    assert res.dtype == like.dtype, (res.dtype, like.dtype)
    if layout == "cl":
        assert res.flags.c_contiguous
        res = np.moveaxis(res, -1, 1)
    elif layout == "cl_view":
        assert np.moveaxis(res, 1, -1).flags.c_contiguous, res.strides
    else:
        assert res.flags.c_contiguous
    assert res.shape == like.shape, (res.shape, like.shape)
    return res


def close(got, ref, dtype, what=""):
    rtol, atol = TOL[np.dtype(dtype).type]
    scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isfinite(ref), ref, 0)), initial=0)))
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=rtol,
                               atol=atol * scale, equal_nan=True, err_msg=what)


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def torch_grad(fwd, x, g):
    """d(sum(g * fwd(x)))/dx by PyTorch autograd (float16 computed in float32)."""
    xt = T(x.astype(np.float32) if x.dtype == np.float16 else x).requires_grad_(True)
    y = fwd(xt)
    y = y[0] if isinstance(y, tuple) else y
    y.backward(T(g.astype(np.float32) if g.dtype == np.float16 else g))
    return xt.grad.numpy()


def tup(rng, vals):
    """A per-dim parameter as an int when the entries agree (half the time), else a tuple."""
    vals = tuple(int(v) for v in vals)
    if len(vals) == 1 or (len(set(vals)) == 1 and rng.random() < 0.5):
        return vals[0]
    return vals


def draw_dtype(rng, allow_half=True):
    return rng.choice([np.float64, np.float32, np.float16] if allow_half else
                      [np.float64, np.float32], p=[0.6, 0.25, 0.15] if allow_half else [0.7, 0.3])


def draw_window(rng, nd, dilation):
    while True:
        k = [int(rng.integers(1, 5 if nd < 3 else 4)) for _ in range(nd)]
        s = [int(rng.choice([1, 2, 3, k[i], k[i] + 1])) for i in range(nd)]
        d = [int(rng.integers(1, 3)) if dilation else 1 for _ in range(nd)]
        p = [int(rng.integers(0, k[i] // 2 + 1)) for i in range(nd)]
        ceil_mode = bool(rng.integers(0, 2))
        sp = [int(rng.integers(max((k[i] - 1) * d[i] + 1 - 2 * p[i], 1),
                               (k[i] - 1) * d[i] + 1 + (8 if nd < 3 else 4)))
              for i in range(nd)]
        if windows_hit_input(sp, k, s, [(v, v) for v in p], d, ceil_mode):
            return k, s, p, d, ceil_mode, tuple(sp)


# ---------------------------------------------------------------------------------------------
# against PyTorch autograd
# ---------------------------------------------------------------------------------------------

def _config(seed):
    """One random configuration: (name, nd, dtype, x, fastpool call(g, x, cl), torch fwd)."""
    rng = np.random.default_rng(1000 + seed)
    op = OPS[seed % len(OPS)]
    nd = int(rng.integers(2, 4)) if op == "fractional_max" else int(rng.integers(1, 4))
    dtype = draw_dtype(rng, allow_half=op not in ("fractional_max",))
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    fname = f"{op}_pool{nd}d" if op != "max_unpool" else f"max_unpool{nd}d"
    bwd = getattr(fastpool, fname + "_backward")
    tf = getattr(F, f"{op}_pool{nd}d" if op != "max_unpool" else f"max_unpool{nd}d")
    desc = {"op": op, "nd": nd, "dtype": np.dtype(dtype).name}

    if op in ("max", "avg", "lp"):
        k, s, p, d, ceil_mode, sp = draw_window(rng, nd, dilation=op == "max")
        x = make_input(rng, (n, c) + sp, dtype, nan=op == "max", special=op == "max")
        if op == "lp":
            x = (rng.integers(-1, 4, (n, c) + sp) * 0.5).astype(dtype)
            x[rng.random(x.shape) < 0.3] = 0  # zero windows: zero gradient, as torch
        kk, ss, pp, dd = tup(rng, k), tup(rng, s), tup(rng, p), tup(rng, d)
        if op == "max":
            with_idx = bool(rng.integers(0, 2))
            idt = rng.choice([np.int64, np.int32])
            desc.update(k=k, s=s, p=p, d=d, ceil=ceil_mode, indices=with_idx)

            def call(g, xl, cl, layout=None):
                kw = {}
                if with_idx:  # PyTorch's indices (the forward's own are tested elsewhere)
                    ti = tf(T(x.astype(np.float32) if dtype == np.float16 else x), kk, ss, pp,
                            dd, ceil_mode, True)[1].numpy().astype(idt)
                    kw["indices"] = to_layout(ti, layout)[0]
                return bwd(g, xl, kk, ss, pp, dd, ceil_mode, channels_last=cl, **kw)
            fwd = lambda t: tf(t, kk, ss, pp, dd, ceil_mode)  # noqa: E731
        elif op == "avg":
            cip = bool(rng.integers(0, 2))
            dov = int(rng.choice([0, 0, 3, -2])) or None
            desc.update(k=k, s=s, p=p, ceil=ceil_mode, count_include_pad=cip,
                        divisor_override=dov)

            def call(g, xl, cl, layout=None):
                return bwd(g, xl, kk, ss, pp, ceil_mode, cip, dov, channels_last=cl)
            if nd == 1:
                # torch's avg_pool1d has no divisor_override: the 2-d op on (N, C, 1, W)
                def fwd(t):
                    return F.avg_pool2d(t[:, :, None], (1, k[0]), (1, s[0]), (0, p[0]),
                                        ceil_mode, cip, dov)[:, :, 0]
            else:
                fwd = lambda t: tf(t, kk, ss, pp, ceil_mode, cip, dov)  # noqa: E731
        else:
            norm = float(rng.choice([1.0, 2.0, 3.0, 1.5]))
            desc.update(k=k, s=s, ceil=ceil_mode, p=norm)

            def call(g, xl, cl, layout=None):
                return bwd(g, xl, norm, kk, ss, ceil_mode, channels_last=cl)
            fwd = lambda t: tf(t, norm, kk, ss, ceil_mode)  # noqa: E731
    elif op in ("adaptive_max", "adaptive_avg"):
        sp = tuple(int(rng.integers(1, 10 if nd < 3 else 6)) for _ in range(nd))
        osz = tuple(int(rng.integers(1, v + 3)) for v in sp)
        if rng.random() < 0.2:
            osz = (1,) * nd  # global
        x = make_input(rng, (n, c) + sp, dtype, nan=op == "adaptive_max",
                       special=op == "adaptive_max")
        arg = osz if rng.random() < 0.7 or nd == 1 else (osz[:-1] + (None,))
        if arg[-1] is None:
            osz = osz[:-1] + (sp[-1],)
        desc.update(sp=sp, output_size=arg)
        if op == "adaptive_max":
            with_idx = bool(rng.integers(0, 2))
            desc["indices"] = with_idx

            def call(g, xl, cl, layout=None):
                kw = {}
                if with_idx:
                    ti = tf(T(x.astype(np.float32) if dtype == np.float16 else x), arg,
                            True)[1].numpy()
                    kw["indices"] = to_layout(ti, layout)[0]
                return bwd(g, xl, arg, channels_last=cl, **kw)
        else:
            def call(g, xl, cl, layout=None):
                return bwd(g, xl, arg, channels_last=cl)
        fwd = lambda t: tf(t, arg)  # noqa: E731
    elif op == "fractional_max":
        k = tuple(int(rng.integers(1, 4)) for _ in range(nd))
        osz = tuple(int(rng.integers(1, 5)) for _ in range(nd))
        sp = tuple(o + kk + int(rng.integers(0, 4)) for o, kk in zip(osz, k))  # torch: <
        x = make_input(rng, (n, c) + sp, dtype)
        samples = rng.random((n, c, nd)).astype(dtype)
        with_idx = bool(rng.integers(0, 2)) or nd == 3
        desc.update(k=k, output_size=osz, indices=with_idx)

        def call(g, xl, cl, layout=None):
            if with_idx:
                if nd == 3:  # PyTorch's own indices: the backward alone under test
                    idx = tf(T(x), k, osz, return_indices=True, _random_samples=T(samples))[1]
                    idx, _ = to_layout(idx.numpy(), layout)
                else:
                    idx = getattr(fastpool, fname)(xl, k, osz, None, True,
                                                   random_samples=samples, channels_last=cl)[1]
                return bwd(g, xl, k, osz, indices=idx, channels_last=cl)
            return bwd(g, xl, k, output_size=osz, _random_samples=samples, channels_last=cl)
        fwd = lambda t: tf(t, k, osz, _random_samples=T(samples))  # noqa: E731
    else:  # max_unpool: the gradient with respect to the pooled values
        k = tuple(int(rng.integers(1, 4)) for _ in range(nd))
        s = tuple(int(rng.choice([1, kk, kk + 1])) for kk in k)
        src_sp = tuple(int(rng.integers(kk, kk + 6)) for kk in k)
        src = torch.from_numpy(make_input(rng, (n, c) + src_sp, np.float64, nan=False,
                                          special=False))
        pooled, tidx = getattr(F, f"max_pool{nd}d")(src, k, s, return_indices=True)
        x = pooled.numpy().astype(dtype)
        idx = tidx.numpy()
        osz = src_sp  # within (default - stride, default + stride) exclusive, as required
        desc.update(k=k, s=s, output_size=osz)

        def call(g, xl, cl, layout):
            il, _ = to_layout(idx, layout)
            return bwd(g, xl, il, k, s, 0, osz, channels_last=cl)
        fwd = lambda t: tf(t, T(idx), k, s, 0, osz)  # noqa: E731
    return desc, dtype, x, call, fwd


@pytest.mark.parametrize("seed", range(42))
def test_backward_matches_torch(seed):
    desc, dtype, x, call, fwd = _config(seed)
    rng = np.random.default_rng(seed)
    yt = fwd(T(x.astype(np.float32) if x.dtype == np.float16 else x))
    yt = yt[0] if isinstance(yt, tuple) else yt
    g = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    ref = torch_grad(fwd, x, g)
    layout = LAYOUTS[seed % 3]
    xl, cl = to_layout(x, layout)
    gl, _ = to_layout(g, layout)
    snapshot = xl.copy()
    got = from_layout(call(gl, xl, cl, layout), layout, x)
    np.testing.assert_array_equal(xl, snapshot)  # the input is never modified
    close(got, ref, dtype, what=str(dict(desc, layout=layout)))


# (dtype, layout, kernel, stride, padding, dilation, ceil_mode, spatial): the specialised
# channels-first window (k3 s2), generic ones (dilation, adaptive-like edges), channels-last
RECOMPUTE_CASES = [
    (np.float32, "cf", (3, 3), (2, 2), (1, 1), (1, 1), False, (9, 11)),
    (np.float32, "cf", (2, 3), (1, 2), (1, 1), (2, 1), True, (8, 9)),
    (np.float32, "cl", (3, 2), (2, 3), (1, 0), (1, 2), True, (10, 7)),
    (np.float16, "cf", (3, 3), (2, 2), (1, 1), (1, 1), True, (10, 9)),
    (np.float16, "cl", (2, 2), (1, 1), (0, 1), (2, 1), False, (7, 8)),
    (np.float64, "cf", (3, 2), (2, 1), (1, 1), (1, 2), True, (9, 8)),
]


def test_recomputed_argmax_equals_forward_indices():
    """Without indices the backward recomputes the argmax (channels-first: a separable pass,
    float32 merged through int64 keys); it must pick exactly the forward's cells: ties, NaN,
    -0.0/+0.0, +-inf, padding, dilation, ceil mode, specialised and generic windows."""
    rng = np.random.default_rng(11)
    for dtype, layout, k, s, p, d, ceil_mode, sp in RECOMPUTE_CASES:
        x = make_input(rng, (2, 3) + sp, dtype)
        x[rng.random(x.shape) < 0.1] = -0.0
        xl, cl = to_layout(x, layout)
        y, idx = fastpool.max_pool2d(xl, k, s, p, d, ceil_mode, True, channels_last=cl)
        g = rng.standard_normal(y.shape).astype(dtype)
        a = fastpool.max_pool2d_backward(g, xl, k, s, p, d, ceil_mode, channels_last=cl)
        b = fastpool.max_pool2d_backward(g, xl, k, s, p, d, ceil_mode, indices=idx,
                                         channels_last=cl)
        assert a.tobytes() == b.tobytes(), (dtype, layout, k, s, p, d, ceil_mode, sp)


def test_lp_zero_and_negative_windows_match_torch():
    """x = 0 (infinite x**(p-1) for p < 1), all-zero windows and negative sums (NaN)."""
    x = np.array([[[[0.0, 0.0, 1.0, -2.0], [0.0, 0.0, 3.0, 1.0],
                    [-1.0, -1.0, 0.0, 2.0], [-3.0, 0.5, 0.0, 0.0]]]])
    g = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    for p in (0.5, 1.0, 2.0, 3.0, 1.5, -1.0):
        ref = torch_grad(lambda t: F.lp_pool2d(t, p, 2), x, g)
        got = fastpool.lp_pool2d_backward(g, x, p, 2)
        close(got, ref, np.float64, what=f"p={p}")


# ---------------------------------------------------------------------------------------------
# against the NumPy oracle (ONNX padding, dilation for avg/Lp) and finite differences
# ---------------------------------------------------------------------------------------------

def _onnx_config(rng, nd):
    while True:
        k = [int(rng.integers(1, 4)) for _ in range(nd)]
        s = [int(rng.integers(1, 4)) for _ in range(nd)]
        d = [int(rng.integers(1, 3)) for _ in range(nd)]
        ceil_mode = bool(rng.integers(0, 2))
        mode = rng.choice(["pairs", "same", "same_lower"])
        sp = tuple(int(rng.integers((k[i] - 1) * d[i] + 1, (k[i] - 1) * d[i] + 7))
                   for i in range(nd))
        if mode == "pairs":
            pads = [(int(rng.integers(0, k[i])), int(rng.integers(0, k[i]))) for i in range(nd)]
            padding = tuple(pads)
        else:
            pads = [R.same_pads(sp[i], k[i], s[i], d[i], lower=mode == "same_lower")
                    for i in range(nd)]
            padding = str(mode)
            ceil_mode = False
        if windows_hit_input(sp, k, s, pads, d, ceil_mode) and all(
                b < (kk - 1) * dd + 1 for (b, _), kk, dd in zip(pads, k, d)):
            return tuple(k), tuple(s), tuple(d), pads, padding, ceil_mode, sp


@pytest.mark.parametrize("seed", range(9))
def test_backward_matches_reference(seed):
    rng = np.random.default_rng(5000 + seed)
    nd = 1 + seed % 3
    op = ["max", "avg", "lp"][seed // 3]
    k, s, d, pads, padding, ceil_mode, sp = _onnx_config(rng, nd)
    layout = LAYOUTS[seed % 3]
    x = rng.standard_normal((2, 3) + sp)
    if op == "lp":
        x = np.abs(x) + 0.1
    if op == "max":
        y, _ = R.ref_max_pool(x, k, s, pads, d, ceil_mode)
    elif op == "avg":
        y = R.ref_avg_pool(x, k, s, pads, ceil_mode, False, None, d)
    else:
        y = R.ref_lp_pool(x, 3.0, k, s, pads, d, ceil_mode)
    g = rng.standard_normal(y.shape)
    xl, cl = to_layout(x, layout)
    gl, _ = to_layout(g, layout)
    if op == "max":
        ref = R.ref_max_pool_backward(g, x, k, s, pads, d, ceil_mode)
        got = getattr(fastpool, f"max_pool{nd}d_backward")(gl, xl, k, s, padding, d, ceil_mode,
                                                           channels_last=cl)
    elif op == "avg":
        ref = R.ref_avg_pool_backward(g, x, k, s, pads, ceil_mode, False, None, d)
        got = getattr(fastpool, f"avg_pool{nd}d_backward")(gl, xl, k, s, padding, ceil_mode,
                                                           False, dilation=d, channels_last=cl)
    else:
        ref = R.ref_lp_pool_backward(g, x, 3.0, k, s, pads, d, ceil_mode)
        got = getattr(fastpool, f"lp_pool{nd}d_backward")(gl, xl, 3.0, k, s, ceil_mode,
                                                          padding=padding, dilation=d,
                                                          channels_last=cl)
    close(from_layout(got, layout, x), ref, np.float64, what=f"{op} {k} {s} {d} {padding}")


def _numeric_grad(f, x, g, eps=1e-6):
    """Central differences of sum(g * f(x))."""
    out = np.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        hi = np.sum(g * f(x))
        flat[i] = old - eps
        lo = np.sum(g * f(x))
        flat[i] = old
        out.reshape(-1)[i] = (hi - lo) / (2 * eps)
    return out


@pytest.mark.parametrize("op", ["max", "avg", "lp", "adaptive_avg"])
def test_backward_matches_finite_differences(op):
    rng = np.random.default_rng(77)
    x = rng.permutation(60).reshape(1, 2, 5, 6) * 0.1 + 0.05  # distinct, positive
    pads = [(1, 0), (0, 1)]
    if op == "max":
        def f(a):
            return R.ref_max_pool(a, (2, 3), (2, 2), pads, (1, 1), True)[0]
        got = lambda g: fastpool.max_pool2d_backward(g, x, (2, 3), 2, ((1, 0), (0, 1)),  # noqa
                                                     ceil_mode=True)
    elif op == "avg":
        def f(a):
            return R.ref_avg_pool(a, (3, 2), (2, 1), pads, True, True, None, (1, 2))
        got = lambda g: fastpool.avg_pool2d_backward(g, x, (3, 2), (2, 1), ((1, 0), (0, 1)),  # noqa
                                                     True, True, dilation=(1, 2))
    elif op == "lp":
        def f(a):
            return R.ref_lp_pool(a, 2.5, (2, 2), (1, 2), pads, (2, 1), True)
        got = lambda g: fastpool.lp_pool2d_backward(g, x, 2.5, 2, (1, 2), True,  # noqa: E731
                                                    padding=((1, 0), (0, 1)), dilation=(2, 1))
    else:
        def f(a):
            return R.ref_adaptive_avg_pool(a, (3, 4))
        got = lambda g: fastpool.adaptive_avg_pool2d_backward(g, x, (3, 4))  # noqa: E731
    g = rng.standard_normal(f(x).shape)
    num = _numeric_grad(f, x.copy(), g)
    np.testing.assert_allclose(got(g), num, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# determinism: bit-identical across runs and thread counts
# ---------------------------------------------------------------------------------------------

def _determinism_cases(rng):
    """One case per accumulating kernel (adaptive, global and unpooling reuse these kernels or
    accumulate nothing)."""
    x2 = rng.integers(-3, 4, (4, 16, 40, 36)).astype(np.float32)  # ties: overlapping windows
    g2 = rng.standard_normal((4, 16, 20, 18)).astype(np.float32)
    xc = np.ascontiguousarray(np.moveaxis(x2, 1, -1))
    gc = np.ascontiguousarray(np.moveaxis(g2, 1, -1))
    idx = F.max_pool2d(T(x2), 3, 2, 1, return_indices=True)[1].numpy()  # no extra compile
    idxc = np.ascontiguousarray(np.moveaxis(idx, 1, -1))
    xp = np.abs(x2) + 0.5
    return {
        "max scatter cf": lambda: fastpool.max_pool2d_backward(g2, x2, 3, 2, 1, indices=idx),
        "max indices cl": lambda: fastpool.max_pool2d_backward(gc, xc, 3, 2, 1, indices=idxc,
                                                              channels_last=True),
        "max recompute cf": lambda: fastpool.max_pool2d_backward(g2, x2, 3, 2, 1),
        "max recompute cl": lambda: fastpool.max_pool2d_backward(gc, xc, 3, 2, 1,
                                                                 channels_last=True),
        "avg cf": lambda: fastpool.avg_pool2d_backward(g2, x2, 3, 2, 1),
        "avg cl": lambda: fastpool.avg_pool2d_backward(gc, xc, 3, 2, 1, channels_last=True),
        "lp cf": lambda: fastpool.lp_pool2d_backward(g2, xp, 2, 3, 2, padding=1),
    }


def test_deterministic_across_thread_counts():
    import numba
    from fastpool import functional
    assert 4 * 16 * 40 * 36 >= functional.PARALLEL_MIN_WORK  # the parallel kernels run
    cases = _determinism_cases(np.random.default_rng(3))
    before = numba.get_num_threads()
    counts = sorted({1, min(2, numba.config.NUMBA_NUM_THREADS),
                     min(3, numba.config.NUMBA_NUM_THREADS)})
    try:
        results = {}
        for nt in counts:
            numba.set_num_threads(nt)
            for name, fn in cases.items():
                a, b = fn(), fn()
                assert a.tobytes() == b.tobytes(), f"{name}: two runs differ ({nt} threads)"
                if name in results:
                    assert a.tobytes() == results[name].tobytes(), \
                        f"{name}: {nt} threads differ from {counts[0]}"
                results[name] = a
    finally:
        numba.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# float16: accumulated in float32, rounded once
# ---------------------------------------------------------------------------------------------

def test_average_backward_geometries():
    """The channels-first average backward builds each row of window sums from shares stuffed
    into zero rows (or in pairs), and both layouts write input rows with one or two covering
    windows at once: gaps (stride > kernel), asymmetric and "same" pads, dilation, ceil mode
    and every divisor rule, in 1, 2 and 3 dims, against the oracle."""
    rng = np.random.default_rng(4242)
    for case in range(40):
        nd = 1 + case % 3
        k, s, d, pads, padding, ceil_mode, sp = _onnx_config(rng, nd)
        if case % 4 == 0:  # strides past the kernel: columns no window covers
            s = tuple(kk * dd + int(rng.integers(1, 3)) for kk, dd in zip(k, d))
            pads = [(0, 0)] * nd
            padding = 0
            ceil_mode = False
        incl = bool(case % 2)
        dov = int(rng.integers(1, 7)) if case % 5 == 0 else None
        # channel counts past one vector with a remainder (channels-last quotients are
        # computed a vector of channels at a time), float32 and float64
        C = (3, 13, 21, 9)[case % 4]
        dtype = np.float32 if case % 6 == 1 else np.float64
        x = rng.standard_normal((2, C) + sp)
        y = R.ref_avg_pool(x, k, s, pads, ceil_mode, incl, dov, d)
        g = rng.standard_normal(y.shape)
        x, g = x.astype(dtype), g.astype(dtype)
        ref = R.ref_avg_pool_backward(g.astype(np.float64), x.astype(np.float64), k, s, pads,
                                      ceil_mode, incl, dov, d)
        for layout in ("cf", "cl"):  # (channels-last: rows with one or two covering windows
            xl, cl = to_layout(x, layout)  # are written at once too)
            gl, _ = to_layout(g, layout)
            got = getattr(fastpool, f"avg_pool{nd}d_backward")(gl, xl, k, s, padding, ceil_mode,
                                                               incl, dov, dilation=d,
                                                               channels_last=cl)
            close(from_layout(got, layout, x), ref, dtype,
                  what=f"{layout} {C} {dtype} {k} {s} {d} {padding} {ceil_mode} {incl} {dov}")
    for case in range(12):
        nd = 1 + case % 3
        sp = tuple(int(v) for v in rng.integers(1, 12, nd))
        osz = tuple(int(rng.integers(1, n + 3)) for n in sp)
        x = rng.standard_normal((2, 3) + sp)
        g = rng.standard_normal((2, 3) + osz)
        ref = R.ref_adaptive_avg_pool_backward(g, x, osz)
        got = getattr(fastpool, f"adaptive_avg_pool{nd}d_backward")(g, x, osz)
        close(got, ref, np.float64, what=f"adaptive {sp} -> {osz}")


# 3-wide windows at stride 2 along W: (spatial, left/right pad along W (rows: 1 each side),
# ceil_mode).  The channels-first kernel writes their window sums in pairs, over whole planes
# when the windows tile the rows (W == 2 * OW: even W with pad 1, or pad 0 and ceil_mode),
# else row by row (odd W, a last window past the row, uneven rows)
PAIRS = [((12, 56), (1, 1), False), ((7, 10), (1, 1), False), ((9, 12), (0, 0), True),
         ((8, 11), (1, 1), False), ((6, 9), (0, 0), False), ((10, 13), (1, 1), True),
         ((5, 14), (0, 1), False), ((4, 2), (1, 1), False), ((3, 5, 6), (1, 1), False),
         ((40,), (1, 1), False), ((17,), (0, 0), True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_average_backward_paired_windows(dtype):
    """Every divisor rule and both zero signs on the paired rows, against the oracle and
    PyTorch, with the same bits in both layouts (both sum each cell's shares in window order)."""
    rng = np.random.default_rng(77)
    for i, (sp, pw, ceil_mode) in enumerate(PAIRS):
        nd = len(sp)
        k = (3,) * nd
        s = (2,) * nd
        pads = [(1, 1)] * (nd - 1) + [pw]
        padding = (1,) * (nd - 1) + (pw[0],) if pw[0] == pw[1] else tuple(pads)
        incl = bool(i % 2)
        dov = 5 if i % 3 == 2 else None
        x = rng.standard_normal((2, 3) + sp).astype(dtype)
        y = R.ref_avg_pool(x.astype(np.float64), k, s, pads, ceil_mode, incl, dov)
        g = rng.standard_normal(y.shape).astype(dtype)
        g.reshape(-1)[::7] = -0.0  # a cell whose shares are all -0 sums to +0
        what = f"{sp} {pw} ceil={ceil_mode} incl={incl} dov={dov}"
        got = getattr(fastpool, f"avg_pool{nd}d_backward")(g, x, k, s, padding, ceil_mode,
                                                           incl, dov)
        ref = R.ref_avg_pool_backward(g.astype(np.float64), x.astype(np.float64), k, s, pads,
                                      ceil_mode, incl, dov)
        close(got, ref, dtype, what=what)
        if pw[0] == pw[1] and dov is None:
            fwd = getattr(F, f"avg_pool{nd}d")
            close(got, torch_grad(lambda t: fwd(t, k, s, padding, ceil_mode, incl), x, g),
                  dtype, what=what)
        gc, _ = to_layout(g, "cl")
        xc, _ = to_layout(x, "cl")
        cl = getattr(fastpool, f"avg_pool{nd}d_backward")(gc, xc, k, s, padding, ceil_mode,
                                                          incl, dov, channels_last=True)
        assert np.moveaxis(cl, -1, 1).tobytes() == got.tobytes(), what
        if dtype == np.float32 and nd == 2:  # Lp: the shares come row by row
            xp = np.abs(x) + 0.25
            lp = fastpool.lp_pool2d_backward(g, xp, 2, k, s, padding=padding,
                                             ceil_mode=ceil_mode)
            close(lp, R.ref_lp_pool_backward(g.astype(np.float64), xp.astype(np.float64), 2, k,
                                             s, pads, ceil_mode=ceil_mode), dtype,
                  what="lp " + what)


# (spatial, output size, dtype, parallel): overlapping windows of two sizes (columns under two
# windows), non-overlapping ones and upsampling (input rows and columns under up to 4 windows);
# output rows of at most a vector of shares (8 float32 / float16, 4 float64: picked by one
# permute), of exactly one, and longer ones (gathered cell by cell)
ADAPTIVE_BWD = [((30, 30), (7, 7), np.float32, True), ((13, 11), (4, 3), np.float64, False),
                ((9, 40), (5, 9), np.float16, False), ((16, 24), (4, 6), np.float32, False),
                ((5, 6), (17, 13), np.float64, False), ((61,), (9,), np.float32, False),
                ((7,), (19,), np.float16, False), ((1, 33), (1, 8), np.float32, True),
                ((10, 23), (3, 4), np.float64, False), ((12, 21), (5, 8), np.float16, False)]


@pytest.mark.parametrize("case", ADAPTIVE_BWD, ids=[f"a{i}" for i in range(len(ADAPTIVE_BWD))])
def test_adaptive_average_backward_rows(case, monkeypatch):
    """Channels-first 1-d/2-d adaptive average backward (make_adaptive_backward), against the
    oracle and PyTorch's autograd, NaN and -0.0 gradients included; the same bits serial and
    parallel, and as the channels-last kernel."""
    from fastpool import backward as B
    from fastpool import functional
    sp, osz, dtype, parallel = case
    calls = []
    real = B._dispatch.kernel
    monkeypatch.setattr(B._dispatch, "kernel", lambda op, *a: calls.append((op, a[2])) or
                        real(op, *a))
    monkeypatch.setattr(functional, "_PLANS", {})
    rng = np.random.default_rng(sum(sp) + 7 * sum(osz))
    x = rng.standard_normal((2, 3) + sp).astype(dtype)
    g = rng.standard_normal((2, 3) + osz).astype(dtype)
    g.reshape(-1)[5] = np.nan
    g.reshape(-1)[-1] = -0.0
    keep = g.copy()
    nd = len(sp)
    monkeypatch.setattr(B, "_parallel", lambda work: parallel)
    got = getattr(fastpool, f"adaptive_avg_pool{nd}d_backward")(g, x, osz)
    assert calls and calls[-1] == ("adaptive_backward", parallel)
    np.testing.assert_array_equal(g, keep)
    close(got, R.ref_adaptive_avg_pool_backward(g, x, osz), dtype, what=f"{sp} -> {osz}")
    close(got, torch_grad(lambda t: getattr(F, f"adaptive_avg_pool{nd}d")(t, osz), x, g), dtype)
    if parallel:  # the same bits from the serial kernel
        functional._PLANS.clear()
        monkeypatch.setattr(B, "_parallel", lambda work: False)
        again = getattr(fastpool, f"adaptive_avg_pool{nd}d_backward")(g, x, osz)
        assert calls[-1] == ("adaptive_backward", False)
        assert again.tobytes() == got.tobytes()
    # the channels-last kernel sums every cell's shares in the same order
    gl, cl = to_layout(g, "cl")
    xl, _ = to_layout(x, "cl")
    rows = getattr(fastpool, f"adaptive_avg_pool{nd}d_backward")(gl, xl, osz, channels_last=cl)
    # (serial here: the kernel with little code, _cpu/small.py)
    assert calls[-1] == ("avg_backward_small", False)
    assert np.ascontiguousarray(from_layout(rows, "cl", x)).tobytes() == got.tobytes()


def test_channels_last_max_backward_without_indices_geometries():
    """The channels-last max backward without indices sums into a ring of input rows written
    out as the windows move on (1-d and 2-d), or a whole plane (3-d): gaps (stride > kernel),
    dilation, asymmetric and "same" pads, ceil mode, a depth of one read by two output depths,
    hot windows compiled as constants, against the oracle (many ties, so the first-max rule
    matters)."""
    rng = np.random.default_rng(777)
    configs = [((3, 3), (2, 2), (1, 1), [(1, 1), (1, 1)], False, (9, 11)),
               ((2, 2), (2, 2), (1, 1), [(0, 0), (0, 0)], True, (7, 5)),
               ((3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)], False, (6, 8)),
               ((2, 3), (3, 4), (1, 1), [(0, 0), (0, 0)], False, (10, 13)),
               ((3, 2), (1, 2), (2, 1), [(2, 0), (1, 1)], True, (9, 8)),
               ((3,), (2,), (1,), [(1, 1)], False, (15,)),
               ((2, 2, 2), (1, 1, 1), (1, 1, 1), [(1, 1), (0, 0), (1, 1)], False, (1, 5, 6)),
               ((2, 2, 2), (2, 2, 2), (1, 1, 1), [(0, 0)] * 3, False, (4, 6, 5))]
    for case in range(24):
        k, s, d, pads, ceil_mode, sp = configs[case % len(configs)]
        if case >= len(configs):
            k, s, d, pads, padding, ceil_mode, sp = _onnx_config(rng, 1 + case % 2)
        else:
            padding = tuple(pads)
        nd = len(k)
        x = rng.integers(-2, 3, size=(2, 5) + tuple(sp)).astype(np.float64)  # ties
        y, _ = R.ref_max_pool(x, k, s, pads, d, ceil_mode)
        g = rng.standard_normal(y.shape)
        ref = R.ref_max_pool_backward(g, x, k, s, pads, d, ceil_mode)
        xl, _ = to_layout(x, "cl")
        gl, _ = to_layout(g, "cl")
        got = getattr(fastpool, f"max_pool{nd}d_backward")(gl, xl, k, s, padding, d, ceil_mode,
                                                           channels_last=True)
        close(from_layout(got, "cl", x), ref, np.float64, what=f"{k} {s} {d} {pads} {sp}")


@pytest.mark.parametrize("mode", ["plain", "streamed", "split"])
def test_channels_last_recompute_depth_ring(mode, monkeypatch):
    """3-d channels-last max backward without indices sums into a ring of depth slices, each
    written out (streamed, or plain stores, or per channel block) once no later window touches
    it: random kernels, strides (gaps too), dilation, padding and ceil mode, many ties and NaN,
    hot windows and tables; PyTorch's gradient and the channels-first kernel's bits."""
    from fastpool import backward as B
    from fastpool import functional
    if mode == "streamed":
        monkeypatch.setattr(B, "STREAM_MIN_BYTES", 0)
    if mode == "split":
        monkeypatch.setattr(B, "_threads", lambda: 4)
        monkeypatch.setattr(B, "_CL_MIN_RUN_BYTES", 4)
    monkeypatch.setattr(functional, "_PLANS", {})
    rng = np.random.default_rng(["plain", "streamed", "split"].index(mode) + 71)
    rings = 0
    for case in range(10):
        k = tuple(int(v) for v in rng.integers(1, 4, 3))
        s = tuple(int(v) for v in rng.integers(1, 4, 3))
        d = tuple(int(v) for v in rng.integers(1, 3, 3)) if case % 3 == 2 else (1, 1, 1)
        p = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        if case < 2:  # the hot 2x2x2 stride-2 window
            k, s, d, p = (2, 2, 2), (2, 2, 2), (1, 1, 1), (0, 0, 0)
        sp = tuple(int(v) for v in rng.integers(5, 11, 3))
        if any(n + 2 * pp < dd * (kk - 1) + 1 for n, pp, dd, kk in zip(sp, p, d, k)):
            continue
        ceil_mode = bool(case % 4 == 3)
        dtype = (np.float32, np.float64, np.float16)[case % 3]
        x = rng.integers(-2, 3, (2, 16) + sp).astype(dtype)  # ties
        x.reshape(-1)[::37] = np.nan
        yt = F.max_pool3d(T(x.astype(np.float32)), k, s, p, d, ceil_mode)
        g = rng.standard_normal(yt.shape).astype(dtype)
        xc, _ = to_layout(x, "cl")
        gc, _ = to_layout(g, "cl")
        got = fastpool.max_pool3d_backward(gc, xc, k, s, p, d, ceil_mode, channels_last=True)
        got = np.ascontiguousarray(from_layout(got, "cl", x))
        cf = fastpool.max_pool3d_backward(g, x, k, s, p, d, ceil_mode)
        what = f"{k} {s} {d} {p} {sp} {ceil_mode}"
        assert got.tobytes() == cf.tobytes(), what
        close(got, torch_grad(lambda t: F.max_pool3d(t, k, s, p, d, ceil_mode), x, g),
              dtype, what=what)
        _, _, _, _, osp, tab, dil = functional._window(
            "max_pool3d", 3, sp, k, s, p, d, ceil_mode)
        rings += B._depth_ring(tab, dil, sp, tuple(osp)) > 0
    assert rings >= 5  # (most geometries hold a ring, not the whole plane)


# (spatial, kernel, stride, pad, dtype): the hot windows (compiled as constants)
RECOMPUTE_HOT = [((9, 10), 3, 2, 1, np.float32), ((9, 10), 3, 2, 1, np.float64),
                 ((9, 10), 3, 2, 1, np.float16), ((8, 10), 2, 2, 0, np.float32),
                 ((7, 9), 3, 1, 1, np.float32), ((9, 8), 5, 1, 2, np.float16),
                 ((21,), 3, 2, 0, np.float64), ((6, 5, 8), 2, 2, 0, np.float32)]


@pytest.mark.parametrize("case", RECOMPUTE_HOT, ids=[f"h{i}" for i in range(len(RECOMPUTE_HOT))])
def test_channels_last_recompute_hot_windows(case, monkeypatch):
    """Channels-last max backward without indices on the hot windows (compiled as constants
    for large calls; the 3x3 and 2x2 stride-2 ones for small calls too, the others then run
    the tables): each tap takes the gradients of the channels whose argmax it is (one pass per
    tap); ties, NaN and -0.0 gradients, against PyTorch and the channels-first kernel's bits.
    A plan starts on the table-driven kernel and moves on to the hot window's: both calls."""
    from fastpool import functional
    monkeypatch.setattr(functional, "SPECIALISE_AFTER", 1)
    monkeypatch.setattr(functional, "SPECIALISE_AFTER_LARGE", 1)
    monkeypatch.setattr(functional, "_PLANS", {})
    sp, k, s, p, dtype = case
    rng = np.random.default_rng(sum(sp) + k)
    nd = len(sp)
    x = rng.integers(-2, 3, (2, 24) + sp).astype(dtype)  # ties
    x.reshape(-1)[::29] = np.nan
    y = getattr(fastpool, f"max_pool{nd}d")(x, k, s, p)
    g = rng.standard_normal(y.shape).astype(dtype)
    g.reshape(-1)[::5] = -0.0
    xc, _ = to_layout(x, "cl")
    gc, _ = to_layout(g, "cl")
    cf = getattr(fastpool, f"max_pool{nd}d_backward")(g, x, k, s, p)
    fwd = getattr(F, f"max_pool{nd}d")
    ref = torch_grad(lambda t: fwd(t, k, s, p), x, g)
    for _ in range(2):  # (the plan's first call, then the next one's kernel)
        got = getattr(fastpool, f"max_pool{nd}d_backward")(gc, xc, k, s, p, channels_last=True)
        got = np.ascontiguousarray(from_layout(got, "cl", x))
        assert got.tobytes() == cf.tobytes()
        close(got, ref, dtype)


@pytest.mark.parametrize("case", [((9, 8), 5, 1, 2, np.float32), ((7, 11), 5, 1, 2, np.float64),
                                  ((6, 10), 5, 1, 2, np.float16),
                                  ((4, 6, 7), (1, 5, 5), 1, (0, 2, 2), np.float32)],
                         ids=["f32", "f64", "f16", "3d"])
def test_channels_last_recompute_large_hot_windows(case, monkeypatch):
    """Hot windows of more than 9 taps in the parallel recompute kernel scan tap by tap over
    the channels and add each channel's gradient to its argmax cell: ties, NaN and -0.0
    gradients, PyTorch's gradient and the channels-first kernel's bits."""
    from fastpool import _dispatch, functional
    monkeypatch.setattr(functional, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(functional, "_PLANS", {})
    used = []
    real = _dispatch.kernel
    monkeypatch.setattr(_dispatch, "kernel", lambda op, *a: used.append((op,) + a) or real(op, *a))
    sp, k, s, p, dtype = case
    rng = np.random.default_rng(sum(sp) + len(sp))
    nd = len(sp)
    x = rng.integers(-2, 3, (2, 24) + sp).astype(dtype)  # ties
    x.reshape(-1)[::29] = np.nan
    fwd = getattr(F, f"max_pool{nd}d")
    yt = fwd(T(x.astype(np.float32)), k, s, p)
    g = rng.standard_normal(yt.shape).astype(dtype)
    g.reshape(-1)[::5] = -0.0
    xc, _ = to_layout(x, "cl")
    gc, _ = to_layout(g, "cl")
    cf = getattr(fastpool, f"max_pool{nd}d_backward")(g, x, k, s, p)
    ref = torch_grad(lambda t: fwd(t, k, s, p), x, g)
    kk = (k,) * nd if isinstance(k, int) else k
    # the plan starts on the table-driven kernel (unless the hot window's is at hand) and
    # moves on to the hot window's after SPECIALISE_AFTER_LARGE calls: every call's bits
    for _ in range(functional.SPECIALISE_AFTER_LARGE + 1):
        used.clear()
        got = getattr(fastpool, f"max_pool{nd}d_backward")(gc, xc, k, s, p, channels_last=True)
        got = np.ascontiguousarray(from_layout(got, "cl", x))
        assert got.tobytes() == cf.tobytes()
        close(got, ref, dtype)
    rec = [u for u in used if u[0] == "max_backward_recompute"]
    assert rec and rec[-1][3] is True and math.prod(rec[-1][4:]) == math.prod(kk) > 9, rec


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_channels_last_recompute_pairs(split, monkeypatch):
    """Channels-last max backward without indices for 3x3 windows at stride 2 (left pads 0 or
    1, also asymmetric and with ceil mode): the gather kernel writing each input row once.
    Random sizes, odd and even, ties, NaN (last NaN wins) and -0.0 gradients; the bits of the
    channels-first kernels and the oracle's values.  ``split``: tasks of part of the channels
    (the rows then written with plain stores into every image's channel block)."""
    from fastpool import _dispatch
    from fastpool import backward as B
    if split:
        monkeypatch.setattr(B, "_CL_BUFFER_BYTES", 64)
    used = []
    real = _dispatch.kernel
    monkeypatch.setattr(_dispatch, "kernel", lambda op, *a: used.append(op) or real(op, *a))
    rng = np.random.default_rng(3131 + split)
    for case in range(24):
        H, W = (int(v) for v in rng.integers(2, 16, 2))
        C = int(rng.choice([1, 5, 8, 13, 24]))
        dtype = (np.float32, np.float64, np.float16)[case % 3]
        ceil_mode = bool(case % 4 == 3)
        if case % 5 == 4:  # asymmetric (ONNX-style) pads, left pads 0 or 1
            pads = [(int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(2)]
            padding = tuple(pads)
        else:
            p = int(rng.integers(0, 2))
            pads, padding = [(p, p)] * 2, p
        if any(n + a + b < 3 for n, (a, b) in zip((H, W), pads)):
            continue
        x = rng.integers(-2, 3, (2, C, H, W)).astype(dtype)  # ties
        x.reshape(-1)[rng.random(x.size) < 0.04] = np.nan
        x.reshape(-1)[rng.random(x.size) < 0.04] = -np.inf  # (as low as the padding)
        y, _ = R.ref_max_pool(x.astype(np.float64), (3, 3), (2, 2), pads, (1, 1), ceil_mode)
        g = rng.standard_normal(y.shape).astype(dtype)
        g.reshape(-1)[::5] = -0.0
        what = f"{H}x{W} C={C} {dtype.__name__} pads={pads} ceil={ceil_mode}"
        used.clear()
        got = fastpool.max_pool2d_backward(np.ascontiguousarray(np.moveaxis(g, 1, -1)),
                                           np.ascontiguousarray(np.moveaxis(x, 1, -1)), 3, 2,
                                           padding, ceil_mode=ceil_mode, channels_last=True)
        assert "max_backward_pairs" in used, what
        got = np.ascontiguousarray(np.moveaxis(got, -1, 1))
        cf = fastpool.max_pool2d_backward(g, x, 3, 2, padding, ceil_mode=ceil_mode)
        assert got.tobytes() == cf.tobytes(), what
        ref = R.ref_max_pool_backward(g.astype(np.float64), x.astype(np.float64), (3, 3),
                                      (2, 2), pads, (1, 1), ceil_mode)
        close(got, ref, dtype, what=what)


# (N, C, H, W, dtype, K): K x K windows at stride 2 (K = 3 with padding 1) channels-first
# without indices; even planes run make_max_backward_tiled (the windows tile them), odd ones
# the argmax scan kernel
TILED = [(2, 3, 8, 10, np.float32, 3), (1, 2, 2, 2, np.float32, 3), (3, 5, 14, 6, np.float64, 3),
         (2, 4, 6, 4, np.float16, 3), (1, 3, 2, 12, np.float32, 3), (3, 2, 10, 2, np.float64, 3),
         (2, 80, 32, 26, np.float32, 3), (2, 40, 22, 30, np.float16, 3),
         (2, 3, 9, 10, np.float32, 3), (2, 3, 8, 11, np.float64, 3), (1, 2, 7, 7, np.float16, 3),
         (2, 6, 10, 18, np.float64, 3), (2, 8, 12, 36, np.float32, 3),
         (2, 4, 10, 40, np.float64, 3), (1, 3, 8, 66, np.float16, 3),
         (2, 3, 8, 10, np.float32, 2), (1, 2, 2, 2, np.float64, 2), (3, 5, 6, 14, np.float16, 2),
         (2, 80, 26, 32, np.float32, 2), (2, 3, 9, 10, np.float32, 2), (1, 2, 8, 7, np.float64, 2)]


@pytest.mark.parametrize("case", TILED, ids=[f"t{i}" for i in range(len(TILED))])
def test_max_backward_tiled(case, monkeypatch):
    """Tiling 3x3 (padding 1) and 2x2 windows at stride 2, backward without indices: which
    kernel runs, and with ties, NaN (the last NaN of a window wins), -0.0 inputs and -0.0 / NaN
    gradients the oracle's and the channels-last kernel's bits (both add in output order,
    float16 in float32) and PyTorch's gradient."""
    from fastpool import backward as B
    from fastpool import functional
    N, C, H, W, dtype, k = case
    p = (k - 1) // 2
    calls = []
    real = B._dispatch.kernel
    monkeypatch.setattr(B._dispatch, "kernel",
                        lambda op, *a: calls.append((op,) + a) or real(op, *a))
    monkeypatch.setattr(functional, "_PLANS", {})
    rng = np.random.default_rng(N * 1000 + C * 100 + H * 10 + W + k)
    x = rng.integers(-2, 3, (N, C, H, W)).astype(dtype)  # ties
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.1] = -0.0
    g = rng.standard_normal((N, C, (H + 2 * p - k) // 2 + 1, (W + 2 * p - k) // 2 + 1))
    g = g.astype(dtype)
    g[rng.random(g.shape) < 0.1] = -0.0
    got = fastpool.max_pool2d_backward(g, x, k, 2, p)
    tiled = [c for c in calls if c[0] == "max_backward_tiled"]
    assert bool(tiled) == (H % 2 == 0 and W % 2 == 0), calls
    if tiled:  # (K = 3 rows of at least a vector of windows: the kernel without scalar loops)
        from fastpool._cpu._simd import tile_lanes_for
        lanes = tile_lanes_for(8 if dtype == np.float64 else 4)
        K = tiled[-1][4]  # (a 2 x 2 plane's one window is also a clipped 3 x 3 one)
        assert tiled[-1][5:] == ((True,) if K == 3 and W // 2 >= lanes else ()), tiled
    ref = R.ref_max_pool_backward(g, x, (k, k), (2, 2), [(p, p), (p, p)], (1, 1), False)
    assert got.dtype == x.dtype and got.tobytes() == ref.tobytes()
    xc, _ = to_layout(x, "cl")
    gc, _ = to_layout(g, "cl")
    cl = fastpool.max_pool2d_backward(gc, xc, k, 2, p, channels_last=True)
    assert np.ascontiguousarray(from_layout(cl, "cl", x)).tobytes() == got.tobytes()
    close(got, torch_grad(lambda t: F.max_pool2d(t, k, 2, p), x, g), dtype)
    g[0, 0, 0, 0] = np.nan  # a NaN gradient lands on its window's argmax only
    got = fastpool.max_pool2d_backward(g, x, k, 2, p)
    ref = R.ref_max_pool_backward(g, x, (k, k), (2, 2), [(p, p), (p, p)], (1, 1), False)
    assert got.tobytes() == ref.tobytes() and np.isnan(got[0, 0, :2, :2]).sum() == 1


def test_channel_blocks_of_channels_last_tasks(monkeypatch):
    """Channels-last tasks take whole images unless there are fewer images than threads; then
    one block per thread of at least _CL_MIN_RUN_BYTES (a multiple of 8 channels), never
    splitting where the runs would be shorter; the scratch bound splits in multiples of 8."""
    from fastpool import backward as B
    for threads in (1, 2, 3, 4, 8):
        monkeypatch.setattr(B, "_threads", lambda t=threads: t)
        for n in (1, 2, 3, 5, 9):
            for c in (1, 7, 24, 32, 64, 100, 256, 1000):
                for itemsize in (2, 4, 8):
                    cells = 12544
                    cb = B._channel_block(n, c, cells, itemsize)
                    assert 1 <= cb <= c
                    bound = B._CL_BUFFER_BYTES // (cells * itemsize)
                    if cb < c:
                        assert cb % 8 == 0, (threads, n, c, itemsize, cb)
                    k = -(-threads // n)  # blocks per image, one per thread
                    if n >= threads or c // k * itemsize < B._CL_MIN_RUN_BYTES:
                        # no thread to feed, or runs too short: only the scratch bound splits
                        assert cb == (c if bound >= c else max(8, bound // 8 * 8)), \
                            (threads, n, c, itemsize, cb)
                    elif cb < min(c, max(8, bound // 8 * 8)):
                        assert cb * itemsize >= B._CL_MIN_RUN_BYTES
                        assert n * -(-c // cb) >= threads  # every thread has a task


@pytest.mark.parametrize("kind", ["rec2", "rec3d", "rec_pairs", "avg", "lp", "idx"])
def test_split_channel_blocks_give_whole_images_bits(kind, monkeypatch):
    """Tasks of part of an image's channels (forced: as if for 4 threads, any run length) give
    the bits of whole-image tasks and PyTorch's values, channels-last gradients of every
    kernel that takes channel blocks."""
    from fastpool import backward as B
    from fastpool import functional
    rng = np.random.default_rng(len(kind))
    sp = (7, 9, 10) if kind == "rec3d" else (11, 13)
    x = rng.integers(-3, 4, (1, 24) + sp).astype(np.float32)  # ties
    x[0, 3, 0, 0] = np.nan
    k, s, p = (2, 2, 0) if kind in ("rec2", "rec3d") else (3, 2, 1)
    r = len(sp)
    pool = getattr(F, f"{'avg' if kind == 'avg' else 'max'}_pool{r}d")
    if kind == "lp":
        yt = F.lp_pool2d(T(np.abs(x) + 1), 2, k, s)
    else:
        yt = pool(T(x), k, s, p)
    g = rng.standard_normal(yt.shape).astype(np.float32)
    xc, _ = to_layout(x, "cl")
    gc, _ = to_layout(g, "cl")

    def run():
        monkeypatch.setattr(functional, "_PLANS", {})
        if kind == "avg":
            return fastpool.avg_pool2d_backward(gc, xc, k, s, p, channels_last=True)
        if kind == "lp":
            return fastpool.lp_pool2d_backward(gc, np.abs(xc) + 1, 2, k, s, channels_last=True)
        fn = getattr(fastpool, f"max_pool{r}d_backward")
        if kind == "idx":
            _, idx = getattr(fastpool, f"max_pool{r}d")(xc, k, s, p, return_indices=True,
                                                        channels_last=True)
            return fn(gc, xc, k, s, p, indices=idx, channels_last=True)
        return fn(gc, xc, k, s, p, channels_last=True)

    whole = run()
    monkeypatch.setattr(B, "_threads", lambda: 4)
    monkeypatch.setattr(B, "_CL_MIN_RUN_BYTES", 4)
    assert B._channel_block(1, 24, math.prod(sp), 4) == 8
    split = run()
    assert split.tobytes() == whole.tobytes(), kind
    xt = T(np.abs(x) + 1 if kind == "lp" else x).requires_grad_()
    if kind == "lp":
        F.lp_pool2d(xt, 2, k, s).backward(T(g))
    else:
        pool(xt, k, s, p).backward(T(g))
    close(from_layout(split, "cl", x), xt.grad.numpy(), np.float32, what=kind)


def test_float16_accumulates_in_float32():
    """Many overlapping windows add into one cell: the sum is kept in float32 and rounded to
    float16 once (a float16 running sum would drift)."""
    k = 64
    x = np.zeros((1, 1, 200), np.float16)
    x[0, 0, 100] = 1  # the argmax of the 64 windows that contain it
    g = np.full((1, 1, 200 - k + 1), 0.01, np.float16)
    got = fastpool.max_pool1d_backward(g, x, k, 1)
    want = np.float16(np.float32(np.float16(0.01)) * np.float32(k))
    assert got.dtype == np.float16 and got[0, 0, 100] == want
    got = fastpool.avg_pool1d_backward(g, x, k, 1)
    share = np.float32(np.float16(0.01)) / np.float32(k)
    assert got[0, 0, 100] == np.float16(share * np.float32(k))


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_errors():
    x = np.zeros((2, 3, 8, 8), np.float32)
    g = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"grad_output has shape \(2, 3, 4, 5\), expected "
                                         r"\(2, 3, 4, 4\)"):
        fastpool.max_pool2d_backward(np.zeros((2, 3, 4, 5), np.float32), x, 2)
    with pytest.raises(TypeError, match="grad_output has dtype float64, expected the input's "
                                        "dtype float32"):
        fastpool.avg_pool2d_backward(g.astype(np.float64), x, 2)
    with pytest.raises(TypeError, match="input dtype int32 is not supported"):
        fastpool.avg_pool2d_backward(g.astype(np.int32), x.astype(np.int32), 2)
    with pytest.raises(TypeError, match="indices must be int64 or int32, got dtype float32"):
        fastpool.max_pool2d_backward(g, x, 2, indices=g)
    with pytest.raises(ValueError, match=r"indices has shape \(2, 3, 4\), expected"):
        fastpool.max_pool2d_backward(g, x, 2, indices=np.zeros((2, 3, 4), np.int64))
    bad = np.zeros((2, 3, 4, 4), np.int64)
    bad[1, 2, 3, 3] = 64
    with pytest.raises(ValueError, match=r"indices holds 64 in plane 5, outside \[0, 64\)"):
        fastpool.max_pool2d_backward(g, x, 2, indices=bad)
    badc = np.ascontiguousarray(np.moveaxis(bad, 1, -1))
    badc[0, 0, 0, 1] = -1
    with pytest.raises(ValueError, match=r"indices holds -1 in plane 1, outside \[0, 64\)"):
        fastpool.max_pool2d_backward(np.moveaxis(g, 1, -1).copy(), np.moveaxis(x, 1, -1).copy(),
                                     2, indices=badc, channels_last=True)
    with pytest.raises(ValueError, match="indices or its random_samples"):
        fastpool.fractional_max_pool2d_backward(np.zeros((2, 3, 3, 3), np.float32), x, 2,
                                                output_size=3)
    with pytest.raises(ValueError, match=r"indices holds 99 in plane 0, outside \[0, 64\)"):
        fastpool.max_unpool2d_backward(x, g, np.full((2, 3, 4, 4), 99), 2)
    with pytest.raises(ValueError, match="norm_type must be a non-zero finite number"):
        fastpool.lp_pool2d_backward(g, x, 0, 2)
    with pytest.raises(ValueError, match="padding should be at most half of kernel size"):
        fastpool.max_pool2d_backward(g, x, 2, padding=2)


def test_indices_outside_their_window_still_scatter():
    """Indices from elsewhere (in range but not in their window) go where they point, as in
    PyTorch; the channels-last gather falls back to the scatter kernel for them."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float64)
    g = rng.standard_normal((1, 4, 3, 3))
    idx = rng.integers(0, 36, (1, 4, 3, 3))
    ref = torch.ops.aten.max_pool2d_with_indices_backward(T(g), T(x), [2, 2], [2, 2], [0, 0],
                                                          [1, 1], False, T(idx)).numpy()
    for layout in LAYOUTS:
        xl, cl = to_layout(x, layout)
        gl, _ = to_layout(g, layout)
        il, _ = to_layout(idx, layout)
        got = fastpool.max_pool2d_backward(gl, xl, 2, indices=il, channels_last=cl)
        close(from_layout(got, layout, x), ref, np.float64, what=layout)


# (images: a multiple of the thread count, or one image planned as for 4 threads (split
# channel blocks of 32, runs of 128 bytes: 32 channels stay whole); the smallest gradient for
# the ring, or None for the default)
@pytest.mark.parametrize("case", [
    ((4, 32, 9, 10), 3, 2, 1, 0, "max_backward_ring"),
    # a gradient that stays in the cache: the scatter straight into it
    ((4, 32, 9, 10), 3, 2, 1, None, "max_backward"),
    # fewer images than tasks wanted, overlapping windows: whole images all the same
    ((1, 32, 9, 10), 3, 2, 1, 0, "max_backward_ring"),
    ((-1, 128, 9, 10), 3, 2, 1, 0, "max_backward_gather"),
    # disjoint windows: the ring over short channel vectors, the gather over long ones
    ((4, 32, 8, 10), 2, 2, 0, 0, "max_backward_ring"),
    ((4, 80, 8, 10), 2, 2, 0, 0, "max_backward_gather")])
def test_channels_last_backward_from_indices_kernels(case, monkeypatch):
    """Channels-last gradients from indices: whole images scatter channel vectors in output
    order, through a ring of rows or straight into the gradient; split channel blocks and
    disjoint windows over long channel vectors gather over the covering windows.  All give
    PyTorch's gradient and the channels-first scatter's bits."""
    from fastpool import backward as B
    from fastpool import functional
    import numba
    shape, k, s, p, ring_min, kernel = case
    threads = numba.get_num_threads()
    if shape[0] < 0:  # (planned as for 4 threads: one image splits into channel blocks)
        monkeypatch.setattr(B, "_threads", lambda: 4)
    shape = (abs(shape[0]) * (threads if shape[0] > 1 else 1),) + shape[1:]
    if ring_min is not None:
        monkeypatch.setattr(B, "_RING_MIN_BYTES", ring_min)
    calls = []
    real = B._dispatch.kernel
    monkeypatch.setattr(B._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(functional, "_PLANS", {})
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-2, 3, shape).astype(np.float32)  # ties
    yt, it = F.max_pool2d(T(x), k, s, p, return_indices=True)
    g = rng.standard_normal(yt.shape).astype(np.float32)
    ref = torch.ops.aten.max_pool2d_with_indices_backward(T(g), T(x), [k, k], [s, s], [p, p],
                                                          [1, 1], False, it).numpy()
    xc, _ = to_layout(x, "cl")
    gc, _ = to_layout(g, "cl")
    ic, _ = to_layout(it.numpy(), "cl")
    got = fastpool.max_pool2d_backward(gc, xc, k, s, p, indices=ic, channels_last=True)
    assert calls[-1] == kernel, calls
    cf = fastpool.max_pool2d_backward(g, x, k, s, p, indices=it.numpy())
    close(from_layout(got, "cl", x), ref, np.float32)
    assert np.ascontiguousarray(from_layout(got, "cl", x)).tobytes() == cf.tobytes()


# (shape, kernel, stride, padding, dilation, dtype): overlapping windows whose channels-last
# gradient from indices goes through the ring of rows; strides past the window leave rows that
# no window reaches (zeros), dilation and ceil mode move the rings' rows, 3-d rings hold depth
# slices (also where the input has one and the output more)
RING_CASES = [((2, 5, 17, 13), 3, 2, 1, 1, np.float32), ((1, 3, 20, 9), (4, 2), (3, 1), 0, 1,
                                                        np.float64),
              ((2, 4, 19, 11), 3, 1, 1, 2, np.float16), ((1, 6, 14, 10), (1, 3), (3, 2), 0, 1,
                                                         np.float32),
              ((1, 3, 7, 6, 5), 3, 2, 1, 1, np.float32), ((2, 17, 25, 31), 5, 3, 2, 1,
                                                          np.float32),
              # depth 1 padded to two output depth slices: the ring runs along D
              ((1, 3, 1, 7, 5), (2, 3, 3), (1, 2, 2), 1, 1, np.float64),
              # channel vectors (_simd.vring_add, 16 channels) and the channels after them
              ((1, 40, 11, 9), 3, 2, 1, 1, np.float64), ((1, 16, 12, 10), 2, 1, 0, 1,
                                                         np.float16)]


@pytest.mark.parametrize("case", RING_CASES)
def test_channels_last_ring_of_rows(case, monkeypatch):
    """The channels-last max gradient from indices through a ring of rows gives PyTorch's
    gradient and the scatter's bits; an index outside its window's rows (in range) sends the
    call to the scatter, still PyTorch's gradient; one out of range is reported."""
    from fastpool import backward as B
    from fastpool import functional
    import numba
    shape, k, s, p, d, dt = case
    shape = (4 * numba.get_num_threads() * shape[0],) + shape[1:]  # (whole channel blocks)
    nd = len(shape) - 2
    monkeypatch.setattr(B, "_RING_MIN_BYTES", 0)  # (the ring also for gradients this small)
    calls = []
    real = B._dispatch.kernel
    monkeypatch.setattr(B._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(functional, "_PLANS", {})
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-2, 3, shape).astype(dt)  # ties
    pool = F.max_pool2d if nd == 2 else F.max_pool3d
    yt, it = pool(T(x.astype(np.float64)), k, s, p, d, ceil_mode=True, return_indices=True)
    g = rng.standard_normal(yt.shape).astype(dt)
    back = fastpool.max_pool2d_backward if nd == 2 else fastpool.max_pool3d_backward
    idx = it.numpy()
    for moved in (False, True):
        if moved:  # one index elsewhere in its plane, outside its window's rows
            idx = idx.copy()
            idx.reshape(-1)[idx.size // 2] = (idx.reshape(-1)[idx.size // 2] +
                                               math.prod(shape[2:]) // 2) % math.prod(shape[2:])
        ref = np.zeros((shape[0] * shape[1], math.prod(shape[2:])))
        for pl, (gi, ii) in enumerate(zip(g.reshape(len(ref), -1).astype(np.float64),
                                          idx.reshape(len(ref), -1))):
            np.add.at(ref[pl], ii, gi)
        calls.clear()
        got = back(to_layout(g, "cl")[0], to_layout(x, "cl")[0], k, s, p, d, True,
                   indices=to_layout(idx, "cl")[0], channels_last=True)
        assert calls[0] == "max_backward_ring", calls
        if shape[2] > 1:  # (a moved index leaves its ring; with one input row, never)
            assert (calls[-1] == "max_backward") == moved, calls
        close(from_layout(got, "cl", x), ref.reshape(shape), dt)
        cf = back(g, x, k, s, p, d, True, indices=idx)
        assert np.ascontiguousarray(from_layout(got, "cl", x)).tobytes() == cf.tobytes()
    idx.reshape(-1)[3] = math.prod(shape[2:])
    with pytest.raises(ValueError, match="indices holds"):
        back(to_layout(g, "cl")[0], to_layout(x, "cl")[0], k, s, p, d, True,
             indices=to_layout(idx, "cl")[0], channels_last=True)


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("C", [20, 37])
def test_channels_last_scatter_of_channel_vectors(dt, C):
    """The channels-last scatter from indices (fractional pooling's windows have no table) adds
    16 channels at a time as a gather, an add and a scatter, then the rest one by one: the
    gradient of the NumPy reference (np.add.at in output order) and the channels-first
    scatter's bits, also where one lane's index lies elsewhere in its plane; an index out of
    range in a vector's lane is reported with its plane (n * C + c) and value."""
    rng = np.random.default_rng(C)
    N, H, W = 3, 13, 11
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    s = rng.random((N, C, 2))
    kw = dict(output_size=(6, 5), random_samples=s)
    _, idx = fastpool.fractional_max_pool2d(x, 2, return_indices=True, **kw)
    g = rng.standard_normal(idx.shape).astype(dt)
    idx = idx.copy()
    idx[1, 5, 2, 3] = (idx[1, 5, 2, 3] + 40) % (H * W)  # (channel 5: a vector lane)
    ref = np.zeros((N * C, H * W))
    for pl, (gi, ii) in enumerate(zip(g.reshape(N * C, -1).astype(np.float64),
                                      idx.reshape(N * C, -1))):
        np.add.at(ref[pl], ii, gi)
    back = fastpool.fractional_max_pool2d_backward
    got = back(to_layout(g, "cl")[0], to_layout(x, "cl")[0], 2, indices=to_layout(idx, "cl")[0],
               channels_last=True, **kw)
    close(from_layout(got, "cl", x), ref.reshape(x.shape), dt)
    cf = back(g, x, 2, indices=idx, **kw)
    assert np.ascontiguousarray(from_layout(got, "cl", x)).tobytes() == cf.tobytes()
    idx[2, 9, 4, 1] = H * W + 7
    with pytest.raises(ValueError, match=rf"holds {H * W + 7} in plane {2 * C + 9}\b"):
        back(to_layout(g, "cl")[0], to_layout(x, "cl")[0], 2, indices=to_layout(idx, "cl")[0],
             channels_last=True, **kw)


def test_unbatched_and_public_names():
    x = np.arange(2 * 5 * 5, dtype=np.float64).reshape(2, 5, 5)
    g = np.ones((2, 2, 2))
    got = fastpool.max_pool2d_backward(g, x, 2)
    assert got.shape == x.shape and got[0, 1, 1] == 1 and got[0, 0, 0] == 0
    for name in ("max_pool", "avg_pool", "lp_pool", "adaptive_max_pool", "adaptive_avg_pool",
                 "max_unpool"):
        for nd in (1, 2, 3):
            assert callable(getattr(fastpool, f"{name}{nd}d_backward"))
    for nd in (2, 3):
        assert callable(getattr(fastpool, f"fractional_max_pool{nd}d_backward"))
    assert math.isclose(float(fastpool.adaptive_avg_pool1d_backward(
        np.ones((1, 1, 1)), np.zeros((1, 1, 4)), 1)[0, 0, 0]), 0.25)


# (op, N, C, H, W, dtype, parallel): gradients whose kernels build each task's
# rows in scratch and stream them out when the gradient is large (STREAM_MIN_BYTES); planes
# whose sizes are not a multiple of a vector or a cache line, so that the planes' ends and the
# tasks' runs fall anywhere in a line
STREAMED = [("avg", 2, 5, 13, 14, np.float32, True), ("avg", 1, 7, 56, 56, np.float64, True),
            ("avg", 2, 3, 9, 11, np.float16, False), ("avg", 3, 40, 10, 6, np.float32, True),
            ("lp", 2, 6, 12, 10, np.float32, True), ("avg1d", 3, 9, 1, 37, np.float32, True),
            ("idx", 2, 5, 13, 14, np.float32, True), ("idx", 2, 9, 30, 30, np.float64, True),
            ("idx", 1, 4, 7, 9, np.float32, False), ("idxcl", 2, 16, 13, 14, np.float32, True),
            ("idxcl", 3, 5, 9, 11, np.float64, True), ("idxclsc", 2, 16, 13, 14, np.float32, True),
            ("idxclsc", 3, 5, 9, 11, np.float64, True), ("reccl", 2, 12, 13, 13, np.float32, True),
            ("reccl", 3, 5, 11, 9, np.float64, True), ("reccl", 2, 6, 9, 14, np.float16, True),
            ("reccl2", 2, 9, 12, 10, np.float32, True), ("ada", 2, 5, 40, 41, np.float32, True),
            ("ada", 3, 4, 29, 28, np.float64, True), ("ada", 1, 3, 45, 50, np.float32, False),
            ("ada", 3, 7, 13, 13, np.float32, True), ("ada", 2, 5, 9, 11, np.float64, True),
            ("avgcl", 2, 12, 13, 14, np.float32, True), ("avgcl", 3, 5, 9, 11, np.float64, True),
            ("avgcl", 2, 6, 10, 7, np.float16, True),
            ("avgclgap", 2, 9, 14, 13, np.float32, True),
            ("tiled3", 2, 6, 14, 12, np.float32, True), ("tiled3", 2, 5, 10, 30, np.float16, True),
            ("tiled2", 2, 7, 12, 18, np.float64, True), ("tiled2", 1, 3, 6, 10, np.float32, False)]


@pytest.mark.parametrize("case", STREAMED, ids=[f"s{i}" for i in range(len(STREAMED))])
def test_streamed_gradients(case, monkeypatch):
    """With streaming stores forced on (any size), the same bits as with plain stores, and the
    oracle's values: average (k3s2p1, exclusive padding; 1-d too), Lp, max from indices (the
    scatter, both layouts), the tiled max without indices, the channels-last max without
    indices and the average, channels-last (rows streamed over whole lines), and the adaptive
    average, serial and parallel."""
    from fastpool import backward as B
    from fastpool import functional
    op, N, C, H, W, dtype, parallel = case
    monkeypatch.setattr(B, "_parallel", lambda work: parallel)
    rng = np.random.default_rng(N * 1000 + C * 100 + H * 10 + W)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    if op.startswith("tiled") or op.startswith("reccl"):
        x[rng.random(x.shape) < 0.05] = np.nan
    if op == "lp":
        x = np.abs(x) + np.asarray(0.25, dtype)
    k = 2 if op in ("tiled2", "reccl2") else 3
    p = 0 if op in ("tiled2", "reccl2", "lp") else 1
    if op == "avg1d":
        x = x[:, :, 0]
    y = (F.avg_pool1d(torch.from_numpy(x.astype(np.float64)), 3, 2, 1) if op == "avg1d" else
         F.avg_pool2d(torch.from_numpy(x.astype(np.float64)), k, 2, p)).numpy()
    g = rng.standard_normal(y.shape).astype(dtype)
    g.reshape(-1)[::5] = -0.0
    if op.startswith("idx"):
        _, ind = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
    if op.startswith("idxcl"):  # channels-last: tasks of whole images, each one run of the
        # gradient; the ring of rows (idxcl) or the scatter (idxclsc)
        xc, gc, ic = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, g, ind))
        monkeypatch.setattr(B, "_RING_MIN_BYTES", 1 << 62 if op == "idxclsc" else 0)
    if op == "ada":
        ga = rng.standard_normal((N, C, 7, 6)).astype(dtype)
    if op == "avgclgap":
        g = rng.standard_normal((N, C, (H - 2) // 3 + 1, (W - 2) // 3 + 1)).astype(dtype)
    if op.startswith("reccl") or op.startswith("avgcl"):  # channels-last rows (one run of
        # the gradient each) streamed over whole lines
        xc, gc = (np.ascontiguousarray(np.moveaxis(a, 1, -1)) for a in (x, g))

    def run():
        functional._PLANS.clear()
        if op == "avg":
            return fastpool.avg_pool2d_backward(g, x, 3, 2, 1, count_include_pad=False)
        if op == "avg1d":
            return fastpool.avg_pool1d_backward(g, x, 3, 2, 1, count_include_pad=False)
        if op == "lp":
            return fastpool.lp_pool2d_backward(g, x, 2, 3, 2)
        if op == "avgcl":  # channels-last rows under one or two windows, streamed
            return np.moveaxis(fastpool.avg_pool2d_backward(gc, xc, 3, 2, 1,
                                                            count_include_pad=False,
                                                            channels_last=True), -1, 1)
        if op == "avgclgap":  # (kernel 2, stride 3: rows no window covers, written plain)
            return np.moveaxis(fastpool.avg_pool2d_backward(gc, xc, 2, 3, 0,
                                                            channels_last=True), -1, 1)
        if op == "ada":  # adaptive windows of two sizes, planes run into one another
            return fastpool.adaptive_avg_pool2d_backward(ga, x, (7, 6))
        if op == "idx":
            return fastpool.max_pool2d_backward(g, x, 3, 2, 1, indices=ind)
        if op.startswith("idxcl"):
            return np.moveaxis(fastpool.max_pool2d_backward(gc, xc, 3, 2, 1, indices=ic,
                                                            channels_last=True), -1, 1)
        if op.startswith("reccl"):
            return np.moveaxis(fastpool.max_pool2d_backward(gc, xc, k, 2, p,
                                                            channels_last=True), -1, 1)
        return fastpool.max_pool2d_backward(g, x, k, 2, p)

    # results in NaN-filled memory: a cell that no store reaches shows
    monkeypatch.setattr(B._alloc, "empty", lambda shape, dtype: np.full(shape, np.nan, dtype))
    monkeypatch.setattr(B, "STREAM_MIN_BYTES", 1 << 62)
    plain = run()
    streamed = []
    real = B._streamed
    monkeypatch.setattr(B, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(B, "_streamed", lambda res: streamed.append(real(res)) or real(res))
    got = run()
    assert streamed and all(streamed)
    assert got.tobytes() == plain.tobytes(), op
    if op == "avgclgap":
        ref = R.ref_avg_pool_backward(g.astype(np.float64), x.astype(np.float64), (2, 2),
                                      (3, 3), [(0, 0), (0, 0)], False, True, None)
    elif op in ("avg", "avg1d", "avgcl"):
        nd = 1 if op == "avg1d" else 2
        ref = R.ref_avg_pool_backward(g.astype(np.float64), x.astype(np.float64), (3,) * nd,
                                      (2,) * nd, [(1, 1)] * nd, False, False, None)
    elif op == "ada":
        ref = R.ref_adaptive_avg_pool_backward(ga.astype(np.float64), x.astype(np.float64),
                                               (7, 6))
    elif op == "lp":
        ref = R.ref_lp_pool_backward(g.astype(np.float64), x.astype(np.float64), 2, (3, 3),
                                     (2, 2), [(0, 0), (0, 0)])
    else:
        ref = R.ref_max_pool_backward(g, x, (k, k), (2, 2), [(p, p), (p, p)], (1, 1), False)
    close(got, ref, dtype, what=str(case))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_stream_copies(dtype):
    """``_simd.stream_upto`` (streaming stores over a destination's vector-aligned middle,
    plain ones around it) and ``stream_lines`` (over its whole lines) copy every cell once, in
    pieces of any length, to destinations at any byte offset, those not aligned to their
    element size included."""
    from numba import njit
    from fastpool._cpu._simd import sfence, stream_lines, stream_upto
    from fastpool._dtypes import HALF, PLAIN
    marker = HALF if dtype == np.float16 else PLAIN
    store = np.dtype(np.uint16 if dtype == np.float16 else dtype)

    @njit
    def copy(src, dst, d0, cuts, marker):
        done = 0
        for c in cuts:
            done = stream_upto(src, done, c, dst, d0, marker)
        stream_upto(src, done, -src.size, dst, d0, marker)
        sfence()

    @njit
    def copy_lines(src, dst, d0, cuts, marker):  # pieces streamed over their whole lines
        a = 0
        ok = True
        for c in cuts:
            ok &= stream_lines(src, a, dst, d0 + a, c - a, marker)
            a = c
        ok &= stream_lines(src, a, dst, d0 + a, src.size - a, marker)
        sfence()
        return ok

    rng = np.random.default_rng(7)
    isz = store.itemsize
    for n in (1, 7, 8, 33, 300, 1031):
        src = rng.standard_normal(n).astype(dtype).view(store)
        cuts = np.sort(rng.integers(0, n + 1, 6))
        for off in range(0, 64, 3):
            for d0 in (0, 5):
                raw = np.zeros((n + d0) * isz + 128, np.uint8)
                dst = raw[off:off + (n + d0) * isz].view(store)
                for how in (copy, copy_lines):
                    raw[:] = 0
                    assert how(src, dst, d0, cuts, marker) is not False
                    assert dst[d0:].tobytes() == src.tobytes(), (how, n, off, d0)
                    assert not raw[:off + d0 * isz].any(), (how, n, off, d0)
                    assert not raw[off + (n + d0) * isz:].any(), (how, n, off, d0)


@pytest.mark.parametrize("streamed", [False, True])
def test_sum_backward_cases_channels_first(streamed, monkeypatch):
    """The channels-first average / Lp gradient kernel compiled for its case
    (``sum_backward_spec``: divisor rule, windows uniform along W, 3-wide pairs at stride 2,
    rows the pairs tile, rows of whole vectors, streamed output), in parallel, against the
    reference and PyTorch: widths the pairs tile and widths they do not (odd, padded, ceil
    mode), rows narrower than a vector, every divisor rule, dilation, wider and adaptive
    windows."""
    from fastpool import backward as B
    from fastpool import functional
    monkeypatch.setattr(B, "_parallel", lambda work: True)
    monkeypatch.setattr(B, "STREAM_MIN_BYTES", 0 if streamed else 1 << 62)
    # (the adaptive kernel's streamed planes too, on hosts that would not stream them)
    monkeypatch.setattr(B, "_ADAPTIVE_STREAM_PLANES", (0, 256 << 10))
    monkeypatch.setattr(functional, "_PLANS", {})
    rng = np.random.default_rng(31 + streamed)
    cases = [  # (H, W), kernel, stride, padding, ceil, count_include_pad, divisor_override, dil
        ((8, 12), 3, 2, 1, False, False, None, 1),   # the pairs tile the rows
        ((8, 12), 3, 2, 1, False, True, None, 1),
        ((7, 11), 3, 2, 1, False, False, None, 1),   # odd: they do not
        ((9, 12), 3, 2, 0, True, True, None, 1),     # no padding, ceil mode
        ((6, 13), 3, 2, 1, True, False, None, 1),
        ((8, 12), 3, 2, 1, False, True, 5, 1),       # divisor override
        ((10, 14), 3, 2, 1, False, True, None, 2),   # dilation: no pairs
        ((9, 10), 2, 2, 0, False, True, None, 1),
        ((11, 15), 5, 3, 2, True, False, None, 1),
        ((6, 6), 3, 2, 1, False, False, None, 1),    # rows narrower than a vector
        ((5, 7), 2, 2, 0, True, True, None, 1),
    ]
    for sp, k, s, p, ceil, incl, div, d in cases:
        x = rng.standard_normal((2, 3) + sp).astype(np.float32)
        y = fastpool.avg_pool2d(x, k, s, p, ceil, incl, div, dilation=d)
        g = rng.standard_normal(y.shape).astype(np.float32)
        got = fastpool.avg_pool2d_backward(g, x, k, s, p, ceil, incl, div, dilation=d)
        want = R.ref_avg_pool_backward(g.astype(np.float64), x.astype(np.float64), (k, k), (s, s),
                                       [(p, p)] * 2, ceil, incl, div, (d, d))
        close(got, want, np.float32, what=f"{sp} k{k} s{s} p{p} ceil {ceil} incl {incl} "
                                          f"div {div} dil {d}")
    for sp, osz in (((9, 12), (4, 6)), ((7, 11), (3, 5))):  # adaptive windows
        x = rng.standard_normal((2, 3) + sp).astype(np.float32)
        g = rng.standard_normal((2, 3) + osz).astype(np.float32)
        got = fastpool.adaptive_avg_pool2d_backward(g, x, osz)
        close(got, R.ref_adaptive_avg_pool_backward(g, x, osz), np.float32, what=f"{sp}->{osz}")
    x = np.abs(rng.standard_normal((2, 3, 7, 11))).astype(np.float32) + 0.25  # Lp
    y = fastpool.lp_pool2d(x, 2.0, 3, 2)
    g = rng.standard_normal(y.shape).astype(np.float32)
    close(fastpool.lp_pool2d_backward(g, x, 2.0, 3, 2),
          R.ref_lp_pool_backward(g.astype(np.float64), x.astype(np.float64), 2.0, (3, 3), (2, 2),
                                 [(0, 0), (0, 0)]), np.float32, what="lp")


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("large", [False, True])
def test_windows_without_an_input_cell(nd, large):
    """PyTorch-style padding with a dilation that steps over the input: along the first dim
    every window's taps (-1 and 2) miss the 2 cells, so each output is the padding's -inf.
    Its index (PyTorch's: the first tap past the input) lies past the plane, so the max
    gradient (recomputed argmax, both layouts, small and parallel kernels) is all zeros, and so
    are the average and Lp gradients; an earlier kernel added these windows' gradients at that
    position past the plane (a heap overrun).  From the forward's indices, the gradient is the
    same (an earlier scatter refused them as out of range)."""
    rng = np.random.default_rng(nd + 10 * large)
    shape = {1: ((2, 4, 2), (16, 64, 2)), 2: ((2, 4, 2, 9), (8, 64, 2, 200)),
             3: ((2, 4, 2, 9, 9), (4, 64, 2, 30, 30))}[nd][large]
    k = (2,) + (3,) * (nd - 1)
    s = (1,) + (2,) * (nd - 1)
    d = (3,) + (1,) * (nd - 1)
    for cl in (False, True):
        for dt in (np.float32, np.float16):
            x = rng.standard_normal(shape).astype(dt)
            xi = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if cl else x
            kw = dict(kernel_size=k, stride=s, padding=1, dilation=d, channels_last=cl)
            v, i = getattr(fastpool, f"max_pool{nd}d")(xi, return_indices=True, **kw)
            assert np.isneginf(v).all()
            # PyTorch's indices: the first tap at or past the input's start, past the plane
            assert (i >= math.prod(shape[2:])).all()
            g = rng.standard_normal(v.shape).astype(dt)
            back = getattr(fastpool, f"max_pool{nd}d_backward")
            gin = back(g, xi, **kw)
            assert gin.shape == xi.shape and not gin.any(), (cl, dt)
            # from the forward's own indices: the same (they name no cell); an index past
            # where such windows' indices can reach is still an error
            gin = back(g, xi, indices=i, **kw)
            assert gin.shape == xi.shape and not gin.any(), (cl, dt)
            i.reshape(-1)[-1] = 10 ** 9
            with pytest.raises(ValueError, match="indices holds 1000000000"):
                back(g, xi, indices=i, **kw)
            if dt == np.float16:
                continue
            for incl in (True, False):
                gin = getattr(fastpool, f"avg_pool{nd}d_backward")(g, xi, count_include_pad=incl,
                                                                    **kw)
                assert not gin.any(), (cl, dt, incl)
            gin = getattr(fastpool, f"lp_pool{nd}d_backward")(g, np.abs(xi), 2.0, **kw)
            assert not gin.any(), (cl, dt)


@pytest.mark.parametrize("p", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (4, 32, 40, 40)])
def test_lp_gradient_of_nan_windows(p, shape):
    """A window whose mean is NaN: PyTorch's autograd multiplies by sign(NaN) = 0, so its
    gradient is 0 for p = 1 (the root's derivative NaN ** 0 = 1) and NaN for other p.  Small and
    parallel kernels, both layouts, against torch autograd."""
    rng = np.random.default_rng(int(p * 10) + shape[0])
    x = np.abs(rng.standard_normal(shape)).astype(np.float32)
    x.reshape(-1)[rng.choice(x.size, x.size // 40, replace=False)] = np.nan
    xt = torch.from_numpy(x).requires_grad_()
    y = F.lp_pool2d(xt, p, 3, 2)
    g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.from_numpy(g))
    want = xt.grad.numpy()
    assert np.isnan(want).any() != (p == 1.0)
    got = fastpool.lp_pool2d_backward(g, x, p, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    perm = (0, 2, 3, 1)
    got = fastpool.lp_pool2d_backward(np.ascontiguousarray(g.transpose(perm)),
                                      np.ascontiguousarray(x.transpose(perm)), p, 3, 2,
                                      channels_last=True)
    np.testing.assert_allclose(got.transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 1.5, 4.0])
def test_lp_special_values_as_pytorch(p):
    """Lp pooling of every pair of special values (±0, ±1, ±inf, NaN, ...) in float64, forward
    and gradient against torch: PyTorch's powers with a scalar exponent (products for 2 and 3,
    a square root for 0.5) and its sign(NaN) = 0.  (Norms under 1 are left out: there PyTorch's
    gradient at a zero input takes signs from its rsqrt that fastpool does not follow.)"""
    vals = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 2.5, 0.3]
    pairs = np.array([(a, b) for a in vals for b in vals], np.float64)
    x = pairs.reshape(1, -1)[:, None, :]  # one row of windows of 2, stride 2
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y = F.lp_pool1d(xt, p, 2, 2)
    g = np.linspace(0.5, 1.5, y.numel()).reshape(tuple(y.shape))
    y.backward(torch.from_numpy(g))
    np.testing.assert_allclose(fastpool.lp_pool1d(x, p, 2, 2), y.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(fastpool.lp_pool1d_backward(g, x, p, 2, 2), xt.grad.numpy(),
                               rtol=1e-13)


def test_lp_cubes_round_as_pytorch():
    """p = 3: PyTorch cubes by multiplying (x * x * x); so does fastpool (``window.tpow``), so
    that near-cancelling sums of cubes (signed inputs) stay within float32 rounding of
    PyTorch's instead of amplifying pow's different rounding (7 of 160000 cells were 1e-5 apart
    with pow)."""
    x = np.random.default_rng(1).standard_normal((2, 32, 10001)).astype(np.float32)
    want = F.lp_pool1d(torch.from_numpy(x), 3.0, 2, 4).numpy()
    np.testing.assert_allclose(fastpool.lp_pool1d(x, 3.0, 2, 4), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,args", [
    ((1, 1, 3, 2), ((2, 2), 1, (0, 1), (1, 3))),
    ((4, 64, 30, 2), ((2, 2), 1, (0, 1), (1, 3))),
    # (the aliased row lies below every row a window spans: the channels-last ring holds it)
    ((2, 3, 3, 1), ((3, 2), (2, 1), (1, 1), (2, 2))),
    ((16, 64, 9, 1), ((3, 2), (2, 1), (1, 1), (2, 2))),
    ((8, 32, 40, 3), ((3, 2), (1, 1), (1, 1), (1, 4))),
    ((2, 3, 4, 4, 2), ((2, 2, 2), 1, (0, 0, 1), (1, 1, 3))),
    ((4, 16, 8, 8, 2), ((2, 2, 2), 1, (0, 0, 1), (1, 1, 3)))])
def test_windows_without_an_input_cell_aliasing_the_plane(shape, args):
    """A window without an input cell along W only: PyTorch's index for it (the window's row
    times W plus its first tap past the row) lands inside the plane, on a later row, and its
    autograd adds the gradient there; fastpool's forward gives the same index, and both of its
    gradients (with and without indices, both layouts) match PyTorch's autograd."""
    nd = len(shape) - 2
    rng = np.random.default_rng(len(shape) + shape[0])
    x = rng.standard_normal(shape).astype(np.float32)
    t = torch.from_numpy(x).requires_grad_()
    y, ti = getattr(F, f"max_pool{nd}d")(t, *args, return_indices=True)
    assert torch.isinf(y).any() and 0 <= int(ti.min()) and int(ti.max()) < math.prod(shape[2:])
    g = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.from_numpy(g))
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,)
    back = np.argsort(perm)
    for cl in (False, True):
        xi = np.ascontiguousarray(x.transpose(perm)) if cl else x
        gi = np.ascontiguousarray(g.transpose(perm)) if cl else g
        v, i = getattr(fastpool, f"max_pool{nd}d")(xi, *args, return_indices=True,
                                                   channels_last=cl)
        grads = [getattr(fastpool, f"max_pool{nd}d_backward")(gi, xi, *args, channels_last=cl,
                                                              **kw)
                 for kw in ({}, {"indices": i})]
        if cl:
            i, grads = i.transpose(back), [a.transpose(back) for a in grads]
        np.testing.assert_array_equal(i, ti.numpy())
        for a in grads:
            np.testing.assert_allclose(a, t.grad.numpy(), rtol=1e-6, atol=1e-6)
