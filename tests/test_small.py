"""The serial kernel for small calls of regular windows (``_cpu/small.py``), which takes the
window at run time: small calls reach it, and its results match the NumPy reference on random
geometries (asymmetric and "same" padding, dilation, ceil mode, windows wider than the input's
padding), every dtype, both layouts and strided views."""
import numpy as np
import pytest

import fastpool
from fastpool import functional as fpf
from reference import ref_avg_pool, ref_lp_pool, ref_max_pool, resolve_pads

INT_TOL = 0  # integer averages truncate like PyTorch: exact


@pytest.fixture
def record(monkeypatch):
    calls = []
    real = fpf._dispatch.kernel
    monkeypatch.setattr(fpf._dispatch, "kernel",
                        lambda op, *a: calls.append((op,) + a) or real(op, *a))
    monkeypatch.setattr(fpf, "_PLANS", {})
    return calls


def test_small_calls_run_one_kernel_for_every_window(record):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    fastpool.avg_pool2d(x, 3, 2, 1)
    fastpool.avg_pool2d(x, (2, 4), (1, 3), dilation=(2, 1))
    fastpool.max_pool2d(xl, 3, 2, 1, channels_last=True)
    fastpool.lp_pool2d(x, 2, 3, 2)
    assert [c[:5] for c in record if c[0] == "small"] == [
        ("small", "cpu", "avg", False, False), ("small", "cpu", "avg", False, False),
        ("small", "cpu", "max", False, True), ("small", "cpu", "lp", False, False)]
    # (the hot window k3s2 also names its specialised kernel, to move on to later)
    assert [c for c in record if c[0] != "small"] == [
        ("separable", "cpu", "avg", False, 1, 3, 3, 2, False),
        ("separable", "cpu", "max", False, 1, 3, 3, 2, True)]
    # (the memo hands back one kernel for both windows: one compilation per kind and layout)
    assert fpf._dispatch.kernel("small", "cpu", "avg", False, False) is \
        fpf._dispatch.kernel("small", "cpu", "avg", False, False)
    record.clear()
    big = rng.standard_normal((2, 16, 64, 64)).astype(np.float32)  # parallel: not this kernel
    fastpool.avg_pool2d(big, 3, 2, 1)
    assert all(c[0] != "small" for c in record)


def _draw_case(rng):
    rank = int(rng.integers(1, 4))
    spatial = tuple(int(v) for v in rng.integers(1, 12 if rank < 3 else 7, rank))
    kernel = tuple(int(rng.integers(1, 4)) for _ in range(rank))
    stride = tuple(int(rng.integers(1, 4)) for _ in range(rank))
    dilation = tuple(int(rng.integers(1, 3)) for _ in range(rank))
    style = rng.integers(4)
    if style == 0:  # PyTorch's symmetric padding, at most half the window
        padding = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
    elif style == 1:  # ONNX pairs, wider than half the window
        padding = tuple((int(rng.integers(0, k + 1)), int(rng.integers(0, k + 1)))
                        for k in kernel)
    elif style == 2:
        padding = str(rng.choice(["same", "same_lower"]))
    else:
        padding = 0
    ceil = bool(rng.integers(2)) and style != 2
    return rank, spatial, kernel, stride, dilation, padding, ceil


def _pairs(padding, spatial, kernel, stride, dilation):
    if isinstance(padding, str):
        return resolve_pads(padding, spatial, kernel, stride, dilation)
    if isinstance(padding, int):
        return [(padding, padding)] * len(spatial)
    return [p if isinstance(p, tuple) else (p, p) for p in padding]


def _layouts(rng, x, rank):
    """(array passed, channels_last flag, function giving a result back in NC* order)"""
    perm = (0,) + tuple(range(2, 2 + rank)) + (1,)
    cl = np.ascontiguousarray(x.transpose(perm))
    back = np.argsort(perm)
    choice = rng.integers(4)
    if choice == 0:
        return x, False, lambda a: a
    if choice == 1:
        return cl, True, lambda a: a.transpose(back)
    if choice == 2:  # an NC* view of channels-last memory
        return cl.transpose(back), False, lambda a: a
    big = np.empty(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)  # every other column
    big[..., ::2] = x
    return big[..., ::2], False, lambda a: a


