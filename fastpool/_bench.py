"""Benchmark suite: fastpool against PyTorch, ONNX Runtime and JAX on CPU.

Run it with ``python -m fastpool bench`` (see ``--help``); ``bench/test_bench.py`` runs the same
workload table under pytest-benchmark.

Importing this module is cheap: it needs only the standard library and NumPy.  fastpool itself,
Numba and the peers (torch, onnxruntime + onnx, jax) are imported when a benchmark runs.

Method
------
* Every row of the workload table is one (operation, shape, dtype, layout).  The input is
  generated once per row and shared by all candidates (``torch.from_numpy`` shares memory;
  ONNX Runtime binds the NumPy buffers through IO binding, with a preallocated output; JAX gets
  one ``device_put`` copy before timing, since its arrays are immutable).
* Candidates of a row: ``fastpool`` and each peer that is installed and supports the workload.
  Channels-last rows compare fastpool's ``channels_last=True`` kernel (on an NHWC array) with
  PyTorch's ``torch.channels_last`` memory format and JAX on NHWC; ONNX Runtime only runs NCHW, so
  it appears on channels-first rows only.  Backward rows compare with PyTorch autograd's backward
  alone (``torch.autograd.grad(y, x, g, retain_graph=True)``, the forward is not timed).
* Each candidate is called once (compilation), checked against the reference (PyTorch where
  available), then calibrated: a sample is ``n_inner`` back-to-back calls with ``n_inner`` chosen
  so that one sample lasts at least ``--min-sample`` seconds.  Then ``--rounds`` rounds run
  round-robin over the candidates (the start rotates every round, with a short sleep between
  samples so that spinning worker threads of the previous candidate settle); the reported time is
  the median per-call time over the rounds.  Each timed sample follows an untimed one of the
  same candidate (``--no-warm-sample`` drops it): after the pause the machine runs slower for
  tens of milliseconds (measured on the 2-core virtual machine, 12 back-to-back calls after a
  0.3 s pause: a single-threaded 29 MB ``np.copyto`` 1.6 ms on the first call, 1.1 ms by the
  twelfth; fastpool's adaptive 30->7 average 1.3 -> 0.7 ms, against 0.43 ms without a pause),
  and the copy behind the memory floor is timed the same way (below).
* Threads: Numba (``numba.set_num_threads``), PyTorch (``torch.set_num_threads``, one inter-op
  thread) and ONNX Runtime (``intra_op_num_threads``, ``inter_op_num_threads=1``) all use the
  same count.  ONNX Runtime's worker threads do not spin (``session.intra_op.allow_spinning``
  0; ``--ort-spinning`` restores its default): spinning, they burn ~40 ms of CPU after every
  run, and on a virtual machine the candidate sampled next then ran slower for up to a second
  (measured: fastpool's max k2 s2 with indices 3.8 -> 6.2 ms right after an ONNX Runtime
  sample, unchanged without spinning), which biased whichever candidate followed it.  Without
  spinning ONNX Runtime's own time on that row was ~10% longer.  JAX/XLA has no public knob for its CPU intra-op pool: it sizes it to the CPUs the
  process may run on.  With ``--threads 1`` we set
  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` before JAX is
  imported; otherwise use ``--pin`` (restricts the whole process, hence every library, to the first
  N CPUs) to make JAX comparable when N is below the CPU count.
* Memory floor of a row: (bytes read + bytes written) / copy bandwidth, counting read + write
  bytes of a 256 MB copy.  At the start of the run three copies are measured (``np.copyto``
  single call, ``np.copyto`` split over N Python threads, and a Numba ``prange`` copy); the
  fastest is then timed in every row's rounds like a candidate, and each row's floor uses the
  bandwidth of its own rounds (``CopyProbe``, ``row_gbps``; ``--no-row-copy``: the start's).
  This machine's copy bandwidth drifts by a quarter from run to run and between rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

PEERS = ("torch", "onnxruntime", "jax")
CANDIDATES = ("fastpool",) + PEERS


# --------------------------------------------------------------------------------------------
# Workload table
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmark row.

    ``op``: ``"max"``, ``"avg"``, ``"adaptive_avg"`` or ``"global_avg"``; ``dims``: spatial
    rank; ``shape``: the logical ``(N, C, *spatial)`` shape; ``layout``: ``"nchw"`` (C-contiguous
    channels-first) or ``"nhwc"`` (channels-last memory); ``pass_``: ``"fwd"`` or ``"bwd"``.
    ``params``: keyword arguments of the fastpool / torch function (``kernel_size``, ``stride``,
    ``padding``, ``count_include_pad``, ``output_size``, ``return_indices``).  For max backward,
    ``bwd_indices`` says whether the forward's indices are passed to fastpool (PyTorch autograd
    always uses its saved indices).
    """

    op: str
    dims: int
    shape: tuple
    params: tuple  # sorted (key, value) pairs, hashable
    dtype: str = "float32"
    layout: str = "nchw"
    pass_: str = "fwd"
    bwd_indices: bool = True
    quick: bool = False
    tag: str = ""
    device: str = "cpu"  # "cuda": PyTorch CUDA tensors in and out (fastpool's CUDA kernels)

    # -- derived ------------------------------------------------------------------------------
    @property
    def kw(self) -> dict:
        return dict(self.params)

    @property
    def channels_last(self) -> bool:
        return self.layout == "nhwc"

    @property
    def return_indices(self) -> bool:
        return bool(self.kw.get("return_indices", False))

    @property
    def fastpool_name(self) -> str:
        base = "adaptive_avg" if self.op == "global_avg" else self.op
        name = f"{base}_pool{self.dims}d"
        return name + "_backward" if self.pass_ == "bwd" else name

    @property
    def fastpool_forward_name(self) -> str:
        base = "adaptive_avg" if self.op == "global_avg" else self.op
        return f"{base}_pool{self.dims}d"

    @property
    def name(self) -> str:
        kw = self.kw
        if self.op in ("max", "avg"):
            k, s, p = kw["kernel_size"], kw.get("stride"), kw.get("padding", 0)
            desc = f"{self.op}{self.dims}d k{k}s{s if s is not None else k}" + (f"p{p}" if p else "")
            if self.op == "avg" and not kw.get("count_include_pad", True):
                desc += " excl"
            if self.return_indices:
                desc += " +idx"
        elif self.op == "adaptive_avg":
            desc = f"adaptive_avg{self.dims}d {self.shape[2]}->{kw['output_size']}"
        else:
            desc = f"global_avg{self.dims}d"
        if self.pass_ == "bwd":
            desc += " bwd"
            if self.op == "max":
                desc += "(idx)" if self.bwd_indices else "(recompute)"
        shape = "x".join(str(v) for v in self.shape)
        dt = {"float32": "f32", "float64": "f64", "uint8": "u8", "float16": "f16"}.get(
            self.dtype, self.dtype)
        parts = [desc, shape, dt, self.layout]
        if self.device != "cpu":
            parts.append(self.device)
        if self.tag:
            parts.append(self.tag)
        return " ".join(parts)

    # -- shapes and bytes ----------------------------------------------------------------------
    def physical_shape(self, shape=None) -> tuple:
        shape = tuple(self.shape if shape is None else shape)
        if self.channels_last:
            return (shape[0],) + shape[2:] + (shape[1],)
        return shape

    def out_shape(self) -> tuple:
        n, c, *sp = self.shape
        kw = self.kw
        if self.op == "global_avg":
            out = [1] * self.dims
        elif self.op == "adaptive_avg":
            os_ = kw["output_size"]
            out = list(os_) if isinstance(os_, (tuple, list)) else [os_] * self.dims
        else:
            k = _tup(kw["kernel_size"], self.dims)
            s = _tup(kw.get("stride") or kw["kernel_size"], self.dims)
            p = _tup(kw.get("padding", 0), self.dims)
            out = [(i + 2 * pp - kk) // ss + 1 for i, kk, ss, pp in zip(sp, k, s, p)]
        return (n, c, *out)

    def traffic(self) -> tuple[int, int]:
        """(bytes read, bytes written) of the minimal implementation (fastpool's call)."""
        isz = np.dtype(self.dtype).itemsize
        n_in = math.prod(self.shape)
        n_out = math.prod(self.out_shape())
        if self.pass_ == "fwd":
            written = n_out * isz + (n_out * 8 if self.return_indices else 0)
            return n_in * isz, written
        # backward: read grad_output (+ indices or input for max), write grad_input
        read = n_out * isz
        if self.op == "max":
            read += n_out * 8 if self.bwd_indices else n_in * isz
        return read, n_in * isz


def _tup(v, d):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * d


def _w(op, dims, shape, quick=False, layouts=("nchw",), **kw):
    params = dict(kw)
    extra = {k: params.pop(k) for k in ("dtype", "pass_", "bwd_indices", "tag", "device")
             if k in params}
    quick_layouts = quick if isinstance(quick, tuple) else (layouts if quick else ())
    return [Workload(op, dims, tuple(shape), tuple(sorted(params.items())), layout=lay,
                     quick=lay in quick_layouts, **extra) for lay in layouts]


BOTH = ("nchw", "nhwc")


def _build_table() -> list:
    t = []
    # forward
    t += _w("max", 2, (32, 64, 112, 112), kernel_size=3, stride=2, padding=1, layouts=BOTH,
            quick=True)
    t += _w("max", 2, (16, 128, 112, 112), kernel_size=2, stride=2, layouts=BOTH)
    t += _w("max", 2, (1, 16, 32, 32), kernel_size=2, stride=2, tag="(tiny)", quick=True)
    t += _w("max", 2, (16, 64, 112, 112), kernel_size=2, stride=2, return_indices=True)
    t += _w("avg", 2, (32, 64, 56, 56), kernel_size=3, stride=2, padding=1,
            count_include_pad=False, layouts=BOTH, quick=("nchw",))
    t += _w("global_avg", 2, (32, 2048, 7, 7), output_size=1, quick=True)
    t += _w("adaptive_avg", 2, (16, 256, 30, 30), output_size=7)
    t += _w("max", 2, (8, 256, 40, 40), kernel_size=5, stride=1, padding=2)
    t += _w("max", 2, (16, 80, 128, 128), kernel_size=3, stride=1, padding=1)
    t += _w("max", 1, (64, 256, 4096), kernel_size=3, stride=2)
    t += _w("max", 3, (4, 32, 32, 64, 64), kernel_size=2, stride=2, layouts=BOTH)
    t += _w("max", 2, (16, 3, 512, 512), kernel_size=2, stride=2, dtype="uint8")
    t += _w("max", 2, (16, 64, 112, 112), kernel_size=2, stride=2, dtype="float64")
    # backward
    t += _w("max", 2, (32, 64, 112, 112), kernel_size=3, stride=2, padding=1, layouts=BOTH,
            pass_="bwd", bwd_indices=True)
    t += _w("max", 2, (32, 64, 112, 112), kernel_size=3, stride=2, padding=1, layouts=BOTH,
            pass_="bwd", bwd_indices=False)
    t += _w("avg", 2, (32, 64, 56, 56), kernel_size=3, stride=2, padding=1,
            count_include_pad=False, layouts=BOTH, pass_="bwd")
    t += _w("adaptive_avg", 2, (16, 256, 30, 30), output_size=7, pass_="bwd")
    t += _w("global_avg", 2, (32, 2048, 7, 7), output_size=1, pass_="bwd")
    # GPU: PyTorch CUDA tensors in and out, against PyTorch on the same device (rows skipped
    # where there is none); no memory floor (the copy probe measures the host's memory)
    t += _w("max", 2, (32, 64, 112, 112), kernel_size=3, stride=2, padding=1, layouts=BOTH,
            device="cuda")
    t += _w("avg", 2, (32, 64, 56, 56), kernel_size=3, stride=2, padding=1,
            count_include_pad=False, device="cuda")
    t += _w("max", 2, (32, 64, 112, 112), kernel_size=3, stride=2, padding=1, pass_="bwd",
            bwd_indices=True, device="cuda")
    return t


WORKLOADS: list = _build_table()


def select_workloads(quick: bool = False, filter: str | None = None,
                     backward: bool = True) -> list:
    """The table rows to run: the quick subset or all; ``filter`` is a case-insensitive
    substring of the row name (several may be given separated by commas: any matches)."""
    rows = [w for w in WORKLOADS if (w.quick or not quick) and (backward or w.pass_ == "fwd")]
    if filter:
        subs = [s.strip().lower() for s in filter.split(",") if s.strip()]
        rows = [w for w in rows if any(s in w.name.lower() for s in subs)]
    return rows


# --------------------------------------------------------------------------------------------
# Row data and candidates
# --------------------------------------------------------------------------------------------

class Unsupported(Exception):
    """A candidate (or a whole row) that cannot run this workload; the message says why."""


@dataclasses.dataclass
class RowData:
    w: Workload
    x: np.ndarray                 # physical layout (NCHW or NHWC C-contiguous)
    g: np.ndarray | None = None   # grad_output, physical layout (backward rows)
    fp: Any = None                # the fastpool module (or None)
    fp_indices: Any = None        # fastpool forward indices (max backward with indices)

    def logical(self, a):
        return np.moveaxis(a, -1, 1) if self.w.channels_last else a


@dataclasses.dataclass
class Candidate:
    name: str
    fn: Callable[[], Any]
    to_numpy: Callable[[Any], Any]  # output -> logical NC* numpy array (or (values, indices))
    context: Callable[[], Any] | None = None  # entered around each timed sample
    note: str = ""


def _rand(shape, dtype, rng):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape, dtype=np.float64 if dtype.itemsize == 8 else np.float32
                                   ).astype(dtype, copy=False)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def make_data(w: Workload, fp=None, seed: int = 0) -> RowData:
    rng = np.random.default_rng(seed)
    x = _rand(w.physical_shape(), w.dtype, rng)
    d = RowData(w, x, fp=fp)
    if w.pass_ == "bwd":
        d.g = _rand(w.physical_shape(w.out_shape()), w.dtype, rng)
    return d


