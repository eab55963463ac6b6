"""One place that maps (op, device, layout, parallel) to a kernel.

The element type is the last part of the key: each kernel is a Numba dispatcher that compiles
(and caches) one machine-code variant per argument-type signature, float16 included through its
marker argument (see ``_dtypes``).  A device registers a factory per op; the CUDA kernels of a
later issue register under device ``"cuda"`` beside the CPU ones.
"""
import functools
import importlib

# (op, device) -> (module, factory name, extra factory args)
_FACTORIES = {
    # channels-first max with indices (spec: window constants KD, KH, KW, SW)
    ("max", "cpu"): ("._cpu.window", "make_max", ()),
    # ... for 3x3 windows at stride 2, padding 1, tiling even planes (spec: K = 3)
    ("max_tiled", "cpu"): ("._cpu.window", "make_max_tiled", ()),
    # channels-first without indices: the separable kernels (layout argument is the kind)
    ("separable", "cpu"): ("._cpu.separable", "make_sep", ()),
    # ... serial, for regular windows: one kernel for every window size (layout argument is
    # the kind; spec: channels_last)
    ("small", "cpu"): ("._cpu.small", "make_small", ()),
    ("global", "cpu"): ("._cpu.separable", "make_global", ()),
    # ... serial, for 2x2 windows at stride 2 without padding (layout argument is the kind)
    ("pairs", "cpu"): ("._cpu.separable", "make_pairs", ()),
    # ... with indices, float inputs, serial and parallel (layout argument is the kind)
    ("pairs_index", "cpu"): ("._cpu.separable", "make_pairs_index", ()),
    # 2 x 2 x 2 max windows at stride 2 without padding, large float inputs (layout: unused)
    ("cube_max", "cpu"): ("._cpu.separable", "make_cube_max", ()),
    # stride-1 size-keeping max on small contiguous planes (spec: KH, KW; layout: the kind)
    ("flat", "cpu"): ("._cpu.separable", "make_flat", ()),
    # ... on float planes at least a vector wide, any size (spec: KH, KW; layout: the kind)
    ("same", "cpu"): ("._cpu.separable", "make_same", ()),
    # overlapping windows on short contiguous 1-d/2-d rows (spec: KH, KW, SW; layout: kind)
    ("flat_rows", "cpu"): ("._cpu.separable", "make_flat_rows", ()),
    # adaptive max/average on contiguous 1-d/2-d planes (spec: KH, KW; layout: the kind)
    ("adaptive", "cpu"): ("._cpu.separable", "make_adaptive", ()),
    # channels-last max with indices (layout argument is the kind)
    ("cl", "cpu"): ("._cpu.channels_last", "make_cl", ()),
    # ... serial, without the int32-position loops: small calls start on it
    ("cl_lean", "cpu"): ("._cpu.channels_last", "make_cl", (True,)),
    ("fractional_max", "cpu"): ("._cpu.planes", "make_fractional_max", ()),
    ("max_unpool", "cpu"): ("._cpu.planes", "make_unpool", ()),  # (layout: "cf" or "cl")
    # gradients (fastpool.backward); "max_backward" serves every max-type op via its indices
    ("max_backward", "cpu"): ("._cpu.backward", "make_max_scatter", ()),
    ("max_backward_gather", "cpu"): ("._cpu.backward", "make_max_gather", ()),
    # ... channels-last, through a ring of the input rows the windows reach
    ("max_backward_ring", "cpu"): ("._cpu.backward", "make_max_ring", ()),
    ("max_backward_recompute", "cpu"): ("._cpu.backward", "make_max_recompute", ()),
    # ... for 3x3 windows at stride 2 on 1-d/2-d planes: a gather writing each input row once
    ("max_backward_pairs", "cpu"): ("._cpu.backward", "make_max_recompute_pairs", ()),
    # channels-first max backward without indices: the forward's argmax scan (spec as "max")
    ("max_backward_scan", "cpu"): ("._cpu.window", "make_max_backward", ()),
    # ... for K x K windows at stride 2 tiling even planes (spec: K = 3, padding 1, or K = 2)
    ("max_backward_tiled", "cpu"): ("._cpu.window", "make_max_backward_tiled", ()),
    ("adaptive_backward", "cpu"): ("._cpu.backward", "make_adaptive_backward", ()),
    ("global_backward", "cpu"): ("._cpu.backward", "make_global_backward", ()),
    # ... serial, every geometry from the tables (_cpu/small.py; layout: "cf" or "cl")
    ("max_small", "cpu"): ("._cpu.small", "make_small_max", ()),
    ("max_backward_small", "cpu"): ("._cpu.small", "make_small_max", (True,)),
    ("avg_backward_small", "cpu"): ("._cpu.small", "make_small_sum_backward", (False,)),
    ("lp_backward_small", "cpu"): ("._cpu.small", "make_small_sum_backward", (True,)),
    ("avg_backward", "cpu"): ("._cpu.backward", "make_sum_backward", (False,)),
    ("lp_backward", "cpu"): ("._cpu.backward", "make_sum_backward", (True,)),
    ("max_unpool_backward", "cpu"): ("._cpu.backward", "make_unpool_backward", ()),
}


