"""Command line: ``python -m fastpool {info,bench}``."""

from __future__ import annotations

import argparse
import platform
import sys


def _fallback_info() -> dict:
    """What we can gather without ``fastpool._runtime.runtime_info``."""
    info: dict = {"python": platform.python_version()}
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = "not installed"
    try:
        import numba
        import llvmlite
        info["numba"] = numba.__version__
        info["llvmlite"] = llvmlite.__version__
    except ImportError:
        numba = None
        info["numba"] = "not installed"
    try:
        import fastpool
        info["fastpool"] = getattr(fastpool, "__version__", None)
    except Exception as e:  # pragma: no cover
        info["fastpool"] = f"import failed: {e}"
    if not info.get("fastpool"):
        try:
            from importlib.metadata import version
            info["fastpool"] = version("fastpool")
        except Exception:
            info["fastpool"] = "unknown"
    if numba is not None:
        cfg = numba.config
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel region has run yet in this process
            layer = f"not initialised (configured: {cfg.THREADING_LAYER})"
        info["threading_layer"] = layer
        info["threads"] = numba.get_num_threads()
        info["max_threads"] = cfg.NUMBA_NUM_THREADS
        info["cache_dir"] = cfg.CACHE_DIR or "(next to the sources / __pycache__)"
        try:
            from numba import cuda
            if cuda.is_available():
                dev = cuda.get_current_device()
                name = dev.name.decode() if isinstance(dev.name, bytes) else dev.name
                info["cuda"] = f"available: {name}"
            else:
                info["cuda"] = "not available"
        except Exception as e:
            info["cuda"] = f"not available ({type(e).__name__})"
    return info


def print_info(file=None) -> int:
    file = file or sys.stdout
    info = None
    try:
        from fastpool import _runtime
        info = dict(_runtime.runtime_info())
    except (ImportError, AttributeError):
        pass
    if info is None:
        info = _fallback_info()
        info.setdefault("note", "fastpool._runtime.runtime_info is not available; partial info")
    width = max((len(str(k)) for k in info), default=0)
    for k, v in info.items():
        if isinstance(v, dict):
            print(f"{k}:", file=file)
            for k2, v2 in v.items():
                print(f"  {k2}: {v2}", file=file)
        else:
            print(f"{str(k).ljust(width)} : {v}", file=file)
    return 0


def main(argv=None) -> int:
    from fastpool import _bench  # light: stdlib + numpy only

    parser = argparse.ArgumentParser(prog="python -m fastpool",
                                     description="fastpool command line")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench}")
    sub.add_parser("info", help="versions, threading layer, thread count, cache folder, CUDA")
    _bench.add_arguments(sub.add_parser(
        "bench", help="benchmark fastpool against PyTorch, ONNX Runtime and JAX",
        description="Benchmark fastpool against PyTorch, ONNX Runtime and JAX. The table goes "
                    "to stdout, the progress bar to stderr."))
    args = parser.parse_args(argv)
    if args.command == "info":
        return print_info()
    if args.command == "bench":
        return _bench.main(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
