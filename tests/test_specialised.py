"""The kernels specialised on hot windows, against PyTorch.

Small calls without indices run ``_cpu/small.py`` (every window at run time); small calls
with indices run the table-driven argmax kernel except for a couple of windows, so these tests
widen the serial hot set to reach every specialised argmax kernel on small inputs, and run a
few inputs large enough for the parallel ones.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fastpool
from fastpool import functional as fpf

# (rank, kernel, stride, padding, ceil_mode) per hot window, with padding and ceil variants
CASES = [
    (2, 3, 2, 1, False), (2, 3, 2, 0, True), (2, 2, 2, 0, False), (2, 2, 2, 1, True),
    (2, 3, 1, 1, False), (2, 5, 1, 2, False), (1, 3, 2, 0, False), (1, 3, 2, 1, True),
    (1, 2, 2, 0, True), (3, 2, 2, 0, False), (3, 2, 2, 1, True), (3, 3, 2, 1, False),
    (3, 3, 2, 0, True), (3, 3, 1, 1, False), (3, 3, 1, 0, True), (1, 3, 1, 1, False),
    (1, 3, 1, 0, True), (1, 5, 1, 2, False), (1, 5, 1, 1, True),
]
SPATIAL = {1: (23,), 2: (13, 11), 3: (7, 9, 10)}
POOL = {1: (fastpool.max_pool1d, fastpool.avg_pool1d, F.max_pool1d, F.avg_pool1d),
        2: (fastpool.max_pool2d, fastpool.avg_pool2d, F.max_pool2d, F.avg_pool2d),
        3: (fastpool.max_pool3d, fastpool.avg_pool3d, F.max_pool3d, F.avg_pool3d)}


@pytest.fixture
def all_hot_serial(monkeypatch):
    monkeypatch.setattr(fpf, "_HOT_SERIAL", fpf._HOT_WINDOWS)
    monkeypatch.setattr(fpf, "_PLANS", {})


def _spy_kernels(monkeypatch):
    """The list that every ``_dispatch.kernel(...)`` request's key is appended to."""
    from fastpool import _dispatch
    made = []
    real = _dispatch.kernel
    monkeypatch.setattr(_dispatch, "kernel",
                        lambda op, *rest: made.append((op,) + rest) or real(op, *rest))
    return made


def _any_input(rng, shape, dtype):
    """Integers over the type's whole range, or ``_input``'s floats (ties and NaN)."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return _input(rng, shape, dtype)


def _input(rng, shape, dtype=np.float32):
    x = rng.integers(-3, 4, size=shape).astype(dtype)  # many ties
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 3, replace=False)] = np.nan
    return x


def _check(x, rank, k, s, p, ceil, channels_last):
    fmax, favg, tmax, tavg = POOL[rank]
    t = torch.from_numpy(x)
    tv, ti = tmax(t, k, s, p, 1, ceil, True)
    ta = tavg(t, k, s, p, ceil, False)
    xin = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if channels_last else x
    back = (lambda a: np.moveaxis(a, -1, 1)) if channels_last else (lambda a: a)
    v = back(fmax(xin, k, s, p, 1, ceil, channels_last=channels_last))
    np.testing.assert_array_equal(v, tv.numpy())
    v, i = fmax(xin, k, s, p, 1, ceil, True, channels_last=channels_last)
    np.testing.assert_array_equal(back(v), tv.numpy())
    np.testing.assert_array_equal(back(i), ti.numpy())
    a = back(favg(xin, k, s, p, ceil, False, channels_last=channels_last))
    np.testing.assert_allclose(a, ta.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}d-k{c[1]}s{c[2]}p{c[3]}"
                                              f"{'-ceil' if c[4] else ''}" for c in CASES])
def test_hot_window_small(case, channels_last, all_hot_serial):
    rank, k, s, p, ceil = case
    rng = np.random.default_rng(hash(case) % 2**32)
    x = _input(rng, (2, 3) + SPATIAL[rank])
    _check(x, rank, k, s, p, ceil, channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["cf", "cl"])
@pytest.mark.parametrize("case", [(2, 3, 2, 1, False), (2, 2, 2, 0, True), (3, 3, 2, 1, False),
                                  (3, 3, 2, 0, True), (3, 3, 1, 1, False), (1, 3, 1, 1, False),
                                  (1, 5, 1, 2, True), (1, 2, 2, 0, False)],
                         ids=["k3s2p1", "k2s2-ceil", "3d-k3s2p1", "3d-k3s2-ceil", "3d-k3s1p1",
                              "1d-k3s1p1", "1d-k5s1p2-ceil", "1d-k2s2"])
def test_hot_window_parallel(case, channels_last):
    """Inputs above the parallel threshold: the parallel specialised kernels (1-d and 3-d: the
    gradient too, with and without the forward's indices)."""
    rank, k, s, p, ceil = case
    rng = np.random.default_rng(7)
    x = _input(rng, {1: (3, 16, 1601), 2: (3, 16, 61, 67), 3: (2, 12, 13, 15, 18)}[rank])
    if rank == 1:  # (1-d rows of random floats too: the argmax's select taken at random)
        x[1] = rng.standard_normal(x.shape[1:]).astype(x.dtype)
    assert x.size >= fpf.PARALLEL_MIN_WORK
    _check(x, rank, k, s, p, ceil, channels_last)
    if rank != 2:
        pool = F.max_pool3d if rank == 3 else F.max_pool1d
        xt = torch.from_numpy(x).requires_grad_()
        yt = pool(xt, k, s, p, 1, ceil)
        g = rng.standard_normal(yt.shape).astype(np.float32)
        ref = torch.autograd.grad(yt, xt, torch.from_numpy(g))[0].numpy()
        fwd = (lambda a: np.ascontiguousarray(np.moveaxis(a, 1, -1))) if channels_last else \
            (lambda a: a)
        back = (lambda a: np.moveaxis(a, -1, 1)) if channels_last else (lambda a: a)
        fpool, fback = (fastpool.max_pool3d, fastpool.max_pool3d_backward) if rank == 3 else \
            (fastpool.max_pool1d, fastpool.max_pool1d_backward)
        _, i = fpool(fwd(x), k, s, p, 1, ceil, True, channels_last=channels_last)
        for kw in ({}, {"indices": i}):
            got = fback(fwd(g), fwd(x), k, s, p, 1, ceil, channels_last=channels_last, **kw)
            np.testing.assert_allclose(back(got), ref, rtol=1e-6, atol=1e-6)


def test_hot_window_float16(all_hot_serial):
    rng = np.random.default_rng(3)
    x = _input(rng, (2, 5, 13, 12), np.float16)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(fastpool.max_pool2d(x, 3, 2, 1),
                                  F.max_pool2d(t, 3, 2, 1).numpy())
    np.testing.assert_allclose(fastpool.avg_pool2d(x, 3, 2, 1).astype(np.float32),
                               F.avg_pool2d(t, 3, 2, 1).numpy().astype(np.float32),
                               rtol=1e-3, atol=1e-3)


# Non-overlapping windows along W (k2 s2) finish several rows in one flat loop when no column
# is an edge; rows change divisor where the padding along H or D cuts a window, which closes a
# group early.  Row counts well past one group, odd widths, asymmetric padding along H.
FLAT = [
    (2, (2, 2), ((1, 1), (0, 0)), (3, 5, 37, 33)),
    (2, (2, 2), ((0, 1), (0, 0)), (2, 3, 40, 9)),
    (2, (2, 2), 0, (1, 7, 64, 34)),
    (3, (2, 2, 2), ((1, 0), (0, 1), (0, 0)), (2, 3, 7, 11, 13)),
    (1, (2,), 0, (2, 9, 41)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int16, np.int64])
@pytest.mark.parametrize("case", FLAT, ids=[f"{c[0]}d-{i}" for i, c in enumerate(FLAT)])
def test_flat_rows_against_reference(case, dtype, all_hot_serial):
    from reference import ref_avg_pool, ref_max_pool, resolve_pads
    rank, k, pads, shape = case
    rng = np.random.default_rng(len(shape) * 131 + shape[-1])
    integer = np.dtype(dtype).kind == "i"
    x = _input(rng, shape, np.float32 if integer else dtype)
    if integer:  # int64: values a float64 could not hold exactly (|x| ~ 2**61)
        x = np.nan_to_num(x).astype(dtype)
        if dtype == np.int64:
            x = x * 2 ** 60 + rng.integers(0, 2 ** 20, size=shape)
    fmax, favg = POOL[rank][:2]
    rp = resolve_pads(pads, shape[2:], k, k)
    np.testing.assert_array_equal(fmax(x, k, k, pads), ref_max_pool(x, k, k, rp)[0])
    if integer:
        return
    tol = 2e-3 if dtype == np.float16 else 1e-6
    for incl in (True, False):
        got = favg(x, k, k, pads, count_include_pad=incl)
        ref = ref_avg_pool(x, k, k, rp, count_include_pad=incl)
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64),
                                   rtol=tol, atol=tol)
    got = favg(x, k, k, pads, divisor_override=3)
    ref = ref_avg_pool(x, k, k, rp, divisor_override=3)
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol, atol=tol)


def test_flat_rows_parallel():
    rng = np.random.default_rng(11)
    x = _input(rng, (4, 32, 66, 45))
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(fastpool.max_pool2d(x, 2), F.max_pool2d(t, 2).numpy())
    np.testing.assert_allclose(fastpool.avg_pool2d(x, 2, padding=1),
                               F.avg_pool2d(t, 2, padding=1).numpy(), rtol=1e-6, atol=1e-6)


# Edge columns of the specialised channels-first kernels reduce a scratch row padded with the
# neutral value (max: the dtype's lowest, sums: 0): asymmetric padding along W, ceil-mode
# windows past the right edge, integer extremes, and the padding's value never leaking.
EDGES = [
    ((3, 3), (2, 2), ((1, 0), (1, 2)), True),
    ((5, 5), (1, 1), ((2, 2), (2, 2)), False),
    ((5, 5), (1, 1), ((0, 0), (4, 1)), False),
    ((3, 3), (1, 1), ((1, 1), (0, 2)), False),
    ((2, 2), (2, 2), ((0, 0), (1, 0)), True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int64])
