"""Dask arrays through the public operators (``fastpool._dask``): lazy results whose blocks
compute the NumPy operator's bits, on the local schedulers and on a ``dask.distributed``
cluster of worker processes."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dask
import dask.array as da

import fastpool

RANKS = (1, 2, 3)


def _bits(a):
    return a.view(f"u{a.itemsize}") if a.dtype.kind == "f" else a


def _same(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        return
    assert isinstance(got, da.Array)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(_bits(got.compute()), _bits(want))


def _chunks(rng, shape):
    """Random chunk sizes along every axis (the spatial ones are rechunked inside)."""
    return tuple(int(rng.integers(1, n + 1)) for n in shape)


def _spatial(x, batched, cl):
    return x.shape[int(batched):x.ndim - 1] if cl else x.shape[1 + int(batched):]


def _input(rng, rank, batched, channels_last, dtype=np.float32):
    sp = tuple(int(rng.integers(3, 10 if rank < 3 else 7)) for _ in range(rank))
    n, c = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    shape = ((n,) if batched else ()) + ((*sp, c) if channels_last else (c, *sp))
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    if dtype == np.float32:
        x.reshape(-1)[rng.choice(x.size, max(1, x.size // 50), replace=False)] = np.nan
    return x


CASES = [(rank, batched, cl) for rank in RANKS for batched in (True, False)
         for cl in (False, True)]


@pytest.mark.parametrize("case", CASES, ids=[f"{r}d-{'b' if b else 'u'}-{'cl' if c else 'cf'}"
                                             for r, b, c in CASES])
def test_forward_ops_match_numpy(case):
    rank, batched, cl = case
    rng = np.random.default_rng(100 * rank + 10 * batched + cl)
    x = _input(rng, rank, batched, cl)
    dx = da.from_array(x, chunks=_chunks(rng, x.shape))
    kw = dict(channels_last=cl)
    mp = getattr(fastpool, f"max_pool{rank}d")
    _same(mp(dx, 3, 2, 1, ceil_mode=True, return_indices=True, **kw),
          mp(x, 3, 2, 1, ceil_mode=True, return_indices=True, **kw))
    _same(mp(dx, 2, padding=[(0, 1)] * rank, **kw), mp(x, 2, padding=[(0, 1)] * rank, **kw))
    ap = getattr(fastpool, f"avg_pool{rank}d")
    _same(ap(dx, 3, 2, 1, count_include_pad=False, **kw),
          ap(x, 3, 2, 1, count_include_pad=False, **kw))
    lp = getattr(fastpool, f"lp_pool{rank}d")
    xa = np.abs(np.nan_to_num(x))
    _same(lp(da.from_array(xa, chunks=2), 2, 2, **kw), lp(xa, 2, 2, **kw))
    amp = getattr(fastpool, f"adaptive_max_pool{rank}d")
    _same(amp(dx, 2, return_indices=True, **kw), amp(x, 2, return_indices=True, **kw))
    aap = getattr(fastpool, f"adaptive_avg_pool{rank}d")
    _same(aap(dx, 3, **kw), aap(x, 3, **kw))
    # unpooling the pooled values back (indices as a Dask array too)
    v, i = mp(x, 2, 2, return_indices=True, **kw)
    up = getattr(fastpool, f"max_unpool{rank}d")
    dv = da.from_array(v, chunks=1)
    sp = _spatial(x, batched, cl)
    _same(up(dv, da.from_array(i, chunks=2), 2, 2, output_size=sp, **kw),
          up(v, i, 2, 2, output_size=sp, **kw))
    if rank > 1:
        fm = getattr(fastpool, f"fractional_max_pool{rank}d")
        s = rng.random(((x.shape[0] if batched else 1), x.shape[-1 if cl else int(batched)],
                        rank))
        osz = tuple(max(1, n // 2) for n in sp)
        _same(fm(dx, 2, output_size=osz, random_samples=s, return_indices=True, **kw),
              fm(x, 2, output_size=osz, random_samples=s, return_indices=True, **kw))


@pytest.mark.parametrize("case", CASES, ids=[f"{r}d-{'b' if b else 'u'}-{'cl' if c else 'cf'}"
                                             for r, b, c in CASES])
def test_backward_ops_match_numpy(case):
    rank, batched, cl = case
    rng = np.random.default_rng(7 + 100 * rank + 10 * batched + cl)
    x = _input(rng, rank, batched, cl, np.float64)
    dx = da.from_array(x, chunks=_chunks(rng, x.shape))
    kw = dict(channels_last=cl)
    mp = getattr(fastpool, f"max_pool{rank}d")
    v, i = mp(x, 3, 2, 1, return_indices=True, **kw)
    g = rng.standard_normal(v.shape)
    dg = da.from_array(g, chunks=_chunks(rng, g.shape))
    mb = getattr(fastpool, f"max_pool{rank}d_backward")
    want = mb(g, x, 3, 2, 1, **kw)
    _same(mb(dg, dx, 3, 2, 1, **kw), want)
    _same(mb(g, dx, 3, 2, 1, indices=da.from_array(i, chunks=1), **kw), want)  # mixed inputs
    ab = getattr(fastpool, f"avg_pool{rank}d_backward")
    gc = rng.standard_normal(getattr(fastpool, f"avg_pool{rank}d")(x, 3, 2, 1, ceil_mode=True,
                                                                   **kw).shape)
    dgc = da.from_array(gc, chunks=_chunks(rng, gc.shape))
    _same(ab(dgc, dx, 3, 2, 1, ceil_mode=True, **kw), ab(gc, x, 3, 2, 1, ceil_mode=True, **kw))
    aab = getattr(fastpool, f"adaptive_avg_pool{rank}d_backward")
    ga = rng.standard_normal(getattr(fastpool, f"adaptive_avg_pool{rank}d")(x, 2, **kw).shape)
    _same(aab(da.from_array(ga, chunks=1), dx, 2, **kw), aab(ga, x, 2, **kw))
    ub = getattr(fastpool, f"max_unpool{rank}d_backward")
    sp = _spatial(x, batched, cl)
    u = getattr(fastpool, f"max_unpool{rank}d")(v, i, 3, 2, 1, output_size=sp, **kw)
    gu = rng.standard_normal(u.shape)
    _same(ub(da.from_array(gu, chunks=2), da.from_array(v, chunks=1), i, 3, 2, 1,
             output_size=sp, **kw), ub(gu, v, i, 3, 2, 1, output_size=sp, **kw))


def test_against_pytorch():
    """The same values as PyTorch, directly (beside the NumPy operator's own checks)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 17, 15)).astype(np.float32)
    dx = da.from_array(x, chunks=(4, 2, 6, 15))
    v, i = fastpool.max_pool2d(dx, 3, 2, 1, ceil_mode=True, return_indices=True)
    tv, ti = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, ceil_mode=True, return_indices=True)
    np.testing.assert_array_equal(v.compute(), tv.numpy())
    np.testing.assert_array_equal(i.compute(), ti.numpy())
    a = fastpool.avg_pool2d(dx, 3, 2, 1, count_include_pad=False).compute()
    np.testing.assert_allclose(a, F.avg_pool2d(torch.from_numpy(x), 3, 2, 1,
                                               count_include_pad=False).numpy(), rtol=1e-6,
                               atol=1e-6)


