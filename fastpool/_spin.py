"""The spin wait of the split-kernel pool's workers (``_threads``): imported only when a
worker starts, so that ``import fastpool`` does not import Numba.  Module-level functions,
so that Numba's cache keys them the same in every process."""
import platform

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._cpu._simd import call_void
from ._runtime import jit

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


@intrinsic
def _acquire_load(typingctx, arr, i):
    """``arr[i]`` (int64) read with acquire ordering: read anew on every call."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(arr, i), codegen


@intrinsic
def _pause(typingctx):
    """The x86 spin-wait hint (nothing elsewhere)."""
    def codegen(context, builder, sig, args):
        if _X86:
            call_void(builder, "llvm.x86.sse2.pause")
        return context.get_dummy_value()
    return types.void(), codegen


def spin_wait(flags, i, iters):
    """True as soon as ``flags[i]`` is nonzero; False after ``iters`` pauses (no GIL held)."""
    for _ in range(iters):
        if _acquire_load(flags, i) != 0:
            return True
        _pause()
    return False


spin_wait = jit(spin_wait)
