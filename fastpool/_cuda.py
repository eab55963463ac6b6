"""CUDA arrays: every operator and gradient as ``numba.cuda`` kernels.

An input with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba device arrays)
runs here and gets back the same kind of object, without copies of the data to the host.  The
geometry, and every argument check, is the CPU path's own (``functional._window``,
``_adaptive_params``, ``_fractional_size``, ``_unpool_geometry``: the per-dim window tables,
copied to the device once per call).

Forward window operators: one thread per output cell of the logical (N, C, D, H, W) view, its
window's taps in row-major order (max: a larger value or a NaN takes the cell, so ties keep the
first maximum and a NaN the last one; a window without an input cell keeps the dtype's lowest
value and the position of its first tap, as the CPU kernels), sums in float32 (float64 for
float64 input, int64 for integers, truncated toward zero like PyTorch), Lp as PyTorch's
``(avg_pool(x ** p) * kernel_numel) ** (1 / p)``.  Gradients of max-type operators: one thread
per plane adding the gradients at the indices in output order from +0 (the CPU's sums);
average, Lp and adaptive average: one thread per input cell over the windows that hold it.
Unpooling: one thread per plane, input order.  The strided views are built over the caller's
memory (``DeviceNDArray`` over its ``gpu_data``), so strided and channels-last inputs run in
place; results are C-contiguous in the input's axis order.

Without a GPU these kernels run under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set
before Numba is imported): ``tests/test_cuda.py`` runs ``tests/sim_cuda.py`` that way in a
process of its own.
"""
import math
import sys

import numpy as np

from ._dtypes import AVG_DTYPES, FLOAT_DTYPES, MAX_DTYPES, check_dtype
from ._params import split_shape

_SIM = "numba.cuda.simulator.cudadrv.devicearray"
THREADS = 128  # threads per block


def is_cuda(a):
    """A CUDA array (or, under the simulator, its stand-in)?"""
    try:
        if hasattr(a, "__cuda_array_interface__") and not isinstance(a, np.ndarray):
            return True
    except Exception:  # (a CUDA tensor that refuses the interface: _device reports it)
        return True
    m = sys.modules.get(_SIM)
    return m is not None and isinstance(a, m.FakeCUDAArray)


def _device(op, a):
    from numba import cuda
    m = sys.modules.get(_SIM)
    if m is not None and isinstance(a, m.FakeCUDAArray):
        return a
    try:
        return cuda.as_cuda_array(a)
    except Exception as exc:
        raise TypeError(f"{op}: input is a CUDA array that Numba cannot read ({exc})") from None


def _view(d, shape, strides):
    """A view of device array ``d``'s memory with byte ``strides`` (its first element first)."""
    m = sys.modules.get(_SIM)
    if m is not None and isinstance(d, m.FakeCUDAArray):
        return m.FakeCUDAArray(np.lib.stride_tricks.as_strided(d._ary, shape, strides))
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(shape, strides, d.dtype, gpu_data=d.gpu_data)


def _logical5(d, batched, cl, rank):
    """(N, C, D, H, W) view of an array of shape (N?, C, *spatial) or (N?, *spatial, C)."""
    shape, strides = list(d.shape), list(d.strides)
    if not batched:
        shape.insert(0, 1)
        strides.insert(0, 0)
    if cl:
        shape.insert(1, shape.pop())
        strides.insert(1, strides.pop())
    pad = 3 - rank
    shape[2:2] = [1] * pad
    strides[2:2] = [0] * pad
    return _view(d, tuple(shape), tuple(strides))


def _like(res, original):
    """``res`` (a device array) as the kind of object ``original`` is."""
    mod = type(original).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy.asarray(res)
    if mod.startswith("torch"):
        import torch
        return torch.as_tensor(res, device=original.device)
    return res


_KERNELS = {}


def _kernel(kind, idt, cv, acc, dtype):
    """The kernel of ``kind`` (max / avg / lp; indices of type ``idt``, None: none); taps read
    as ``cv``, sums in ``acc``, results stored as ``dtype``."""
    key = (kind, idt and np.dtype(idt).name, np.dtype(cv).name, np.dtype(acc).name,
           np.dtype(dtype).name)
    if key not in _KERNELS:
        _KERNELS[key] = _make(kind, idt, cv, acc, np.dtype(dtype).type)
    return _KERNELS[key]