def _fp_forward_kwargs(w: Workload) -> dict:
    kw = w.kw
    if w.op in ("adaptive_avg", "global_avg"):
        kw = {"output_size": kw["output_size"]}
    if w.channels_last:
        kw["channels_last"] = True
    return kw


def fastpool_missing(w: Workload, fp) -> str | None:
    """Why fastpool cannot run this row (its function is missing), else None."""
    if fp is None:
        return "fastpool is not importable"
    names = [w.fastpool_name]
    if w.pass_ == "bwd" and w.op == "max" and w.bwd_indices:
        names.append(w.fastpool_forward_name)
    for n in names:
        if not hasattr(fp, n):
            return f"fastpool.{n} does not exist yet"
    return None


def cuda_device() -> str | None:
    """Why the CUDA rows cannot run here (no PyTorch CUDA device), else None."""
    try:
        import torch
    except ImportError:
        return "no PyTorch to carry CUDA arrays"
    try:
        return None if torch.cuda.is_available() else "no CUDA device"
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"no CUDA device ({type(e).__name__})"


def _build_fastpool_cuda(d: RowData, kw: dict) -> Candidate:
    """fastpool on PyTorch CUDA tensors (its CUDA kernels), synchronised after each call."""
    import torch
    w, fp = d.w, d.fp
    f = getattr(fp, w.fastpool_name)
    x = torch.from_numpy(d.x).cuda()

    def host(t):
        return d.logical(t.cpu().numpy())
    if w.pass_ == "fwd":
        def fn():
            out = f(x, **kw)
            torch.cuda.synchronize()
            return out

        def to_numpy(out):
            return (host(out[0]), host(out[1])) if isinstance(out, tuple) else host(out)
        return Candidate("fastpool", fn, to_numpy)
    g = torch.from_numpy(d.g).cuda()
    kw.pop("return_indices", None)
    if w.op == "max" and w.bwd_indices:
        kw["indices"] = getattr(fp, w.fastpool_forward_name)(x, return_indices=True, **kw)[1]

    def fnb():
        out = f(g, x, **kw)
        torch.cuda.synchronize()
        return out
    return Candidate("fastpool", fnb, host)


