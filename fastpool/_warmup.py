"""``fastpool.warmup``: compile (and cache) kernels ahead of use, for servers and benchmarks."""
import numpy as np

from . import functional as _f

_FORWARD = ("max_pool", "avg_pool", "lp_pool", "adaptive_max_pool", "adaptive_avg_pool",
            "fractional_max_pool", "max_unpool")


def _calls(name, rank, x, cl):
    """Representative calls of one public op: the hot windows and the generic kernels."""
    import fastpool
    fn = getattr(fastpool, name)
    kw = {"channels_last": cl}
    base = name[:-len("_backward")] if name.endswith("_backward") else name
    if base.startswith("max_pool"):
        args = [((3, 2, 1), {}), ((2, 2), {}), ((3, 3), {}), ((3, 2, 1), {"return_indices": True})]
    elif base.startswith("avg_pool"):
        args = [((3, 2, 1), {}), ((2, 2), {}), ((3, 3), {})]
    elif base.startswith("lp_pool"):
        args = [((2.0, 2, 2), {}), ((3.0, 3, 3), {})]
    elif base.startswith("adaptive"):
        args = [((1,), {}), ((3,), {})]
    elif base.startswith("fractional"):
        args = [((2,), {"output_ratio": 0.5, "random_samples": np.full(
            (x.shape[0], x.shape[-1] if cl else x.shape[1], rank), 0.5)})]
    else:  # max_unpool
        pool = getattr(fastpool, f"max_pool{rank}d")
        v, i = pool(x, 2, return_indices=True, **kw)
        args = [((i, 2), {})]
        x = v
    for a, k in args:
        if name.endswith("_backward"):
            y = getattr(fastpool, base)(x, *a, **k, **kw)
            g = np.ones_like(y[0] if isinstance(y, tuple) else y)
            k = {key: val for key, val in k.items() if key != "return_indices"}
            if isinstance(y, tuple):  # (the gradient from the forward's indices)
                k["indices"] = y[1]
            fn(g, x, *a, **k, **kw)
        else:
            fn(x, *a, **k, **kw)


def _items(name, value, default):
    """``value`` as a list: ``default`` for None, one item for a lone string (or dtype), the
    items of any other iterable."""
    if value is None:
        return list(default)
    if isinstance(value, (str, np.dtype, type)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise TypeError(f"warmup: {name} must be a string or a sequence of them, got "
                        f"{value!r}") from None


def _public_ops():
    """{public op name: its rank} for every pooling function and gradient."""
    import fastpool
    names = {}
    for fam in _FORWARD:
        for r in (1, 2, 3):
            for suffix in ("", "_backward"):
                name = f"{fam}{r}d{suffix}"
                if callable(getattr(fastpool, name, None)):
                    names[name] = r
    return names


def _dtypes_of(name):
    """The input dtypes a public op takes."""
    from ._dtypes import MAX_DTYPES, AVG_DTYPES, LP_DTYPES, FLOAT_DTYPES
    if name.endswith("_backward"):
        return FLOAT_DTYPES
    if name.startswith("lp_pool"):
        return LP_DTYPES
    if name.startswith("avg_pool") or name.startswith("adaptive_avg_pool"):
        return AVG_DTYPES
    return MAX_DTYPES


def warmup(ops=None, dtypes=None, layouts=None):
    """Compile the kernels behind ``ops`` for ``dtypes`` and ``layouts`` ahead of use.

    ``ops``: public names (``"max_pool2d"``, ``"avg_pool2d_backward"``, ...) or families
    (``"max_pool"``, ``"max_pool_backward"``: every rank); default every forward op.
    ``dtypes``: default float32.  ``layouts``: ``"cf"`` (channels-first) and/or ``"cl"``
    (channels-last); default both.  Each may be one item or a sequence.  Every op and dtype is
    checked before anything compiles.  Serial and parallel variants are both compiled; with a
    writable cache they persist.  Returns the number of calls made.
    """
    public = _public_ops()
    names = []
    for op in _items("ops", ops, _FORWARD):
        if not isinstance(op, str):
            raise TypeError(f"warmup: ops must be op names (strings), got {op!r}")
        if op in public:
            names.append(op)
            continue
        fam, suffix = (op[:-len("_backward")], "_backward") if op.endswith("_backward") \
            else (op, "")
        found = [f"{fam}{r}d{suffix}" for r in (1, 2, 3) if f"{fam}{r}d{suffix}" in public]
        if not found:
            raise ValueError(f"warmup: unknown op {op!r} (ops are pooling functions such as "
                             f"'max_pool2d', their gradients such as 'max_pool2d_backward', or "
                             f"families such as 'max_pool')")
        names += found
    dts = []
    for d in _items("dtypes", dtypes, [np.float32]):
        try:
            dts.append(np.dtype(d))
        except TypeError:
            raise TypeError(f"warmup: dtypes must be NumPy dtypes, got {d!r}") from None
    dtypes = dts
    layouts = _items("layouts", layouts, ["cf", "cl"])
    for lay in layouts:
        if lay not in ("cf", "cl"):
            raise ValueError(f"warmup: layouts must be 'cf' or 'cl', got {lay!r}")
    for name in names:
        for dt in dtypes:
            if dt not in _dtypes_of(name):
                raise TypeError(f"warmup: {name} does not take dtype {dt} (it takes "
                                f"{', '.join(str(t) for t in _dtypes_of(name))})")
    saved = _f.PARALLEL_MIN_WORK
    saved_after = _f.SPECIALISE_AFTER
    calls = 0
    try:
        # hot windows' small calls run their specialised kernels from the first call (the
        # other windows compile the kernel that serves every window)
        _f.SPECIALISE_AFTER = 0
        for threshold in (saved, 0):  # serial kernels, then parallel ones
            _f.PARALLEL_MIN_WORK = threshold
            for name in names:
                rank = public[name]
                for dt in dtypes:
                    for lay in layouts:
                        shape = (1, 2) + (8,) * rank
                        x = (np.arange(np.prod(shape)) % 7).reshape(shape).astype(dt)
                        if lay == "cl":
                            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
                        _calls(name, rank, x, lay == "cl")
                        calls += 1
    finally:
        _f.PARALLEL_MIN_WORK = saved
        _f.SPECIALISE_AFTER = saved_after
        _f._PLANS.clear()  # plans made above chose kernels under the forced threshold
    return calls