cuda = None  # numba.cuda, imported on the first CUDA call (a global: the simulator swaps it)


def _cell():
    """Device function ``cell(t, a)``: the (n, c, z, y, w) of flat cell ``t`` of 5-d ``a``."""
    if "cell" not in _KERNELS:
        global cuda
        from numba import cuda

        @cuda.jit(device=True)
        def cell(t, a):
            w = t % a.shape[4]
            r = t // a.shape[4]
            y = r % a.shape[3]
            r = r // a.shape[3]
            z = r % a.shape[2]
            r = r // a.shape[2]
            return r // a.shape[1], r % a.shape[1], z, y, w

        @cuda.jit(device=True)
        def clear(a, pl, v):
            """Plane ``pl`` (= n * C + c) of 5-d ``a`` set to ``v``; returns (n, c)."""
            n = pl // a.shape[1]
            c = pl % a.shape[1]
            for z in range(a.shape[2]):
                for y in range(a.shape[3]):
                    for w in range(a.shape[4]):
                        a[n, c, z, y, w] = v
            return n, c
        @cuda.jit(device=True)
        def at(j, a):
            """The (z, y, w) of flat in-plane position ``j`` of 5-d ``a``."""
            hw = a.shape[3] * a.shape[4]
            z = j // hw
            r = j - z * hw
            y = r // a.shape[4]
            return z, y, r - y * a.shape[4]
        _KERNELS["cell"] = cell
        _KERNELS["clear"] = clear
        _KERNELS["at"] = at
    return _KERNELS["cell"]


def _tpow(ACC):
    """Device function ``tpow(v, e)``: ``v ** e`` in ``ACC`` with PyTorch's special cases
    (``_cpu/window.tpow``) for the exponents Lp pooling meets most."""
    key = ("tpow", np.dtype(ACC).name)
    if key not in _KERNELS:
        global cuda
        from numba import cuda

        @cuda.jit(device=True)
        def tpow(v, e):
            if e == 2.0:
                return v * v
            if e == 3.0:
                return v * v * v
            if e == 0.5:
                return math.sqrt(v)
            if e == 1.0:
                return v
            return v ** ACC(e)
        _KERNELS[key] = tpow
    return _KERNELS[key]


def _make(kind, idt, CV, ACC, OUT):
    global cuda
    from numba import cuda
    MAX = kind == "max"
    LP = kind == "lp"
    IDX = idt is not None
    cell = _cell()
    tpow = _tpow(ACC)
    IT = np.dtype(idt if IDX else np.int64).type
    INT = np.dtype(ACC).kind != "f"

    @cuda.jit
    def kernel(x, out, idx, tab, dil, divmode, dov, init, p, knz, total):
        t = cuda.grid(1)
        if t >= total:
            return
        H = x.shape[3]
        W = x.shape[4]
        n, c, od, oh, ow = cell(t, out)
        d0 = tab[0, 0, od]
        nd = tab[0, 1, od]
        h0 = tab[1, 0, oh]
        nh = tab[1, 1, oh]
        w0 = tab[2, 0, ow]
        nw = tab[2, 1, ow]
        dd = dil[0]
        dh = dil[1]
        dw = dil[2]
        if MAX:
            m = init
            mi = (d0 * H + h0) * W + w0
            for a in range(nd):
                z = d0 + a * dd
                for b in range(nh):
                    y = h0 + b * dh
                    for e in range(nw):
                        w = w0 + e * dw
                        v = CV(x[n, c, z, y, w])
                        if v > m or v != v:
                            m = v
                            mi = (z * H + y) * W + w
            out[n, c, od, oh, ow] = OUT(m)
            if IDX:
                idx[n, c, od, oh, ow] = IT(mi)
        else:
            s = ACC(0)
            for a in range(nd):
                z = d0 + a * dd
                for b in range(nh):
                    y = h0 + b * dh
                    for e in range(nw):
                        v = ACC(x[n, c, z, y, w0 + e * dw])
                        if LP:
                            s += tpow(v, p)
                        else:
                            s += v
            if divmode == 0:
                div = dov
            elif divmode == 1:
                div = tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow]
            else:
                div = nd * nh * nw
            if LP:
                q = s / ACC(div) * knz
                if p == 2.0:
                    out[n, c, od, oh, ow] = OUT(math.sqrt(q))
                elif p == 1.0:
                    out[n, c, od, oh, ow] = OUT(q)
                else:
                    out[n, c, od, oh, ow] = OUT(q ** ACC(1.0 / p))
            elif INT:  # truncated toward zero, as PyTorch's integer average
                qi = s // div
                if qi < 0 and qi * div != s:
                    qi += 1
                out[n, c, od, oh, ow] = OUT(qi)
            else:
                out[n, c, od, oh, ow] = OUT(s / ACC(div))
    return kernel