def _build_fastpool(d: RowData, threads: int) -> Candidate:
    w, fp = d.w, d.fp
    why = fastpool_missing(w, fp) or (cuda_device() if w.device == "cuda" else None)
    if why:
        raise Unsupported(why)
    kw = _fp_forward_kwargs(w)
    if w.device == "cuda":
        return _build_fastpool_cuda(d, kw)
    if w.pass_ == "fwd":
        f = getattr(fp, w.fastpool_name)
        x = d.x

        def fn():
            return f(x, **kw)

        def to_numpy(out):
            if isinstance(out, tuple):
                return d.logical(np.asarray(out[0])), d.logical(np.asarray(out[1]))
            return d.logical(np.asarray(out))
        return Candidate("fastpool", fn, to_numpy)

    f = getattr(fp, w.fastpool_name)
    x, g = d.x, d.g
    kw.pop("return_indices", None)
    if w.op == "max" and w.bwd_indices:
        if d.fp_indices is None:
            fwd = getattr(fp, w.fastpool_forward_name)
            d.fp_indices = fwd(x, return_indices=True, **kw)[1]
        kw["indices"] = d.fp_indices

    def fn():
        return f(g, x, **kw)
    return Candidate("fastpool", fn, lambda out: d.logical(np.asarray(out)))


# -- PyTorch ----------------------------------------------------------------------------------

def _torch_fn(w: Workload, F):
    if w.op == "max":
        return getattr(F, f"max_pool{w.dims}d")
    if w.op == "avg":
        return getattr(F, f"avg_pool{w.dims}d")
    return getattr(F, f"adaptive_avg_pool{w.dims}d")


def _torch_kwargs(w: Workload) -> dict:
    kw = w.kw
    if w.op in ("adaptive_avg", "global_avg"):
        return {"output_size": kw["output_size"]}
    if w.pass_ == "bwd":
        kw.pop("return_indices", None)
    return kw


def _build_torch(d: RowData, threads: int) -> Candidate:
    import torch
    import torch.nn.functional as F

    w = d.w
    f = _torch_fn(w, F)
    kw = _torch_kwargs(w)
    gpu = w.device == "cuda"
    why = cuda_device() if gpu else None
    if why:
        raise Unsupported(why)

    def tens(a):
        t = torch.from_numpy(a)
        t = t.cuda() if gpu else t
        return torch.movedim(t, -1, 1) if w.channels_last else t

    def to_np(t):
        return t.detach().cpu().numpy()

    def sync():
        if gpu:
            torch.cuda.synchronize()

    if w.pass_ == "fwd":
        xt = tens(d.x)

        def fn():
            out = f(xt, **kw)
            sync()
            return out

        def to_numpy(out):
            if isinstance(out, tuple):
                return to_np(out[0]), to_np(out[1])
            return to_np(out)
        return Candidate("torch", fn, to_numpy, context=torch.inference_mode)

    xt = tens(d.x).detach().requires_grad_(True)
    with torch.enable_grad():
        y = f(xt, **kw)
    gt = tens(d.g)
    if w.channels_last:
        assert y.is_contiguous(memory_format=_torch_cl(torch, w.dims)), "torch output layout"

    def fn():
        out = torch.autograd.grad(y, xt, gt, retain_graph=True)[0]
        sync()
        return out
    return Candidate("torch", fn, to_np, note="autograd")


def _torch_cl(torch, dims):
    return torch.channels_last_3d if dims == 3 else torch.channels_last


# -- ONNX Runtime -----------------------------------------------------------------------------

_ONNX_TYPES = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6,
               "int64": 7, "float16": 10, "float64": 11}


def _build_onnxruntime(d: RowData, threads: int) -> Candidate:
    w = d.w
    if w.device != "cpu":
        raise Unsupported("CPU only here")
    if w.pass_ == "bwd":
        raise Unsupported("no backward")
    if w.channels_last:
        raise Unsupported("NCHW only")
    if w.op == "adaptive_avg":
        raise Unsupported("no adaptive pooling op")
    if w.op == "avg" and w.dtype not in ("float32", "float64", "float16"):
        raise Unsupported(f"AveragePool has no {w.dtype}")
    import onnx
    import onnxruntime as ort
    from onnx import helper

    kw = w.kw
    elem = _ONNX_TYPES[w.dtype]
    out_shape = w.out_shape()
    outputs = [helper.make_tensor_value_info("Y", elem, list(out_shape))]
    out_names = ["Y"]
    if w.op == "global_avg":
        node = helper.make_node("GlobalAveragePool", ["X"], ["Y"])
    else:
        k = list(_tup(kw["kernel_size"], w.dims))
        s = list(_tup(kw.get("stride") or kw["kernel_size"], w.dims))
        p = list(_tup(kw.get("padding", 0), w.dims))
        attrs = dict(kernel_shape=k, strides=s, pads=p + p)
        if w.op == "max":
            if w.return_indices:
                out_names.append("I")
                outputs.append(helper.make_tensor_value_info("I", 7, list(out_shape)))
            node = helper.make_node("MaxPool", ["X"], out_names, **attrs)
        else:
            attrs["count_include_pad"] = int(kw.get("count_include_pad", True))
            node = helper.make_node("AveragePool", ["X"], ["Y"], **attrs)
    graph = helper.make_graph([node], "pool",
                              [helper.make_tensor_value_info("X", elem, list(w.shape))], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not ORT_SPINNING:  # (see the module docstring)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    io = sess.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(d.x)
    io.bind_ortvalue_input("X", xv)
    bufs = [np.empty(out_shape, dtype=w.dtype)]
    if len(out_names) == 2:
        bufs.append(np.empty(out_shape, dtype=np.int64))
    keep = [xv]
    for name, b in zip(out_names, bufs):
        v = ort.OrtValue.ortvalue_from_numpy(b)
        keep.append(v)
        io.bind_ortvalue_output(name, v)
    run = sess.run_with_iobinding

    def fn(_keep=keep):
        run(io)
        return bufs

    def to_numpy(out):
        if len(out) == 2:
            # ONNX indices are flat over the whole tensor; convert to per-plane ones
            plane = math.prod(w.shape[2:])
            return out[0].copy(), out[1] % plane
        return out[0].copy()
    return Candidate("onnxruntime", fn, to_numpy, note="io binding")


# -- JAX --------------------------------------------------------------------------------------

def _build_jax(d: RowData, threads: int) -> Candidate:
    w = d.w
    if w.device != "cpu":
        raise Unsupported("CPU only here")
    if w.pass_ == "bwd":
        raise Unsupported("backward compared with torch autograd only")
    if w.op == "adaptive_avg":
        raise Unsupported("no adaptive pooling op")
    if w.return_indices:
        raise Unsupported("reduce_window has no argmax")
    import jax
    import jax.numpy as jnp
    from jax import lax

    kw = w.kw
    nd = w.dims
    sp_axes = tuple(range(1, 1 + nd)) if w.channels_last else tuple(range(2, 2 + nd))

    def full(vals, fill):
        out = [fill] * (nd + 2)
        for a, v in zip(sp_axes, vals):
            out[a] = v
        return tuple(out)

    dt = np.dtype(w.dtype)
    if w.op == "global_avg":
        def f(a):
            return jnp.mean(a, axis=sp_axes, keepdims=True)
    else:
        k = _tup(kw["kernel_size"], nd)
        s = _tup(kw.get("stride") or kw["kernel_size"], nd)
        p = _tup(kw.get("padding", 0), nd)
        win, strides = full(k, 1), full(s, 1)
        pads = full([(q, q) for q in p], (0, 0))
        if w.op == "max":
            init = np.array(-np.inf if dt.kind == "f" else np.iinfo(dt).min, dtype=dt)

            def f(a):
                return lax.reduce_window(a, init, lax.max, win, strides, pads)
        else:
            if dt.kind != "f":
                raise Unsupported("integer average")
            zero = np.array(0, dtype=dt)
            if kw.get("count_include_pad", True):
                counts = np.array(math.prod(k), dtype=dt)
            else:
                per_dim = []
                for i, kk, ss, pp in zip(w.shape[2:], k, s, p):
                    o = (i + 2 * pp - kk) // ss + 1
                    st = np.arange(o) * ss - pp
                    per_dim.append(np.minimum(st + kk, i) - np.maximum(st, 0))
                c = per_dim[0]
                for pd in per_dim[1:]:
                    c = np.multiply.outer(c, pd)
                shape = [1] * (nd + 2)
                for a, n_ in zip(sp_axes, c.shape):
                    shape[a] = n_
                counts = c.reshape(shape).astype(dt)

            def f(a):
                return lax.reduce_window(a, zero, lax.add, win, strides, pads) / counts
    jf = jax.jit(f)
    xj = jax.device_put(d.x)
    xj.block_until_ready()

    def fn():
        return jf(xj).block_until_ready()

    return Candidate("jax", fn, lambda out: d.logical(np.asarray(out)), note="jit")


ORT_SPINNING = False  # ONNX Runtime sessions' allow_spinning (set by run(); see the docstring)

BUILDERS = {"fastpool": _build_fastpool, "torch": _build_torch,
            "onnxruntime": _build_onnxruntime, "jax": _build_jax}


# --------------------------------------------------------------------------------------------
# Environment: peers and threads
# --------------------------------------------------------------------------------------------

def pin_cpus(n: int) -> list | None:
    """Restrict this process (threads created from now on) to the first ``n`` allowed CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))[:n]
        os.sched_setaffinity(0, cpus)
        return cpus
    except (AttributeError, OSError):
        return None


def default_threads() -> int:
    try:
        import numba
        return numba.config.NUMBA_NUM_THREADS
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def set_numba_threads(n: int) -> tuple[int, str]:
    """Set Numba's thread count (clamped to NUMBA_NUM_THREADS); returns (count, note)."""
    import numba
    note = ""
    mx = numba.config.NUMBA_NUM_THREADS
    if n > mx:
        note = f"numba is limited to NUMBA_NUM_THREADS={mx}; set it in the environment"
        n = mx
    numba.set_num_threads(n)
    return n, note


def load_peers(names, threads: int) -> dict:
    """Import the requested peers; returns ``{name: (ok, version_or_reason)}``.  Sets each
    peer's thread count.  Must run before any peer is used."""
    status = {}
    for name in names:
        try:
            if name == "torch":
                import torch
                torch.set_num_threads(threads)
                try:
                    torch.set_num_interop_threads(1)
                except RuntimeError:
                    pass
                status[name] = (True, torch.__version__)
            elif name == "onnxruntime":
                import onnx  # noqa: F401  (builds the single-node models)
                import onnxruntime
                status[name] = (True, onnxruntime.__version__)
            elif name == "jax":
                os.environ.setdefault("JAX_PLATFORMS", "cpu")
                if threads == 1 and "jax" not in sys.modules:
                    flags = os.environ.get("XLA_FLAGS", "")
                    os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false"
                                               " intra_op_parallelism_threads=1").strip()
                import jax
                jax.config.update("jax_enable_x64", True)  # float64 rows; dtypes are explicit
                status[name] = (True, jax.__version__)
            else:
                status[name] = (False, "unknown peer")
        except Exception as e:  # ImportError, or a broken install
            status[name] = (False, f"not available ({type(e).__name__}: {e})")
    return status