@pytest.mark.parametrize("case", EDGES, ids=[f"e{i}" for i in range(len(EDGES))])
def test_padded_edge_columns_against_reference(case, dtype, all_hot_serial):
    from reference import ref_avg_pool, ref_max_pool, resolve_pads
    k, s, pads, ceil = case
    rng = np.random.default_rng(sum(k) * 7 + s[0])
    shape = (2, 3, 11, 14)
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        x[0, 0, :, :4] = info.min  # windows whose every value is the lowest one
    else:
        x = _input(rng, shape, dtype)
        x[1, 2, :, -3:] = -np.inf
    rp = resolve_pads(pads, shape[2:], k, s)
    got = fastpool.max_pool2d(x, k, s, pads, ceil_mode=ceil)
    np.testing.assert_array_equal(got, ref_max_pool(x, k, s, rp, ceil_mode=ceil)[0])
    if np.dtype(dtype).kind == "i":
        return
    tol = 2e-3 if dtype == np.float16 else 1e-6
    for incl in (True, False):
        got = fastpool.avg_pool2d(x, k, s, pads, ceil_mode=ceil, count_include_pad=incl)
        ref = ref_avg_pool(x, k, s, rp, ceil_mode=ceil, count_include_pad=incl)
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol,
                                   atol=tol)


# Stride-1 size-keeping max on small contiguous planes runs flat passes over whole planes
# (separable.make_flat): the vertical pass over the interior rows and the horizontal one over
# the whole plane are single loops, the clipped top/bottom rows and the edge columns (whose flat
# windows would wrap into the neighbouring rows) are redone.  Planes from 1 x 1 to 64 x 64.
# Float planes at least one vector wide (8 float32 / float16, 4 float64) take the vector
# kernels instead (separable.make_same, tested below), the others the flat passes.
FLAT_S1 = [(2, 3, (7, 9), np.float32), (2, 5, (40, 40), np.float32),
           (2, 3, (1, 1), np.float16), (2, 5, (3, 2), np.float64), (2, 5, (6, 5), np.uint8),
           (2, 3, (64, 64), np.float32),
           (2, 5, (2, 13), np.float32), (2, 3, (13, 2), np.int64), (1, 3, (37,), np.float32),
           (1, 5, (4,), np.float32), (1, 5, (6,), np.uint8), (2, 5, (17, 23), np.float64),
           (2, 3, (31, 8), np.float16), (2, 5, (11, 6), np.int64)]


@pytest.mark.parametrize("case", FLAT_S1, ids=[f"{c[0]}d-k{c[1]}-{'x'.join(map(str, c[2]))}-"
                                            f"{np.dtype(c[3]).name}" for c in FLAT_S1])