def _more_kernels():
    """The kernels of the other operators and the gradients (built once, on first use)."""
    if "unpool" in _KERNELS:
        return _KERNELS
    global cuda
    from numba import cuda
    cell = _cell()
    clear = _KERNELS["clear"]
    at = _KERNELS["at"]

    @cuda.jit
    def unpool(x, idx, out, bad, planes):
        """Per plane, in input order: out[idx[i]] = x[i] (later cells win), out zeroed first;
        an index outside the output plane: bad[plane] = (1, index), the plane left zero."""
        pl = cuda.grid(1)
        if pl >= planes:
            return
        n, c = clear(out, pl, 0)
        S = out.shape[2] * out.shape[3] * out.shape[4]
        for z in range(x.shape[2]):
            for y in range(x.shape[3]):
                for w in range(x.shape[4]):
                    j = idx[n, c, z, y, w]
                    if j < 0 or j >= S:
                        bad[pl, 0] = 1
                        bad[pl, 1] = j
                        return
        for z in range(x.shape[2]):
            for y in range(x.shape[3]):
                for w in range(x.shape[4]):
                    a, b, e = at(idx[n, c, z, y, w], out)
                    out[n, c, a, b, e] = x[n, c, z, y, w]

    @cuda.jit
    def unpool_back(g, idx, gin, bad, total):
        """gin[i] = g[idx[i]] per plane; an index outside g's plane: bad[plane] = (1, index)."""
        t = cuda.grid(1)
        if t >= total:
            return
        n, c, z, y, w = cell(t, gin)
        j = idx[n, c, z, y, w]
        if j < 0 or j >= g.shape[2] * g.shape[3] * g.shape[4]:
            bad[n * gin.shape[1] + c, 0] = 1
            bad[n * gin.shape[1] + c, 1] = j
            gin[n, c, z, y, w] = 0
            return
        a, b, e = at(j, g)
        gin[n, c, z, y, w] = g[n, c, a, b, e]

    _KERNELS.update(unpool=unpool, unpool_back=unpool_back)
    return _KERNELS


