"""Parallel kernels compiled serial and launched over parts ("split" kernels; the default, see
``_runtime.SPLIT``).

Numba compiles a ``parallel=True`` kernel 2.5-3x slower than the same loops serial (its parfor
passes, then the loop body lowered again as a gufunc): a large call's first call in a fresh
process took 5-11 s.  A split kernel is the kernel's source with its one task loop ``for t in
prange(E)`` turned into the tasks of one part of ``parts`` (``_cpu/_specialise._split_prange``),
compiled serial.  One small *launcher*, ``launch(addr, parts, threads, args)`` (serial; one
machine-code variant per argument types, ~0.1 s to compile, cached like the kernels), hands
the parts to Numba's threading layer through the same ``parallel_for`` a ``prange`` loop
uses, and each thread calls the compiled kernel for its parts through the kernel's address
(``_launch_parts``): Numba's threads and schedule, a few parts per thread.  The kernel's machine
code is not compiled again into the launcher (a plain call of one jitted function from another
would link it in and compile it twice), and no parfor pass runs.

A part that raises (an allocation that fails) makes the launcher report it; the call is then
run again serially through the dispatcher, which raises the exception where it can be seen.
"""
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.ufunc import parallel as _parallel

from . import _runtime

# Parts per thread: Numba's threading layer hands them out as threads come free (TBB steals
# work), so a thread slowed by another process's load does not hold the call up; the kernel
# alone, 8 or 16 parts a thread against 1: 0.89-1.01x the time on a busy 2-core machine.
PARTS_PER_THREAD = 8


def _gep(builder, ptr, i):
    return builder.gep(ptr, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), i)])


@intrinsic
def _launch_parts(typingctx, addr, parts, threads, args):
    """Run the compiled function at address ``addr`` (Numba's calling convention, returning
    nothing) as ``fn(*args, p, parts)`` for every ``p`` in ``range(parts)``, on ``threads`` of
    Numba's threads (its threading layer's ``parallel_for``, as a ``prange`` loop uses it);
    the number of parts that raised."""
    if not all(isinstance(t, types.Integer) for t in (addr, parts, threads)) or \
            not isinstance(args, types.BaseTuple):
        return None

    def codegen(context, builder, signature, llargs):
        argtys = list(signature.args[3]) + [types.int64, types.int64]
        i64 = ir.IntType(64)
        intp = context.get_value_type(types.intp)
        i8p = ir.IntType(8).as_pointer()
        # what every part reads: (kernel address, parts, failure count, the arguments)
        dataty = ir.LiteralStructType([i64, i64, i64.as_pointer(),
                                       context.get_value_type(signature.args[3])])
        mod = builder.module
        # the function parallel_for calls per chunk: fn(args, dims, steps, data), args[0] the
        # chunk's first part (a base of 0 at a step of 1), dims[0] its number of parts
        tramp = ir.Function(mod, ir.FunctionType(ir.VoidType(), [
            i8p.as_pointer(), intp.as_pointer(), intp.as_pointer(), i8p]),
            name=mod.get_unique_name("fastpool_parts"))
        tramp.linkage = "internal"
        tb = ir.IRBuilder(tramp.append_basic_block("entry"))
        targs, tdims, _, tdata = tramp.args
        d = tb.bitcast(tdata, dataty.as_pointer())
        kaddr, nparts, failed, tup = (tb.load(_gep(tb, d, i)) for i in range(4))
        values = cgutils.unpack_tuple(tb, tup, len(argtys) - 2)
        # arrays handed on without their memory's owner record (meminfo): the caller holds
        # them for the whole call, and the kernel's reference counting of them and of views of
        # them (atomic updates of a count every thread shares) then does nothing, as for the
        # arrays a prange loop's body receives
        for i, ty in enumerate(argtys[:-2]):
            if isinstance(ty, types.Array):
                ary = context.make_array(ty)(context, tb, values[i])
                ary.meminfo = cgutils.get_null_value(ary.meminfo.type)
                values[i] = ary._getvalue()
        first = tb.ptrtoint(tb.load(targs), i64)
        count = tb.load(tdims)
        if intp.width < 64:
            count = tb.sext(count, i64)
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = tb.inttoptr(kaddr, fnty.as_pointer())
        with cgutils.for_range(tb, count) as loop:
            status, _ = context.call_conv.call_function(
                tb, fn, types.none, argtys, values + [tb.add(first, loop.index), nparts])
            with tb.if_then(status.is_error, likely=False):
                tb.atomic_rmw("add", failed, ir.Constant(i64, 1), "monotonic")
        tb.ret_void()

        addr_v, parts_v, threads_v, tup_v = llargs
        failed_v = cgutils.alloca_once_value(builder, ir.Constant(i64, 0))
        data = cgutils.alloca_once(builder, dataty)
        for i, v in enumerate((context.cast(builder, addr_v, signature.args[0], types.int64),
                               context.cast(builder, parts_v, signature.args[1], types.int64),
                               failed_v, tup_v)):
            builder.store(v, _gep(builder, data, i))
        base = cgutils.alloca_once_value(builder, ir.Constant(i8p, None))
        dims = cgutils.alloca_once_value(
            builder, context.cast(builder, parts_v, signature.args[1], types.intp))
        steps = cgutils.alloca_once_value(builder, ir.Constant(intp, 1))
        parallel_for = cgutils.get_or_insert_function(
            mod, ir.FunctionType(ir.VoidType(), [i8p] * 5 + [intp] * 3), "numba_parallel_for")
        builder.call(parallel_for, [builder.bitcast(v, i8p) for v in (tramp, base, dims, steps,
                                                                      data)] +
                     [ir.Constant(intp, 0), ir.Constant(intp, 1),
                      context.cast(builder, threads_v, signature.args[2], types.intp)])
        return builder.load(failed_v)
    return types.int64(addr, parts, threads, args), codegen