def test_lazy_and_checked_when_built():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    ran = []

    def make():
        ran.append(1)
        return x
    dx = da.from_delayed(dask.delayed(make)(), x.shape, x.dtype).rechunk((2, 1, 10, 10))
    v, i = fastpool.max_pool2d(dx, 2, return_indices=True)
    assert not ran and isinstance(v, da.Array) and v.chunks == ((2, 2), (1, 1, 1), (5,), (5,))
    np.testing.assert_array_equal(v.compute(), fastpool.max_pool2d(x, 2))
    assert ran
    before = x.copy()
    with pytest.raises(ValueError, match="kernel_size=30"):
        fastpool.max_pool2d(dx, 30)
    with pytest.raises(TypeError, match="out="):
        fastpool.max_pool2d(dx, 2, out=np.empty((4, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastpool.max_pool2d_backward(da.zeros((4, 2, 5, 5), np.float32), dx, 2)
    with pytest.raises(ValueError, match=r"random_samples must have shape \(4, 3, 2\)"):
        fastpool.fractional_max_pool2d(dx, 2, output_size=3, random_samples=np.zeros((4, 3, 1)))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fastpool.fractional_max_pool2d(dx, 2, output_size=3,
                                       random_samples=np.full((4, 3, 2), 1.5))
    with pytest.raises(TypeError, match="dtype"):
        fastpool.avg_pool2d(dx.astype(bool), 2)
    with pytest.raises(TypeError, match="kernel_size must not be a Dask array"):
        fastpool.max_pool2d(dx, da.from_array(np.array([2, 2])))
    np.testing.assert_array_equal(x, before)


def test_fractional_samples_drawn_once():
    """Without random_samples they are drawn when the graph is built, from NumPy's global
    generator as the NumPy call draws them: every computation of the result agrees."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 11, 9)).astype(np.float32)
    dx = da.from_array(x, chunks=(1, 3, 11, 9))
    np.random.seed(123)
    r = fastpool.fractional_max_pool2d(dx, 2, output_ratio=0.5, return_indices=True)
    np.random.seed(123)
    want = fastpool.fractional_max_pool2d(x, 2, output_ratio=0.5, return_indices=True)
    _same(r, want)
    _same(r, want)  # computed again: the same samples


def test_distributed_cluster():
    """Worker processes of a dask.distributed cluster run the blocks (each imports fastpool and
    runs its parallel kernels)."""
    from dask.distributed import Client, LocalCluster
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 6, 40, 36)).astype(np.float32)
    dx = da.from_array(x, chunks=(2, 3, 20, 36))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        v, i = fastpool.max_pool2d(dx, 3, 2, 1, return_indices=True)
        ones = da.ones((4, 6, 20, 18), dtype=np.float32, chunks=(1, 6, 20, 18))
        g = fastpool.avg_pool2d_backward(ones, dx, 3, 2, 1)
        vv, ii, gg = client.compute([v, i, g], sync=True)
        pids = client.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 2
    wv, wi = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(vv, wv)
    np.testing.assert_array_equal(ii, wi)
    np.testing.assert_array_equal(_bits(gg), _bits(fastpool.avg_pool2d_backward(
        np.ones((4, 6, 20, 18), np.float32), x, 3, 2, 1)))