def _typed(name, *types_):
    """Kernels specialised on element types: ``scatter`` (ACC), ``convert`` (OUT),
    ``fractional`` (CV, OUT, IT)."""
    types_ = tuple(np.dtype(t).type for t in types_)
    key = (name,) + tuple(np.dtype(t).name for t in types_)
    if key in _KERNELS:
        return _KERNELS[key]
    global cuda
    from numba import cuda
    cell = _cell()
    clear = _KERNELS["clear"]
    at = _KERNELS["at"]
    if name == "scatter":
        (ACC,) = types_

        @cuda.jit
        def kern(g, idx, acc, bad, past, planes):
            """Per plane, in output order: acc[idx[o]] += g[o] (acc zeroed first).  Indices
            from the plane's size up to ``past`` name no cell (windows without an input cell:
            PyTorch's index of their first tap past the input) and add nothing; any other
            outside the plane: bad[plane] = (1, index), nothing added from there on."""
            pl = cuda.grid(1)
            if pl >= planes:
                return
            n, c = clear(acc, pl, ACC(0))
            S = acc.shape[2] * acc.shape[3] * acc.shape[4]
            for od in range(g.shape[2]):
                for oh in range(g.shape[3]):
                    for ow in range(g.shape[4]):
                        j = idx[n, c, od, oh, ow]
                        if j < 0 or j >= past:
                            bad[pl, 0] = 1
                            bad[pl, 1] = j
                            return
                        if j >= S:
                            continue
                        z, y, w = at(j, acc)
                        acc[n, c, z, y, w] += ACC(g[n, c, od, oh, ow])
    elif name == "convert":
        (OUT,) = types_

        @cuda.jit
        def kern(src, dst, total):  # dst (5-d) = src as dst's type
            t = cuda.grid(1)
            if t < total:
                n, c, z, y, w = cell(t, src)
                dst[n, c, z, y, w] = OUT(src[n, c, z, y, w])
    else:
        CV, OUT, IT = types_

        @cuda.jit
        def kern(x, out, idx, starts, k, init, want, total):
            """Max over each output's window (per-plane starts, sizes k), with its index."""
            t = cuda.grid(1)
            if t >= total:
                return
            H = x.shape[3]
            W = x.shape[4]
            n, c, od, oh, ow = cell(t, out)
            d0 = starts[n, c, 0, od]
            h0 = starts[n, c, 1, oh]
            w0 = starts[n, c, 2, ow]
            m = init
            mi = (d0 * H + h0) * W + w0
            for a in range(k[0]):
                for b in range(k[1]):
                    for e in range(k[2]):
                        v = CV(x[n, c, d0 + a, h0 + b, w0 + e])
                        if v > m or v != v:
                            m = v
                            mi = ((d0 + a) * H + h0 + b) * W + w0 + e
            out[n, c, od, oh, ow] = OUT(m)
            if want:
                idx[n, c, od, oh, ow] = IT(mi)
    _KERNELS[key] = kern
    return kern