def load_fastpool(module: str = "fastpool"):
    """Import the module under test; returns (module or None, note).  Runs fastpool's runtime
    configuration (threading layer) before anything else launches a Numba parallel region."""
    try:
        fp = importlib.import_module(module)
    except Exception as e:
        return None, f"cannot import {module}: {type(e).__name__}: {e}"
    try:
        rt = importlib.import_module(module + "._runtime")
        if hasattr(rt, "configure"):
            rt.configure()
    except ImportError:
        pass
    if not any(hasattr(fp, w.fastpool_name) for w in WORKLOADS):
        return fp, f"{module} has none of the benchmarked functions yet"
    return fp, ""


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def _median(v):
    return float(np.median(np.asarray(v))) if len(v) else float("nan")


class CopyProbe:
    """The copies behind the memory floor: a ``nbytes`` float64 array copied by one
    ``np.copyto``, by ``np.copyto`` split over ``threads`` Python threads, and by a Numba
    ``prange`` loop (``methods``: name -> callable).  ``close()`` frees the arrays."""

    def __init__(self, nbytes: int = 256 << 20, threads: int = 1):
        from concurrent.futures import ThreadPoolExecutor
        n = nbytes // 8
        self.nbytes = n * 8
        src = np.empty(n, dtype=np.float64)
        src.fill(1.0)
        dst = np.empty_like(src)
        dst.fill(0.0)
        self.methods: dict[str, Callable[[], Any]] = {"np.copyto": lambda: np.copyto(dst, src)}
        self._pool = None
        if threads > 1:
            edges = np.linspace(0, n, threads + 1).astype(np.int64)
            chunks = [(dst[a:b], src[a:b]) for a, b in zip(edges[:-1], edges[1:])]
            pool = self._pool = ThreadPoolExecutor(threads)

            def threaded():
                list(pool.map(lambda c: np.copyto(c[0], c[1]), chunks))
            self.methods[f"np.copyto x{threads} threads"] = threaded
        try:
            import numba

            @numba.njit(parallel=True, cache=False)
            def _pcopy(a, b):
                for i in numba.prange(a.shape[0]):
                    a[i] = b[i]
            self.methods["numba prange"] = lambda: _pcopy(dst, src)
        except Exception:
            pass

    def gbps(self, seconds: float) -> float:
        """Read + write bytes of one copy over its time."""
        return 2 * self.nbytes / seconds / 1e9

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
        self.methods = {}


def measure_copy_bandwidth(nbytes: int = 256 << 20, reps: int = 7, threads: int = 1,
                           probe: CopyProbe | None = None) -> dict:
    """Copy bandwidth in GB/s counting read + write bytes, best of three methods (those of
    ``probe``, a new ``CopyProbe`` if None)."""
    own = probe is None
    probe = probe or CopyProbe(nbytes, threads)
    methods = probe.methods
    times: dict[str, list] = {k: [] for k in methods}
    for f in methods.values():
        f()  # warm-up / compile
    for _ in range(reps):
        for k, f in methods.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    if own:
        probe.close()
    gbps = {k: probe.gbps(_median(v)) for k, v in times.items()}
    best = max(gbps, key=gbps.get)
    return {"bytes": probe.nbytes, "gbps": gbps, "best_method": best, "best_gbps": gbps[best]}


