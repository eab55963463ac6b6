"""The public operators: NumPy arrays straight to ``functional`` / ``backward``, Dask arrays
block by block (``_dask``), CUDA arrays to the GPU kernels (``_cuda``)."""
import functools
import inspect
import sys

import numpy as np

from . import _cuda, _dask


def aware(fn, rank, name):
    """``fn`` (the public NumPy operator ``name`` of ``rank`` spatial dims), taking Dask and
    CUDA arrays too; the wrapper is meant to be published as ``fastpool.<name>``."""
    sig = inspect.signature(fn)
    modules = sys.modules
    plain = frozenset((np.ndarray, int, float, tuple, list, str, type(None)))
    is_cuda = _cuda.is_cuda

    def arguments(args, kwargs):
        """The call's arguments by name, defaults applied."""
        try:
            bound = sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{name}: {exc}") from None
        bound.apply_defaults()
        return dict(bound.arguments)

    @functools.wraps(fn)
    def op(*args, **kwargs):
        m = modules.get("dask.array")  # (a dict lookup per call while Dask is not imported)
        if m is not None:
            A = m.Array
            if any(isinstance(a, A) for a in args) or \
                    any(isinstance(a, A) for a in kwargs.values()):
                return _dask.run(op, fn, rank, arguments(args, kwargs))
        # (the arrays come first: grad_output and input, or input and indices)
        a0 = args[0] if args else kwargs.get("grad_output", kwargs.get("input"))
        a1 = args[1] if len(args) > 1 else kwargs.get("input")
        if (type(a0) not in plain and is_cuda(a0)) or (type(a1) not in plain and is_cuda(a1)):
            return _cuda.run(name, rank, arguments(args, kwargs))
        return fn(*args, **kwargs)
    op.__module__ = "fastpool"  # (Dask tasks pickle it as fastpool.<name>)
    op.__qualname__ = name
    return op