def _gather_kernel(kind, ACC, OUT):
    """Gradients of average / Lp (``kind``) and adaptive average ("adaptive") pooling as a
    gather: each input cell sums the shares of the windows that hold it, in output order."""
    key = ("gather", kind, np.dtype(ACC).name, np.dtype(OUT).name)
    if key in _KERNELS:
        return _KERNELS[key]
    global cuda
    from numba import cuda
    LP = kind == "lp"
    ADA = kind == "adaptive"
    cell = _cell()
    tpow = _tpow(ACC)

    @cuda.jit(device=True)
    def span(i, dim, geo, O):
        """The outputs along ``dim`` whose windows may hold input position ``i``."""
        if ADA:
            n = geo[dim, 0]
            lo = max((i * O) // n - 1, 0)
            hi = min(((i + 1) * O) // n + 1, O - 1)
            return lo, hi
        k = geo[dim, 0]
        s = geo[dim, 1]
        pb = geo[dim, 2]
        d = geo[dim, 3]
        top = i + pb
        lo = max(-((-(top - (k - 1) * d)) // s), 0)
        hi = min(top // s, O - 1)
        return lo, hi

    @cuda.jit(device=True)
    def holds(i, o, dim, geo, O):
        if ADA:
            n = geo[dim, 0]
            return (o * n) // O <= i and i < -((-(o + 1) * n) // O)
        k = geo[dim, 0]
        s = geo[dim, 1]
        pb = geo[dim, 2]
        d = geo[dim, 3]
        t = i + pb - o * s
        return t >= 0 and t % d == 0 and t // d < k

    @cuda.jit
    def kernel(g, x, gin, tab, dil, geo, divmode, dov, p, knz, total):
        t = cuda.grid(1)
        if t >= total:
            return
        n, c, z, y, w = cell(t, gin)
        OD = g.shape[2]
        OH = g.shape[3]
        OW = g.shape[4]
        zl, zh = span(z, 0, geo, OD)
        yl, yh = span(y, 1, geo, OH)
        wl, wh = span(w, 2, geo, OW)
        acc = ACC(0)
        for od in range(zl, zh + 1):
            if not holds(z, od, 0, geo, OD):
                continue
            for oh in range(yl, yh + 1):
                if not holds(y, oh, 1, geo, OH):
                    continue
                for ow in range(wl, wh + 1):
                    if not holds(w, ow, 2, geo, OW):
                        continue
                    gv = ACC(g[n, c, od, oh, ow])
                    if divmode == 0:
                        div = dov
                    elif divmode == 1:
                        div = tab[0, 2, od] * tab[1, 2, oh] * tab[2, 2, ow]
                    else:
                        div = tab[0, 1, od] * tab[1, 1, oh] * tab[2, 1, ow]
                    if LP:  # the window's mean of x ** p, then PyTorch's share
                        sm = ACC(0)
                        for a in range(tab[0, 1, od]):
                            zz = tab[0, 0, od] + a * dil[0]
                            for b in range(tab[1, 1, oh]):
                                yy = tab[1, 0, oh] + b * dil[1]
                                for e in range(tab[2, 1, ow]):
                                    sm += tpow(ACC(x[n, c, zz, yy, tab[2, 0, ow] + e * dil[2]]),
                                               p)
                        A = sm / ACC(div)
                        if A != 0:
                            ee = ACC(1.0 / p)
                            gy = gv * (ee * (A * knz) ** (ee - ACC(1)))
                            sh = (gy * knz) / ACC(div)
                            if A != A:
                                sh = sh * ACC(0)
                            acc += sh
                    else:
                        acc += gv / ACC(div)
        if LP:
            xv = ACC(x[n, c, z, y, w])
            if p == 1.0:
                acc = acc * ACC(p)
            elif p == 2.0:
                acc = acc * (ACC(p) * xv)
            else:
                acc = acc * (ACC(p) * tpow(xv, p - 1.0))
        gin[n, c, z, y, w] = OUT(acc)
    _KERNELS[key] = kernel
    return kernel


def _launch(kern, total, *args):
    if total > 0:
        kern[-(-total // THREADS), THREADS](*args)


def _bad(op, bad, name, limit, what):
    b = bad.copy_to_host()  # (one flag and index per plane: no data)
    if b[:, 0].any():
        t = int(np.argmax(b[:, 0] != 0))
        raise ValueError(f"{op}: {name} holds {int(b[t, 1])} in plane {t}, outside [0, {limit}) "
                         f"({what})")


_FAMILIES = ("adaptive_max_pool", "adaptive_avg_pool", "fractional_max_pool", "max_unpool",
             "max_pool", "avg_pool", "lp_pool")


def run(name, rank, p):
    """The CUDA call of operator ``name`` (bound arguments ``p``, NumPy defaults applied)."""
    op = name
    from . import functional as f
    from numba import cuda
    if p.get("out") is not None:
        raise TypeError(f"{op}: out= is not supported for CUDA arrays")
    backward = name.endswith("_backward")
    fam = next(k for k in _FAMILIES if name.startswith(k))
    original = p["input"]
    x = _device(op, original)
    dtype = np.dtype(x.dtype)
    # the other arrays: CUDA arrays too (random samples, a few numbers a plane, may be NumPy)
    arrs = {}
    for k in ("grad_output", "indices"):
        v = p.get(k)
        if v is None:
            continue
        if not is_cuda(v):
            raise TypeError(f"{op}: {k} must be a CUDA array like input, got "
                            f"{type(v).__name__}")
        arrs[k] = _device(op, v)
    cl = bool(p.get("channels_last", False))
    if backward or fam.startswith("lp"):
        dtypes = FLOAT_DTYPES
    else:
        dtypes = AVG_DTYPES if "avg" in fam else MAX_DTYPES
    check_dtype(dtype, dtypes, op)
    batched, N, C, spatial = split_shape(op, tuple(x.shape), rank, cl)

    def user(shape5_sp):
        return ((N,) if batched else ()) + ((*shape5_sp, C) if cl else (C, *shape5_sp))

    def five(d):
        return _logical5(d, batched, cl, rank)

    fl = dtype.kind == "f"
    acc = np.float64 if dtype == np.float64 else np.float32 if fl else np.int64
    K = _more_kernels() if fam == "max_unpool" else None
    # ---- geometry (the CPU path's own helpers: every argument checked there)
    divmode, dov, pn, knumel = 2, 1, 1.0, 1
    geo = np.zeros((3, 4), np.int64)
    geo[:, 0] = 1
    geo[:, 1] = 1
    geo[:, 3] = 1
    tab = dil = None
    past = math.prod(spatial)  # (the max gradient's bound on indices that name no cell)
    if fam in ("max_pool", "avg_pool", "lp_pool"):
        kind = fam.split("_")[0]
        if kind == "lp":
            pn = f._norm_type(op, p["norm_type"])
        k, s_, d_, pads, osp, tab, dil = f._window(op, rank, spatial, p["kernel_size"],
                                                   p["stride"], p["padding"], p["dilation"],
                                                   bool(p["ceil_mode"]),
                                                   None if kind == "max" else kind)
        if kind == "avg":
            divmode, dov = f._avg_divisor(op, bool(p["count_include_pad"]),
                                          p["divisor_override"])
        elif kind == "lp":
            divmode, knumel = 1, math.prod(k)
        for i in range(rank):
            geo[3 - rank + i] = (k[i], s_[i], pads[i][0], d_[i])
        if kind == "max":
            from .backward import _past_plane
            pad3 = (1,) * (3 - rank)
            past = _past_plane(tab, dil, pad3 + tuple(spatial),
                               pad3 + tuple(int(v) for v in osp), pad3 + tuple(k))
    elif fam.startswith("adaptive"):
        kind = fam.split("_")[1]
        osp, tab, _ = f._adaptive_params(op, rank, spatial, p["output_size"])
        if tab is None:  # (an output size of 0)
            tab = np.zeros((3, 3, 1), np.int64)
        dil = np.ones(3, np.int64)
        for i in range(rank):
            geo[3 - rank + i, 0] = spatial[i]
    elif fam == "fractional_max_pool":
        kind = "max"
        k, osp = f._fractional_size(op, rank, spatial, p["kernel_size"], p["output_size"],
                                    p["output_ratio"])
    else:  # max_unpool: its input is the pooled values, its output the unpooled size
        kind = "unpool"
        osp = f._unpool_geometry(op, rank, spatial, p["kernel_size"], p["stride"],
                                 p["padding"], p["output_size"])
    osp = tuple(int(v) for v in osp)
    planes = N * C
    # ---- forward
    if not backward:
        if fam == "max_unpool":
            idx = arrs.get("indices")
            if idx is None or np.dtype(idx.dtype).kind not in "iu":
                raise TypeError(f"{op}: indices must be an integer CUDA array")
            if tuple(idx.shape) != tuple(x.shape):
                raise ValueError(f"{op}: indices has shape {tuple(idx.shape)}, expected the "
                                 f"input's {tuple(x.shape)}")
            res = cuda.device_array(user(osp), dtype)
            bad = cuda.to_device(np.zeros((max(planes, 1), 2), np.int64))
            _launch(K["unpool"], planes, five(x), five(idx), five(res), bad, np.int64(planes))
            _bad(op, bad, "indices", math.prod(osp), "the output plane's cells")
            return _like(res, original)
        with_idx = kind == "max" and bool(p.get("return_indices", False))
        idt = f._index_dtype(op, p.get("index_dtype", np.int64), math.prod(spatial)) \
            if with_idx else np.dtype(np.int64)
        res = cuda.device_array(user(osp), dtype)
        ires = cuda.device_array(user(osp) if with_idx else (1,) * x.ndim, idt)
        total = planes * math.prod(osp)
        i5 = five(ires) if with_idx else _view(ires, (1,) * 5, (0,) * 5)
        if fam == "fractional_max_pool":
            starts = _starts(op, f, p, N, C, rank, spatial, k, osp, dtype, batched)
            init = acc(-np.inf) if fl else f._lowest(dtype)
            k3 = np.array((1,) * (3 - rank) + tuple(k), np.int64)
            kern = _typed("fractional", acc if fl else dtype, dtype, idt)
            _launch(kern, total, five(x), five(res), i5, cuda.to_device(starts),
                    cuda.to_device(k3), init, bool(with_idx), np.int64(total))
        elif total:
            cv = acc if fl else dtype.type  # (integer max compares in the input's own type)
            init = (acc(-np.inf) if fl else f._lowest(dtype)) if kind == "max" else acc(0)
            kern = _kernel(kind, idt if with_idx else None, cv, acc, dtype)
            _launch(kern, total, five(x), five(res), i5, cuda.to_device(np.ascontiguousarray(tab)),
                    cuda.to_device(np.ascontiguousarray(dil, np.int64)), np.int64(divmode),
                    np.int64(dov), init, np.float64(pn), acc(knumel), np.int64(total))
        out = _like(res, original)
        return (out, _like(ires, original)) if with_idx else out
    # ---- gradients: grad_output of the forward output's shape and the input's dtype
    g = arrs.get("grad_output")
    if g is None:
        raise TypeError(f"{op}: grad_output must be a CUDA array like input")
    want = user(osp)
    if tuple(g.shape) != want:
        raise ValueError(f"{op}: grad_output has shape {tuple(g.shape)}, expected {want} (the "
                         f"shape of the forward output)")
    if np.dtype(g.dtype) != dtype:
        raise TypeError(f"{op}: grad_output has dtype {np.dtype(g.dtype)}, expected the "
                        f"input's dtype {dtype}")
    gin = cuda.device_array(tuple(x.shape), dtype)
    cells = planes * math.prod(spatial)
    if fam == "max_unpool":
        idx = arrs.get("indices")
        if idx is None or tuple(idx.shape) != tuple(x.shape) or \
                np.dtype(idx.dtype).kind not in "iu":
            raise ValueError(f"{op}: indices must be an integer CUDA array of the input's shape "
                             f"{tuple(x.shape)}")
        bad = cuda.to_device(np.zeros((max(planes, 1), 2), np.int64))
        _launch(K["unpool_back"], cells, five(g), five(idx), five(gin), bad, np.int64(cells))
        _bad(op, bad, "indices", math.prod(osp), "grad_output's plane")
        return _like(gin, original)
    if kind == "max":  # from the indices (given, or the forward's on the device)
        idx = arrs.get("indices")
        if idx is None:
            fwd = dict(p)
            fwd.pop("grad_output", None)
            fwd.pop("indices", None)
            fwd["return_indices"] = True
            fwd["input"] = x
            if fam == "fractional_max_pool":
                if p.get("random_samples") is None and p.get("_random_samples") is None:
                    raise ValueError(f"{op}: needs the forward's indices or its random_samples "
                                     f"to know the windows")
            idx = run(fam + f"{rank}d", rank, {k: v for k, v in fwd.items()
                                               if k in _forward_params(fam, f, rank)})[1]
        if tuple(idx.shape) != want or np.dtype(idx.dtype).kind not in "iu":
            raise ValueError(f"{op}: indices must be an integer CUDA array of the forward "
                             f"output's shape {want}")
        gacc = gin if np.dtype(acc) == dtype else cuda.device_array(tuple(x.shape), acc)
        bad = cuda.to_device(np.zeros((max(planes, 1), 2), np.int64))
        _launch(_typed("scatter", acc), planes, five(g), five(idx), five(gacc), bad,
                np.int64(past), np.int64(planes))
        _bad(op, bad, "indices", math.prod(spatial), "the input plane's cells")
        if gacc is not gin:
            _launch(_typed("convert", dtype), cells, five(gacc), five(gin), np.int64(cells))
        return _like(gin, original)
    # average, Lp, adaptive average: a gather over the covering windows
    kern = _gather_kernel("adaptive" if fam.startswith("adaptive") else kind, acc,
                          dtype.type)
    _launch(kern, cells, five(g), five(x), five(gin), cuda.to_device(np.ascontiguousarray(tab)),
            cuda.to_device(np.ascontiguousarray(dil, np.int64)), cuda.to_device(geo),
            np.int64(divmode), np.int64(dov), np.float64(pn), acc(knumel), np.int64(cells))
    return _like(gin, original)


def _forward_params(fam, f, rank):
    import inspect
    return set(inspect.signature(getattr(f, f"{fam}{rank}d")).parameters)


def _starts(op, f, p, N, C, rank, spatial, k, osp, dtype, batched):
    """Fractional pooling's window starts (host arithmetic, as the CPU path's)."""
    shape = (N if batched else 1, C, rank)
    samples = p.get("random_samples")
    if samples is None:
        samples = p.get("_random_samples")
    if samples is not None and is_cuda(samples):
        samples = _device(op, samples).copy_to_host()  # (a few numbers a plane)
    samples = f._samples(op, samples, shape)
    return np.ascontiguousarray(f._fractional_starts(op, samples, spatial, k, osp, dtype))
