"""Process-wide runtime choices: threading layer, Numba's cache, and the kernel decorator.

Numba's default threading layer here is GNU OpenMP, which kills a forked child that runs a
parallel kernel; ``workqueue`` aborts when two Python threads launch kernels at once.  TBB
passes both, so it is preloaded (its library sits in the environment's ``lib/`` where the loader
does not look) and selected before the first parallel call.  Without TBB the ``workqueue``
layer is used and parallel launches are serialised by a lock (see ``launch_lock``); a forked
child then still works because workqueue keeps no state across fork.

``import fastpool`` runs ``start``: Numba's import, the threading layer's choice and the
loading of Numba's CPU registries, the one-time cost that would otherwise fall inside the first
pooling call of a process.  No kernel compiles and no thread starts there.
``FASTPOOL_LAZY_START=1`` leaves all of it to the first kernel (``configure``).
"""
import ctypes
import functools
import glob
import os
import sys
import threading

_TBB_ENV = "FASTPOOL_THREADING_LAYER"
# Parallel kernels compiled serial over one part of their tasks and launched over Numba's
# threads (``_launch``): a large call's first call compiles 2-3x faster than a ``parallel=True``
# kernel; they run within a few percent of its speed on most kernels (README: runtime notes).
# FASTPOOL_SPLIT_KERNELS=0: Numba's parallel kernels.
SPLIT = os.environ.get("FASTPOOL_SPLIT_KERNELS", "1").strip().lower() not in (
    "0", "false", "no", "off")


def _preload_tbb():
    """Load libtbb.so.12 with RTLD_GLOBAL from the places pip puts it; True on success."""
    names = []
    for prefix in {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(sys.executable))}:
        names += sorted(glob.glob(os.path.join(prefix, "lib", "libtbb.so.12*")))
    for name in names + ["libtbb.so.12"]:
        try:
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def _choose_layer(numba):
    wanted = os.environ.get(_TBB_ENV, "").strip().lower()
    if numba.config.THREADING_LAYER not in ("default", "", None) and not wanted:
        return numba.config.THREADING_LAYER  # the user chose through NUMBA_THREADING_LAYER
    if wanted in ("", "tbb"):
        if _preload_tbb():
            try:
                from numba.np.ufunc import tbbpool  # noqa: F401  (fails if TBB is too old)
                return "tbb"
            except ImportError:
                pass
        if wanted == "tbb":
            raise ImportError("fastpool: FASTPOOL_THREADING_LAYER=tbb but TBB could not be "
                              "loaded; pip install tbb")
    if wanted in ("omp", "workqueue"):
        return wanted
    return "workqueue"


def _last_level_cache_bytes():
    """The largest CPU cache's size in bytes (Linux sysfs), or 0 where it is not known."""
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * mult)
        except (OSError, ValueError):
            continue
    return best


def host_is_amd():
    """Whether Numba compiles for an AMD core (its CPU name, the host's unless
    ``NUMBA_CPU_NAME`` says another: ``znver4``, ...)."""
    from numba.core import config
    name = config.CPU_NAME
    if name in (None, "host"):
        from llvmlite import binding
        name = binding.get_host_cpu_name()
    return str(name).startswith(("znver", "bdver", "btver", "amdfam"))