_COMPILE_SNIPPETS = {
    "max_pool2d f32 nchw": ("max_pool2d", "np.random.rand(2, 8, 17, 17).astype(np.float32)",
                            "kernel_size=3, stride=2, padding=1"),
    "max_pool2d f32 nhwc": ("max_pool2d", "np.random.rand(2, 17, 17, 8).astype(np.float32)",
                            "kernel_size=3, stride=2, padding=1, channels_last=True"),
    "avg_pool2d f32 nchw": ("avg_pool2d", "np.random.rand(2, 8, 17, 17).astype(np.float32)",
                            "kernel_size=3, stride=2, padding=1, count_include_pad=False"),
    "adaptive_avg_pool2d f32": ("adaptive_avg_pool2d",
                                "np.random.rand(2, 8, 30, 30).astype(np.float32)",
                                "output_size=7"),
    # a call large enough to run in parallel: its specialised kernel compiles on the first call
    # (a split kernel and its launcher, see the README), and the same call with Numba's
    # parallel=True kernels, which compile 2.5-3x slower
    "max_pool2d f32 nchw large": ("max_pool2d",
                                  "np.random.rand(8, 64, 56, 56).astype(np.float32)",
                                  "kernel_size=3, stride=2, padding=1"),
    "max_pool2d f32 nchw large, Numba prange kernels (FASTPOOL_SPLIT_KERNELS=0, not the "
    "default: for comparison)": (
        "max_pool2d", "np.random.rand(8, 64, 56, 56).astype(np.float32)",
        "kernel_size=3, stride=2, padding=1", {"FASTPOOL_SPLIT_KERNELS": "0"}),
    # gradients of a large call (a tuple: the positional arguments, grad_output first)
    "avg_pool2d_backward f32 nchw large": (
        "avg_pool2d_backward", "(np.random.rand(8, 64, 28, 28).astype(np.float32), "
        "np.random.rand(8, 64, 56, 56).astype(np.float32))",
        "kernel_size=3, stride=2, padding=1, count_include_pad=False"),
    "max_pool2d_backward f32 nhwc large": (
        "max_pool2d_backward", "(np.random.rand(8, 28, 28, 64).astype(np.float32), "
        "np.random.rand(8, 56, 56, 64).astype(np.float32))",
        "kernel_size=3, stride=2, padding=1, channels_last=True"),
}

_COMPILE_CODE = """
import json, time
t0 = time.perf_counter()
import fastpool
t1 = time.perf_counter()
import numpy as np
x = {make}
args = x if isinstance(x, tuple) else (x,)
t3 = time.perf_counter()
fastpool.{fn}(*args, {kw})
t4 = time.perf_counter()
fastpool.{fn}(*args, {kw})
t5 = time.perf_counter()
# the import includes the runtime's start-up (Numba's import and registries: _runtime.start)
print(json.dumps({{"import_s": t1 - t0, "runtime_start_s": fastpool._runtime.START_S,
                  "first_call_s": t4 - t3, "second_call_s": t5 - t4}}))
"""


def _fastpool_env(fp) -> dict:
    env = dict(os.environ)
    try:
        root = os.path.dirname(os.path.abspath(list(fp.__path__)[0]))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
    except Exception:
        pass
    return env


def _run_py(code: str, env: dict, timeout: float = 600) -> tuple[str, str]:
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError((r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"])
    return r.stdout.strip().splitlines()[-1], r.stderr


def compile_bytecode(fp) -> str:
    """Compile fastpool's modules to bytecode (``__pycache__``) before the latency runs, as
    installing a package does: with PYTHONDONTWRITEBYTECODE set (or an editable install that
    never imported a module yet) every fresh process would otherwise compile fastpool's
    sources first, ~35 ms of a kernel's first call with a warm cache (15-23 ms with bytecode).
    Returns what was done, for the report."""
    import compileall
    try:
        ok = compileall.compile_dir(os.path.abspath(list(fp.__path__)[0]), quiet=2)
    except Exception as e:
        return f"not compiled ({type(e).__name__})"
    return "compiled (compileall)" if ok else "not compiled (package folder not writable?)"


def measure_import_time(fp, reps: int = 3) -> dict:
    env = _fastpool_env(fp)
    code = "import time;t=time.perf_counter();import fastpool;print(time.perf_counter()-t)"
    out = []
    for _ in range(reps):
        out.append(float(_run_py(code, env)[0]))
    return {"samples_s": out, "median_s": _median(out)}


def measure_compile_latency(fp, names, threads: int, progress=None) -> dict:
    """For each snippet: a fresh process with an empty NUMBA_CACHE_DIR (cold), then a second
    fresh process reusing that cache (warm)."""
    res = {}
    base_env = _fastpool_env(fp)
    base_env["NUMBA_NUM_THREADS"] = str(threads)
    for name in names:
        fn, make, kw, *more = _COMPILE_SNIPPETS[name]
        extra_env = more[0] if more else {}
        entry: dict[str, Any] = {"function": fn}
        if not hasattr(fp, fn):
            entry["skipped"] = f"fastpool.{fn} does not exist yet"
            res[name] = entry
            if progress:
                progress.update(2)
            continue
        code = _COMPILE_CODE.format(make=make, fn=fn, kw=kw)
        with tempfile.TemporaryDirectory(prefix="fastpool-bench-cache-") as cache:
            env = dict(base_env, NUMBA_CACHE_DIR=cache, **extra_env)
            for phase in ("cold", "warm"):
                try:
                    entry[phase] = json.loads(_run_py(code, env)[0])
                except Exception as e:
                    entry[phase] = {"error": str(e)}
                if progress:
                    progress.update(1)
        res[name] = entry
    return res


# --------------------------------------------------------------------------------------------
# The timing loop
# --------------------------------------------------------------------------------------------

def _check(w: Workload, got, ref) -> str | None:
    """None if ``got`` matches the reference output, else a short description."""
    def arr(a):
        return a[0] if isinstance(a, tuple) else a
    g, r = np.asarray(arr(got)), np.asarray(arr(ref))
    if g.shape != r.shape:
        return f"shape {g.shape} != {r.shape}"
    if g.dtype != r.dtype:
        return f"dtype {g.dtype} != {r.dtype}"
    # forward max selects input values: exact; backward max sums up to prod(ceil(k/s))
    # gradients per cell, in an order that may differ between implementations
    exact = (w.op == "max" and w.pass_ == "fwd") or g.dtype.kind != "f"
    if exact:
        ok = np.array_equal(g, r, equal_nan=g.dtype.kind == "f")
    else:
        tol = 1e-12 if g.dtype == np.float64 else 2e-5
        ok = np.allclose(g, r, rtol=tol, atol=tol)
    if not ok:
        diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
        return f"values differ (max abs diff {np.nanmax(diff):.3g})"
    if isinstance(got, tuple) and isinstance(ref, tuple):
        if not np.array_equal(np.asarray(got[1]).astype(np.int64), np.asarray(ref[1])):
            return "indices differ"
    return None


def _settle(max_wait: float = 0.3, step: float = 0.002, idle: float = 0.05) -> float:
    """Sleep until this process's threads stop using CPU (worker threads of the previous
    candidate spin for tens of milliseconds after a call: ONNX Runtime's pool, OpenMP), at most
    ``max_wait`` seconds.  Returns the time waited."""
    t_start = time.perf_counter()
    while True:
        p0, t0 = time.process_time(), time.perf_counter()
        time.sleep(step)
        p1, t1 = time.process_time(), time.perf_counter()
        if (p1 - p0) <= idle * (t1 - t0) or t1 - t_start >= max_wait:
            return t1 - t_start


class CpuMonitor:
    """CPU time used by other processes while a measurement runs (from /proc/stat), as a
    fraction of the machine's CPUs.  ``None`` where /proc/stat is not readable."""

    def __init__(self):
        self.t0 = self._snap()

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)) / hz
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        return busy, ours, time.perf_counter()

    def external(self) -> float | None:
        t1 = self._snap()
        if self.t0 is None or t1 is None:
            return None
        busy, ours, wall = (b - a for a, b in zip(self.t0, t1))
        ncpu = os.cpu_count() or 1
        return max(0.0, (busy - ours) / max(wall, 1e-9) / ncpu)


class _NullCtx:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _sample(c: Candidate, n_inner: int, cpu: list | None = None) -> float:
    """Per-call wall time of ``n_inner`` back-to-back calls; appends the CPU time / wall time
    ratio of the process (how many cores the candidate kept busy) to ``cpu`` if given."""
    fn = c.fn
    with (c.context() if c.context else _NullCtx()):
        p0 = time.process_time()
        t0 = time.perf_counter()
        for _ in range(n_inner):
            fn()
        t1 = time.perf_counter()
        p1 = time.process_time()
    if cpu is not None:
        cpu.append((p1 - p0) / max(t1 - t0, 1e-12))
    return (t1 - t0) / n_inner