@pytest.mark.parametrize("seed", range(24))
def test_small_kernel_against_reference(seed, record):
    rng = np.random.default_rng(1000 + seed)
    checked = 0
    need = {"small", "max_small", "max_backward_small"}
    # (six cases, and more until the cases reached the kernels under test)
    while checked < 6 or (checked < 40 and not need <= {c[0] for c in record}):
        rank, spatial, kernel, stride, dilation, padding, ceil = _draw_case(rng)
        pairs = _pairs(padding, spatial, kernel, stride, dilation)
        dtype = rng.choice([np.float32, np.float64, np.float16, np.int32, np.uint8])
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5))) + spatial
        if np.dtype(dtype).kind == "f":
            x = (rng.integers(-4, 5, shape) + rng.choice([0, 0.5], shape)).astype(dtype)
            x.reshape(-1)[rng.random(x.size) < 0.05] = np.nan
        else:
            info = np.iinfo(dtype)
            x = rng.integers(max(info.min, -100), min(info.max, 100), shape).astype(dtype)
        keep = x.copy()
        xin, cl, back = _layouts(rng, x, rank)
        kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil,
                  channels_last=cl)
        op = getattr(fastpool, f"max_pool{rank}d")
        try:
            got = op(xin, dilation=dilation, **kw)
        except ValueError:  # a geometry the contract refuses (an empty window, ...)
            continue
        try:
            want, want_i = ref_max_pool(x, kernel, stride, pairs, dilation, ceil)
        except ValueError:  # a window without an input cell (PyTorch's -inf): not compared
            continue
        np.testing.assert_array_equal(back(got), want)
        got, got_i = op(xin, dilation=dilation, return_indices=True, **kw)
        np.testing.assert_array_equal(back(got), want)
        np.testing.assert_array_equal(back(got_i), want_i)
        if np.dtype(dtype).kind == "f":  # the gradient without indices (the argmax scan)
            g = rng.standard_normal(want.shape).astype(dtype)
            gin = getattr(fastpool, f"max_pool{rank}d_backward")(
                g, x, kernel, stride, padding, dilation, ceil)
            from reference import ref_max_pool_backward
            gw = ref_max_pool_backward(g, x, kernel, stride, pairs, dilation, ceil)
            gtol = 5e-3 if dtype == np.float16 else 1e-6
            np.testing.assert_allclose(gin.astype(np.float64), gw.astype(np.float64),
                                       rtol=gtol, atol=gtol)
        incl = bool(rng.integers(2))
        try:
            got = getattr(fastpool, f"avg_pool{rank}d")(xin, count_include_pad=incl,
                                                         dilation=dilation, **kw)
        except ValueError as e:  # PyTorch's 3-d average: no input dim under the kernel's
            assert rank == 3 and "is smaller than kernel_size" in str(e), e
            assert any(n < k for n, k in zip(spatial, kernel)), (spatial, kernel)
            checked += 1
            continue
        want = ref_avg_pool(x, kernel, stride, pairs, ceil, incl, None, dilation)
        tol = 2e-3 if dtype == np.float16 else (1e-6 if np.dtype(dtype).kind == "f" else
                                                INT_TOL)
        np.testing.assert_allclose(back(got).astype(np.float64), want.astype(np.float64),
                                   rtol=tol, atol=tol)
        if np.dtype(dtype).kind == "f":
            p = float(rng.choice([1.0, 2.0, 3.0]))
            xp = np.abs(x)  # (non-integer powers of negative values are NaN either way)
            xin_p, cl_p, back_p = _layouts(rng, xp, rank)
            got = getattr(fastpool, f"lp_pool{rank}d")(
                xin_p, p, kernel, stride, ceil, padding=padding, dilation=dilation,
                channels_last=cl_p)
            want = ref_lp_pool(xp, p, kernel, stride, pairs, dilation, ceil)
            np.testing.assert_allclose(back_p(got).astype(np.float64), want.astype(np.float64),
                                       rtol=max(tol, 1e-5), atol=max(tol, 1e-5))
        np.testing.assert_array_equal(x, keep)  # the input is left as it was
        checked += 1
    assert need <= {c[0] for c in record}