def test_flat_stride1_max_against_reference(case, monkeypatch):
    from reference import ref_max_pool
    rank, k, sp, dtype = case
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(k * 100 + sum(sp))
    shape = (2, 3) + sp
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        x.reshape(-1)[::5] = info.min  # the lowest value inside windows and at edges
    else:
        x = rng.standard_normal(shape).astype(dtype)
        x[rng.random(shape) < 0.05] = np.nan
        x[rng.random(shape) < 0.05] = -np.inf
    pool = fastpool.max_pool1d if rank == 1 else fastpool.max_pool2d
    got = pool(x, k, 1, k // 2)
    lanes = 4 if np.dtype(dtype) == np.float64 else 8
    assert calls == ["same" if np.dtype(dtype).kind == "f" and sp[-1] >= lanes else "flat"]
    want = ref_max_pool(x, (k,) * rank, (1,) * rank, [(k // 2, k // 2)] * rank)[0]
    np.testing.assert_array_equal(got, want)
    # the same windows given as "same" padding, and written into out=
    out = np.full_like(want, 7)
    assert pool(x, k, 1, "same", out=out) is out
    np.testing.assert_array_equal(out, want)
    # a strided view is not a flat plane: the row-wise kernels, same answer, input untouched
    xs = np.repeat(x, 2, axis=-1)[..., ::2]
    keep = xs.copy()
    np.testing.assert_array_equal(pool(xs, k, 1, k // 2), want)
    np.testing.assert_array_equal(xs, keep)


# Stride-1 size-keeping max on contiguous float planes at least one vector wide
# (separable.make_same): plain-max vector passes over rows in pairs, a pair whose window rows
# hold a NaN redone with the NaN-propagating vectors.  Windows KH in 1, 3, 5, 7 by KW in 3, 5,
# 7; widths around the vector width (the last vector overlaps the one before); heights from 1
# (a window taller than the plane) up; few planes with many rows, so that the parallel kernel
# splits planes into row blocks (16 rows and more), whose first pair checks the rows above it.
SAME = [((1, 3), (1, 8), np.float32), ((3, 3), (2, 9), np.float32), ((5, 5), (3, 15), np.float64),
        ((7, 7), (9, 4), np.float64), ((1, 5), (5, 37), np.float16), ((3, 5), (11, 8), np.float16),
        ((5, 3), (40, 40), np.float32), ((7, 3), (6, 23), np.float32),
        ((3, 7), (17, 31), np.float64), ((5, 7), (13, 64), np.float16),
        ((7, 5), (70, 12), np.float32), ((3, 3), (150, 20), np.float32),
        ((5, 5), (37, 129), np.float32)]


def _nan_per_plane(rng, shape, dtype):
    """Random values with ties, and one NaN at a random cell of every other plane (alone in its
    plane: a NaN missed anywhere in a window shows as a number), +/-inf here and there."""
    x = rng.integers(-4, 5, size=shape).astype(dtype)
    planes = x.reshape(-1, int(np.prod(shape[-2:])))
    planes[rng.random(planes.shape) < 0.03] = np.inf
    planes[rng.random(planes.shape) < 0.03] = -np.inf
    for q in range(0, planes.shape[0], 2):
        planes[q, rng.integers(planes.shape[1])] = np.nan
    return x


@pytest.mark.parametrize("case", SAME, ids=[f"k{c[0][0]}x{c[0][1]}-{c[1][0]}x{c[1][1]}-"
                                            f"{np.dtype(c[2]).name}" for c in SAME])
def test_same_vector_kernels_against_reference(case, monkeypatch):
    from reference import ref_max_pool
    (kh, kw), (H, W), dtype = case
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(kh * 1000 + kw * 100 + H + W)
    pads = [(kh // 2, kh // 2), (kw // 2, kw // 2)]
    for par in (False, True):  # the serial kernel, and the parallel one on any size
        monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0 if par else 1 << 62)
        monkeypatch.setattr(fpf, "_PLANS", {})
        for shape in ((2, 3, H, W), (1, 40, H, W)):  # few planes (row blocks), more planes
            x = _nan_per_plane(rng, shape, dtype)
            keep = x.copy()
            want = ref_max_pool(x, (kh, kw), (1, 1), pads)[0]
            if kh == 1:
                got = fastpool.max_pool1d(np.ascontiguousarray(x[:, :, 0]), kw, 1, kw // 2)
                np.testing.assert_array_equal(got, want[:, :, 0])
            got = fastpool.max_pool2d(x, (kh, kw), 1, (kh // 2, kw // 2))
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(x, keep)
            ref = F.max_pool2d(torch.from_numpy(x.astype(np.float32)), (kh, kw), 1,
                               (kh // 2, kw // 2)).numpy()
            np.testing.assert_array_equal(got.astype(np.float32), ref)
        # a NaN in the rows at the row blocks' seams (2 planes: blocks of 16 rows)
        for r in sorted({14, 15, 16, 17, 18, 31, 32, 33, H - 1} & set(range(H))):
            x = rng.standard_normal((2, 1, H, W)).astype(dtype)
            x[1, 0, r, rng.integers(W)] = np.nan
            got = fastpool.max_pool2d(x, (kh, kw), 1, (kh // 2, kw // 2))
            np.testing.assert_array_equal(got, ref_max_pool(x, (kh, kw), (1, 1), pads)[0])
    assert set(calls) == {"same"}


def test_same_vector_kernels_parallel():
    """The parallel kernel, whole planes and row blocks, against PyTorch (NaN included)."""
    rng = np.random.default_rng(11)
    for shape, k in (((3, 50, 33, 41), 3), ((1, 2, 300, 24), 5), ((2, 64, 20, 17), 7)):
        x = _nan_per_plane(rng, shape, np.float32)
        assert fpf._parallel(x.size * k * k)
        got = fastpool.max_pool2d(x, k, 1, k // 2)
        np.testing.assert_array_equal(got, F.max_pool2d(torch.from_numpy(x), k, 1, k // 2).numpy())


def test_same_vector_kernels_only_for_their_geometry():
    spec = fpf._same_spec
    assert spec((3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)], (200, 300), (200, 300)) == (3, 3)
    assert spec((7, 5), (1, 1), (1, 1), [(3, 3), (2, 2)], (20, 30), (20, 30)) == (7, 5)
    assert spec((5,), (1,), (1,), [(2, 2)], (50,), (50,)) == (1, 5)
    # stride, dilation, asymmetric pads, a size change, rank 3, even or too large windows,
    # a window one column wide
    assert spec((3, 3), (2, 1), (1, 1), [(1, 1), (1, 1)], (20, 30), (10, 30)) is None
    assert spec((3, 3), (1, 1), (2, 1), [(2, 2), (1, 1)], (20, 30), (20, 30)) is None
    assert spec((3, 3), (1, 1), (1, 1), [(0, 2), (1, 1)], (20, 30), (20, 30)) is None
    assert spec((3, 3), (1, 1), (1, 1), [(0, 0), (1, 1)], (20, 30), (18, 30)) is None
    assert spec((3, 3, 3), (1,) * 3, (1,) * 3, [(1, 1)] * 3, (4, 5, 6), (4, 5, 6)) is None
    assert spec((4, 3), (1, 1), (1, 1), [(2, 1), (1, 1)], (20, 30), (21, 30)) is None
    assert spec((9, 9), (1, 1), (1, 1), [(4, 4), (4, 4)], (20, 30), (20, 30)) is None
    assert spec((3, 1), (1, 1), (1, 1), [(1, 1), (0, 0)], (20, 30), (20, 30)) is None


# Overlapping k3s2 windows on short contiguous rows (separable.make_flat_rows): one flat
# horizontal pass per plane, whose edge columns are redone.  (rank, spatial, dtype, padding,
# ceil_mode, H dilation): windows cut at the top, bottom and right, dilated rows, every dtype.
FLAT_ROWS = [(2, (28, 28), np.float32, 1, False, 1), (2, (13, 32), np.float16, 1, False, 1),
             (2, (9, 32), np.float64, (1, 0), True, 1), (2, (17, 10), np.int64, 0, True, 1),
             (2, (14, 14), np.uint8, 1, False, 1), (2, (15, 12), np.float32, 1, False, 2),
             (1, (20,), np.float32, 1, False, 1), (1, (8,), np.int64, 0, True, 1),
             (2, (3, 4), np.float32, 1, False, 1), (2, (1, 6), np.float32, 1, False, 1)]


@pytest.mark.parametrize("case", FLAT_ROWS, ids=[f"{c[0]}d-{'x'.join(map(str, c[1]))}-"
                                              f"{np.dtype(c[2]).name}" for c in FLAT_ROWS])
def test_flat_rows_kernels_against_reference(case, monkeypatch):
    from reference import ref_avg_pool, ref_max_pool, resolve_pads
    rank, sp, dtype, pad, ceil, dh = case
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(sum(sp) + rank)
    shape = (2, 3) + sp
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        lo = max(info.min, -1000)
        x = rng.integers(lo, min(info.max, 1000), size=shape, endpoint=True).astype(dtype)
        xm = x.copy()
        xm.reshape(-1)[::7] = info.min  # the lowest value inside windows and at edges
    else:
        x = (rng.standard_normal(shape) * 10).astype(dtype)
        xm = x.copy()
        xm[rng.random(shape) < 0.05] = np.nan
        xm[rng.random(shape) < 0.05] = -np.inf
    k, s = (3,) * rank, (2,) * rank
    d = (dh, 1) if rank == 2 else (1,)
    pads = resolve_pads(pad, sp, k, s)
    pool = fastpool.max_pool1d if rank == 1 else fastpool.max_pool2d
    got = pool(xm, k, s, pad, d, ceil_mode=ceil)
    assert calls == ["flat_rows"]
    want = ref_max_pool(xm, k, s, pads, d, ceil_mode=ceil)[0]
    np.testing.assert_array_equal(got, want)
    t = torch.from_numpy(xm if dtype in (np.float32, np.float64) else xm.astype(np.float64))
    tf = F.max_pool1d if rank == 1 else F.max_pool2d
    np.testing.assert_array_equal(got, tf(t, k, s, pad, d, ceil_mode=ceil).numpy().astype(dtype))
    # out=, and a strided view (not a flat plane: the row-wise kernels), input untouched
    out = np.full_like(want, 7)
    assert pool(xm, k, s, pad, d, ceil_mode=ceil, out=out) is out
    np.testing.assert_array_equal(out, want)
    xs = np.repeat(xm, 2, axis=-1)[..., ::2]
    keep = xs.copy()
    calls.clear()
    np.testing.assert_array_equal(pool(xs, k, s, pad, d, ceil_mode=ceil), want)
    assert "flat_rows" not in calls
    np.testing.assert_array_equal(xs, keep)
    if dh != 1:
        return
    apool = fastpool.avg_pool1d if rank == 1 else fastpool.avg_pool2d
    tol = 2e-2 if dtype == np.float16 else 1e-5  # (values of magnitude ~10)
    overrides = (None, 5) if rank == 2 else (None,)
    for incl in (True, False):
        for dov in overrides:
            kw = {"divisor_override": dov} if dov else {}
            calls.clear()
            got = apool(x, k, s, pad, ceil_mode=ceil, count_include_pad=incl, **kw)
            assert calls == ["flat_rows"]
            want = ref_avg_pool(x, k, s, pads, ceil_mode=ceil, count_include_pad=incl,
                                divisor_override=dov)
            if np.dtype(dtype).kind in "iu":
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                                           rtol=tol, atol=tol)


def test_flat_rows_kernels_only_for_their_geometry():
    spec = fpf._flat_rows_spec
    k2 = ((1, 3, 3), 2, 1, 1)
    assert spec(k2, (28, 28), (14, 14), "avg") == (3, 3, 2, 1, 14, 1)
    assert spec(((1, 1, 3), 2, 1, 1), (20,), (10,), "max") == (1, 3, 2, 1, 10, 1)
    assert spec(((1, 3, 3), 2, 1, 0), (9, 32), (4, 16), "max") == (3, 3, 2, 0, 15, 0)
    assert spec(k2, (56, 56), (28, 28), "avg") is None  # rows long enough as they are
    assert spec(k2, (27, 27), (14, 14), "avg") is None  # W != OW * SW
    assert spec(k2, (28, 28), (14, 14), "lp") is None
    assert spec(((1, 2, 2), 2, 1, 0), (28, 28), (14, 14), "max") is None  # no overlap
    assert spec(((1, 3, 3), 2, 2, 1), (28, 28), (13, 13), "max") is None  # W dilation
    assert spec(((3, 3, 3), 2, 1, 1), (8, 28, 28), (4, 14, 14), "max") is None  # 3-d
    assert spec(None, (28, 28), (14, 14), "avg") is None  # adaptive windows


def test_flat_kernels_only_for_their_geometry():
    spec = fpf._flat_spec
    assert spec((3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)], (20, 30), (20, 30)) == (3, 3, 1, 1)
    assert spec((5,), (1,), (1,), [(2, 2)], (50,), (50,)) == (1, 5, 0, 2)
    # stride, dilation, asymmetric pads, a size change, rank 3, cold windows, big planes
    assert spec((3, 3), (2, 1), (1, 1), [(1, 1), (1, 1)], (20, 30), (10, 30)) is None
    assert spec((3, 3), (1, 1), (2, 1), [(2, 2), (1, 1)], (20, 30), (20, 30)) is None
    assert spec((3, 3), (1, 1), (1, 1), [(0, 2), (1, 1)], (20, 30), (20, 30)) is None
    assert spec((3, 3), (1, 1), (1, 1), [(0, 0), (1, 1)], (20, 30), (18, 30)) is None
    assert spec((3, 3, 3), (1,) * 3, (1,) * 3, [(1, 1)] * 3, (4, 5, 6), (4, 5, 6)) is None
    assert spec((7, 7), (1, 1), (1, 1), [(3, 3), (3, 3)], (20, 30), (20, 30)) is None
    assert spec((3, 3), (1, 1), (1, 1), [(1, 1), (1, 1)], (65, 64), (65, 64)) is None


# Non-overlapping windows (k2 s2, 1-d and 2-d) on rows too long for the flat groups: a row whose
# every column is interior reduces its cells straight from the input (row-major taps); rows cut
# by the padding along H, and ceil-mode partial columns, take the scratch-row passes.
FUSED = [((2, 2), ((0, 0), (0, 0)), False, (2, 3, 9, 64), np.float32),
         ((2, 2), ((1, 1), (0, 0)), False, (2, 3, 11, 101), np.float64),
         ((2, 2), ((1, 0), (0, 0)), True, (1, 4, 8, 77), np.float16),
         ((2, 2), ((0, 0), (0, 0)), False, (2, 2, 6, 130), np.uint8),
         ((2,), ((0, 0),), False, (2, 5, 99), np.int64)]


def _check_avg_ref(x, k, s, pads, ceil=False):
    """fastpool's average (both divisor rules) against the reference, float tolerance."""
    from reference import ref_avg_pool
    apool = {1: fastpool.avg_pool1d, 2: fastpool.avg_pool2d}[x.ndim - 2]
    tol = 2e-3 if x.dtype == np.float16 else 1e-6
    for incl in (True, False):
        got = apool(x, k, s, pads, ceil_mode=ceil, count_include_pad=incl)
        ref = ref_avg_pool(x, k, s, list(pads), ceil_mode=ceil, count_include_pad=incl)
        np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol,
                                   atol=tol)


@pytest.mark.parametrize("case", FUSED, ids=[f"f{i}" for i in range(len(FUSED))])
def test_fused_nonoverlapping_rows_against_reference(case, all_hot_serial):
    from reference import ref_max_pool
    k, pads, ceil, shape, dtype = case
    rng = np.random.default_rng(shape[-1])
    x = _any_input(rng, shape, dtype)
    pool = fastpool.max_pool1d if len(k) == 1 else fastpool.max_pool2d
    padding = tuple(pads)  # (before, after) pairs
    got = pool(x, k, k, padding, ceil_mode=ceil)
    np.testing.assert_array_equal(got, ref_max_pool(x, k, k, list(pads), ceil_mode=ceil)[0])
    if np.dtype(dtype).kind not in "iu":
        _check_avg_ref(x, k, k, padding, ceil)


# Adaptive windows of two sizes per axis (K or K + 1, K <= 8) on contiguous 1-d/2-d planes run
# the two-size kernels: row sums/maxima over whole padded rows, every K-wide run of them, then a
# pick per cell.  Sizes that do and do not divide, up- and downsampling, all dtypes.
ADAPTIVE = [((30, 30), (7, 7), np.float32, True), ((9, 40), (5, 9), np.float16, False),
            ((17, 6), (17, 12), np.float64, False), ((8, 31), (3, 31), np.uint8, False),
            ((61,), (9,), np.float32, False), ((14, 14), (6, 6), np.int64, False)]


@pytest.mark.parametrize("case", ADAPTIVE, ids=[f"{'x'.join(map(str, c[0]))}-"
                                               f"{'x'.join(map(str, c[1]))}-"
                                               f"{np.dtype(c[2]).name}" for c in ADAPTIVE])
def test_adaptive_two_size_kernels_against_reference(case, monkeypatch):
    from reference import ref_adaptive_avg_pool, ref_adaptive_max_pool
    sp, osz, dtype, parallel = case  # (the parallel kernels on one case: compiles are slow)
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append((op, a[2])) or
                        real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    if parallel:
        monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(sum(sp) * 31 + sum(osz))
    shape = (2, 3) + sp
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = (info.min, info.max) if info.bits <= 8 else (-10 ** 6, 10 ** 6)
        x = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
        x[rng.random(shape) < 0.04] = np.nan
        x[rng.random(shape) < 0.04] = -np.inf
    rank = len(sp)
    amax = getattr(fastpool, f"adaptive_max_pool{rank}d")
    aavg = getattr(fastpool, f"adaptive_avg_pool{rank}d")
    keep = x.copy()
    np.testing.assert_array_equal(amax(x, osz), ref_adaptive_max_pool(x, osz)[0])
    assert ("adaptive", parallel) in calls
    calls.clear()
    got = aavg(x, osz)
    assert ("adaptive", parallel) in calls
    want = ref_adaptive_avg_pool(x, osz)
    if np.dtype(dtype).kind in "iu":
        np.testing.assert_array_equal(got, want)
    else:
        tol = 2e-3 if dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                                   atol=tol)
        # against PyTorch as well (float64 there, so only the tolerance separates them)
        ref = getattr(F, f"adaptive_avg_pool{rank}d")(torch.from_numpy(x.astype(np.float64)),
                                                      osz).numpy()
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(x, keep)
    # out= and a strided view (not a contiguous plane: the row-wise kernels) give the same
    out = np.full_like(got, 3)
    assert aavg(x, osz, out=out) is out
    np.testing.assert_array_equal(out, got)
    xs = np.repeat(x, 2, axis=-1)[..., ::2]
    calls.clear()
    np.testing.assert_array_equal(amax(xs, osz), ref_adaptive_max_pool(x, osz)[0])
    assert "adaptive" not in [c[0] for c in calls]


def test_adaptive_two_size_kernels_only_for_their_windows():
    def spec(sp, osz):
        tab = fpf._adaptive_params("t", len(sp), sp, osz)[1]
        return fpf._adaptive_spec(len(sp), tab, osz)
    assert spec((30, 30), (7, 7)) == (5, 5)
    assert spec((12,), (4,)) == (1, 3)
    assert spec((16, 16), (5, 5)) == (4, 4)
    assert spec((10, 20), (20, 40)) == (1, 1)  # upsampling: windows of 1 or 2 cells
    assert spec((72, 72), (8, 8)) is None  # windows wider than 8
    assert spec((30, 30), (1, 1)) is None  # one window: the global kernels
    assert spec((4, 5, 6), (2, 2, 2)) is None  # 3-d
    assert spec((1200, 1100), (1199, 1000)) is None  # scratch past ADAPTIVE_MAX_SCRATCH
    assert spec((600, 1100), (599, 1000)) == (2, 2)


# (N, C, H, W, dtype, index dtype): 3x3 / stride 2 / padding 1 max with indices; even planes
# run make_max_tiled (the windows tile them), odd planes and 2x2 windows make_max
TILED_FWD = [(2, 3, 8, 10, np.float32, np.int64), (1, 2, 2, 2, np.float64, np.int64),
             (3, 5, 14, 6, np.float16, np.int32), (2, 80, 32, 26, np.float32, np.int64),
             (2, 40, 22, 30, np.float16, np.int64), (2, 3, 9, 10, np.float32, np.int64),
             (2, 3, 8, 11, np.float64, np.int32)]


@pytest.mark.parametrize("case", TILED_FWD, ids=[f"t{i}" for i in range(len(TILED_FWD))])
def test_tiled_max_with_indices(case, monkeypatch):
    """Which kernel runs, and with ties, NaN (the last NaN of a window wins) and -0.0 the
    values' bits and the indices of PyTorch, and of the channels-last kernel."""
    from fastpool import _dispatch
    N, C, H, W, dtype, idt = case
    calls = []
    real = _dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(N + C + H + W)
    x = rng.integers(-2, 3, (N, C, H, W)).astype(dtype)  # ties
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.1] = -0.0
    v, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True, index_dtype=idt)
    # (a 2 x 2 plane's one window holds the whole plane: the pair kernel's window)
    want = "pairs_index" if (H, W) == (2, 2) else "max_tiled"
    assert (want in calls) == (H % 2 == 0 and W % 2 == 0), calls
    xt = torch.from_numpy(x.astype(np.float32) if dtype == np.float16 else x)
    vt, it = F.max_pool2d(xt, 3, 2, 1, return_indices=True)
    assert i.dtype == idt and np.array_equal(i, it.numpy())
    np.testing.assert_array_equal(v.astype(np.float32), vt.numpy().astype(np.float32))
    assert np.signbit(v[v == 0]).tolist() == np.signbit(vt.numpy()[v == 0]).tolist()
    xc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    vc, ic = fastpool.max_pool2d(xc, 3, 2, 1, return_indices=True, channels_last=True,
                                 index_dtype=idt)
    assert np.ascontiguousarray(vc.transpose(0, 3, 1, 2)).tobytes() == v.tobytes()
    assert np.ascontiguousarray(ic.transpose(0, 3, 1, 2)).tobytes() == i.tobytes()
    if min(H, W) > 2:  # (on a 2 x 2 plane the two windows are the same one)
        calls.clear()
        fastpool.max_pool2d(x, 2, 2, return_indices=True)
        assert "max_tiled" not in calls


# Rows of windows reduced with explicit vectors (_cpu/_simd.py: 8 float32 / float16 outputs, 4
# float64 ones): the fused 2x2 windows (max and average, row-major taps), the vertical pass of
# 2- and 3-row windows, and the horizontal pass of 3x3 (max, average) and padded 2x2 windows
# (max).  Row lengths
# around the vector width exercise the last vector, which ends at the row's end (overlapping
# the one before).  Values must be the oracle's, and the bits
# (sign of zero and NaN included) those of the same taps in the same order: for fused rows a
# NumPy row-major scan, else the table-driven kernel (scalar, the same passes).
VROWS = [(k, s, p, ow) for (k, s, p) in ((2, 2, 0), (3, 2, 1), (2, 2, 1), (3, 2, 0))
         for ow in (3, 4, 8, 9, 21, 29, 37)]


def _bits(a):
    return a.view(f"u{a.itemsize}")


def _row_major_2x2(x, kind):
    """2x2 / stride 2 windows scanned row-major as the fused loops do: the NaN-propagating
    first max, or the sum from +0.0 divided by 4, in the compute type (float32 for float16)."""
    ct = np.float32 if x.dtype == np.float16 else x.dtype.type
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    taps = [x[..., a:H:2, b:W:2].astype(ct) for a in (0, 1) for b in (0, 1)]
    if kind == "max":
        m = taps[0]
        for v in taps[1:]:
            m = np.where((v > m) | np.isnan(v), v, m)
        return m.astype(x.dtype)
    m = ct(0) + taps[0]
    for v in taps[1:]:
        m = m + v
    return (m / ct(4)).astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", VROWS, ids=[f"k{c[0]}s{c[1]}p{c[2]}-ow{c[3]}" for c in VROWS])
def test_vector_rows_against_reference(case, dtype, all_hot_serial, monkeypatch):
    from reference import ref_avg_pool, ref_max_pool
    k, s, p, ow = case
    # (the vectors are in the parallel kernels only: run them on this small input)
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(ow * 10 + k + p)
    W = (ow - 1) * s + k - 2 * p + int(rng.integers(0, 2))  # odd and even widths
    x = _input(rng, (2, 3, 9, W), dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, flat.size // 4, replace=False)] = -0.0  # ties of -0.0 and +0.0
    flat[rng.choice(flat.size, flat.size // 4, replace=False)] = 0.0
    x[0, 0, :3] = -0.0  # whole windows of -0.0: a sum starts at +0.0 (+0.0, as PyTorch's)
    tol = 2e-3 if dtype == np.float16 else 1e-6
    got = fastpool.max_pool2d(x, k, s, p)
    assert got.shape[-1] == ow
    np.testing.assert_array_equal(got, ref_max_pool(x, (k, k), (s, s), [(p, p)] * 2)[0])
    avgs = [fastpool.avg_pool2d(x, k, s, p, count_include_pad=incl) for incl in (True, False)]
    for incl, a in zip((True, False), avgs):
        ref = ref_avg_pool(x, (k, k), (s, s), [(p, p)] * 2, count_include_pad=incl)
        np.testing.assert_allclose(a.astype(np.float64), ref.astype(np.float64), rtol=tol,
                                   atol=tol)
    if k == 2 and p == 0:  # fused rows when a vector fits, else the flat groups' order
        if ow >= (4 if dtype == np.float64 else 8):
            np.testing.assert_array_equal(_bits(got), _bits(_row_major_2x2(x, "max")))
            for a in avgs:
                np.testing.assert_array_equal(_bits(a), _bits(_row_major_2x2(x, "avg")))
    else:  # the table-driven kernel (serial): the same passes, scalar
        monkeypatch.setattr(fpf, "_HOT_SERIAL", frozenset())
        monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 1 << 62)
        monkeypatch.setattr(fpf, "_PLANS", {})
        np.testing.assert_array_equal(_bits(got), _bits(fastpool.max_pool2d(x, k, s, p)))
        for incl, a in zip((True, False), avgs):
            scalar = fastpool.avg_pool2d(x, k, s, p, count_include_pad=incl)
            np.testing.assert_array_equal(_bits(a), _bits(scalar))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_long_rows_2x2_max(dtype, monkeypatch):
    """Max k2s2 in the fused vectors on long rows (768 bytes and around, up to 2 KiB wide;
    an earlier kernel reduced such rows one at a time): the bits of a row-major scan, NaN,
    infinities and ties of -0.0 / +0.0 included, odd and even widths."""
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)  # (the vectors: parallel kernels only)
    isz = np.dtype(dtype).itemsize
    rng = np.random.default_rng(isz)
    for W in (768 // isz - 1, 768 // isz, 768 // isz + 17, 2048 // isz + 3):
        x = _input(rng, (2, 3, 7, W), dtype)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, flat.size // 4, replace=False)] = -0.0
        flat[rng.choice(flat.size, flat.size // 4, replace=False)] = 0.0
        flat[rng.choice(flat.size, 9, replace=False)] = np.nan
        flat[rng.choice(flat.size, 5, replace=False)] = np.inf
        got = fastpool.max_pool2d(x, 2, 2)
        assert _bits(got).tobytes() == _bits(_row_major_2x2(x, "max")).tobytes(), (W, dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_integer_rows_2x2_max(dtype, monkeypatch):
    """Integer max k2s2 in the parallel kernel (one row at a time, vectors of pair maxima):
    against a NumPy maximum over the four taps, the extreme values of the type included (an
    unsigned compare for unsigned types), rows shorter than a vector, of at least one, and
    longer ones whose last vector overlaps the one before; odd widths and heights."""
    from fastpool._cpu.separable import FLAT_MAX_ROW
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    info = np.iinfo(dtype)
    lanes = 32 // np.dtype(dtype).itemsize
    rng = np.random.default_rng(np.dtype(dtype).itemsize + 3 * (info.min < 0))
    # (rows of at most FLAT_MAX_ROW cells take the flat groups: the vectors need longer ones)
    wide = max(lanes, FLAT_MAX_ROW // 2 + 1)
    for ow in (lanes - 1, wide, wide + 3, wide + lanes + 5):
        W = 2 * ow + int(rng.integers(0, 2))
        x = rng.integers(info.min, info.max, size=(2, 3, 7, W), endpoint=True, dtype=dtype)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, 7, replace=False)] = info.max
        flat[rng.choice(flat.size, 7, replace=False)] = info.min
        got = fastpool.max_pool2d(x, 2, 2)
        t = x[..., :6, :2 * ow]
        want = np.maximum(np.maximum(t[..., 0::2, 0::2], t[..., 0::2, 1::2]),
                          np.maximum(t[..., 1::2, 0::2], t[..., 1::2, 1::2]))
        assert got.dtype == dtype and np.array_equal(got, want), (dtype, ow)


# Parallel non-overlapping windows (KW == SW) whose every row is fused get a kernel holding the
# fused rows alone (``separable.fused_rows``); padding along H, ceil-mode partial windows,
# padded columns and rows short enough for the flat groups keep the full kernel.  Integer inputs
# get the kernel with the integer vectors only, float ones the float vectors only.
FUSED_ONLY = [  # (shape, kernel, pads per dim, ceil, fused only?); stride = kernel
    ((2, 3, 9, 64), (2, 2), ((0, 0), (0, 0)), False, True),
    ((2, 3, 8, 101), (2, 2), ((0, 0), (0, 0)), False, True),  # odd width: a column left out
    ((1, 2, 7, 99), (2, 2), ((0, 0), (0, 0)), True, False),   # ceil: partial row and column
    ((2, 3, 9, 64), (2, 2), ((1, 1), (0, 0)), False, False),  # padding along H
    ((2, 3, 9, 64), (2, 2), ((0, 0), (1, 0)), False, False),  # ... along W
    ((2, 3, 9, 40), (2, 2), ((0, 0), (0, 0)), False, False),  # 20 outputs: the flat groups
    ((2, 2, 6, 75), (3, 3), ((0, 0), (0, 0)), False, False),  # not a hot window: tables first
    ((3, 4, 77), (2,), ((0, 0),), False, True),               # 1-d
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8, np.int16])
@pytest.mark.parametrize("case", FUSED_ONLY, ids=[f"c{i}" for i in range(len(FUSED_ONLY))])
def test_fused_only_kernels(case, dtype, monkeypatch):
    from reference import ref_max_pool
    shape, k, pads, ceil, fonly = case
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(shape[-1] + np.dtype(dtype).itemsize)
    x = _any_input(rng, shape, dtype)
    pool = fastpool.max_pool1d if len(k) == 1 else fastpool.max_pool2d
    made = _spy_kernels(monkeypatch)
    got = pool(x, k, k, pads, ceil_mode=ceil)
    want = ref_max_pool(x, k, k, list(pads), ceil_mode=ceil)[0]
    np.testing.assert_array_equal(_bits(got), _bits(want))
    # (the plan's first kernel: one outside the hot set is followed by its specialised one)
    sep = [m for m in made if m[0] == "separable"]
    assert sep and sep[0][3], made  # (parallel)
    flags = sep[0][8:]  # (channels_last, fused_only, integer), trailing defaults left out
    assert (flags[1:2] == (True,)) == fonly, (case, sep[0])
    assert (flags[2:3] == (True,)) == (np.dtype(dtype).kind in "iu"), (case, sep[0])
    if np.dtype(dtype).kind not in "iu":
        _check_avg_ref(x, k, k, pads, ceil)


# Channels-first float rows at least a vector wide (input row and the columns the horizontal
# vectors cover) get the kernel without scalar loops after the vectors (``wide``); narrower
# rows, average rows with few interior columns and non-contiguous inputs keep them.
WIDE = [  # (shape, kernel, stride, padding, strided view?)
    ((2, 3, 9, 37), 3, 2, 1, False),
    ((2, 3, 12, 15), 3, 2, 1, False),   # 8 outputs: one float32 vector exactly
    ((2, 3, 12, 13), 3, 2, 1, False),   # 7 outputs: narrower than a float32 vector
    ((2, 3, 11, 5), 3, 2, 1, False),    # 3 outputs: narrower than any vector
    ((2, 3, 11, 41), 3, 2, 1, True),    # a strided input
    ((1, 3, 10, 35), 2, 2, 1, False),   # padded 2x2: not fused
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", WIDE, ids=[f"w{i}" for i in range(len(WIDE))])
def test_wide_rows_kernels(case, dtype, monkeypatch):
    from reference import ref_max_pool
    shape, k, s, p, strided = case
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(shape[-1] + np.dtype(dtype).itemsize)
    x = _input(rng, shape, dtype)
    if strided:
        x = _input(rng, shape[:-1] + (2 * shape[-1],), dtype)[..., ::2]
    got = fastpool.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(got, ref_max_pool(x, k, s, [(p, p)] * 2)[0])
    flags = [m for m in made if m[0] == "separable"][-1][8:]
    lanes = 4 if dtype == np.float64 else 8
    ow = (shape[-1] + 2 * p - k) // s + 1
    want = not strided and ow >= lanes and shape[-1] >= lanes
    assert (flags[3:4] == (True,)) == want, (case, dtype, flags)
    _check_avg_ref(rng.standard_normal(x.shape).astype(dtype), k, s, ((p, p), (p, p)))


def _row_major_max_2x2x2(x):
    """2x2x2 / stride 2 max windows of a float (N, C, D, H, W) input scanned row-major: the
    NaN-propagating first max, in the compute type (float32 for float16)."""
    ct = np.float32 if x.dtype == np.float16 else x.dtype.type
    D, H, W = (n // 2 * 2 for n in x.shape[2:])
    taps = [x[:, :, a:D:2, b:H:2, c:W:2].astype(ct)
            for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    m = taps[0]
    for v in taps[1:]:
        m = np.where((v > m) | np.isnan(v), v, m)
    return m.astype(x.dtype)


def _zeros_and_nan(rng, shape, dtype):
    """A random input whose float cells are a quarter -0.0, a quarter +0.0 and five NaN, and
    its channels-last copy."""
    x = _any_input(rng, shape, dtype)
    if np.dtype(dtype).kind == "f":
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, flat.size // 4, replace=False)] = -0.0
        flat[rng.choice(flat.size, flat.size // 4, replace=False)] = 0.0
        flat[rng.choice(flat.size, 5, replace=False)] = np.nan
    return x, np.ascontiguousarray(np.moveaxis(x, 1, -1))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_channels_last_fused_rows_3d_max(dtype, monkeypatch):
    """Channels-last 3-d max over non-overlapping windows in the parallel kernel: every output
    C-vector reduces its 2x2x2 taps from the input in row-major order (the bits of PyTorch's
    scan: ties of -0.0 / +0.0 keep the first, NaN wins), the kernel of fused rows alone;
    padded rows take the scratch-row passes.  The 3-d average keeps its separable passes."""
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(np.dtype(dtype).itemsize + 90)
    for shape, pad in (((2, 5, 7, 9, 13), 0), ((1, 16, 4, 8, 30), 0), ((2, 3, 5, 7, 11), 1),
                       ((1, 64, 5, 4, 9), 0), ((1, 64, 4, 5, 7), 1)):
        x, xcl = _zeros_and_nan(rng, shape, dtype)
        got = np.moveaxis(fastpool.max_pool3d(xcl, 2, 2, pad, channels_last=True), -1, 1)
        flags = [m for m in made if m[0] == "separable"][-1][8:]
        assert flags[:2] == (True, True) if pad == 0 else flags[:2] in ((True,), (True, False)),\
            (shape, pad, flags)
        assert (flags[3:4] == (True,)) == (shape[1] * np.dtype(dtype).itemsize >= 64)
        want = torch.from_numpy(x.astype(np.float32) if dtype == np.float16 else x)
        if np.dtype(dtype).kind in "iu":
            want = want.to(torch.float64)
        want = F.max_pool3d(want, 2, 2, pad).numpy().astype(dtype)
        np.testing.assert_array_equal(got, want)
        if pad == 0 and np.dtype(dtype).kind == "f":
            np.testing.assert_array_equal(_bits(got), _bits(_row_major_max_2x2x2(x)))
    fastpool.avg_pool3d(np.ascontiguousarray(np.moveaxis(_any_input(rng, (1, 4, 4, 6, 8),
                                                                    np.float32), 1, -1)),
                        2, 2, channels_last=True)
    assert [m for m in made if m[0] == "separable"][-1][8:10] in ((True,), (True, False))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int16])
def test_channels_first_fused_rows_3d_max(dtype, monkeypatch):
    """Channels-first 2x2x2 max at stride 2 in the parallel kernels: whole undilated windows
    of float inputs reduce each depth slice's 2x2 windows in vectors and fold the second
    slice's into the first's (make_cube_max); with dilation along depth and rows, rows whose
    windows are all whole reduce vectors of outputs from their four input rows (two depth
    slices, two rows); both in row-major tap order, the last vector overlapping the one
    before (odd widths); ties of -0.0 / +0.0 keep the first, NaN wins.  Padding and ceil mode
    (partial windows: the separable passes), integers (the scalar fused loop)."""
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(np.dtype(dtype).itemsize + 190)
    cases = (((2, 3, 5, 7, 37), {}), ((1, 4, 4, 6, 64), {}), ((2, 3, 7, 5, 9), {}),
             ((2, 2, 7, 9, 50), {"dilation": (2, 2, 1)}),
             ((1, 3, 5, 5, 41), {"ceil_mode": True}), ((1, 2, 4, 6, 36), {"padding": 1}))
    for shape, kw in cases:
        x, _ = _zeros_and_nan(rng, shape, dtype)
        got = fastpool.max_pool3d(x, 2, 2, **kw)
        if not kw and np.dtype(dtype).kind == "f":
            # whole undilated windows: the depth slices in turn (make_cube_max; 9 wide: the
            # scalar loop, 4 outputs a row)
            assert made[-1] == ("cube_max", "cpu", "max", True)
        else:
            assert [m for m in made if m[0] == "separable"][-1][1:6] == \
                ("cpu", "max", True, 2, 2)
        want = torch.from_numpy(x.astype(np.float32) if dtype == np.float16 else x)
        if np.dtype(dtype).kind in "iu":
            want = want.to(torch.float64)
        want = F.max_pool3d(want, 2, 2, **kw).numpy().astype(dtype)
        np.testing.assert_array_equal(got, want, err_msg=f"{shape} {kw}")
        if not kw and np.dtype(dtype).kind == "f":
            np.testing.assert_array_equal(_bits(got), _bits(_row_major_max_2x2x2(x)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8, np.int16])
def test_channels_last_fused_rows(dtype, monkeypatch):
    """Channels-last max and average over non-overlapping windows in the parallel kernel:
    rows whose windows are all whole reduce each output C-vector from the input in row-major
    tap order (max: the bits of PyTorch's scan, ties of -0.0 / +0.0 keep the first, NaN wins;
    average: +0 plus the taps in that order, divided); padded or ceil-mode rows take the
    scratch-row passes.  Odd sizes, several channel counts."""
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(np.dtype(dtype).itemsize + 40)
    for shape, pad, ceil in (((2, 5, 9, 13), 0, False), ((1, 16, 8, 30), 0, False),
                             ((2, 3, 7, 11), 1, False), ((1, 7, 9, 9), 0, True),
                             ((2, 64, 7, 10), 0, False), ((1, 64, 7, 9), 0, True)):
        x, xcl = _zeros_and_nan(rng, shape, dtype)
        got = np.moveaxis(fastpool.max_pool2d(xcl, 2, 2, pad, ceil_mode=ceil,
                                              channels_last=True), -1, 1)
        # (channels_last, fused_only, ...): the kernel of fused rows alone for whole windows
        flags = [m for m in made if m[0] == "separable"][-1][8:]
        assert flags[:2] == (True, pad == 0 and not ceil) or \
            (flags == (True,) and (pad or ceil)), (shape, pad, ceil, flags)
        # C-vectors of a cache line or more: the window's rows folded in turn (wide)
        rowwise = shape[1] * np.dtype(dtype).itemsize >= 64
        assert (flags[3:4] == (True,)) == rowwise, (shape, flags)
        want = torch.from_numpy(x.astype(np.float32) if dtype == np.float16 else x)
        if np.dtype(dtype).kind in "iu":
            want = want.to(torch.float64)
        want = F.max_pool2d(want, 2, 2, pad, ceil_mode=ceil).numpy().astype(dtype)
        if pad == 0 and not ceil and np.dtype(dtype).kind == "f":
            np.testing.assert_array_equal(_bits(got), _bits(_row_major_2x2(x, "max")))
        np.testing.assert_array_equal(got, want)
        if np.dtype(dtype).kind == "f":  # (NaN in the same cells)
            assert np.array_equal(np.isnan(got), np.isnan(want))
            # the average of random values: row-major sums from +0 (the fused rows' order)
            xr = rng.standard_normal(shape).astype(dtype)
            xrcl = np.ascontiguousarray(np.moveaxis(xr, 1, -1))
            for incl in (True, False):
                a = np.moveaxis(fastpool.avg_pool2d(xrcl, 2, 2, pad, ceil_mode=ceil,
                                                    count_include_pad=incl,
                                                    channels_last=True), -1, 1)
                if pad == 0 and not ceil:
                    np.testing.assert_array_equal(_bits(a), _bits(_row_major_2x2(xr, "avg")))
                t = F.avg_pool2d(torch.from_numpy(xr.astype(np.float64)), 2, 2, pad,
                                 ceil_mode=ceil, count_include_pad=incl).numpy()
                tol = 2e-3 if dtype == np.float16 else 1e-6
                np.testing.assert_allclose(a.astype(np.float64), t, rtol=tol, atol=tol)


# 1-d k3s2 / k2s2 rows in the parallel kernels: without padding every window lies inside the
# row and the horizontal vectors read the input row itself (no scratch copy); with padding or
# ceil mode the padded scratch row.  The bits must be the table-driven kernel's.
ROWS1 = [(k, p, ceil, ow) for (k, p, ceil) in ((3, 0, False), (3, 1, False), (3, 0, True),
                                               (2, 0, False))
         for ow in (3, 4, 8, 9, 21, 37)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", ROWS1, ids=[f"k{c[0]}p{c[1]}{'c' if c[2] else ''}-ow{c[3]}"
                                             for c in ROWS1])
def test_vector_rows_1d_against_reference(case, dtype, monkeypatch):
    from reference import ref_avg_pool, ref_max_pool
    k, p, ceil, ow = case
    rng = np.random.default_rng(ow * 10 + k + p + ceil)
    W = (ow - 1) * 2 + k - 2 * p + int(rng.integers(0, 2))
    x = _input(rng, (2, 5, W), dtype)
    x.reshape(-1)[rng.choice(x.size, x.size // 4, replace=False)] = -0.0
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    got = fastpool.max_pool1d(x, k, 2, p, ceil_mode=ceil)
    avgs = [fastpool.avg_pool1d(x, k, 2, p, ceil_mode=ceil, count_include_pad=incl)
            for incl in (True, False)]
    np.testing.assert_array_equal(got, ref_max_pool(x, (k,), (2,), [(p, p)], ceil_mode=ceil)[0])
    tol = 2e-3 if dtype == np.float16 else 1e-6
    for incl, a in zip((True, False), avgs):
        ref = ref_avg_pool(x, (k,), (2,), [(p, p)], ceil_mode=ceil, count_include_pad=incl)
        np.testing.assert_allclose(a.astype(np.float64), ref.astype(np.float64), rtol=tol,
                                   atol=tol)
    monkeypatch.setattr(fpf, "_HOT_SERIAL", frozenset())  # the table-driven kernel, serial
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 1 << 62)
    monkeypatch.setattr(fpf, "_PLANS", {})
    np.testing.assert_array_equal(_bits(got), _bits(fastpool.max_pool1d(x, k, 2, p,
                                                                        ceil_mode=ceil)))
    for incl, a in zip((True, False), avgs):
        scalar = fastpool.avg_pool1d(x, k, 2, p, ceil_mode=ceil, count_include_pad=incl)
        np.testing.assert_array_equal(_bits(a), _bits(scalar))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_vector_rows_parallel(dtype):
    """The parallel kernels' vector rows (k2s2 fused, k3s2p1 horizontal) on a large input."""
    rng = np.random.default_rng(7)
    x = _input(rng, (4, 16, 66, 70), dtype)
    for k, s, p in ((2, 2, 0), (3, 2, 1)):
        got = fastpool.max_pool2d(x, k, s, p)
        ref = F.max_pool2d(torch.from_numpy(x.astype(np.float32)), k, s, p).numpy().astype(dtype)
        np.testing.assert_array_equal(got, ref)
    got = fastpool.avg_pool2d(x, 2, 2)
    ref = F.avg_pool2d(torch.from_numpy(x.astype(np.float64)), 2, 2).numpy()
    tol = 2e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_streamed_1d_rows(dtype):
    """1-d rows whose result reaches separable.ROW_STREAM_MIN_BYTES are built in a scratch row
    and streamed out: the same bits as the plain stores of smaller calls (one batch item at a
    time), and PyTorch's max."""
    from fastpool._cpu import separable as S
    rng = np.random.default_rng(11)
    n = 4
    W = 2 * (S.ROW_STREAM_MIN_BYTES // (n * 16 * np.dtype(dtype).itemsize)) + 7  # (odd rows)
    x = _input(rng, (n, 16, W), dtype)
    x.reshape(-1)[rng.choice(x.size, 64, replace=False)] = np.nan
    for k in (3, 2):
        got = fastpool.max_pool1d(x, k, 2)
        assert got.nbytes >= S.ROW_STREAM_MIN_BYTES
        ref = F.max_pool1d(torch.from_numpy(x.astype(np.float32)), k, 2).numpy().astype(dtype)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(
            _bits(got), _bits(np.concatenate([fastpool.max_pool1d(x[i:i + 1], k, 2)
                                              for i in range(n)])))
    got = fastpool.avg_pool1d(x, 3, 2)
    parts = np.concatenate([fastpool.avg_pool1d(x[i:i + 1], 3, 2) for i in range(n)])
    np.testing.assert_array_equal(_bits(got), _bits(parts))


# Small calls of 2x2 windows at stride 2 without padding (separable.make_pairs, serial): every
# window whole, an odd last row or column left out; float rows in vectors (the last one
# overlapping the one before), narrower rows and integers scalar.  Bits must equal a NumPy
# row-major scan (max: NaN-propagating first max; average: +0.0 plus the taps over 4).
PAIRS = [((1, 16, 32, 32), np.float32), ((2, 3, 9, 17), np.float64), ((1, 2, 7, 38), np.float16),
         ((3, 1, 2, 2), np.float32), ((2, 2, 13, 15), np.int32), ((1, 4, 6, 40), np.uint8),
         ((1, 3, 5, 9), np.float64)]


@pytest.mark.parametrize("case", PAIRS, ids=[f"{'x'.join(map(str, c[0]))}-{np.dtype(c[1]).name}"
                                             for c in PAIRS])
def test_pairs_kernel_against_reference(case, monkeypatch):
    from reference import ref_avg_pool, ref_max_pool
    shape, dtype = case
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(sum(shape))
    if np.dtype(dtype).kind in "iu":
        x = rng.integers(0, 100, size=shape).astype(dtype)
    else:
        x = _input(rng, shape, dtype)
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, flat.size // 4, replace=False)] = -0.0
        flat[rng.choice(flat.size, flat.size // 8, replace=False)] = 0.0
    keep = x.copy()
    got = fastpool.max_pool2d(x, 2, 2)
    np.testing.assert_array_equal(got, ref_max_pool(x, (2, 2), (2, 2), [(0, 0)] * 2)[0])
    avg = fastpool.avg_pool2d(x, 2, 2)
    ref = ref_avg_pool(x, (2, 2), (2, 2), [(0, 0)] * 2)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_array_equal(_bits(got), _bits(_row_major_2x2(x, "max")))
        np.testing.assert_array_equal(_bits(avg), _bits(_row_major_2x2(x, "avg")))
        t = torch.from_numpy(x.astype(np.float32))
        np.testing.assert_array_equal(got.astype(np.float32), F.max_pool2d(t, 2, 2).numpy())
        over = fastpool.avg_pool2d(x, 2, 2, divisor_override=3)
        want = F.avg_pool2d(torch.from_numpy(x.astype(np.float64)), 2, 2, divisor_override=3)
        tol = 2e-3 if dtype == np.float16 else 1e-6
        np.testing.assert_allclose(over.astype(np.float64), want.numpy(), rtol=tol, atol=tol)
    else:
        np.testing.assert_array_equal(avg, ref)
    np.testing.assert_array_equal(x, keep)
    assert set(calls) == {"pairs"}
    # out=, and a padded or ceil-mode call (not every window whole) takes the row kernels
    out = np.full_like(got, 7)
    assert fastpool.max_pool2d(x, 2, 2, out=out) is out
    np.testing.assert_array_equal(out, got)
    calls.clear()
    fastpool.max_pool2d(x, 2, 2, 1)
    if shape[-1] % 2 or shape[-2] % 2:
        fastpool.max_pool2d(x, 2, 2, ceil_mode=True)
    assert "pairs" not in calls


# The same windows with indices (separable.make_pairs_index, float inputs, serial and parallel):
# values and int64 / int32 plane positions as PyTorch's (first max, last NaN, row-major).
PAIRS_INDEX = [((1, 16, 32, 32), np.float32), ((2, 3, 9, 17), np.float64),
               ((1, 2, 7, 38), np.float16), ((3, 1, 2, 2), np.float32),
               ((1, 3, 5, 9), np.float64), ((2, 5, 23, 41), np.float32)]


@pytest.mark.parametrize("par", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("case", PAIRS_INDEX, ids=[
    f"{'x'.join(map(str, c[0]))}-{np.dtype(c[1]).name}" for c in PAIRS_INDEX])
def test_pairs_index_kernel_against_reference(case, par, monkeypatch):
    from reference import ref_max_pool
    shape, dtype = case
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0 if par else 1 << 62)
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(sum(shape) + par)
    x = _input(rng, shape, dtype)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, flat.size // 4, replace=False)] = -0.0
    flat[rng.choice(flat.size, 2, replace=False)] = np.nan  # (NaN, and a later NaN)
    keep = x.copy()
    want, wi = ref_max_pool(x, (2, 2), (2, 2), [(0, 0)] * 2)
    t = torch.from_numpy(x.astype(np.float32))
    tv, ti = F.max_pool2d(t, 2, 2, return_indices=True)
    for idt in (np.int64, np.int32):
        got, gi = fastpool.max_pool2d(x, 2, 2, return_indices=True, index_dtype=idt)
        assert gi.dtype == idt
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(gi, wi)
        np.testing.assert_array_equal(gi, ti.numpy())
        np.testing.assert_array_equal(got.astype(np.float32), tv.numpy())
        # the bits of the values: the first max (sign of zero) or the last NaN, row-major
        np.testing.assert_array_equal(_bits(got), _bits(_row_major_2x2(x, "max")))
    np.testing.assert_array_equal(x, keep)
    assert set(calls) == {"pairs_index"}


def test_scratch_and_view_intrinsics():
    """``new_full`` / ``new_empty`` / ``new_zeros`` / ``flat_view`` (the kernels' scratch
    arrays and flat views, without NumPy's overloads) against NumPy."""
    from numba import njit
    from fastpool._cpu._intrinsics import flat_view, new_empty, new_full, new_zeros

    @njit
    def scratch(n, v, like):
        e = new_empty(n, like.dtype)
        e[:] = v
        return new_full(n, v), e, new_zeros(n, np.int32), new_zeros(n, like)

    @njit
    def view(a):
        return flat_view(a)

    @njit
    def view_a(a):
        return flat_view(a[::1])  # layout "A": checked at run time

    rng = np.random.default_rng(3)
    like = rng.standard_normal((2, 3)).astype(np.float32)
    for n, v in ((7, np.float32(-1.5)), (0, 2.25), (13, np.int64(-4)), (5, True)):
        f, e, z32, zl = scratch(n, v, like)
        want = np.full(n, v)
        assert f.dtype == want.dtype and np.array_equal(f, want), (n, v)
        assert e.dtype == np.float32 and np.array_equal(e, np.full(n, v, np.float32))
        assert z32.dtype == np.int32 and zl.dtype == np.float32
        assert not z32.any() and not zl.any() and z32.size == zl.size == n
    with pytest.raises(ValueError, match="negative"):
        scratch(-1, 1.0, like)
    a = rng.standard_normal((3, 4, 5))
    for arr in (a, a[1], a[1:2]):
        flat = view(arr)
        assert flat.shape == (arr.size,) and np.array_equal(flat, arr.reshape(-1))
        flat[0] = 99.0  # the same memory
        assert arr.reshape(-1)[0] == 99.0
        assert np.array_equal(view_a(arr), arr.reshape(-1))
    kept = view(rng.standard_normal((4, 4)).copy())  # the view keeps its base alive
    assert kept.base is not None and kept.size == 16
    for bad in (a[:, 1], a[:, :, ::2], a[::2]):
        with pytest.raises(ValueError, match="not C-contiguous"):
            view_a(bad)


@pytest.mark.parametrize("avx2", [True, False], ids=["permute", "selects"])
def test_vspread_intrinsic(avx2, monkeypatch):
    """``vspread`` (a vector of picks from a short row) against NumPy: with AVX2's permute and
    with the select chain of other CPUs; indices out of range, -0.0 and NaN included."""
    from numba import njit
    from fastpool._cpu import _simd
    real = _simd._avx2
    monkeypatch.setattr(_simd, "_avx2", lambda: avx2 and real())
    rng = np.random.default_rng(11)
    for dtype in (np.float32, np.float64):
        L = _simd.lanes(np.dtype(dtype).itemsize)

        @njit
        def spread(src, s0, n, idx, k, dst, first):  # one row of idx, a vector at a time
            for c in range(0, idx.shape[1], L):
                _simd.vspread(src, s0, n, idx, (k, c), dst, c, first, None)

        for n in (1, 3, L - 1, L):
            src = rng.standard_normal(2 * L + 5).astype(dtype)
            src[[1, 4]] = -0.0
            src[2] = np.nan
            idx = rng.integers(-2, L + 3, size=(2, 3 * L)).astype(np.int32)
            idx[0, :n] = np.arange(n)
            for first in (True, False):
                for s0 in (0, 3):
                    old = rng.standard_normal(3 * L).astype(dtype)
                    old[:4] = -0.0
                    dst = old.copy()
                    spread(src, s0, n, idx, 1, dst, first)
                    ok = (idx[1] >= 0) & (idx[1] < n)
                    pick = np.where(ok, src[s0 + np.clip(idx[1], 0, n - 1)], dtype(0))
                    want = (np.zeros_like(old) if first else old) + pick
                    assert dst.tobytes() == want.tobytes(), (dtype, n, first, s0, avx2)


# other regular windows of large calls: (rank, kernel, stride, padding, ceil_mode, layout,
# moves on?): channels-last windows and non-overlapping windows of several rows too wide to
# fuse keep the table-driven kernel
WARM_CASES = [
    (1, 4, 4, 0, False, "cf", True), (1, 2, 1, 0, False, "cf", True),
    (2, (2, 1), (2, 1), 0, False, "cf", True), (2, 4, 2, 1, True, "cf", True),
    (2, 3, 3, 1, False, "cl", False), (2, (1, 3), (1, 3), 0, True, "cf", True),
    (3, (2, 1, 2), (2, 1, 2), 0, False, "cl", False),
    (2, (5, 3), (2, 1), (2, 1), False, "cf", True), (3, (2, 2, 1), (2, 2, 1), 0, True, "cf", False),
    (2, 5, 5, 0, False, "cf", False), (3, 3, 3, 1, True, "cf", False),
    # wide 1-row windows: two stages (16 = 8 x 2, 12 = 4 x 3, 24 = 8 x 3), a prime width (the
    # passes), ceil mode's partial window, a strided batch of rows
    (1, 16, 16, 0, False, "cf", True), (1, 12, 12, 0, True, "cf", True),
    (1, 11, 11, 0, False, "cf", True), (2, (1, 24), (1, 24), 0, False, "cf", True),
    (1, 32, 32, 3, True, "cf", True),
]


@pytest.mark.parametrize("case", WARM_CASES, ids=[f"w{i}" for i in range(len(WARM_CASES))])
def test_large_calls_move_on_to_specialised_kernels_of_other_windows(case, monkeypatch):
    """A large call of a regular window outside the hot set starts on the table-driven kernel
    and moves on to its specialised one (after SPECIALISE_AFTER_LARGE calls; here at once;
    channels-first windows that gain from it, see ``functional._warm_window``):
    max (NaN and ties of -0.0 / +0.0, against PyTorch and the table-driven kernel) and
    average (against PyTorch, and as close to the table-driven kernel as its order of
    additions allows), odd sizes, padding and ceil mode, both layouts."""
    rank, k, s, p, ceil, layout, moves = case
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(rank * 100 + len(made) + WARM_CASES.index(case))
    shape = {1: (2, 3, 203), 2: (2, 5, 13, 99), 3: (1, 3, 5, 9, 14)}[rank]
    x, xcl = _zeros_and_nan(rng, shape, np.float32)
    fmax, favg, tmax, tavg = POOL[rank]
    cl = layout == "cl"
    xin = xcl if cl else x

    def run(fn):
        got = fn(xin)
        return np.ascontiguousarray(np.moveaxis(got, -1, 1)) if cl else got
    kw = dict(padding=p, ceil_mode=ceil)
    results = {}
    for after in (10 ** 9, 0):  # the table-driven kernel, then the specialised one at once
        monkeypatch.setattr(fpf, "SPECIALISE_AFTER_LARGE", after)
        monkeypatch.setattr(fpf, "_PLANS", {})
        made.clear()
        m = run(lambda a: fmax(a, k, s, channels_last=cl, **kw))
        v = run(lambda a: favg(a, k, s, channels_last=cl, count_include_pad=False, **kw))
        consts = [t[4:8] for t in made if t[0] == "separable"]
        results[after] = (m, v, consts)
    m0, v0, c0 = results[10 ** 9]
    m1, v1, c1 = results[0]
    assert (0, 0, 0, 0) in c0 and any(c != (0, 0, 0, 0) for c in c1) == moves, (c0, c1)
    want = tmax(torch.from_numpy(x), k, s, **kw).numpy()
    np.testing.assert_array_equal(m1, want)  # (values: NaN where PyTorch's, -0.0 == +0.0)
    np.testing.assert_array_equal(m0, m1)
    x2 = np.where(np.isnan(x), 1.0, x).astype(np.float32)
    want = tavg(torch.from_numpy(x2), k, s, count_include_pad=False, **kw).numpy()
    np.testing.assert_array_equal(np.isnan(v1), np.isnan(v0))
    np.testing.assert_allclose(v1, v0, rtol=1e-6, atol=1e-6, equal_nan=True)
    monkeypatch.setattr(fpf, "_PLANS", {})
    xa = np.ascontiguousarray(np.moveaxis(x2, 1, -1)) if cl else x2
    got = favg(xa, k, s, channels_last=cl, count_include_pad=False, **kw)
    got = np.moveaxis(got, -1, 1) if cl else got
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layout", ["cf", "cl"])
def test_adaptive_windows_of_one_size_and_wide_1d_averages(layout, monkeypatch):
    """Adaptive windows where every input size is a multiple of the output size are a regular
    window (stride the window): large channels-first calls take the separable kernels of that
    window (hot, or moving on); 1-d averages of two window sizes up to 16 take the two-size
    adaptive kernel; with indices, and channels-last, the usual kernels.  Against PyTorch
    (values, NaN, indices)."""
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "SPECIALISE_AFTER_LARGE", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(77 if layout == "cf" else 78)
    cl = layout == "cl"
    cases = [((2, 3, 96), 6, ("separable", (1, 1, 16, 16))),   # 16 = 8 x 2, two stages
             ((2, 3, 90), 10, ("separable", (1, 1, 9, 9))),    # 9 = 3 x 3
             ((2, 3, 14, 22), (7, 11), ("separable", (1, 2, 2, 2))),  # the hot 2x2
             ((2, 3, 203), 17, ("adaptive", None))]            # windows of 11 and 12
    for shape, osz, (want_kernel, consts) in cases:
        x, xcl = _zeros_and_nan(rng, shape, np.float32)
        nd = len(shape) - 2
        xin = xcl if cl else x
        tx = torch.from_numpy(x)
        for kind in ("max", "avg"):
            made.clear()
            fn = getattr(fastpool, f"adaptive_{kind}_pool{nd}d")
            got = fn(xin, osz, channels_last=cl)
            got = np.moveaxis(got, -1, 1) if cl else got
            want = getattr(F, f"adaptive_{kind}_pool{nd}d")(tx, osz).numpy()
            if kind == "max":
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)
            names = [(m[0], m[4:8] if m[0] == "separable" else None) for m in made]
            if not cl and (kind == "avg" or want_kernel == "separable"):
                assert (want_kernel, consts) in names, (shape, osz, kind, names)
        vals, idx = getattr(fastpool, f"adaptive_max_pool{nd}d")(xin, osz, True, channels_last=cl)
        tv, ti = getattr(F, f"adaptive_max_pool{nd}d")(tx, osz, True)
        vals = np.moveaxis(vals, -1, 1) if cl else vals
        idx = np.moveaxis(idx, -1, 1) if cl else idx
        np.testing.assert_array_equal(vals, tv.numpy())
        np.testing.assert_array_equal(idx, ti.numpy())


def _scan_1d(x, k, s, p, d, kind):
    """1-d windows (k taps d apart, stride s, padding p each side, floor mode) scanned in tap
    order over their cells inside the row: the NaN-propagating first max, or the sum from
    +0.0 over the cell count (``count_include_pad=False``), in the compute type."""
    ct = np.float32 if x.dtype == np.float16 else x.dtype.type
    W = x.shape[-1]
    OW = (W + 2 * p - d * (k - 1) - 1) // s + 1
    out = np.empty(x.shape[:-1] + (OW,), ct)
    for o in range(OW):
        cells = [o * s - p + c * d for c in range(k) if 0 <= o * s - p + c * d < W]
        if kind == "max":
            m = x[..., cells[0]].astype(ct)
            for w in cells[1:]:
                v = x[..., w].astype(ct)
                m = np.where((v > m) | np.isnan(v), v, m)
        else:
            m = np.zeros(x.shape[:-1], ct)
            for w in cells:
                m = m + x[..., w].astype(ct)
            m = m / ct(len(cells))
        out[..., o] = m
    return out.astype(x.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int16])
def test_table_driven_rows_of_dilated_windows(dtype, monkeypatch):
    """Windows dilated along W run the table-driven kernel, whose whole windows reduce in
    vectors of outputs (strides 1 to 4, 1-row windows without padding straight from the
    input row) or tap by tap (other strides, integers): the bits of an in-order scan (max:
    NaN wins, ties of -0.0 / +0.0 keep the first; average: the sum from +0 over the cell
    count), PyTorch's max, for widths that are no multiple of a vector."""
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(np.dtype(dtype).itemsize + 300)
    floats = np.dtype(dtype).kind == "f"
    for W, k, s, d, p in ((37, 3, 1, 2, 0), (100, 3, 2, 2, 1), (61, 5, 3, 3, 2), (90, 2, 4, 3, 0),
                          (45, 3, 5, 2, 1), (29, 4, 2, 5, 2), (200, 3, 3, 2, 0)):
        x, _ = _zeros_and_nan(rng, (2, 3, W), dtype)
        got = fastpool.max_pool1d(x, k, s, p, d)
        assert [m for m in made if m[0] == "separable"][-1][4:8] == (0, 0, 0, 0)
        want = torch.from_numpy(x.astype(np.float32) if dtype == np.float16 else x)
        if not floats:
            want = want.to(torch.float64)
        want = F.max_pool1d(want, k, s, p, d).numpy().astype(dtype)
        np.testing.assert_array_equal(got, want, err_msg=f"{W} {k} {s} {d} {p}")
        np.testing.assert_array_equal(_bits(got), _bits(_scan_1d(x, k, s, p, d, "max")))
        x2 = np.ascontiguousarray(np.stack([x[:, :, :W - 3]] * 3, axis=2))  # 2-d: 3 rows
        got2 = fastpool.max_pool2d(x2, (2, k), (1, s), (1, p), (2, d))
        np.testing.assert_array_equal(got2, F.max_pool2d(
            torch.from_numpy(x2.astype(np.float32 if floats else np.float64)), (2, k), (1, s),
            (1, p), (2, d)).numpy().astype(dtype))
        if floats:
            xa = rng.standard_normal((2, 3, W)).astype(dtype)
            xa.reshape(-1)[rng.choice(xa.size, xa.size // 4, replace=False)] = -0.0
            a = fastpool.avg_pool1d(xa, k, s, p, count_include_pad=False, dilation=d)
            np.testing.assert_array_equal(_bits(a), _bits(_scan_1d(xa, k, s, p, d, "avg")))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_specialised_rows_at_strides_2_and_3_in_vectors(dtype, monkeypatch):
    """Specialised channels-first windows at strides 2 and 3 that the fixed-window vectors do
    not cover (4 or 5 taps, or fewer taps than the stride) reduce their interior columns in
    vectors of outputs, 1-row windows over an unpadded row straight from the input row (not
    the short rows of the flat groups): the bits of an in-order scan
    (max: NaN wins, ties of -0.0 / +0.0 keep the first; average: the sum from +0 over the
    cell count), PyTorch's max in 2-d, padded edges included."""
    keys = {(1, 1, 4, 3), (1, 1, 5, 2), (1, 4, 4, 3), (1, 5, 5, 2), (1, 1, 2, 3), (1, 2, 2, 3)}
    monkeypatch.setattr(fpf, "_HOT_WINDOWS", fpf._HOT_WINDOWS | keys)
    monkeypatch.setattr(fpf, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(fpf, "_PLANS", {})
    made = _spy_kernels(monkeypatch)
    rng = np.random.default_rng(np.dtype(dtype).itemsize + 400)
    for W, k, s, p in ((101, 4, 3, 0), (64, 4, 3, 2), (77, 5, 2, 0), (40, 5, 2, 2), (19, 4, 3, 1),
                       (23, 2, 3, 0), (61, 2, 3, 1)):  # (short rows: the flat groups)
        x, _ = _zeros_and_nan(rng, (2, 3, W), dtype)
        got = fastpool.max_pool1d(x, k, s, p)
        assert [m for m in made if m[0] == "separable"][-1][4:8] == (1, 1, k, s)
        np.testing.assert_array_equal(_bits(got), _bits(_scan_1d(x, k, s, p, 1, "max")))
        xa = rng.standard_normal((2, 3, W)).astype(dtype)
        xa.reshape(-1)[rng.choice(xa.size, xa.size // 4, replace=False)] = -0.0
        a = fastpool.avg_pool1d(xa, k, s, p, count_include_pad=False)
        np.testing.assert_array_equal(_bits(a), _bits(_scan_1d(xa, k, s, p, 1, "avg")))
        x2, _ = _zeros_and_nan(rng, (1, 2, k + 4, W), dtype)
        got2 = fastpool.max_pool2d(x2, k, s, p)
        assert [m for m in made if m[0] == "separable"][-1][4:8] == (1, k, k, s)
        want = F.max_pool2d(torch.from_numpy(x2.astype(np.float32) if dtype == np.float16
                                              else x2), k, s, p).numpy().astype(dtype)
        np.testing.assert_array_equal(got2, want)
        _check_avg_ref(rng.standard_normal(x2.shape).astype(dtype), k, s, ((p, p), (p, p)))