# Results of at least this many bytes are written with streaming (non-temporal) stores where a
# kernel can (gradients, channels-first unpooling): 8 MiB, or a sixteenth of the last-level
# cache where that is more.  Smaller results stay in the cache for the next operation: on a
# Xeon with a 480 MB L3 (a virtual machine's share of it), plain stores took 0.60-0.93x the
# time of streaming ones on 13-26 MB gradients, and 1.2-1.85x on 103 MB ones.
STREAM_MIN_BYTES = max(8 << 20, _last_level_cache_bytes() // 16)

THREADING_LAYER = None  # set by configure()
# workqueue is not thread safe: parallel launches from several Python threads are serialised.
_SERIAL_LAYER = False
_launch_lock = threading.Lock()
_configure_lock = threading.Lock()
_CACHE = None


def configure():
    """Choose the threading layer and the cache policy; idempotent, run before any kernel."""
    global THREADING_LAYER, _SERIAL_LAYER, _CACHE
    if THREADING_LAYER is not None:
        return
    with _configure_lock:
        if THREADING_LAYER is not None:
            return
        with _optional_imports_deferred():
            import numba
        layer = _choose_layer(numba)
        numba.config.THREADING_LAYER = layer
        _SERIAL_LAYER = layer == "workqueue"
        _CACHE = _cache_usable(numba)
        if _CACHE is not False:
            _install_locators(numba)
        THREADING_LAYER = layer


class _LazyYaml:
    """Stands for PyYAML in Numba's config module (``_HAVE_YAML`` and ``yaml``) where its import
    was deferred: imports it when Numba reads a ``.numba_config.yaml``."""

    def __bool__(self):
        try:
            import yaml  # noqa: F401
        except ImportError:
            return False
        return True

    def safe_load(self, stream):
        import yaml
        return yaml.safe_load(stream)


class _MetadataStandIn(type(sys)):
    """Stands for ``importlib.metadata`` where Numba's ``entrypoints`` module imports it (the
    standard library's module costs 20-35 ms of a 0.5 s import on a 2-core EPYC, for its email
    parser): the real module is imported when an attribute is first asked for."""

    def __getattr__(self, name):
        import importlib
        if sys.modules.get("importlib.metadata") is self:
            del sys.modules["importlib.metadata"]
        return getattr(importlib.import_module("importlib.metadata"), name)


def _may_have_numba_extensions():
    """Could ``importlib.metadata.entry_points()`` hold a ``numba_extensions`` entry point?
    False only where every distribution it would see is a ``*.dist-info``/``*.egg-info``
    folder in a folder on ``sys.path`` and none of their ``entry_points.txt`` mentions the
    group (a few ms, against the import and a scan of every distribution's metadata)."""
    from importlib.machinery import PathFinder
    for finder in sys.meta_path:
        if finder is not PathFinder and getattr(finder, "find_distributions", None) is not None:
            return True  # distributions found some other way
    for entry in sys.path:
        if not isinstance(entry, str):
            return True
        try:
            listing = os.scandir(entry or ".")
        except FileNotFoundError:
            continue
        except OSError:  # a zip file (or a folder that cannot be read)
            return True
        with listing:
            for item in listing:
                if not item.name.lower().endswith((".dist-info", ".egg-info")):
                    continue
                try:
                    with open(os.path.join(item.path, "entry_points.txt"), "rb") as f:
                        if b"numba_extensions" in f.read():
                            return True
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError:
                    return True
    return False


def _skip_empty_extension_scan():
    """Numba's ``entrypoints.init_all`` (run as its registries load) imports
    ``importlib.metadata`` and calls every ``numba_extensions`` entry point; where there is
    none (``_may_have_numba_extensions``), mark it done, as it would have marked itself."""
    ep = sys.modules.get("numba.core.entrypoints")
    if ep is None or ep.__dict__.get("_already_initialized") is not False or \
            not isinstance(ep.__dict__.get("importlib_metadata"), _MetadataStandIn):
        return
    if not _may_have_numba_extensions():
        ep._already_initialized = True


class _optional_imports_deferred:
    """While Numba itself is imported: its ``__init__`` imports SciPy only to check its
    version, and its config module imports PyYAML only to read a ``.numba_config.yaml`` from
    the working directory (13-18 ms and 20-26 ms of a 0.5 s import on a 2-core EPYC, where
    they are installed).  Neither is loaded then: each is marked missing in ``sys.modules``
    for the duration (never one already imported; not PyYAML where that file exists), and
    afterwards Numba's config gets ``_LazyYaml``, which imports PyYAML when Numba reads such
    a file later (``numba.config.reload_config``).  ``importlib.metadata``, where it is not
    imported yet, is a ``_MetadataStandIn`` for the duration (``sys.modules`` holds the real
    module, or none, afterwards)."""

    def __enter__(self):
        self.blocked = []
        self.metadata = None
        if "numba" in sys.modules:
            return self
        for name in ("scipy", "yaml"):
            if name in sys.modules or (name == "yaml" and os.path.exists(".numba_config.yaml")):
                continue
            sys.modules[name] = None
            self.blocked.append(name)
        if "importlib.metadata" not in sys.modules:
            self.metadata = sys.modules["importlib.metadata"] = \
                _MetadataStandIn("importlib.metadata")
        return self

    def __exit__(self, *exc):
        for name in self.blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
        if self.metadata is not None and sys.modules.get("importlib.metadata") is self.metadata:
            del sys.modules["importlib.metadata"]
        config = sys.modules.get("numba.core.config")
        if "yaml" in self.blocked and config is not None and \
                config.__dict__.get("_HAVE_YAML") is False and "yaml" not in config.__dict__:
            config._HAVE_YAML = config.yaml = _LazyYaml()
        return False


START_S = None  # seconds that ``start`` took at import, or None where it did not run
START_ERROR = None  # what stopped ``start`` (the first kernel raises it again), or None


def _lazy_start() -> bool:
    return os.environ.get("FASTPOOL_LAZY_START", "").strip().lower() not in (
        "", "0", "false", "no", "off")


def start():
    """The runtime's one-time start-up, at ``import fastpool``: ``configure`` (Numba's import,
    the threading layer, the cache), then Numba's CPU typing and target registries, which a
    process otherwise loads at its first kernel (~100-150 ms; Numba's BLAS probe, which would
    import SciPy's linear algebra, is left to first use: ``_blas_probe_deferred``), and the
    kernel modules.  A
    kernel's first call with a warm cache then only loads its machine code.  Skipped with
    ``FASTPOOL_LAZY_START=1``; an error here is kept (``START_ERROR``) and raised again by the
    first kernel, not by the import."""
    global START_S, START_ERROR
    if _lazy_start():
        return
    import time
    t0 = time.perf_counter()
    try:
        configure()
        from numba.core.registry import cpu_target
        _skip_empty_extension_scan()
        with _blas_probe_deferred():
            cpu_target.typing_context.refresh()
            cpu_target.target_context.refresh()
        # NumPy's masked arrays, which NumPy loads on first use and Numba's typing of every
        # array asks for (``np.ma.MaskedArray``): 15-20 ms of a first kernel call otherwise
        import numpy.ma  # noqa: F401
        # fastpool's kernel modules (their factories and intrinsics, nothing compiled) and
        # what Numba's first parallel launch imports (multiprocessing, for its start-up lock):
        # 16 alternated fresh processes, warm cache, the bench's max_pool2d_backward NHWC
        # large, first call 37 -> 25 ms median, import +22 ms
        import multiprocessing.synchronize  # noqa: F401
        from ._cpu import window, separable, backward, small  # noqa: F401
        from . import _launch, _cache_lock  # noqa: F401
    except Exception as e:  # (configure runs again, and raises, at the first kernel)
        START_ERROR = f"{type(e).__name__}: {e}"
        return
    START_S = time.perf_counter() - t0


class _DeferredBlasProbe:
    """Stands for Numba's ``numba.np.arraymath._HAVE_BLAS`` (is SciPy's BLAS importable?) until
    something asks: the probe then runs once, as Numba's import would have run it."""

    def __init__(self, probe):
        self._probe = probe
        self._value = None

    def __bool__(self):
        if self._value is None:
            self._value = bool(self._probe())
        return self._value

    def __repr__(self):
        return f"<BLAS probe deferred: {'not run yet' if self._value is None else self._value}>"


class _blas_probe_deferred:
    """While Numba's registries load: its ``arraymath`` module probes for BLAS at import by
    importing ``scipy.linalg`` (100-250 ms on a 2-core EPYC, with ``numpy.f2py`` behind it),
    for one inner-product helper of ``np.cov``-like overloads that fastpool never uses.  The
    probe is answered "not yet" during the import and ``_HAVE_BLAS`` becomes a
    ``_DeferredBlasProbe`` that runs it on first use, so a Numba function of the user's that
    needs it sees the same answer.  Does nothing where SciPy's BLAS is already imported,
    ``arraymath`` already loaded, or Numba's layout is not the one expected."""

    def __enter__(self):
        self._linalg = self._stub = None
        if "numba.np.arraymath" in sys.modules or "scipy.linalg.cython_blas" in sys.modules:
            return self
        try:
            from numba.np import linalg
        except Exception:
            return self
        real = getattr(linalg, "ensure_blas", None)
        if not callable(real):
            return self

        def not_yet():
            raise ImportError("BLAS probe deferred by fastpool")

        self._linalg, self._real, self._stub = linalg, real, not_yet
        linalg.ensure_blas = not_yet
        return self

    def __exit__(self, *exc):
        if self._stub is None:
            return False
        self._linalg.ensure_blas = self._real
        am = sys.modules.get("numba.np.arraymath")
        if am is not None and getattr(am, "ensure_blas", None) is self._stub:
            am.ensure_blas = self._real
            if am.__dict__.get("_HAVE_BLAS") is False and callable(
                    am.__dict__.get("_check_blas")):
                am._HAVE_BLAS = _DeferredBlasProbe(am._check_blas)
        return False


class _NoLock:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()


def launch_lock():
    return _launch_lock if _SERIAL_LAYER else _NO_LOCK


_PKG = os.path.dirname(os.path.abspath(__file__))  # the package folder


def _cache_usable(numba):
    """Can Numba's cache locate a writable folder for this package?"""
    if os.environ.get("FASTPOOL_NO_CACHE"):
        return False
    if numba.config.CACHE_DIR:
        d = numba.config.CACHE_DIR
        try:
            os.makedirs(d, exist_ok=True)
        except OSError:
            return False
        return os.access(d, os.W_OK)
    return True if os.access(_PKG, os.W_OK) else None  # None: let Numba try its home cache


def _kernel_sources():
    """The files a kernel's machine code depends on: the kernels, their jitted helpers and the
    intrinsics that emit their vector code (``_cpu/``), and the launcher."""
    return sorted(glob.glob(os.path.join(_PKG, "_cpu", "*.py"))) + \
        [os.path.join(_PKG, "_launch.py")]


@functools.lru_cache(maxsize=None)
def _kernel_digest(stamps):
    import hashlib
    h = hashlib.sha256()
    for path, _ in stamps:
        h.update(os.path.basename(path).encode() + b"\0")
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError:
            h.update(b"?")
    return h.digest()


def kernel_sources_digest():
    """A hash of every kernel source file (read again when one's size or time changes)."""
    stamps = []
    for path in _kernel_sources():
        try:
            st = os.stat(path)
            stamps.append((path, (st.st_mtime_ns, st.st_size)))
        except OSError:
            stamps.append((path, None))
    return _kernel_digest(tuple(stamps))


def _install_locators(numba):
    """Numba keys a cached kernel on its own file's contents alone, so a kernel whose file did
    not change kept its old machine code when an intrinsic or a helper in another file did (an
    in-place update: a git checkout, an editable install).  fastpool's kernels get locators
    whose stamp is the hash of every kernel source instead; other functions keep Numba's."""
    from numba.core import caching
    if getattr(caching.CacheImpl, "_fastpool_locators", False):
        return

    def stamp(self):
        return kernel_sources_digest()
    classes = []
    for base in (caching.UserProvidedCacheLocator, caching.InTreeCacheLocator):
        def from_function(cls, py_func, py_file, _base=base):
            if not os.path.abspath(py_file).startswith(_PKG + os.sep):
                return None
            return _base.from_function.__func__(cls, py_func, py_file)
        classes.append(type(f"Fastpool{base.__name__}", (base,),
                            {"get_source_stamp": stamp,
                             "from_function": classmethod(from_function)}))
    caching.CacheImpl._locator_classes[:0] = classes
    caching.CacheImpl._fastpool_locators = True


def _cache_dir(numba):
    """Numba's cache folder for this package's kernels (its own, or the one the user set)."""
    return numba.config.CACHE_DIR or os.path.join(_PKG, "__pycache__")


@functools.lru_cache(maxsize=None)
def _spec_folder():
    """Where the specialised kernel sources are kept (beside Numba's cache), or None; decided
    once per process."""
    if _CACHE is False:
        return None
    import numba
    d = _cache_dir(numba)
    try:
        os.makedirs(d, exist_ok=True)
    except OSError:
        return None
    return d if os.access(d, os.W_OK) else None


def jit(fn, parallel=False, fastmath=False):
    """njit with fastpool's options, caching when a cache folder is writable.

    Numba's cache key ignores the jit options, so a function compiled both serial and parallel
    would load the other variant's binary: each option set gets its own cache entry by name.
    """
    configure()
    import numba

    from ._cpu._specialise import specialise
    split = None
    if parallel and SPLIT:  # the serial kernel over one part of the tasks, launched in parts
        try:
            split = specialise(fn, _spec_folder(), split=True)
        except Exception:  # (a kernel the rewriter cannot handle stays a parallel one)
            split = None
        if split is not None:
            fn, parallel = split, False
            fn.__qualname__ += "_split"
    if split is None and fn.__closure__:  # closures over constants: their dead code removed
        try:
            fn = specialise(fn, _spec_folder()) or fn
        except Exception:  # (a kernel the rewriter cannot handle compiles as it is)
            pass
    if parallel or fastmath:
        fn.__qualname__ += ("_parallel" if parallel else "") + ("_fastmath" if fastmath else "")
    disp = _njit(numba, fn, dict(nogil=True, parallel=parallel, fastmath=fastmath,
                                 error_model="numpy", boundscheck=False))
    if split is not None:
        from ._launch import SplitKernel
        return SplitKernel(disp)
    return disp


def _njit(numba, fn, opts):
    if _CACHE is not False:
        try:
            disp = numba.njit(cache=True, **opts)(fn)
        except RuntimeError:  # "no locator available": nowhere to write the cache
            pass
        else:
            from ._cache_lock import guard
            guard(disp)
            return disp
    return numba.njit(cache=False, **opts)(fn)


def runtime_info():
    configure()
    import llvmlite
    import numba
    import numpy

    from . import __version__
    layer = THREADING_LAYER
    try:
        layer = numba.threading_layer()  # only known after the first parallel launch
    except ValueError:
        pass
    cache_dir = _cache_dir(numba)
    cuda = "not available"
    try:
        from numba import cuda as _cuda  # imported only on request
        cuda = "available" if _cuda.is_available() else "no CUDA device"
    except Exception as exc:  # pragma: no cover - depends on the machine
        cuda = f"unavailable ({type(exc).__name__})"
    cuda += "; fastpool runs CUDA arrays with numba.cuda kernels (simulator-tested)"
    try:
        from importlib.metadata import version
        dask = f"{version('dask')}: Dask arrays run block by block"
    except Exception:
        dask = "not installed (the dask extra)"
    return {
        "fastpool": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "threading_layer": layer,
        "parallel_kernels": "serial kernels launched in parts (FASTPOOL_SPLIT_KERNELS=1)" if
                            SPLIT else "Numba parallel (prange; FASTPOOL_SPLIT_KERNELS=0)",
        "threads": numba.get_num_threads(),
        "cache": "enabled" if _CACHE is not False else "disabled",
        "cache_dir": cache_dir,
        "cuda": cuda,
        "dask": dask,
        "output_cache": _output_cache(),
    }


def _output_cache():
    from ._alloc import MIN_BYTES, output_cache_info
    i = output_cache_info()
    return (f"recycles results of {MIN_BYTES >> 20} MiB or more; limit "
            f"{i['limit_bytes'] >> 20} MiB (FASTPOOL_OUTPUT_CACHE_MB), holding "
            f"{i['held_bytes'] >> 20} MiB now")
