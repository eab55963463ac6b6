"""Validate the NumPy oracle (tests/reference.py) against PyTorch itself.

Nothing here imports fastpool: these tests pin down the oracle, the other test files then
compare fastpool with it.
"""

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import reference as R  # noqa: E402
from conftest import (assert_same, draw_asymmetric, draw_window, make_input,  # noqa: E402
                      tol, windows_hit_input)  # noqa: F401

NTRIALS = 24



def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


# ---------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------

def test_output_len_examples():
    assert R.output_len(5, 2, 2) == 2
    assert R.output_len(5, 2, 2, ceil_mode=True) == 3
    # a window that would start in the trailing padding is dropped in ceil mode
    assert R.output_len(5, 3, 2, 1, 1, ceil_mode=False) == 3
    assert R.output_len(6, 3, 2, 1, 1, ceil_mode=True) == 4
    assert R.output_len(5, 2, 2, 1, 1, ceil_mode=True) == 3  # 4th would start at 6 >= 5+1
    assert R.output_len(1, 1, 2, ceil_mode=True) == 1
    assert R.output_len(7, 3, 1, 0, 0, 3) == 1
    with pytest.raises(ValueError):
        R.output_len(2, 3, 1)


@pytest.mark.parametrize("n", range(1, 12))
@pytest.mark.parametrize("k,s,d", [(1, 1, 1), (2, 2, 1), (3, 1, 1), (3, 2, 1), (3, 2, 2),
                                   (4, 3, 1), (5, 1, 2), (2, 5, 1)])
