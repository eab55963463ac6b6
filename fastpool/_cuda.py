"""CUDA arrays: the forward window operators as ``numba.cuda`` kernels.

An input with ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba device arrays)
runs here and gets back the same kind of object, without copies to the host.  This build's GPU
kernels cover max pooling (with indices), average and Lp pooling, and adaptive max (with
indices) and average pooling, 1-3 spatial dims, both layouts, any strides, every dtype the CPU
takes; the other operators and the gradients are a ``TypeError`` for CUDA arrays.

The geometry, and every argument check, is the CPU path's own (``functional._window``,
``_adaptive_params``: the per-dim window tables, copied to the device once per call).  One
thread computes one output cell of the logical (N, C, D, H, W) view: its window's taps in
row-major order (max: a larger value or a NaN takes the cell, so ties keep the first maximum
and a NaN the last one; a window without an input cell keeps the dtype's lowest value and the
position of its first tap, as the CPU kernels), sums in float32 (float64 for float64 input,
int64 for integers, truncated toward zero like PyTorch), Lp as PyTorch's
``(avg_pool(x ** p) * kernel_numel) ** (1 / p)``.  The strided views are built over the
caller's memory (``DeviceNDArray`` over its ``gpu_data``), so strided and channels-last inputs
run in place; results are C-contiguous in the input's axis order.

Without a GPU these kernels run under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, set
before Numba is imported): ``tests/test_cuda.py`` runs them that way in a process of its own.
"""
import math
import sys

import numpy as np

from ._dtypes import AVG_DTYPES, FLOAT_DTYPES, MAX_DTYPES, check_dtype
from ._params import split_shape

_SIM = "numba.cuda.simulator.cudadrv.devicearray"
_OPS = ("max_pool", "avg_pool", "lp_pool", "adaptive_max_pool", "adaptive_avg_pool")
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


def _make(kind, idt, CV, ACC, OUT):
    global cuda
    from numba import cuda
    MAX = kind == "max"
    LP = kind == "lp"
    IDX = idt is not None
    IT = np.dtype(idt if IDX else np.int64).type
    INT = np.dtype(ACC).kind != "f"

    @cuda.jit(device=True)
    def tpow(v, e):
        if e == 2.0:
            return v * v
        if e == 3.0:
            return v * v * v
        if e == 0.5:
            return math.sqrt(v)
        return v ** ACC(e)

    @cuda.jit
    def kernel(x, out, idx, tab, dil, divmode, dov, init, p, knz, total):
        t = cuda.grid(1)
        if t >= total:
            return
        C = out.shape[1]
        OD = out.shape[2]
        OH = out.shape[3]
        OW = out.shape[4]
        H = x.shape[3]
        W = x.shape[4]
        ow = t % OW
        r = t // OW
        oh = r % OH
        r = r // OH
        od = r % OD
        r = r // OD
        c = r % C
        n = r // C
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


def run(name, rank, p):
    """The CUDA call of operator ``name`` (bound arguments ``p``, NumPy defaults applied)."""
    op = name
    kind = next((k for k in sorted(_OPS, key=len, reverse=True) if name.startswith(k)), None)
    if kind is None or name.endswith("_backward"):
        raise TypeError(f"{op}: CUDA arrays run max, average, Lp and adaptive max/average "
                        f"pooling in this build; {op} takes NumPy (or Dask) arrays")
    if p.get("out") is not None:
        raise TypeError(f"{op}: out= is not supported for CUDA arrays")
    for k, v in p.items():
        if k != "input" and v is not None and is_cuda(v):
            raise TypeError(f"{op}: {k} must not be a CUDA array")
    from . import functional as f
    original = p["input"]
    x = _device(op, original)
    dtype = np.dtype(x.dtype)
    adaptive = kind.startswith("adaptive")
    base = kind.replace("adaptive_", "").replace("_pool", "")  # max / avg / lp
    check_dtype(dtype, FLOAT_DTYPES if base == "lp" else
                AVG_DTYPES if base == "avg" else MAX_DTYPES, op)
    cl = bool(p.get("channels_last", False))
    batched, N, C, spatial = split_shape(op, tuple(x.shape), rank, cl)
    divmode, dov, pn, knumel = 2, 1, 1.0, 1
    if adaptive:
        osp, tab, _ = f._adaptive_params(op, rank, spatial, p["output_size"])
        if tab is None:  # (an output size of 0)
            tab = np.zeros((3, 3, 1), np.int64)
        dil = np.ones(3, np.int64)
    else:
        if base == "max":
            _, _, _, _, osp, tab, dil = f._window(op, rank, spatial, p["kernel_size"],
                                                  p["stride"], p["padding"], p["dilation"],
                                                  bool(p["ceil_mode"]))
        elif base == "avg":
            _, _, _, _, osp, tab, dil = f._window(op, rank, spatial, p["kernel_size"],
                                                  p["stride"], p["padding"], p["dilation"],
                                                  bool(p["ceil_mode"]), "avg")
            divmode, dov = f._avg_divisor(op, bool(p["count_include_pad"]),
                                          p["divisor_override"])
        else:
            pn = f._norm_type(op, p["norm_type"])
            k, _, _, _, osp, tab, dil = f._window(op, rank, spatial, p["kernel_size"],
                                                  p["stride"], p["padding"], p["dilation"],
                                                  bool(p["ceil_mode"]), "lp")
            divmode, knumel = 1, math.prod(k)
    with_idx = base == "max" and bool(p.get("return_indices", False))
    idt = f._index_dtype(op, p.get("index_dtype", np.int64), math.prod(spatial)) \
        if with_idx else np.dtype(np.int64)
    from numba import cuda
    osp = tuple(int(v) for v in osp)
    shape = ((N,) if batched else ()) + ((*osp, C) if cl else (C, *osp))
    res = cuda.device_array(shape, dtype)
    ires = cuda.device_array(shape if with_idx else (1,) * len(shape), idt)
    total = N * C * math.prod(osp)
    if total:
        fl = dtype.kind == "f"
        acc = np.float64 if dtype == np.float64 else np.float32 if fl else np.int64
        cv = acc if fl else dtype.type  # (integer max compares in the input's own type)
        init = (acc(-np.inf) if fl else f._lowest(dtype)) if base == "max" else acc(0)
        x5 = _logical5(x, batched, cl, rank)
        o5 = _logical5(res, batched, cl, rank)
        i5 = _logical5(ires, batched, cl, rank) if with_idx else \
            _view(ires, (1,) * 5, (0,) * 5)
        kern = _kernel(base, idt if with_idx else None, cv, acc, dtype)
        blocks = -(-total // THREADS)
        kern[blocks, THREADS](x5, o5, i5, cuda.to_device(np.ascontiguousarray(tab)),
                              cuda.to_device(np.ascontiguousarray(dil, np.int64)),
                              np.int64(divmode), np.int64(dov), init, np.float64(pn),
                              acc(knumel), np.int64(total))
    out = _like(res, original)
    return (out, _like(ires, original)) if with_idx else out
