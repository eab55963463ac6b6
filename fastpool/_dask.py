"""Dask arrays in, lazy Dask arrays out (the API contract's "Devices and array types").

A public operator given a Dask array maps itself over the blocks of the batch and channel axes.
The spatial axes are rechunked to one chunk each, so every (n, c) plane lies whole in one block:
windows never straddle blocks, and indices are the global per-plane positions without any
offset.  Each block runs the NumPy operator when the result is computed, on whichever scheduler
computes it, ``dask.distributed`` included: tasks name the operator ``fastpool.<op>``, which
pickles by reference and imports on the worker.  Nothing is computed while the graph is built
but one call on a zero-sized batch (every argument checked, the result's shape and dtype).

Arrays that travel with the input (``grad_output``, ``indices``, ``random_samples``) are
chunked like it along the batch and channel axes; NumPy ones are wrapped first.  Fractional
pooling without ``random_samples`` draws them from NumPy's global generator when the graph is
built, as the NumPy call would, so that every block and every recomputation agree.
"""
import numpy as np

# arguments laid out like the input (same ndim, batch and channel axes)
_LIKE_INPUT = ("grad_output", "input", "indices")
_SAMPLES = ("random_samples", "_random_samples")


def _stand_in(v, n_ax, c_ax, batched):
    """An empty array for a like-input argument: batch 0, one channel (a batch axis added to an
    unbatched one)."""
    shape = list(np.shape(v))
    shape[c_ax] = 1
    if batched:
        shape[n_ax] = 0
    else:
        shape.insert(0, 0)
    return np.zeros(shape, v.dtype)


def run(op, fn, rank, p):
    """The lazy result of public operator ``op`` (NumPy operator ``fn``) for the bound
    arguments ``p`` (defaults applied), some of them Dask arrays."""
    import dask.array as da
    from dask import delayed

    name = op.__qualname__
    if p.get("out") is not None:
        raise TypeError(f"{name}: out= is not supported for Dask arrays (the result is a lazy "
                        f"Dask array)")
    A = da.Array
    for k, v in p.items():
        if isinstance(v, A) and k not in _LIKE_INPUT + _SAMPLES:
            raise TypeError(f"{name}: {k} must not be a Dask array")
        if isinstance(v, A) and any(np.isnan(c) for ch in v.chunks for c in ch):
            raise ValueError(f"{name}: {k} has unknown chunk sizes; call compute_chunk_sizes() "
                             f"first")
    x = p["input"]
    ndim = np.ndim(x) if not isinstance(x, A) else x.ndim
    if ndim not in (rank + 1, rank + 2):  # the NumPy operator says what is wrong
        fn(**{k: (np.zeros((0,) * np.ndim(v), getattr(v, "dtype", np.float32))
                  if k in _LIKE_INPUT + _SAMPLES and v is not None else v)
              for k, v in p.items()})
        raise ValueError(f"{name}: input must have {rank + 1} or {rank + 2} dims, got {ndim}")
    batched = ndim == rank + 2
    cl = bool(p.get("channels_last", False))
    c_ax = ndim - 1 if cl else (1 if batched else 0)
    n_ax = 0 if batched else None
    like = [k for k in _LIKE_INPUT if p.get(k) is not None]
    # the chunks of the batch and channel axes: those of the first Dask array among them
    ref = next((k for k in ("input", "grad_output", "indices") if isinstance(p.get(k), A)),
               None)
    for k in like:
        p[k] = da.asarray(p[k]) if not isinstance(p[k], A) else p[k]
        v = p[k]
        if v.ndim != ndim:
            raise ValueError(f"{name}: {k} must have {ndim} dims like input, got shape {v.shape}")
        if v.shape[c_ax] != p["input"].shape[c_ax] or \
                (batched and v.shape[n_ax] != p["input"].shape[n_ax]):
            raise ValueError(f"{name}: {k} has shape {v.shape}, whose batch and channel sizes "
                             f"differ from input's {p['input'].shape}")
    x = p["input"]
    N = x.shape[n_ax] if batched else 1
    C = x.shape[c_ax]
    ref = p[ref] if ref is not None else x
    nch = ref.chunks[n_ax] if batched else (1,)
    cch = ref.chunks[c_ax]
    for k in like:
        spec = {i: -1 for i in range(ndim)}
        spec[c_ax] = cch
        if batched:
            spec[n_ax] = nch
        p[k] = p[k].rechunk(spec)
    # fractional pooling: one set of samples for the whole call
    if name.startswith("fractional_max_pool") and not name.endswith("_backward") and \
            p.get("random_samples") is None and p.get("_random_samples") is None:
        p["random_samples"] = np.random.random_sample((N, C, rank))
    for k in _SAMPLES:
        v = p.get(k)
        if v is None:
            continue
        if not isinstance(v, A):
            v = np.asarray(v)
            if v.dtype.kind == "f" and v.size and not (np.all(v >= 0) and np.all(v < 1)):
                raise ValueError(f"{name}: random_samples must lie in [0, 1)")
        if v.shape != (N, C, rank):
            raise ValueError(f"{name}: random_samples must have shape {(N, C, rank)}, got "
                             f"{v.shape}")
        p[k] = da.asarray(v).rechunk({0: nch if batched else -1, 1: cch, 2: -1})
    # max unpooling's output_size as a full shape: its spatial part (blocks differ in N and C)
    osz = p.get("output_size")
    if name.startswith("max_unpool") and osz is not None and np.ndim(osz) == 1 and \
            len(osz) == rank + 2 and batched:
        if tuple(int(s) for s in osz[:2]) != (N, C):
            raise ValueError(f"{name}: output_size {tuple(osz)} does not match the input's "
                             f"batch and channel sizes {(N, C)}")
        p["output_size"] = tuple(osz[2:])
    # a zero-batch call: checks every argument, gives the result's shapes and dtypes
    meta = {}
    for k, v in p.items():
        if k in like:
            meta[k] = _stand_in(v, n_ax, c_ax, batched)
        elif k in _SAMPLES and v is not None:
            meta[k] = np.zeros((0, 1, rank), v.dtype)
        else:
            meta[k] = v
    res = fn(**meta)
    multi = isinstance(res, tuple)
    metas = res if multi else (res,)
    blocks = {k: p[k].to_delayed() for k in like + [s for s in _SAMPLES if p.get(s) is not None]}
    call = delayed(op, pure=True, nout=len(metas) if multi else None)
    parts = [[None] * len(cch) for _ in nch]
    for i, nb in enumerate(nch):
        for j, cb in enumerate(cch):
            kw = dict(p)
            for k in blocks:
                if k in _SAMPLES:
                    kw[k] = blocks[k][i, j, 0]
                else:
                    at = [0] * ndim
                    at[c_ax] = j
                    if batched:
                        at[n_ax] = i
                    kw[k] = blocks[k][tuple(at)]
            parts[i][j] = call(**kw)
    outs = []
    for m, r in enumerate(metas):
        rows = []
        for i, nb in enumerate(nch):
            row = []
            for j, cb in enumerate(cch):
                shape = list(r.shape[1:] if not batched else r.shape)
                shape[c_ax] = cb
                if batched:
                    shape[n_ax] = nb
                d = parts[i][j][m] if multi else parts[i][j]
                row.append(da.from_delayed(d, tuple(shape), dtype=r.dtype,
                                           meta=np.empty((0,) * len(shape), r.dtype)))
            rows.append(row[0] if len(row) == 1 else da.concatenate(row, axis=c_ax))
        outs.append(rows[0] if len(rows) == 1 else da.concatenate(rows, axis=n_ax))
    return tuple(outs) if multi else outs[0]