def test_same_pads(n, k, s, d):
    for lower in (False, True):
        b, a = R.same_pads(n, k, s, d, lower)
        assert R.output_len(n, k, s, b, a, d) == -(-n // s)
        assert b + a == max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        assert (a - b) == ((b + a) % 2) * (-1 if lower else 1)


def test_output_len_matches_torch_ceil_mode():
    for n in range(1, 12):
        for k in range(1, 5):
            for s in range(1, 5):
                for p in range(0, k // 2 + 1):
                    for d in (1, 2):
                        if (k - 1) * d + 1 > n + 2 * p:
                            continue
                        for ceil_mode in (False, True):
                            out = F.max_pool1d(torch.zeros(1, 1, n), k, s, p, d, ceil_mode)
                            assert out.shape[-1] == R.output_len(n, k, s, p, p, d, ceil_mode)


# ---------------------------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------------------------

MAX_DTYPES = [np.float64, np.float32, np.float16, np.int8, np.uint8, np.int16, np.int32,
              np.int64]


@pytest.mark.parametrize("seed", range(NTRIALS * 2))
def test_max_pool_vs_torch(seed):
    rng = np.random.default_rng(1000 + seed)
    nd = 1 + seed % 3
    dtype = MAX_DTYPES[seed % len(MAX_DTYPES)]
    k, s, p, d, ceil_mode, sp = draw_window(rng, nd)
    x = make_input(rng, (2, 3) + sp, dtype)
    tv, ti = getattr(F, f"max_pool{nd}d")(T(x), k, s, p, d, ceil_mode, return_indices=True)
    rv, ri = R.ref_max_pool(x, k, s, [(v, v) for v in p], d, ceil_mode)
    assert_same(rv, tv.numpy())
    assert_same(ri, ti.numpy())


@pytest.mark.parametrize("seed", range(NTRIALS // 2))
def test_max_pool_asymmetric_vs_torch_prepadded(seed):
    # asymmetric pads = explicit -inf padding followed by an unpadded torch max pool
    rng = np.random.default_rng(2000 + seed)
    nd = 1 + seed % 3
    k, s, _, d, _, _ = draw_window(rng, nd)
    pads, sp = draw_asymmetric(rng, k, s, d, False, 6)
    x = make_input(rng, (2, 2) + sp, np.float64, special=False)
    flat_pad = [v for b, a in reversed(pads) for v in (b, a)]
    xp = F.pad(T(x), flat_pad, value=-np.inf)
    tv, ti = getattr(F, f"max_pool{nd}d")(xp, k, s, 0, d, False, return_indices=True)
    rv, ri = R.ref_max_pool(x, k, s, pads, d, False)
    assert_same(rv, tv.numpy())
    coords = np.unravel_index(ti.numpy(), xp.shape[2:])
    coords = [c - b for c, (b, a) in zip(coords, pads)]
    assert_same(ri, np.ravel_multi_index(coords, sp))


def test_max_pool_nan_and_tie_rules():
    x = np.array([[[1.0, np.nan, 3.0, np.nan, 2.0, 3.0]]])
    v, i = R.ref_max_pool(x, (6,), (6,), [(0, 0)], (1,), False)
    assert np.isnan(v).all() and i.item() == 3  # last NaN scanned
    x = np.array([[[1.0, 3.0, 2.0, 3.0]]])
    v, i = R.ref_max_pool(x, (4,), (4,), [(0, 0)], (1,), False)
    assert v.item() == 3 and i.item() == 1  # first of the ties
    x = np.full((1, 1, 3), -np.inf)
    v, i = R.ref_max_pool(x, (3,), (1,), [(1, 1)], (1,), False)
    assert (i.ravel() == [0, 0, 1]).all()  # padding never selected, first input cell wins


# ---------------------------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------------------------

AVG_DTYPES = [np.float64, np.float32, np.float16, np.int64]


def torch_avg(x, nd, k, s, p, ceil_mode, cip, div):
    t = T(x)
    if nd == 3 and x.dtype == np.float16:
        return None
    if nd == 1:
        if div is None:
            return F.avg_pool1d(t, k, s, p, ceil_mode, cip).numpy()
        return F.avg_pool2d(t[:, :, None], (1,) + k, (1,) + s, (0,) + p, ceil_mode, cip,
                            div)[:, :, 0].numpy()
    return getattr(F, f"avg_pool{nd}d")(t, k, s, p, ceil_mode, cip, div).numpy()


@pytest.mark.parametrize("seed", range(NTRIALS * 2))
def test_avg_pool_vs_torch(seed):
    rng = np.random.default_rng(3000 + seed)
    nd = 1 + seed % 3
    dtype = AVG_DTYPES[(seed // 3) % len(AVG_DTYPES)]
    if nd == 3 and dtype == np.float16:
        dtype = np.float32
    # torch's avg_pool3d insists on input >= kernel even with padding
    k, s, p, d, ceil_mode, sp = draw_window(rng, nd, dilation=False, min_input_kernel=nd == 3)
    cip = bool(rng.integers(0, 2))
    div = None if rng.random() < 0.6 else int(rng.choice([1, 2, 3, 7, -3]))
    x = make_input(rng, (2, 3) + sp, dtype, nan=seed % 4 == 0, special=False)
    if np.dtype(dtype).kind == "i" and rng.random() < 0.5:
        x = (x * 1000 - 37).astype(dtype)  # truncation toward zero of negative sums
    ref = R.ref_avg_pool(x, k, s, [(v, v) for v in p], ceil_mode, cip, div, d)
    got = torch_avg(x, nd, k, s, p, ceil_mode, cip, div)
    rt, at = tol(dtype)
    assert_same(ref, got, exact=np.dtype(dtype).kind == "i", rtol=rt, atol=at)


def torch_window_sum(x, k, s, pads, d, ceil_mode, fill_mask=None):
    """Sum over dilated windows (padding with zeros, ceil-mode overhang with zeros) via conv."""
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape[:2]
    sp = x.shape[2:]
    nd = len(sp)
    extra = []
    for n, kk, ss, (b, a), dd in zip(sp, k, s, pads, d):
        out = R.output_len(n, kk, ss, b, a, dd, ceil_mode)
        extra.append(max(0, (out - 1) * ss + (kk - 1) * dd + 1 - (n + b + a)))
    t = T(x).reshape((N * C, 1) + sp)
    flat = [v for (b, a), e in reversed(list(zip(pads, extra))) for v in (b, a + e)]
    t = F.pad(t, flat)
    w = torch.ones((1, 1) + tuple(k), dtype=torch.float64)
    out = getattr(F, f"conv{nd}d")(t, w, stride=s, dilation=d)
    out = out.reshape((N, C) + out.shape[2:])
    # ceil mode: a window starting in the trailing padding is dropped
    osp = [R.output_len(n, kk, ss, b, a, dd, ceil_mode)
           for n, kk, ss, (b, a), dd in zip(sp, k, s, pads, d)]
    return out[(slice(None), slice(None)) + tuple(slice(0, o) for o in osp)], extra


def torch_avg_general(x, k, s, pads, d, ceil_mode, cip, div):
    """Average pooling with asymmetric pads and dilation built from convolutions (float64)."""
    sp = x.shape[2:]
    total, extra = torch_window_sum(x, k, s, pads, d, ceil_mode)
    if div is not None:
        return (total / div).numpy()
    if cip:
        # ones on the padded extent [-b, n + a), zeros on the ceil-mode overhang
        ext = torch.ones((1, 1) + tuple(n + b + a for n, (b, a) in zip(sp, pads)),
                         dtype=torch.float64)
        flat = [v for e in reversed(extra) for v in (0, e)]
        ext = F.pad(ext, flat)
        w = torch.ones((1, 1) + tuple(k), dtype=torch.float64)
        cnt = getattr(F, f"conv{len(sp)}d")(ext, w, stride=s, dilation=d)
        cnt = cnt[(slice(None), slice(None)) + tuple(slice(0, o) for o in total.shape[2:])]
    else:
        cnt, _ = torch_window_sum(np.ones((1, 1) + sp), k, s, pads, d, ceil_mode)
    return (total / cnt).numpy()


@pytest.mark.parametrize("seed", range(NTRIALS))
def test_avg_pool_dilation_asymmetric_vs_conv(seed):
    rng = np.random.default_rng(4000 + seed)
    nd = 1 + seed % 3
    k, s, _, d, ceil_mode, _ = draw_window(rng, nd)
    pads, sp = draw_asymmetric(rng, k, s, d, ceil_mode, 6)
    # every window must hold an input cell for count_include_pad=False
    cip = bool(rng.integers(0, 2))
    div = None if rng.random() < 0.7 else 3
    x = make_input(rng, (2, 2) + sp, np.float64, nan=False, special=False)
    try:
        ref = R.ref_avg_pool(x, k, s, pads, ceil_mode, cip, div, d)
    except ValueError:  # a window entirely in the padding with count_include_pad=False
        assert not cip and div is None
        return
    got = torch_avg_general(x, k, s, pads, d, ceil_mode, cip, div)
    assert_same(ref, got, exact=False, rtol=1e-12, atol=1e-12)


def test_avg_pool_integer_truncates_toward_zero():
    x = np.array([[[-7, -1, 7, 1, -2]]], dtype=np.int64)
    ref = R.ref_avg_pool(x, (2,), (2,), [(0, 1)], False, True, None, (1,))
    assert ref.ravel().tolist() == [-4, 4, -1]  # -8/2, 8/2, -2/2 (pad counted)
    ref = R.ref_avg_pool(x, (3,), (3,), [(0, 0)], False, True, None, (1,))
    assert ref.ravel().tolist() == [0]  # (-7 - 1 + 7) / 3 = -1/3 -> 0
    got = F.avg_pool1d(T(x), 3, 3).numpy()
    assert got.ravel().tolist() == [0]


# ---------------------------------------------------------------------------------------------
# Lp pooling
# ---------------------------------------------------------------------------------------------

LP_NORMS = [1, 2, 3, 1.5, 4.0]


@pytest.mark.parametrize("seed", range(NTRIALS * 2))
def test_lp_pool_vs_torch(seed):
    rng = np.random.default_rng(5000 + seed)
    nd = 1 + seed % 3
    dtype = [np.float64, np.float32, np.float16][(seed // 3) % 3]
    if nd == 3 and dtype == np.float16:
        dtype = np.float32
    p = LP_NORMS[seed % len(LP_NORMS)]
    k, s, _, _, ceil_mode, sp = draw_window(rng, nd, dilation=False, max_pad_half=False)
    x = make_input(rng, (2, 3) + sp, np.float64, nan=seed % 5 == 0, special=False)
    if seed % 2:
        x = np.abs(x)  # mostly positive sums; negative ones give NaN for odd/fractional p
    x = x.astype(dtype)
    ref = R.ref_lp_pool(x, p, k, s, None, None, ceil_mode)
    # torch's lp_pool1d multiplies by kernel_size itself: it needs plain ints
    kt, st = (k[0], s[0]) if nd == 1 else (k, s)
    got = getattr(F, f"lp_pool{nd}d")(T(x), p, kt, st, ceil_mode).numpy()
    rt, at = tol(dtype)
    if dtype == np.float16:  # torch rounds to float16 after every step
        rt, at = 1e-2, 1e-2
    assert_same(ref, got, exact=False, rtol=rt, atol=at)


@pytest.mark.parametrize("seed", range(NTRIALS // 2))
def test_lp_pool_padding_dilation_vs_torch_formula(seed):
    # torch's lp_pool has no padding/dilation: check the extension against its formula,
    # built on the conv-based general average (count_include_pad=True)
    rng = np.random.default_rng(6000 + seed)
    nd = 1 + seed % 3
    p = LP_NORMS[seed % len(LP_NORMS)]
    k, s, _, d, ceil_mode, _ = draw_window(rng, nd)
    pads, sp = draw_asymmetric(rng, k, s, d, ceil_mode, 6)
    x = np.abs(make_input(rng, (2, 2) + sp, np.float64, nan=False, special=False))
    ref = R.ref_lp_pool(x, p, k, s, pads, d, ceil_mode)
    avg = torch_avg_general(x ** p, k, s, pads, d, ceil_mode, True, None)
    got = (avg * math.prod(k)) ** (1.0 / p)
    assert_same(ref, got, exact=False, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", [math.inf, -math.inf])
def test_lp_pool_infinite_norm_vs_torch(p):
    rng = np.random.default_rng(7)
    x = make_input(rng, (2, 3, 7, 8), np.float64, nan=False, special=False)
    ref = R.ref_lp_pool(x, p, (2, 3), (2, 2), None, None, True)
    got = F.lp_pool2d(T(x), p, (2, 3), (2, 2), True).numpy()
    assert_same(ref, got)


# ---------------------------------------------------------------------------------------------
# adaptive pooling
# ---------------------------------------------------------------------------------------------

def draw_adaptive(rng, nd):
    sp = tuple(int(rng.integers(1, 12 if nd < 3 else 7)) for _ in range(nd))
    out = tuple(int(rng.integers(1, n + 4)) for n in sp)  # also larger than the input
    return sp, out


@pytest.mark.parametrize("seed", range(NTRIALS * 2))
def test_adaptive_max_pool_vs_torch(seed):
    rng = np.random.default_rng(8000 + seed)
    nd = 1 + seed % 3
    dtype = [np.float64, np.float32, np.float16][(seed // 3) % 3]
    sp, out = draw_adaptive(rng, nd)
    x = make_input(rng, (2, 3) + sp, dtype)
    tv, ti = getattr(F, f"adaptive_max_pool{nd}d")(T(x), out, return_indices=True)
    rv, ri = R.ref_adaptive_max_pool(x, out)
    assert_same(rv, tv.numpy())
    assert_same(ri, ti.numpy())


@pytest.mark.parametrize("seed", range(NTRIALS * 2))
def test_adaptive_avg_pool_vs_torch(seed):
    rng = np.random.default_rng(9000 + seed)
    nd = 1 + seed % 3
    dtype = [np.float64, np.float32, np.float16][(seed // 3) % 3]
    sp, out = draw_adaptive(rng, nd)
    x = make_input(rng, (2, 3) + sp, dtype, nan=seed % 4 == 0, special=False)
    got = getattr(F, f"adaptive_avg_pool{nd}d")(T(x), out).numpy()
    ref = R.ref_adaptive_avg_pool(x, out)
    rt, at = tol(dtype)
    assert_same(ref, got, exact=False, rtol=rt, atol=at)


def test_adaptive_none_entries():
    x = np.arange(2 * 3 * 5 * 7, dtype=np.float64).reshape(2, 3, 5, 7)
    got = F.adaptive_avg_pool2d(T(x), (None, 3)).numpy()
    assert_same(R.ref_adaptive_avg_pool(x, (None, 3)), got, exact=False)
    tv, ti = F.adaptive_max_pool2d(T(x), (2, None), return_indices=True)
    rv, ri = R.ref_adaptive_max_pool(x, (2, None))
    assert_same(rv, tv.numpy())
    assert_same(ri, ti.numpy())


def test_adaptive_bounds_vs_torch():
    # the max of an increasing ramp sits at the window's last cell, of a decreasing one at
    # its first: this reads PyTorch's window bounds directly
    for n in range(1, 30):
        for out in range(1, 34):
            bounds = R._adaptive_bounds(n, out)
            ramp = torch.arange(n, dtype=torch.float64).reshape(1, 1, n)
            _, hi = F.adaptive_max_pool1d(ramp, out, return_indices=True)
            _, lo = F.adaptive_max_pool1d(-ramp, out, return_indices=True)
            assert lo.ravel().tolist() == [b0 for b0, _ in bounds]
            assert hi.ravel().tolist() == [b1 - 1 for _, b1 in bounds]


# ---------------------------------------------------------------------------------------------
# fractional max pooling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(NTRIALS * 2))
def test_fractional_max_pool_vs_torch(seed):
    rng = np.random.default_rng(10000 + seed)
    nd = 2 + seed % 2
    dtype = [np.float64, np.float32, np.float16][(seed // 2) % 3]
    k = tuple(int(rng.integers(1, 4)) for _ in range(nd))
    sp = tuple(int(rng.integers(kk + 1, kk + (12 if nd == 2 else 6))) for kk in k)
    # PyTorch: 2-d needs out + k - 1 <= in, 3-d needs out + k - 1 < in
    out = tuple(int(rng.integers(1, n - kk + (2 if nd == 2 else 1))) for n, kk in zip(sp, k))
    x = make_input(rng, (2, 3) + sp, dtype)
    samples = rng.random((2, 3, nd)).astype(dtype)
    samples[samples >= 1] = 0.5  # float16 rounding can hit 1.0
    fn = getattr(F, f"fractional_max_pool{nd}d")
    tv, ti = fn(T(x), k, output_size=out, return_indices=True, _random_samples=T(samples))
    rv, ri = R.ref_fractional_max_pool(x, k, out, samples)
    assert_same(rv, tv.numpy())
    assert_same(ri, ti.numpy())


def test_fractional_sample_columns():
    """2-d: samples[..., 0] drives W and [..., 1] drives H; 3-d: [0] T, [1] H, [2] W."""
    assert R.FRACTIONAL_SAMPLE_COLUMN == {2: (1, 0), 3: (0, 1, 2)}
    x = np.random.default_rng(0).standard_normal((1, 1, 20, 20))
    s = np.array([[[0.95, 0.05]]])
    _, ti = F.fractional_max_pool2d(T(x), 2, output_size=(7, 7), return_indices=True,
                                    _random_samples=T(s))
    _, ri = R.ref_fractional_max_pool(x, 2, (7, 7), s)
    assert_same(ri, ti.numpy())
    rows = (ti.numpy() // 20)[0, 0, :, 0]
    cols = (ti.numpy() % 20)[0, 0, 0, :]
    starts_u05 = R.fractional_intervals(0.05, 20, 7, 2)
    starts_u95 = R.fractional_intervals(0.95, 20, 7, 2)
    assert all(a <= r < a + 2 for a, r in zip(starts_u05, rows))
    assert all(a <= c < a + 2 for a, c in zip(starts_u95, cols))


def test_fractional_float16_interval_arithmetic():
    # PyTorch computes the intervals in the input's dtype: half arithmetic for float16
    rng = np.random.default_rng(3)
    differs = 0
    for _ in range(60):
        n = int(rng.integers(20, 60))
        o = int(rng.integers(2, n - 1))
        u = np.float16(rng.random())
        if u >= 1:
            continue
        a = R.fractional_intervals(u, n, o, 2, np.float16)
        b = R.fractional_intervals(u, n, o, 2, np.float64)
        differs += a != b
        x = rng.standard_normal((1, 1, 1, n)).astype(np.float16)
        s = np.array([[[u, 0]]], dtype=np.float16)
        _, ti = F.fractional_max_pool2d(T(x), (1, 2), output_size=(1, o), return_indices=True,
                                        _random_samples=T(s))
        _, ri = R.ref_fractional_max_pool(x, (1, 2), (1, o), s)
        assert_same(ri, ti.numpy())
    assert differs > 0


# ---------------------------------------------------------------------------------------------
# max unpooling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(NTRIALS))
def test_max_unpool_vs_torch(seed):
    rng = np.random.default_rng(11000 + seed)
    nd = 1 + seed % 3
    dtype = [np.float64, np.float32, np.int64, np.int16][(seed // 3) % 4]
    if seed % 2:
        # indices from a max pool (duplicates point at the same cell: same value)
        k, s, p, d, ceil_mode, sp = draw_window(rng, nd, dilation=False, ceil=False)
        x0 = make_input(rng, (2, 3) + sp, np.float64, special=False)
        _, idx = R.ref_max_pool(x0, k, s, [(v, v) for v in p], (1,) * nd, False)
        x = make_input(rng, idx.shape, dtype, nan=False, special=False)
        out_sp = sp
        got = getattr(F, f"max_unpool{nd}d")(T(x.astype(np.float64)), T(idx), k, s, p,
                                             output_size=out_sp).numpy().astype(dtype)
    else:
        in_sp = tuple(int(rng.integers(1, 5)) for _ in range(nd))
        out_sp = tuple(int(n + rng.integers(0, 4)) for n in in_sp)
        x = make_input(rng, (2, 3) + in_sp, dtype, nan=False, special=False)
        size = math.prod(out_sp)
        idx = np.stack([rng.permutation(size)[:math.prod(in_sp)] for _ in range(6)])
        idx = idx.reshape((2, 3) + in_sp).astype(np.int64)
        kk = tuple(o - n + 1 for o, n in zip(out_sp, in_sp))  # default size == out_sp
        got = getattr(F, f"max_unpool{nd}d")(T(x.astype(np.float64)), T(idx), kk, 1,
                                             output_size=out_sp).numpy().astype(dtype)
    # torch's max_unpool has no integer kernels: integers go through float64 (exact here)
    ref = R.ref_max_unpool(x, idx, out_sp)
    assert_same(ref, got)


def test_max_unpool_later_write_wins_and_range():
    x = np.array([[[1.0, 2.0, 3.0]]])
    idx = np.array([[[4, 4, 0]]])
    assert R.ref_max_unpool(x, idx, (5,)).ravel().tolist() == [3.0, 0, 0, 0, 2.0]
    with pytest.raises(ValueError):
        R.ref_max_unpool(x, np.array([[[5, 0, 1]]]), (5,))


# ---------------------------------------------------------------------------------------------
# backward references vs torch autograd
# ---------------------------------------------------------------------------------------------

def autograd(fn, x, grad_out_rng, dtype=np.float64):
    t = T(x).clone().requires_grad_(True)
    out = fn(t)
    if isinstance(out, tuple):
        out = out[0]
    g = make_input(grad_out_rng, tuple(out.shape), dtype, nan=False, special=False)
    out.backward(T(g))
    return g, t.grad.numpy()


@pytest.mark.parametrize("seed", range(NTRIALS))
def test_max_pool_backward_vs_autograd(seed):
    rng = np.random.default_rng(12000 + seed)
    nd = 1 + seed % 3
    dtype = [np.float64, np.float32][seed % 2]
    k, s, p, d, ceil_mode, sp = draw_window(rng, nd)
    x = make_input(rng, (2, 3) + sp, dtype)
    g, got = autograd(lambda t: getattr(F, f"max_pool{nd}d")(t, k, s, p, d, ceil_mode), x, rng,
                      dtype)
    ref = R.ref_max_pool_backward(g, x, k, s, [(v, v) for v in p], d, ceil_mode)
    rt, at = tol(dtype)
    assert_same(ref, got, exact=False, rtol=rt, atol=at)


@pytest.mark.parametrize("seed", range(NTRIALS))
def test_avg_pool_backward_vs_autograd(seed):
    rng = np.random.default_rng(13000 + seed)
    nd = 1 + seed % 3
    dtype = [np.float64, np.float32][seed % 2]
    k, s, p, d, ceil_mode, sp = draw_window(rng, nd, dilation=False, min_input_kernel=nd == 3)
    cip = bool(rng.integers(0, 2))
    div = None if rng.random() < 0.6 or nd == 1 else int(rng.choice([1, 2, 5]))
    x = make_input(rng, (2, 3) + sp, dtype, nan=False, special=False)
    if nd == 1:
        fn = lambda t: F.avg_pool1d(t, k, s, p, ceil_mode, cip)  # noqa: E731
    else:
        fn = lambda t: getattr(F, f"avg_pool{nd}d")(t, k, s, p, ceil_mode, cip, div)  # noqa
    g, got = autograd(fn, x, rng, dtype)
    ref = R.ref_avg_pool_backward(g, x, k, s, [(v, v) for v in p], ceil_mode, cip, div, d)
    rt, at = tol(dtype)
    assert_same(ref, got, exact=False, rtol=rt, atol=at)


@pytest.mark.parametrize("seed", range(NTRIALS))
def test_lp_pool_backward_vs_autograd(seed):
    rng = np.random.default_rng(14000 + seed)
    nd = 1 + seed % 3
    p = [1, 2, 3, 1.5, 2.5, math.inf][seed % 6]
    k, s, _, _, ceil_mode, sp = draw_window(rng, nd, dilation=False, max_pad_half=False)
    x = make_input(rng, (2, 3) + sp, np.float64, nan=False, special=False)
    if seed % 4 != 3:
        x = np.abs(x)
    if seed % 3 == 0:
        x[..., : sp[-1] // 2] = 0  # windows whose sum is zero: zero gradient in PyTorch
    kt, st = (k[0], s[0]) if nd == 1 else (k, s)
    g, got = autograd(lambda t: getattr(F, f"lp_pool{nd}d")(t, p, kt, st, ceil_mode), x, rng)
    ref = R.ref_lp_pool_backward(g, x, p, k, s, None, None, ceil_mode)
    assert_same(ref, got, exact=False, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(NTRIALS // 2))
def test_lp_pool_backward_padding_dilation_finite_differences(seed):
    rng = np.random.default_rng(15000 + seed)
    nd = 1 + seed % 3
    p = [1, 2, 3, 1.5][seed % 4]
    k, s, _, d, ceil_mode, _ = draw_window(rng, nd)
    pads, sp = draw_asymmetric(rng, k, s, d, ceil_mode, 4)
    x = rng.uniform(0.5, 2.0, (1, 2) + sp)
    out = R.ref_lp_pool(x, p, k, s, pads, d, ceil_mode)
    g = rng.standard_normal(out.shape)
    ref = R.ref_lp_pool_backward(g, x, p, k, s, pads, d, ceil_mode)
    eps = 1e-6
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        num[i] = ((R.ref_lp_pool(xp, p, k, s, pads, d, ceil_mode)
                   - R.ref_lp_pool(xm, p, k, s, pads, d, ceil_mode)) * g).sum() / (2 * eps)
    np.testing.assert_allclose(ref, num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(NTRIALS // 2))
def test_adaptive_backward_vs_autograd(seed):
    rng = np.random.default_rng(16000 + seed)
    nd = 1 + seed % 3
    sp, out = draw_adaptive(rng, nd)
    x = make_input(rng, (2, 3) + sp, np.float64, nan=seed % 3 == 0)
    g, got = autograd(lambda t: getattr(F, f"adaptive_max_pool{nd}d")(t, out), x, rng)
    assert_same(R.ref_adaptive_max_pool_backward(g, x, out), got, exact=False, rtol=1e-12)
    x = make_input(rng, (2, 3) + sp, np.float64, nan=False, special=False)
    g, got = autograd(lambda t: getattr(F, f"adaptive_avg_pool{nd}d")(t, out), x, rng)
    assert_same(R.ref_adaptive_avg_pool_backward(g, x, out), got, exact=False, rtol=1e-12)


@pytest.mark.parametrize("seed", range(NTRIALS // 2))
def test_fractional_backward_vs_autograd(seed):
    rng = np.random.default_rng(17000 + seed)
    nd = 2 + seed % 2
    k = tuple(int(rng.integers(1, 4)) for _ in range(nd))
    sp = tuple(int(rng.integers(kk + 1, kk + 7)) for kk in k)
    out = tuple(int(rng.integers(1, n - kk + 1)) for n, kk in zip(sp, k))
    x = make_input(rng, (2, 3) + sp, np.float64)
    samples = rng.random((2, 3, nd))
    fn = getattr(F, f"fractional_max_pool{nd}d")
    g, got = autograd(lambda t: fn(t, k, output_size=out, _random_samples=T(samples)), x, rng)
    ref = R.ref_fractional_max_pool_backward(g, x, k, out, samples)
    assert_same(ref, got, exact=False, rtol=1e-12)


@pytest.mark.parametrize("seed", range(NTRIALS // 2))
def test_max_unpool_backward_vs_autograd(seed):
    rng = np.random.default_rng(18000 + seed)
    nd = 1 + seed % 3
    k, s, p, _, _, sp = draw_window(rng, nd, dilation=False, ceil=False)
    x0 = make_input(rng, (2, 3) + sp, np.float64, special=False)
    _, idx = R.ref_max_pool(x0, k, s, [(v, v) for v in p], (1,) * nd, False)
    x = make_input(rng, idx.shape, np.float64, nan=False, special=False)
    fn = getattr(F, f"max_unpool{nd}d")
    g, got = autograd(lambda t: fn(t, T(idx), k, s, p, output_size=sp), x, rng)
    ref = R.ref_max_unpool_backward(g, x, idx, sp)
    assert_same(ref, got, exact=False, rtol=1e-12)