def register(op, device, module, factory, extra=()):
    _FACTORIES[(op, device)] = (module, factory, tuple(extra))
    kernel.cache_clear()


@functools.lru_cache(maxsize=None)
def kernel(op, device, layout, parallel, *spec):
    """The kernel for ``op`` on ``device`` in memory ``layout`` ("cf", "cl" or "any").

    ``spec``: compile-time constants of a specialised kernel (part of the memo key).
    """
    try:
        module, factory, extra = _FACTORIES[(op, device)]
    except KeyError:
        raise NotImplementedError(f"fastpool: no {device} kernel for {op}") from None
    mod = importlib.import_module(module, __package__)
    return getattr(mod, factory)(layout, parallel, *extra, *spec)


def entry_point(kern, argv):
    """The compiled overload of dispatcher ``kern`` that arguments ``argv`` select, as a
    function that unboxes them without Numba's type dispatch; None if it cannot be found.

    Only for callers that pass arguments of exactly these types on every later call.
    """
    try:
        if hasattr(kern, "bind"):  # a split kernel (_launch)
            return kern.bind(argv)
        from numba import typeof
        return kern.overloads[tuple(typeof(a) for a in argv)].entry_point
    except Exception:  # not a Numba dispatcher, or no overload of exactly these types
        return None


def ready(kern, argv):
    """Is the overload of dispatcher ``kern`` that arguments ``argv`` select at hand without
    compiling: compiled in this process already, or in Numba's cache (then loaded now, as a
    call would)?  False when it would have to be compiled, or ``kern`` is not a dispatcher."""
    try:
        from numba import typeof
        from numba.core.compiler_lock import global_compiler_lock
        if hasattr(kern, "dispatcher"):  # a split kernel (_launch): its serial dispatcher
            return ready(kern.dispatcher, tuple(argv) + (0, 1)) and kern.launcher_ready(argv)
        sig = tuple(typeof(a) for a in argv)
        if sig in kern.overloads:
            return True
        cache = getattr(kern, "_cache", None)
        absent = kern.__dict__.setdefault("_fastpool_absent", set())
        if cache is None or sig in absent:
            return False
        with global_compiler_lock:
            if sig in kern.overloads:
                return True
            cres = cache.load_overload(sig, kern.targetctx)
            if cres is None:
                # (not looked for again in this process: each new plan would read the index)
                absent.add(sig)
                return False
            if not cres.objectmode:
                kern.targetctx.insert_user_function(cres.entry_point, cres.fndesc,
                                                    [cres.library])
            kern.add_overload(cres)
            kern._cache_hits[sig] += 1
        return True
    except Exception:
        return False