def _launch(addr, parts, threads, args):
    return _launch_parts(addr, parts, threads, args)


_launcher = None


def launcher():
    """``launch(addr, parts, threads, args)``: runs the kernel at ``addr`` as
    ``kernel(*args, p, parts)`` for every part ``p`` on ``threads`` threads and returns how many
    parts raised."""
    global _launcher
    if _launcher is None:
        # (Numba's threads started: parallel_for's symbol is then known to the compiler and
        # to a launcher loaded from the cache)
        _parallel._launch_threads()
        _launcher = _runtime._njit(numba, _launch, dict(nogil=True, error_model="numpy",
                                                        boundscheck=False))
    return _launcher


def _threads():
    """``numba.get_num_threads()``, without starting Numba's threading layer (~10 ms at the
    first call) when nothing started it: before that no one can have set a count either."""
    if not _parallel._is_initialized:
        return numba.config.NUMBA_NUM_THREADS
    return _parallel._get_num_threads()  # (numba.get_num_threads without its checks)


def _key(args):
    """A key of the Numba types of ``args``: their fingerprints and every array's alignment
    (which a fingerprint leaves out), or the types themselves for a value without one."""
    try:
        fp = tuple(map(compute_fingerprint, args))
    except Exception:
        return tuple(map(numba.typeof, args))
    return fp, tuple(a.flags.aligned for a in args if isinstance(a, np.ndarray))


class SplitKernel:
    """A serial Numba dispatcher of a split kernel, called like the parallel kernel it stands
    for: ``kern(*args)`` runs ``PARTS_PER_THREAD`` parts per thread on
    ``numba.get_num_threads()`` threads."""

    def __init__(self, disp):
        self.dispatcher = disp
        self.py_func = disp.py_func
        self.__name__ = getattr(disp, "__name__", "kernel")
        self.__qualname__ = getattr(disp, "__qualname__", self.__name__)
        # key of the argument types -> (launcher's entry point, kernel address, the kernel's
        # compile result, which keeps its code alive)
        self._targets = {}

    def __call__(self, *args):
        threads = _threads()
        if threads <= 1:
            return self.dispatcher(*args, 0, 1)
        key = _key(args)
        self._run(self._targets.get(key) or self._target(key, args), threads, args)

    def _run(self, target, threads, args):
        if target[0](target[1], PARTS_PER_THREAD * threads, threads, args):
            self.dispatcher(*args, 0, 1)  # (a part raised: raised again here, or done serially)

    def _target(self, key, args):
        """Compile (or load) the kernel and the launcher for these argument types."""
        sig = tuple(map(numba.typeof, args))
        full = sig + (types.int64, types.int64)
        self.dispatcher.compile(full)
        cres = self.dispatcher.overloads[full]
        addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        if not addr:
            raise RuntimeError(f"fastpool: no address for the compiled {self.__qualname__}")
        launch = launcher()
        # (called through the entry point of exactly these types, without Numba's type
        # dispatch: the key stands for the types)
        lsig = (types.int64, types.int64, types.int64, types.Tuple(sig))
        launch.compile(lsig)
        target = (launch.overloads[lsig].entry_point, addr, cres)
        self._targets[key] = target
        return target

    def bind(self, argv):
        """``kern(*args)`` for arguments of exactly the types of ``argv`` on every call
        (``_dispatch.entry_point``): no type key computed per call."""
        key = _key(argv)
        target = self._targets.get(key)  # (None: found on the first call with threads)

        def call(*args):
            nonlocal target
            threads = _threads()
            if threads <= 1:
                return self.dispatcher(*args, 0, 1)
            if target is None:
                target = self._targets.get(key) or self._target(key, args)
            self._run(target, threads, args)
        return call

    @staticmethod
    def launcher_ready(argv):
        """Is the launcher for arguments ``argv`` at hand without compiling (see
        ``_dispatch.ready``); always when one thread runs the kernel."""
        from ._dispatch import ready
        return _threads() <= 1 or ready(launcher(), (0, 0, 0, tuple(argv)))

    def __getattr__(self, name):  # the dispatcher's own (overloads, stats, _cache ...); its
        if name == "dispatcher":    # signatures end in the two part ints
            raise AttributeError(name)
        return getattr(self.dispatcher, name)

    def __repr__(self):
        return f"SplitKernel({self.__qualname__})"
