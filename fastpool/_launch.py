"""Parallel kernels compiled serial and launched over parts ("split" kernels; the default, see
``_runtime.SPLIT``).

Numba compiles a ``parallel=True`` kernel 2.5-3x slower than the same loops serial (its parfor
passes, then the loop body lowered again as a gufunc): a large call's first call in a fresh
process took 5-11 s.  A split kernel is the kernel's source with its one task loop ``for t in
prange(E)`` turned into the tasks of one part of ``parts`` (``_cpu/_specialise._split_prange``),
compiled serial.  A *launcher*, one small Numba parallel function per argument count and types
(compiled in ~0.3 s, cached like the kernels), runs ``for p in prange(parts)`` and calls the
compiled kernel for part ``p`` through its address (``_call_part``): Numba's own threads and
schedule, as for a parallel kernel, with one part per thread.  The kernel's machine code is
not compiled again into the launcher (a plain call of one jitted function from another would
link it in and compile it twice).

A part that raises (an allocation that fails) makes the launcher report it; the call is then
run again serially through the dispatcher, which raises the exception where it can be seen.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import prange, types  # noqa: F401  (prange: read by the launchers' source)
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc import parallel as _parallel

from . import _runtime


@intrinsic
def _call_part(typingctx, addr, args):
    """Call the compiled function at address ``addr`` (Numba's calling convention, returning
    nothing) with the values of tuple ``args``; 1 if it raised, 0 otherwise."""
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None

    def codegen(context, builder, signature, llargs):
        argtys = list(signature.args[1])
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtys))
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.none, argtys, values)
        return builder.zext(status.is_error, ir.IntType(64))
    return types.int64(addr, args), codegen


_LAUNCHERS = {}


def launcher(n):
    """The launcher of kernels of ``n`` arguments: ``launch(addr, parts, *args)`` calls the
    kernel at ``addr`` as ``kernel(*args, p, parts)`` for every ``p`` in ``prange(parts)`` and
    returns how many parts raised."""
    got = _LAUNCHERS.get(n)
    if got is None:
        names = ", ".join(f"a{i}" for i in range(n))
        # (compiled as if written in this file, under a name of its own: Numba's cache finds it
        # by file, name and line)
        src = "\n" * (launcher.__code__.co_firstlineno - 1) + (f"def launch_{n}(addr, parts, {names}):\n"
                           f"    failed = 0\n"
                           f"    for p in prange(parts):\n"
                           f"        failed += _call_part(addr, ({names}, np.int64(p), "
                           f"np.int64(parts)))\n"
                           f"    return failed\n")
        ns = {}
        exec(compile(src, __file__, "exec"), globals(), ns)
        fn = ns[f"launch_{n}"]
        fn.__module__ = __name__
        got = _LAUNCHERS.setdefault(n, _runtime._njit(numba, fn, dict(
            nogil=True, parallel=True, error_model="numpy", boundscheck=False)))
    return got


def _threads():
    """``numba.get_num_threads()``, without starting Numba's threading layer (~10 ms at the
    first call) when nothing started it: before that no one can have set a count either."""
    if not _parallel._is_initialized:
        return numba.config.NUMBA_NUM_THREADS
    return numba.get_num_threads()


def _key(args):
    """A key of the Numba types of ``args`` (their fingerprints, and every array's alignment,
    which a fingerprint leaves out); None for a value without a fingerprint."""
    try:
        fp = tuple(map(compute_fingerprint, args))
    except Exception:
        return None
    return fp, tuple(a.flags.aligned for a in args if isinstance(a, np.ndarray))


class SplitKernel:
    """A serial Numba dispatcher of a split kernel, called like the parallel kernel it stands
    for: ``kern(*args)`` runs its parts on ``numba.get_num_threads()`` threads, one each."""

    def __init__(self, disp):
        self.dispatcher = disp
        self.py_func = disp.py_func
        self.__name__ = getattr(disp, "__name__", "kernel")
        self.__qualname__ = getattr(disp, "__qualname__", self.__name__)
        self._targets = {}  # key of the argument types -> (launcher's entry point, address)

    def __call__(self, *args):
        threads = _threads()
        if threads <= 1:
            return self.dispatcher(*args, 0, 1)
        key = _key(args)
        if key is None:
            key = tuple(map(numba.typeof, args))
        target = self._targets.get(key)
        if target is None:
            target = self._target(key, args, threads)
        if target[0](target[1], threads, *args):
            self.dispatcher(*args, 0, 1)  # (a part raised: raised again here, or done serially)

    def _target(self, key, args, threads):
        """Compile (or load) the kernel and its launcher for these argument types."""
        sig = tuple(map(numba.typeof, args))
        full = sig + (types.int64, types.int64)
        self.dispatcher.compile(full)
        cres = self.dispatcher.overloads[full]
        addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        if not addr:
            raise RuntimeError(f"fastpool: no address for the compiled {self.__qualname__}")
        launch = launcher(len(args))
        # (the first launch through the dispatcher, which compiles it; later ones through the
        # entry point of exactly these types, without Numba's type dispatch)
        launch.compile((types.int64, types.int64) + sig)
        entry = launch.overloads[(types.int64, types.int64) + sig].entry_point
        target = (entry, addr, cres)  # (cres: keeps the kernel's code alive)
        self._targets[key] = target
        return target

    def launcher_ready(self, argv):
        """Is this kernel's launcher for arguments ``argv`` at hand without compiling (see
        ``_dispatch.ready``); always when one thread runs the kernel."""
        from ._dispatch import ready
        return _threads() <= 1 or ready(launcher(len(argv)), (0, 0) + tuple(argv))

    def __getattr__(self, name):  # the dispatcher's own (overloads, stats, _cache ...); its
        if name == "dispatcher":    # signatures end in the two part ints
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self):
        return f"SplitKernel({self.__qualname__})"
