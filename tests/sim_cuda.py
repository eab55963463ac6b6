"""The CUDA kernels (``fastpool._cuda``) under Numba's CUDA simulator: run by
``test_cuda.py`` in a process of its own with ``NUMBA_ENABLE_CUDASIM=1`` (the variable must be
set before Numba is imported).  The simulator runs each thread in Python, so inputs are tiny.
Results are checked against the NumPy operators (themselves checked against PyTorch) and
PyTorch.  On a machine with a GPU the same file runs on the device:
``python -m pytest tests/sim_cuda.py`` without the variable."""
import os

import numpy as np
import pytest

from numba import cuda  # noqa: E402

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or cuda.is_available(), \
    "no GPU: run through tests/test_cuda.py (the simulator)"

import fastpool  # noqa: E402

DTYPES = (np.float32, np.float64, np.float16, np.int8, np.uint8, np.int32, np.int64)


def _input(rng, rank, batched, cl, dtype):
    sp = tuple(int(rng.integers(2, 7 if rank < 3 else 5)) for _ in range(rank))
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    shape = ((n,) if batched else ()) + ((*sp, c) if cl else (c, *sp))
    if np.dtype(dtype).kind == "f":
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, max(1, flat.size // 8), replace=False)] = np.round(
            flat[rng.choice(flat.size, max(1, flat.size // 8), replace=False)])  # ties
        if rng.integers(0, 2):
            flat[rng.integers(0, flat.size)] = np.nan
        if rng.integers(0, 2):
            flat[rng.integers(0, flat.size)] = -0.0
        return x
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -50), min(info.max, 50), shape).astype(dtype)


def _same(got, want, exact):
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            _same(g, w, True)
        return
    assert type(got).__name__ in ("FakeCUDAArray", "DeviceNDArray")
    g = got.copy_to_host()
    assert g.shape == want.shape and g.dtype == want.dtype
    if exact or want.dtype.kind != "f":
        if want.dtype.kind == "f":
            np.testing.assert_array_equal(g, want)  # (NaN where NaN)
            np.testing.assert_array_equal(np.signbit(g), np.signbit(want))
        else:
            np.testing.assert_array_equal(g, want)
    else:
        tol = 4e-3 if want.dtype == np.float16 else 1e-6
        np.testing.assert_allclose(g.astype(np.float64), want.astype(np.float64), rtol=tol,
                                   atol=tol)


CASES = [(seed, rank, batched, cl) for seed in range(3) for rank in (1, 2, 3)
         for batched in (True, False) for cl in (False, True)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_window_ops_match_numpy(case):
    seed, rank, batched, cl = case
    rng = np.random.default_rng(seed * 100 + rank * 10 + 2 * batched + cl)
    dtype = DTYPES[int(rng.integers(0, len(DTYPES)))]
    x = _input(rng, rank, batched, cl, dtype)
    dx = cuda.to_device(x)
    kw = dict(channels_last=cl)
    k = int(rng.integers(1, 4))
    s = int(rng.integers(1, 3))
    p = int(rng.integers(0, k // 2 + 1))
    d = int(rng.integers(1, 3))
    ceil = bool(rng.integers(0, 2))
    mp = getattr(fastpool, f"max_pool{rank}d")
    try:
        want = mp(x, k, s, p, d, ceil, True, **kw)
    except ValueError:
        want = None
    if want is not None:
        _same(mp(dx, k, s, p, d, ceil, True, **kw), want, True)
        _same(mp(dx, k, s, p, d, ceil, True, index_dtype=np.int32, **kw),
              mp(x, k, s, p, d, ceil, True, index_dtype=np.int32, **kw), True)
    pads = [(int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(rank)]
    _same(mp(dx, 2, 1, pads, **kw), mp(x, 2, 1, pads, **kw), True)
    ap = getattr(fastpool, f"avg_pool{rank}d")
    for incl in (True, False):
        try:
            want = ap(x, k, s, p, ceil, incl, **kw)
        except ValueError:
            continue
        _same(ap(dx, k, s, p, ceil, incl, **kw), want, False)
    _same(ap(dx, 2, 1, "same", divisor_override=3, **kw), ap(x, 2, 1, "same",
                                                               divisor_override=3, **kw), False)
    amp = getattr(fastpool, f"adaptive_max_pool{rank}d")
    _same(amp(dx, 3, True, **kw), amp(x, 3, True, **kw), True)
    aap = getattr(fastpool, f"adaptive_avg_pool{rank}d")
    _same(aap(dx, 2, **kw), aap(x, 2, **kw), False)
    if np.dtype(dtype).kind == "f":
        xa = np.nan_to_num(np.abs(x))
        lp = getattr(fastpool, f"lp_pool{rank}d")
        for nt in (1, 2, 3.5):
            try:
                want = lp(xa, nt, 2, 1, ceil, **kw)
            except ValueError:
                continue
            _same(lp(cuda.to_device(xa), nt, 2, 1, ceil, **kw), want, False)


def test_strided_views_run_in_place():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 9, 10)).astype(np.float32)
    dx = cuda.to_device(x)
    view = dx[::2, 1:, ::-1, 1::3]
    want = fastpool.max_pool2d(np.ascontiguousarray(x[::2, 1:, ::-1, 1::3]), 2, 1, 1,
                               return_indices=True)
    _same(fastpool.max_pool2d(view, 2, 1, 1, return_indices=True), want, True)


def test_against_pytorch():
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    v, i = fastpool.max_pool2d(cuda.to_device(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    tv, ti = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(v.copy_to_host(), tv.numpy())
    np.testing.assert_array_equal(i.copy_to_host(), ti.numpy())
    a = fastpool.avg_pool2d(cuda.to_device(x), 3, 2, 1, count_include_pad=False).copy_to_host()
    np.testing.assert_allclose(a, F.avg_pool2d(torch.from_numpy(x), 3, 2, 1,
                                               count_include_pad=False).numpy(), rtol=1e-6,
                               atol=1e-6)
    xa = np.abs(x)
    lp = fastpool.lp_pool2d(cuda.to_device(xa), 2, 3, 2).copy_to_host()
    np.testing.assert_allclose(lp, F.lp_pool2d(torch.from_numpy(xa), 2, 3, 2).numpy(),
                               rtol=1e-5)


def test_errors_and_untouched_input():
    x = np.arange(2 * 3 * 6 * 6, dtype=np.float32).reshape(2, 3, 6, 6)
    dx = cuda.to_device(x)
    with pytest.raises(TypeError, match="out= is not supported"):
        fastpool.max_pool2d(dx, 2, out=cuda.device_array((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="kernel_size=30"):
        fastpool.max_pool2d(dx, 30)
    with pytest.raises(TypeError, match="bool"):
        fastpool.max_pool2d(cuda.to_device(x > 3), 2)
    with pytest.raises(TypeError, match="float"):
        fastpool.lp_pool2d(cuda.to_device(x.astype(np.int32)), 2, 2)
    with pytest.raises(ValueError):
        fastpool.max_pool2d(cuda.to_device(x[0, 0]), 2)  # (a 2-d input to 2-d pooling)
    np.testing.assert_array_equal(dx.copy_to_host(), x)
    empty = fastpool.avg_pool2d(cuda.to_device(np.zeros((0, 3, 6, 6), np.float32)), 2)
    assert empty.shape == (0, 3, 3, 3)


GRAD_CASES = [(seed, rank, batched, cl) for seed in range(2) for rank in (1, 2, 3)
              for batched in (True, False) for cl in (False, True)]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "-".join(map(str, c)))
def test_gradients_and_other_ops_match_numpy(case):
    seed, rank, batched, cl = case
    rng = np.random.default_rng(1000 + seed * 100 + rank * 10 + 2 * batched + cl)
    dtype = (np.float32, np.float64, np.float16)[int(rng.integers(0, 3))]
    x = _input(rng, rank, batched, cl, dtype)
    dx = cuda.to_device(x)
    kw = dict(channels_last=cl)
    mp = getattr(fastpool, f"max_pool{rank}d")
    while True:  # a random geometry that the input admits
        k = int(rng.integers(1, 4))
        s = int(rng.integers(1, 3))
        p = int(rng.integers(0, k // 2 + 1))
        d = int(rng.integers(1, 3))
        ceil = bool(rng.integers(0, 2))
        try:
            v, i = mp(x, k, s, p, d, ceil, True, **kw)
            break
        except ValueError:
            continue
    g = rng.standard_normal(v.shape).astype(dtype)
    dg = cuda.to_device(g)
    mb = getattr(fastpool, f"max_pool{rank}d_backward")
    want = mb(g, x, k, s, p, d, ceil, **kw)
    tol = dtype == np.float16
    _same(mb(dg, dx, k, s, p, d, ceil, **kw), want, not tol)
    _same(mb(dg, dx, k, s, p, d, ceil, indices=cuda.to_device(i), **kw), want, not tol)
    ab = getattr(fastpool, f"avg_pool{rank}d_backward")
    for incl in (True, False):
        try:
            want = ab(g, x, k, s, p, ceil, incl, dilation=d, **kw)
        except ValueError:
            continue
        _same(ab(dg, dx, k, s, p, ceil, incl, dilation=d, **kw), want, False)
    xa = np.nan_to_num(np.abs(x)) + dtype(0.5)
    ga = getattr(fastpool, f"lp_pool{rank}d")(xa, 2, 2, 1, ceil, **kw)
    gl = rng.standard_normal(ga.shape).astype(dtype)
    lb = getattr(fastpool, f"lp_pool{rank}d_backward")
    for nt in (1, 2, 3):
        _same(lb(cuda.to_device(gl), cuda.to_device(xa), nt, 2, 1, ceil, **kw),
              lb(gl, xa, nt, 2, 1, ceil, **kw), False)
    am = getattr(fastpool, f"adaptive_max_pool{rank}d")(x, 3, **kw)
    gm = rng.standard_normal(am.shape).astype(dtype)
    amb = getattr(fastpool, f"adaptive_max_pool{rank}d_backward")
    _same(amb(cuda.to_device(gm), dx, 3, **kw), amb(gm, x, 3, **kw), not tol)
    aab = getattr(fastpool, f"adaptive_avg_pool{rank}d_backward")
    _same(aab(cuda.to_device(gm), dx, 3, **kw), aab(gm, x, 3, **kw), False)
    # unpooling and its gradient
    sp = x.shape[int(batched):x.ndim - 1] if cl else x.shape[1 + int(batched):]
    v2, i2 = mp(x, 2, 2, return_indices=True, **kw)
    up = getattr(fastpool, f"max_unpool{rank}d")
    _same(up(cuda.to_device(v2), cuda.to_device(i2), 2, 2, output_size=sp, **kw),
          up(v2, i2, 2, 2, output_size=sp, **kw), True)
    gu = rng.standard_normal(x.shape).astype(dtype)
    ub = getattr(fastpool, f"max_unpool{rank}d_backward")
    _same(ub(cuda.to_device(gu), cuda.to_device(v2), cuda.to_device(i2), 2, 2,
             output_size=sp, **kw), ub(gu, v2, i2, 2, 2, output_size=sp, **kw), True)
    if rank > 1:
        fm = getattr(fastpool, f"fractional_max_pool{rank}d")
        smp = rng.random(((x.shape[0] if batched else 1), x.shape[-1 if cl else int(batched)],
                          rank))
        osz = tuple(max(1, n // 2) for n in sp)
        try:
            fv, fi = fm(x, 2, output_size=osz, random_samples=smp, return_indices=True, **kw)
        except ValueError:  # (a 3-d input too small for its windows)
            return
        _same(fm(dx, 2, output_size=osz, random_samples=smp, return_indices=True, **kw),
              (fv, fi), True)
        gf = rng.standard_normal(fv.shape).astype(dtype)
        fb = getattr(fastpool, f"fractional_max_pool{rank}d_backward")
        want = fb(gf, x, 2, output_size=osz, random_samples=smp, **kw)
        _same(fb(cuda.to_device(gf), dx, 2, output_size=osz, random_samples=smp, **kw), want,
              not tol)
        _same(fb(cuda.to_device(gf), dx, 2, output_size=osz, indices=cuda.to_device(fi), **kw),
              want, not tol)


def test_gradient_errors():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    dx = cuda.to_device(x)
    g = cuda.to_device(np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastpool.max_pool2d_backward(cuda.to_device(np.ones((2, 3, 2, 3), np.float32)), dx, 2)
    with pytest.raises(TypeError, match="grad_output has dtype"):
        fastpool.avg_pool2d_backward(cuda.to_device(np.ones((2, 3, 3, 3))), dx, 2)
    with pytest.raises(TypeError, match="grad_output must be a CUDA array"):
        fastpool.avg_pool2d_backward(np.ones((2, 3, 3, 3), np.float32), dx, 2)
    with pytest.raises(TypeError, match="dtype"):
        fastpool.max_pool2d_backward(g, cuda.to_device(x.astype(np.int32)), 2)
    bad = np.zeros((2, 3, 3, 3), np.int64)
    bad[1, 2, 0, 0] = 36
    with pytest.raises(ValueError, match="indices holds 36 in plane 5"):
        fastpool.max_pool2d_backward(g, dx, 2, indices=cuda.to_device(bad))
    with pytest.raises(ValueError, match="indices holds 36"):
        fastpool.max_unpool2d(g, cuda.to_device(bad), 2)
    with pytest.raises(ValueError, match="random_samples"):
        fastpool.fractional_max_pool2d_backward(g, dx, 2, output_size=3)


def test_max_gradient_of_windows_without_input_cells():
    """With dilation stepping over the input, a window without an input cell has PyTorch's
    index of its first tap past the input, which may lie past the plane: its gradient goes
    nowhere, as on the CPU (with the forward's indices or without)."""
    x = np.array([[[-3.1], [-0.09]]])  # (H, W, C) = (1, 2, 1), channels last
    v, i = fastpool.max_pool2d(x, 2, 2, 1, 2, True, True, channels_last=True)
    assert (i >= 2).all()  # (past the plane of 2 cells)
    g = np.ones_like(v)
    want = fastpool.max_pool2d_backward(g, x, 2, 2, 1, 2, True, channels_last=True)
    for kw in ({}, {"indices": cuda.to_device(i)}):
        _same(fastpool.max_pool2d_backward(cuda.to_device(g), cuda.to_device(x), 2, 2, 1, 2,
                                           True, channels_last=True, **kw), want, True)