def wait_idle(max_wait: float, threshold: float = 0.1, window: float = 0.5) -> float | None:
    """Wait (at most ``max_wait`` seconds) until other processes use less than ``threshold`` of
    the CPUs over a ``window``; returns their last measured share (None if unknown)."""
    t_end = time.perf_counter() + max_wait
    while True:
        mon = CpuMonitor()
        time.sleep(window)
        ext = mon.external()
        if ext is None or ext < threshold or time.perf_counter() >= t_end:
            return ext


def run_row(w: Workload, fp, peers: list, threads: int, rounds: int, min_sample: float = 0.02,
            gap: float = 0.3, progress=None, check: bool = True,
            idle_wait: float = 0.0, warm: bool = True, copy: CopyProbe | None = None,
            copy_method: str = "") -> dict:
    """Benchmark one row; returns its result record (JSON-serialisable).  With ``copy``,
    its ``copy_method`` is timed in the row's rounds like a candidate (not compared with the
    others): the row's memory floor then comes from the copy bandwidth of those rounds
    (``rec["copy"]``), measured under the same conditions as the row's candidates."""
    rec: dict[str, Any] = {"name": w.name, "op": w.op, "dims": w.dims, "shape": list(w.shape),
                           "dtype": w.dtype, "layout": w.layout, "pass": w.pass_,
                           "params": w.kw, "candidates": {}, "notes": []}
    read, written = w.traffic()
    rec["bytes_read"], rec["bytes_written"] = read, written
    rec["device"] = w.device
    why = fastpool_missing(w, fp) or (cuda_device() if w.device == "cuda" else None)
    if why:
        rec["skipped"] = why
        if progress:
            progress.update(rounds + 1)
        return rec
    data = make_data(w, fp)
    cands: list[Candidate] = []
    for name in ("fastpool",) + tuple(peers):
        try:
            cands.append(BUILDERS[name](data, threads))
        except Unsupported as e:
            rec["candidates"][name] = {"skipped": str(e)}
        except Exception as e:
            rec["candidates"][name] = {"error": f"setup: {type(e).__name__}: {e}"}
    # warm-up (compile), reference check, calibration
    live, ref, ref_name = [], None, None
    outputs = {}
    for c in cands:
        try:
            t0 = time.perf_counter()
            out = c.fn()
            first = time.perf_counter() - t0
            outputs[c.name] = c.to_numpy(out)
            del out
            t = min(_sample(c, 1) for _ in range(3))
            n_inner = max(1, min(100000, math.ceil(min_sample / max(t, 1e-9))))
            rec["candidates"][c.name] = {"first_call_s": first, "n_inner": n_inner,
                                         "samples_s": [], "cpu_per_wall": []}
            if c.note:
                rec["candidates"][c.name]["note"] = c.note
            live.append((c, n_inner))
        except Exception as e:
            rec["candidates"][c.name] = {"error": f"{type(e).__name__}: {e}"}
    if check:
        # the reference is PyTorch (else the first peer); every other candidate is checked
        for pname in PEERS:
            if pname in outputs:
                ref_name, ref = pname, outputs[pname]
                break
        if ref is not None:
            for cname, out in outputs.items():
                if cname == ref_name:
                    continue
                bad = _check(w, out, ref)
                chk = {"reference": ref_name, "ok": bad is None}
                if bad:
                    chk["problem"] = bad
                    rec["notes"].append(f"{cname} output differs from {ref_name}: {bad}")
                rec["candidates"][cname]["check"] = chk
                if cname == "fastpool":
                    rec["check"] = chk
    outputs.clear()
    if progress:
        progress.update(1)
    gc_was = gc.isenabled()
    gc.collect()
    if idle_wait:
        wait_idle(idle_wait)
    timed = list(live)
    entries = {c.name: rec["candidates"][c.name] for c, _ in live}
    if copy is not None and live and copy_method in copy.methods and w.device == "cpu":
        # (one copy a sample: 256 MB take longer than min_sample)
        timed.append((Candidate("copy", copy.methods[copy_method], lambda o: None), 1))
        rec["copy"] = entries["copy"] = {"method": copy_method, "bytes": copy.nbytes,
                                         "samples_s": [], "cpu_per_wall": []}
    gc.disable()
    mon = CpuMonitor()
    try:
        for r in range(rounds):
            k = r % max(1, len(timed))
            for c, n_inner in timed[k:] + timed[:k]:
                if gap:
                    _settle(gap)
                if warm:  # one untimed sample first (see the module docstring)
                    _sample(c, n_inner)
                e = entries[c.name]
                e["samples_s"].append(_sample(c, n_inner, e["cpu_per_wall"]))
            if progress:
                progress.update(1)
    finally:
        if gc_was:
            gc.enable()
    rec["external_cpu_load"] = mon.external()
    if "copy" in rec:
        rec["copy"]["median_s"] = _median(rec["copy"]["samples_s"])
        rec["copy"]["gbps"] = copy.gbps(rec["copy"]["median_s"])
    for c, _ in live:
        e = rec["candidates"][c.name]
        e["median_s"] = _median(e["samples_s"])
        e["min_s"] = float(min(e["samples_s"])) if e["samples_s"] else float("nan")
        e["cores_used"] = _median(e["cpu_per_wall"])
    fp_t = rec["candidates"].get("fastpool", {}).get("median_s")
    peer_t = {p: rec["candidates"][p]["median_s"] for p in peers
              if "median_s" in rec["candidates"].get(p, {})}
    if peer_t:
        best = min(peer_t, key=peer_t.get)
        rec["best_peer"], rec["best_peer_s"] = best, peer_t[best]
        if fp_t:
            rec["ratio"] = fp_t / peer_t[best]
    if fp_t:
        rec["fastpool_gbps"] = (read + written) / fp_t / 1e9
    del data, cands, live
    return rec


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

def fmt_time(s) -> str:
    if s is None or not np.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f}us"
    if s < 1:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def _cell(rec, name) -> str:
    e = rec["candidates"].get(name)
    if e is None:
        return "-"
    if "median_s" in e:
        return fmt_time(e["median_s"])
    if "error" in e:
        return "err"
    return "n/a"


def _busy(rec) -> str:
    ext = rec.get("external_cpu_load")
    if ext is None:
        return "-"
    return f"{ext * 100:.0f}%" + ("!" if ext > 0.1 else "")


def row_gbps(rec: dict, result: dict) -> float | None:
    """The copy bandwidth behind a row's memory floor: the copy timed in the row's own rounds,
    else (older results, ``--no-row-copy``) the one measured at the start of the run."""
    if rec.get("device", "cpu") != "cpu":  # (the copy measures the host's memory)
        return None
    c = rec.get("copy", {}).get("gbps")
    if c and np.isfinite(c):
        return c
    return result.get("bandwidth", {}).get("best_gbps")