def test_hot_windows_move_on_to_their_specialised_kernel(monkeypatch):
    """A small call of a hot window starts on the kernel for every window and moves on to the
    window's specialised kernel after SPECIALISE_AFTER calls, or at once when that kernel is
    at hand (compiled in this process, or in the cache); the results are the same."""
    used = []
    real_kernel, real_ready = fpf._dispatch.kernel, fpf._dispatch.ready

    def kernel(op, *a):
        k = real_kernel(op, *a)

        def call(*args):
            used.append(op)
            return k(*args)
        call.disp = k
        return call
    monkeypatch.setattr(fpf._dispatch, "kernel", kernel)
    monkeypatch.setattr(fpf._dispatch, "ready", lambda k, argv: False)
    monkeypatch.setattr(fpf, "SPECIALISE_AFTER", 3)
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    x.reshape(-1)[rng.choice(x.size, 4, replace=False)] = np.nan
    want_max = ref_max_pool(x, (3, 3), (2, 2), [(1, 1)] * 2)[0]
    want_avg = ref_avg_pool(x, (3, 3), (2, 2), [(1, 1)] * 2)
    for _ in range(5):
        np.testing.assert_array_equal(fastpool.max_pool2d(x, 3, 2, 1), want_max)
        np.testing.assert_allclose(fastpool.avg_pool2d(x, 3, 2, 1), want_avg, rtol=1e-6,
                                   atol=1e-6)
    assert used == ["small"] * 6 + ["separable"] * 4
    # max with indices, and its gradient without them, alike
    used.clear()
    want_i = ref_max_pool(x, (3, 3), (2, 2), [(1, 1)] * 2)[1]
    g = rng.standard_normal(want_max.shape).astype(np.float32)
    for _ in range(5):
        v, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
        np.testing.assert_array_equal(v, want_max)
        np.testing.assert_array_equal(i, want_i)
        grads = fastpool.max_pool2d_backward(g, x, 3, 2, 1)
        np.testing.assert_array_equal(grads, fastpool.max_pool2d_backward(g, x, 3, 2, 1,
                                                                         indices=want_i))
    assert [u for u in used if u.startswith("max") and u != "max_backward"] == \
        ["max_small", "max_backward_small"] * 3 + ["max", "max_backward_scan"] * 2
    # channels-last max with indices: the lean kernel (int64 positions only), then the full one
    used.clear()
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    for _ in range(5):
        v, i = fastpool.max_pool2d(xl, 3, 2, 1, return_indices=True, channels_last=True)
        np.testing.assert_array_equal(np.moveaxis(v, -1, 1), want_max)
        np.testing.assert_array_equal(np.moveaxis(i, -1, 1), want_i)
    assert used == ["cl_lean"] * 3 + ["cl"] * 2
    # the specialised kernels are compiled now: new plans start on them
    monkeypatch.setattr(fpf._dispatch, "ready",
                        lambda k, argv: real_ready(getattr(k, "disp", k), argv))
    monkeypatch.setattr(fpf, "_PLANS", {})
    used.clear()
    np.testing.assert_array_equal(fastpool.max_pool2d(x, 3, 2, 1), want_max)
    np.testing.assert_allclose(fastpool.avg_pool2d(x, 3, 2, 1), want_avg, rtol=1e-6, atol=1e-6)
    assert used == ["separable"] * 2
    # windows that are not hot stay on the kernel for every window
    used.clear()
    for _ in range(5):
        fastpool.avg_pool2d(x, 2, 1)
    assert used == ["small"] * 5


def test_ready_loads_a_kernel_from_the_cache():
    from fastpool import _runtime
    from fastpool._cpu.separable import make_sep
    from fastpool.functional import _interior, _tables
    tab, dil = _tables("t", (1, 9, 11), (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1)),
                       (1, 1, 1), (1, 5, 6), False)
    lo, hi = _interior(11, 6, 3, 2, 1)
    x = np.random.default_rng(2).standard_normal((6, 1, 9, 11))
    argv = (x, np.empty((6, 1, 5, 6)), tab, dil, lo, hi, 1, 1, 1, np.float64(0), 1.0, 9, 1,
            None)
    first = make_sep("avg", False, 1, 3, 3, 2)  # (a new dispatcher each time: not memoised)
    first(*argv)  # compiled (and cached), or loaded from the cache
    again = make_sep("avg", False, 1, 3, 3, 2)
    assert not again.overloads
    if _runtime._CACHE is False:
        assert not fpf._dispatch.ready(again, argv)
        return
    assert fpf._dispatch.ready(again, argv)
    assert len(again.overloads) == 1 and sum(again.stats.cache_hits.values()) == 1
    assert not again.stats.cache_misses  # (nothing compiled)


@pytest.mark.parametrize("seed", range(12))
def test_small_sum_backward_against_reference_and_parallel(seed, monkeypatch):
    """The serial average / Lp backward (``make_small_sum_backward``): against the NumPy
    reference, and the same bits as the parallel kernel (which sums each cell's shares in the
    same order), on random geometries and both layouts; the gradient is left as it was."""
    from fastpool import backward as B
    from reference import ref_avg_pool_backward, ref_lp_pool_backward
    calls = []
    real = B._dispatch.kernel
    monkeypatch.setattr(B._dispatch, "kernel", lambda op, *a: calls.append(op) or real(op, *a))
    rng = np.random.default_rng(2000 + seed)
    checked = 0
    while checked < 4:
        rank, spatial, kernel, stride, dilation, padding, ceil = _draw_case(rng)
        pairs = _pairs(padding, spatial, kernel, stride, dilation)
        dtype = rng.choice([np.float32, np.float64, np.float16])
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5))) + spatial
        x = (np.abs(rng.standard_normal(shape)) + 0.25).astype(dtype)
        power = bool(rng.integers(2))
        incl = bool(rng.integers(2))
        p = float(rng.choice([1.0, 2.0, 3.0]))
        if power:
            fwd = getattr(fastpool, f"lp_pool{rank}d")
            bwd = getattr(fastpool, f"lp_pool{rank}d_backward")
            args, kw = (p, kernel, stride, ceil), dict(padding=padding, dilation=dilation)
        else:
            fwd = getattr(fastpool, f"avg_pool{rank}d")
            bwd = getattr(fastpool, f"avg_pool{rank}d_backward")
            args, kw = (kernel, stride, padding, ceil, incl), dict(dilation=dilation)
        try:
            y = fwd(x, *args, **kw)
        except ValueError:  # a geometry the contract refuses
            continue
        g = rng.standard_normal(y.shape).astype(dtype)
        g.reshape(-1)[0] = -0.0
        keep = g.copy()
        cl = bool(rng.integers(2))
        perm = (0,) + tuple(range(2, 2 + rank)) + (1,)
        back = np.argsort(perm)
        gi, xi = (np.ascontiguousarray(g.transpose(perm)), np.ascontiguousarray(x.transpose(perm))) \
            if cl else (g, x)
        calls.clear()
        monkeypatch.setattr(fpf, "_PLANS", {})
        got = bwd(gi, xi, *args, channels_last=cl, **kw)
        assert calls[-1].endswith("_backward_small")
        if dtype == np.float32:  # (each parallel variant takes seconds to compile)
            monkeypatch.setattr(B, "_parallel", lambda work: True)
            monkeypatch.setattr(fpf, "_PLANS", {})
            par = bwd(gi, xi, *args, channels_last=cl, **kw)
            monkeypatch.setattr(B, "_parallel", fpf._parallel)
            assert not calls[-1].endswith("_small")
            assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(par).tobytes()
        got = got.transpose(back) if cl else got
        if power:
            want = ref_lp_pool_backward(g, x, p, kernel, stride, pairs, dilation, ceil)
        else:
            want = ref_avg_pool_backward(g, x, kernel, stride, pairs, ceil, incl, None, dilation)
        tol = 5e-3 if dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                                   atol=tol)
        np.testing.assert_array_equal(gi if not cl else gi.transpose(back), keep)
        checked += 1


def test_threads_share_a_plan_while_it_moves_on(monkeypatch):
    """Eight threads calling the same small plans while they move on to the specialised
    kernels (the plan's kernel, arguments and entry point are replaced as one): every result
    right."""
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setattr(fpf, "SPECIALISE_AFTER", 40)
    monkeypatch.setattr(fpf._dispatch, "ready", lambda k, argv: False)
    monkeypatch.setattr(fpf, "_PLANS", {})
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 9, 13)).astype(np.float32)
    xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    want_v, want_i = ref_max_pool(x, (3, 3), (2, 2), [(1, 1)] * 2)
    want_a = ref_avg_pool(x, (3, 3), (2, 2), [(1, 1)] * 2, count_include_pad=False)

    def work(seed):
        bad = 0
        for _ in range(30):
            v, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
            bad += not (np.array_equal(v, want_v) and np.array_equal(i, want_i))
            a = fastpool.avg_pool2d(xl, 3, 2, 1, count_include_pad=False, channels_last=True)
            bad += not np.allclose(np.moveaxis(a, -1, 1), want_a, rtol=1e-6, atol=1e-6)
        return bad
    with ThreadPoolExecutor(8) as ex:
        assert sum(ex.map(work, range(8))) == 0