def format_table(result: dict) -> str:
    rows = result["rows"]
    peers = result["peers_used"]
    headers = ["workload", "fastpool"] + list(peers) + ["fp/best", "best", "fp GB/s",
                                                         "copy GB/s", "floor", "x floor", "busy"]
    lines = []
    for rec in rows:
        if "skipped" in rec:
            lines.append([rec["name"], "skip"] + ["-"] * (len(headers) - 2))
            continue
        ratio = rec.get("ratio")
        gb = rec.get("fastpool_gbps")
        bw = row_gbps(rec, result)
        floor_s = (rec["bytes_read"] + rec["bytes_written"]) / (bw * 1e9) if bw else None
        fp_t = rec["candidates"].get("fastpool", {}).get("median_s")
        mult = fp_t / floor_s if (fp_t and floor_s) else None
        flag = "" if rec.get("check", {}).get("ok", True) else " !"
        lines.append([rec["name"], _cell(rec, "fastpool") + flag]
                     + [_cell(rec, p) for p in peers]
                     + [f"{ratio:.2f}" if ratio else "-", rec.get("best_peer", "-"),
                        f"{gb:.1f}" if gb else "-", f"{bw:.1f}" if bw else "-",
                        fmt_time(floor_s),
                        f"{mult:.2f}" if mult else "-", _busy(rec)])
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
              for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells))
    out = [fmt(headers), fmt(["-" * x for x in widths])]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def format_report(result: dict) -> str:
    m = result["meta"]
    lines = ["fastpool benchmark", "=" * 18]
    lines.append(f"machine: {m['cpu']} ({m['cpus']} CPUs), {m['platform']}")
    lines.append(f"python {m['python']}, numpy {m['numpy']}, numba {m.get('numba', '?')} "
                 f"(threading layer {m.get('threading_layer', '?')}), fastpool "
                 f"{m.get('fastpool', '?')}")
    lines.append("peers: " + ", ".join(
        f"{k} {v[1]}" if v[0] else f"{k}: {v[1]}" for k, v in result["peer_status"].items()))
    lines.append(f"threads: {m['threads']} (numba, torch intra-op [inter-op 1], onnxruntime "
                 f"intra-op [inter-op 1]); jax: {m['jax_threads']}"
                 + (f"; pinned to CPUs {m['pinned']}" if m.get("pinned") else ""))
    lines.append(f"timing: median of {m['rounds']} interleaved rounds, each sample >= "
                 f"{m['min_sample_s'] * 1e3:.0f} ms of back-to-back calls, after a warm-up call"
                 + (" and an untimed warm-up sample" if m.get("warm_sample") else ""))
    ri = m.get("runtime_info")
    if ri:
        lines.append("fastpool runtime: " + ", ".join(f"{k} {v}" for k, v in ri.items()))
    for n in m.get("notes", []):
        lines.append(f"note: {n}")
    bw = result.get("bandwidth")
    if bw:
        lines.append("")
        lines.append(f"copy bandwidth (read+write bytes, {bw['bytes'] >> 20} MB): "
                     + ", ".join(f"{k} {v:.1f} GB/s" for k, v in bw["gbps"].items())
                     + f" -> using {bw['best_gbps']:.1f} GB/s")
        per = [rec["copy"]["gbps"] for rec in result["rows"] if "gbps" in rec.get("copy", {})]
        if per:
            lines.append(f"floors: {bw['best_method']} timed in each row's rounds like a "
                         f"candidate, {min(per):.1f}-{max(per):.1f} GB/s (median "
                         f"{_median(per):.1f}); each row's floor uses its own")
    imp = result.get("import_time")
    cl = result.get("compile_latency")
    if imp or cl:
        lines.append("")
        lines.append("compile latency")
        if result.get("bytecode"):
            lines.append(f"  fastpool's bytecode: {result['bytecode']}")
        if imp:
            if "error" in imp:
                lines.append(f"  import fastpool: error {imp['error']}")
            else:
                lines.append(f"  import fastpool (fresh process, median of "
                             f"{len(imp['samples_s'])}): {fmt_time(imp['median_s'])}")
        for name, e in (cl or {}).items():
            if "skipped" in e:
                lines.append(f"  {name}: skipped ({e['skipped']})")
                continue
            parts = []
            for ph, lab in (("cold", "empty cache"), ("warm", "warm cache")):
                v = e.get(ph, {})
                if "error" in v:
                    parts.append(f"{lab}: error {v['error']}")
                else:
                    parts.append(f"{lab}: import {fmt_time(v['import_s'])} (Numba start-up "
                                 f"{fmt_time(v.get('runtime_start_s'))} of it), first call "
                                 f"{fmt_time(v['first_call_s'])}")
            lines.append(f"  {name}: " + "; ".join(parts)
                         + f" (next call {fmt_time(e.get('warm', {}).get('second_call_s'))})")
    lines.append("")
    lines.append("per-call median time; fp/best = fastpool / fastest peer (>1: fastpool slower);"
                 " floor = (bytes read + written) / copy bandwidth (copy GB/s: that of the"
                 " row's rounds); busy = CPU share used by"
                 " other processes while the row was timed (! above 10%: noisy)")
    lines.append(format_table(result))
    notes = []
    slower, far = [], []
    na: dict[tuple, list] = {}
    for rec in result["rows"]:
        if "skipped" in rec:
            notes.append(f"{rec['name']}: skipped: {rec['skipped']}")
            continue
        for cname, e in rec["candidates"].items():
            if "skipped" in e:
                na.setdefault((cname, e["skipped"]), []).append(rec["name"])
            elif "error" in e:
                notes.append(f"{rec['name']}: {cname} error: {e['error']}")
        for n in rec["notes"]:
            notes.append(f"{rec['name']}: {n}")
        if rec.get("ratio") and rec["ratio"] > 1.0:
            slower.append(f"{rec['name']}: {rec['ratio']:.2f}x the time of {rec['best_peer']}")
        fp_t = rec["candidates"].get("fastpool", {}).get("median_s")
        bwv = row_gbps(rec, result)
        if fp_t and bwv:
            mult = fp_t / ((rec["bytes_read"] + rec["bytes_written"]) / (bwv * 1e9))
            if mult > 2.0:
                far.append(f"{rec['name']}: {mult:.1f}x the memory floor")
    cores: dict[str, list] = {}
    for rec in result["rows"]:
        for cname, e in rec.get("candidates", {}).items():
            if "cores_used" in e and np.isfinite(e["cores_used"]):
                cores.setdefault(cname, []).append(e["cores_used"])
    if cores:
        lines.append("")
        lines.append("cores kept busy (process CPU time / wall time while timing; median over rows,"
                     " [min-max]): " + ", ".join(
                         f"{k} {_median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
                         for k, v in cores.items()))
    busy = [r for r in result["rows"] if (r.get("external_cpu_load") or 0) > 0.1]
    if busy:
        lines.append("")
        lines.append(f"warning: other processes used more than 10% of the CPUs while {len(busy)}"
                     f" of {len(result['rows'])} rows were timed; their times are noisy"
                     " (rerun on an idle machine, or with --wait-idle)")
    if slower:
        lines.append("")
        lines.append("fastpool slower than the best peer:")
        lines += [f"  {s}" for s in slower]
    if far:
        lines.append("")
        lines.append("fastpool more than 2x the memory floor:")
        lines += [f"  {s}" for s in far]
    for (cname, why), names in na.items():
        notes.append(f"{cname} n/a ({why}): " + (", ".join(names) if len(names) <= 2 else
                                                  f"{len(names)} rows"))
    if notes:
        lines.append("")
        lines.append("notes:")
        lines += [f"  {n}" for n in notes]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("ratio")]
    if not rows:
        rows_names, ratios = ["(no comparable rows)"], [1.0]
    else:
        rows_names = [r["name"] for r in rows]
        ratios = [r["ratio"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(ratios) + 2), 6))
    colors = ["tab:green" if v <= 1 else "tab:red" for v in ratios]
    ax.bar(range(len(ratios)), ratios, color=colors)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("fastpool time / best peer time (lower is better)")
    ax.set_xticks(range(len(ratios)))
    ax.set_xticklabels(rows_names, rotation=75, ha="right", fontsize=7)
    for i, (v, r) in enumerate(zip(ratios, rows or [{}])):
        ax.text(i, v, f"{v:.2f}\n{r.get('best_peer', '')}", ha="center", va="bottom",
                fontsize=6)
    m = result["meta"]
    ax.set_title(f"fastpool vs best peer, {m['threads']} threads, {m['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Progress bar
# --------------------------------------------------------------------------------------------

class _SimpleBar:
    def __init__(self, total, desc="", file=None, width=30):
        self.total, self.n, self.desc, self.file, self.width = total, 0, desc, file, width
        self.t0 = time.perf_counter()
        self._draw()

    def set_description(self, desc):
        self.desc = desc
        self._draw()

    def update(self, k=1):
        self.n += k
        self._draw()

    def write(self, s):
        self.file.write("\r\033[K" + s + "\n")
        self._draw()

    def _draw(self):
        frac = min(1.0, self.n / self.total) if self.total else 1.0
        fill = int(frac * self.width)
        el = time.perf_counter() - self.t0
        self.file.write(f"\r[{'#' * fill}{'.' * (self.width - fill)}] {frac * 100:3.0f}% "
                        f"{el:5.0f}s {self.desc[:60]}\033[K")
        self.file.flush()

    def close(self):
        self.file.write("\n")
        self.file.flush()


def _progress(total, enabled=True):
    if not enabled:
        class _Off:
            def update(self, k=1): pass
            def set_description(self, d): pass
            def write(self, s): sys.stderr.write(s + "\n")
            def close(self): pass
        return _Off()
    try:
        from tqdm import tqdm
        # no monitor thread (it only adjusts the redraw rate of bars updated from other
        # threads): with it, on a 2-core Xeon VM with JAX loaded, fastpool's adaptive 30->7
        # average row took 1.31-1.52 ms a call against 0.57-0.74 ms without it (4 runs each;
        # the process then kept 1.4-1.6 cores busy, not 2)
        tqdm.monitor_interval = 0
        return tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
    except ImportError:
        return _SimpleBar(total, file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_describe(fp) -> str:
    """`` (git <commit>[-dirty])`` when fastpool runs from a git checkout, else ``""``."""
    try:
        root = os.path.dirname(os.path.abspath(list(fp.__path__)[0]))
        r = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        return f" (git {r.stdout.strip()})" if r.returncode == 0 and r.stdout.strip() else ""
    except Exception:
        return ""


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--quick", action="store_true",
                   help="a small subset (finishes in under 2 minutes on 2 cores)")
    p.add_argument("--json", metavar="FILE", help="write all results (with samples) as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="bar chart of fastpool time / best peer time per workload")
    p.add_argument("--threads", type=int, default=None,
                   help="thread count for fastpool and every peer (default: Numba's default)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds per workload (default 10; 7 with --quick)")
    p.add_argument("--filter", metavar="SUBSTR",
                   help="only workloads whose name contains SUBSTR (case-insensitive; "
                        "comma-separated alternatives)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated peers to compare with (default {','.join(PEERS)})")
    p.add_argument("--no-backward", action="store_true", help="skip the backward rows")
    p.add_argument("--no-compile-latency", action="store_true",
                   help="skip the import / compile-latency subprocess measurements")
    p.add_argument("--no-bandwidth", action="store_true",
                   help="skip the copy-bandwidth measurement (no memory floor)")
    p.add_argument("--no-row-copy", action="store_true",
                   help="do not time the copy in each row's rounds: every floor then uses "
                        "the copy bandwidth measured at the start of the run")
    p.add_argument("--pin", action="store_true",
                   help="restrict the process to the first N CPUs (makes JAX use N threads)")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ONNX Runtime's worker threads spin between runs (its default; "
                        "off here because spinning slowed the candidate sampled next)")
    p.add_argument("--no-warm-sample", action="store_true",
                   help="time each sample right after the pause that precedes it, without "
                        "the untimed warm-up sample (see bench/README.md)")
    p.add_argument("--min-sample", type=float, default=0.02, help=argparse.SUPPRESS)
    p.add_argument("--gap", type=float, default=0.3, help=argparse.SUPPRESS)
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before timing each row, wait up to SECONDS for other processes to "
                        "leave the CPUs idle (shared machines)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    # benchmark another implementation of the fastpool API (harness development)
    p.add_argument("--fastpool-module", default="fastpool", help=argparse.SUPPRESS)
    return p


def run(args) -> dict:
    global ORT_SPINNING
    ORT_SPINNING = bool(getattr(args, "ort_spinning", False))
    if args.pin and args.threads:
        pinned = pin_cpus(args.threads)
    else:
        pinned = None
    threads = args.threads or default_threads()
    quick = args.quick
    rounds = args.rounds or (7 if quick else 10)
    rows = select_workloads(quick, args.filter, backward=not args.no_backward)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()] if args.peers else []
    meta: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                            "warm_sample": not getattr(args, "no_warm_sample", False),
                            "platform": platform.platform(), "cpu": _cpu_name(),
                            "cpus": os.cpu_count(), "rounds": rounds,
                            "min_sample_s": args.min_sample, "quick": quick, "notes": [],
                            "pinned": pinned, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "ort_spinning": ORT_SPINNING}
    fp, note = load_fastpool(args.fastpool_module)
    if note:
        meta["notes"].append(note)
    meta["fastpool"] = getattr(fp, "__version__", "?") if fp is not None else "n/a"
    meta["fastpool"] += _git_describe(fp)
    try:
        import numba
        meta["numba"] = numba.__version__
        threads, note = set_numba_threads(threads)
        if note:
            meta["notes"].append(note)
    except ImportError:
        meta["notes"].append("numba not installed")
    meta["threads"] = threads
    peer_status = load_peers(peers, threads)
    peers = [p for p in peers if peer_status[p][0]]
    if "jax" in peers:
        import jax
        n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        meta["jax_threads"] = ("1 (XLA_FLAGS)" if threads == 1 else
                               f"XLA's own pool over the {n_cpu} CPUs it may use"
                               + ("" if n_cpu == threads else " (use --pin to match)"))
        meta["jax_devices"] = [str(d) for d in jax.devices()]
    else:
        meta["jax_threads"] = "n/a"
    result: dict[str, Any] = {"meta": meta, "peer_status": peer_status, "peers_used": peers,
                              "rows": []}
    compile_names = [] if args.no_compile_latency or fp is None else (
        ["max_pool2d f32 nchw"] if quick else list(_COMPILE_SNIPPETS))
    total = (len(rows) * (rounds + 1) + (0 if args.no_bandwidth else 1)
             + 2 * len(compile_names) + (1 if compile_names else 0))
    bar = _progress(total, enabled=not args.no_progress)
    probe = None
    try:
        if not args.no_bandwidth:
            bar.set_description("copy bandwidth")
            probe = CopyProbe(threads=threads)
            result["bandwidth"] = measure_copy_bandwidth(probe=probe)
            if args.no_row_copy:
                probe.close()
                probe = None
            bar.update(1)
        try:
            import numba
            meta["threading_layer"] = numba.threading_layer()
        except Exception:
            meta["threading_layer"] = "not initialised"
        if fp is not None:
            try:
                rt = importlib.import_module(args.fastpool_module + "._runtime")
                meta["runtime_info"] = dict(rt.runtime_info())
            except Exception:
                pass
        if compile_names:
            bar.set_description("import time")
            result["bytecode"] = compile_bytecode(fp)
            try:
                result["import_time"] = measure_import_time(fp)
            except Exception as e:
                result["import_time"] = {"error": str(e)}
            bar.update(1)
            bar.set_description("compile latency")
            result["compile_latency"] = measure_compile_latency(fp, compile_names, threads, bar)
        copy_method = result.get("bandwidth", {}).get("best_method", "")
        for w in rows:
            bar.set_description(w.name)
            result["rows"].append(run_row(w, fp, peers, threads, rounds,
                                          min_sample=args.min_sample, gap=args.gap,
                                          warm=not args.no_warm_sample,
                                          progress=bar, idle_wait=args.wait_idle,
                                          copy=probe, copy_method=copy_method))
            gc.collect()
    finally:
        bar.close()
        if probe is not None:
            probe.close()
    return result


def main(args=None) -> int:
    """Entry point of ``python -m fastpool bench``; ``args`` is an argparse namespace or a list
    of command-line strings."""
    if args is None or isinstance(args, (list, tuple)):
        p = add_arguments(argparse.ArgumentParser(prog="python -m fastpool bench",
                                                  description=__doc__.split("\n\n")[0]))
        args = p.parse_args(args)
    if args.list:
        for w in select_workloads(args.quick, args.filter, backward=not args.no_backward):
            print(w.name + ("   [quick]" if w.quick else ""))
        return 0
    result = run(args)
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
        print(f"\nresults written to {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
