"""The parallel runtime: forked children, concurrent Python threads, the cache fallback.

Each scenario runs in a fresh interpreter (the threading layer is chosen once per process), under
the default layer (TBB when installed) and under the workqueue fallback.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastpool

LAYERS = ["default", "workqueue"]

# Every forward operator on inputs big enough for the parallel kernels, and tiny ones.
_WORKLOAD = textwrap.dedent("""
    import numpy as np, fastpool
    def workload(seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((4, 16, 40, 40)).astype(np.float32)
        xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        x3 = rng.standard_normal((2, 8, 12, 16, 16)).astype(np.float32)
        tiny = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
        v, i = fastpool.max_pool2d(x, 3, 2, 1, return_indices=True)
        s = rng.random((4, 16, 2))
        res = [
            fastpool.max_pool2d(x, 3, 2, 1), v, i,
            fastpool.max_pool2d(xl, 2, channels_last=True),
            fastpool.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
            fastpool.avg_pool2d(xl, 3, 2, 1, channels_last=True),
            fastpool.lp_pool2d(np.abs(x), 2, 3, 2),
            fastpool.adaptive_avg_pool2d(x, 7), fastpool.adaptive_max_pool2d(x, 5),
            fastpool.adaptive_avg_pool2d(x, 1),
            fastpool.max_pool3d(x3, 2), fastpool.max_pool1d(x[:, :, 0], 3, 2),
            fastpool.fractional_max_pool2d(x, 2, output_size=(20, 20), random_samples=s),
            fastpool.max_unpool2d(v, i, 3, 2, 1, output_size=x.shape[-2:]),
            fastpool.max_pool2d(tiny, 2), fastpool.avg_pool2d(tiny, 2),
        ]
        if hasattr(fastpool, "max_pool2d_backward"):
            res.append(fastpool.max_pool2d_backward(np.ones_like(v), x, 3, 2, 1))
            res.append(fastpool.avg_pool2d_backward(np.ones_like(v), x, 3, 2, 1))
        return res
    def same(a, b):
        return all(np.array_equal(p, q, equal_nan=True) for p, q in zip(a, b))
""")


def _run(script, layer, tmp_path, timeout=300):
    env = dict(os.environ)
    env.pop("FASTPOOL_THREADING_LAYER", None)
    if layer != "default":
        env["FASTPOOL_THREADING_LAYER"] = layer
    # The children share this process's kernel cache: they run one at a time while it waits.
    proc = subprocess.run([sys.executable, "-c", _WORKLOAD + textwrap.dedent(script)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("layer", LAYERS)
def test_forked_child_runs_every_operator(layer, tmp_path):
    out = _run("""
        import os, multiprocessing as mp, numba
        parent = workload(1)                     # parallel kernels run before the fork
        pid = os.fork()
        if pid == 0:
            ok = same(workload(1), parent)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        ctx = mp.get_context("fork")
        with ctx.Pool(2) as pool:                # pool workers forked after parallel calls
            results = pool.map(workload, [1, 1])
        assert all(same(r, parent) for r in results)
        print("layer", numba.threading_layer())
    """, layer, tmp_path)
    if layer == "workqueue":
        assert "workqueue" in out
    else:
        assert "layer" in out


@pytest.mark.parametrize("layer", LAYERS)
def test_eight_threads_at_once(layer, tmp_path):
    _run("""
        from concurrent.futures import ThreadPoolExecutor
        expected = [workload(s) for s in range(8)]
        with ThreadPoolExecutor(8) as ex:
            for _ in range(3):
                got = list(ex.map(workload, range(8)))
                assert all(same(g, e) for g, e in zip(got, expected))
    """, layer, tmp_path)


def test_threading_layer_is_safe_by_default(tmp_path):
    out = _run("""
        import numba
        workload(0)
        print("layer", numba.threading_layer())
    """, "default", tmp_path)
    layer = out.split()[-1]
    assert layer in ("tbb", "workqueue"), out


def test_cache_fallback_when_no_locator(monkeypatch):
    """A cache that cannot be located falls back to an uncached kernel instead of failing."""
    from numba.core import dispatcher

    from fastpool import _runtime
    from fastpool._cpu import separable

    def refuse(self, *a, **k):
        raise RuntimeError("cannot cache function: no locator available for file")

    monkeypatch.setattr(dispatcher.Dispatcher, "enable_caching", refuse)
    kern = separable.make_sep("max", False, 0, 0, 0, 0)  # a fresh dispatcher, not memoised
    assert type(kern._cache).__name__ == "NullCache"
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    out = np.empty((1, 1, 2, 2))
    from fastpool._params import dim_table, stack_tables
    tab = stack_tables([dim_table(1, 1, 1, 0, 0, 1, 1), dim_table(4, 2, 2, 0, 0, 1, 2),
                        dim_table(4, 2, 2, 0, 0, 1, 2)])
    kern(x, out, tab, np.ones(3, np.int64), 0, 0, 0, 0, 1, -np.inf, 1.0, 1, 1, None)
    assert np.array_equal(out[0, 0], [[5, 7], [13, 15]])
    assert _runtime.THREADING_LAYER is not None


def test_info_command():
    """``python -m fastpool info``: versions, threading layer, threads, cache folder, CUDA and
    Dask status, one ``key : value`` line each."""
    proc = subprocess.run([sys.executable, "-m", "fastpool", "info"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    lines = dict(ln.split(":", 1) for ln in proc.stdout.splitlines() if ":" in ln)
    keys = {k.strip() for k in lines}
    assert {"fastpool", "numpy", "numba", "threading_layer", "threads", "cache_dir", "cuda",
            "dask"} <= keys, keys
    assert lines[next(k for k in lines if k.strip() == "threads")].strip().isdigit()
    assert "block by block" in lines[next(k for k in lines if k.strip() == "dask")]


def test_import_starts_the_runtime_but_compiles_and_launches_nothing():
    """``import fastpool`` runs Numba's one-time start-up (so that a first pooling call only
    loads its kernel) but compiles no kernel and starts no thread: a process forked after the
    import is as safe as one forked before it.  ``FASTPOOL_LAZY_START=1`` leaves even Numba's
    import to the first kernel."""
    code = ("import sys, threading, fastpool; "
            "from numba.np.ufunc import parallel; "
            "print('numba' in sys.modules, fastpool._dispatch.kernel.cache_info().currsize, "
            "parallel._is_initialized, threading.active_count(), "
            "fastpool._runtime.THREADING_LAYER, fastpool._runtime.START_S is not None, "
            "'numba.np.arraymath' in sys.modules and 'numpy.ma' in sys.modules)")
    env = dict(os.environ)
    env.pop("FASTPOOL_LAZY_START", None)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    numba_in, kernels, launched, threads, layer, started, registries = proc.stdout.split()
    assert (numba_in, kernels, launched, threads, started, registries) == (
        "True", "0", "False", "1", "True", "True"), proc.stdout
    assert layer in ("tbb", "workqueue", "omp"), layer
    code = "import sys, fastpool; print('numba' in sys.modules, fastpool._runtime.START_S)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(env, FASTPOOL_LAZY_START="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "None"]  # numba is not even imported


_BLAS_CODE = """
import importlib.util, sys
{pre}
import fastpool
import numpy as np
import numba
from numba.np import arraymath
scipy_linalg_at_import = "scipy.linalg" in sys.modules
have_blas = bool(arraymath._HAVE_BLAS)

@numba.njit
def corr(a, b):
    return np.correlate(a, b)

rng = np.random.default_rng(4)
a, b = rng.standard_normal(37), rng.standard_normal(5)
ok = np.allclose(corr(a, b), np.correlate(a, b), rtol=1e-12, atol=1e-12)
print(scipy_linalg_at_import, have_blas, importlib.util.find_spec("scipy") is not None, ok,
      "scipy.linalg" in sys.modules)
"""


@pytest.mark.parametrize("scipy_first", [False, True])
def test_start_defers_numbas_blas_probe_and_keeps_its_answer(scipy_first):
    """The start-up loads Numba's registries without its import-time BLAS probe (which imports
    SciPy's linear algebra); a Numba function that needs the probe's answer later gets the one
    Numba's own import would have given, and computes the same values.  A process that imported
    SciPy's BLAS first keeps Numba's usual probe."""
    pre = ("try:\n    import scipy.linalg.cython_blas\nexcept ImportError:\n    pass"
           if scipy_first else "")
    env = dict(os.environ)
    env.pop("FASTPOOL_LAZY_START", None)
    proc = subprocess.run([sys.executable, "-c", _BLAS_CODE.format(pre=pre)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    at_import, have_blas, have_scipy, ok, linalg_after = proc.stdout.split()
    assert have_blas == have_scipy, proc.stdout  # the probe's answer: is SciPy's BLAS there?
    assert ok == "True"
    if not scipy_first:
        assert at_import == "False", "import fastpool imported scipy.linalg"
    assert linalg_after == have_scipy  # the probe ran (and imported it) when it was asked


def test_a_failed_start_is_raised_by_the_first_kernel_not_the_import(monkeypatch):
    """What stops the start-up at import is kept, and the import goes on; ``configure`` (the
    first kernel's) raises it."""
    from fastpool import _runtime

    def fail():
        raise ImportError("fastpool: FASTPOOL_THREADING_LAYER=tbb but TBB could not be loaded")
    monkeypatch.setattr(_runtime, "configure", fail)
    monkeypatch.setattr(_runtime, "START_S", None)
    monkeypatch.setattr(_runtime, "START_ERROR", None)
    monkeypatch.delenv("FASTPOOL_LAZY_START", raising=False)
    _runtime.start()  # does not raise
    assert _runtime.START_S is None
    assert _runtime.START_ERROR.startswith("ImportError: fastpool: FASTPOOL_THREADING_LAYER=tbb")
    with pytest.raises(ImportError, match="TBB could not be loaded"):
        _runtime.configure()


def test_warmup_compiles_requested_kernels():
    from fastpool import _dispatch, functional
    after = functional.SPECIALISE_AFTER
    fastpool.warmup(ops=["max_pool2d"], dtypes=[np.float32], layouts=["cl"])
    assert _dispatch.kernel.cache_info().currsize > 0
    assert functional.SPECIALISE_AFTER == after
    # small calls: the kernel for every window, and the hot windows' specialised kernels
    assert _dispatch.kernel("small", "cpu", "max", False, True).overloads
    assert _dispatch.kernel("separable", "cpu", "max", False, 1, 3, 3, 2, True).overloads


def test_warmup_of_a_max_gradient_compiles_the_path_from_indices():
    """Gradients are mostly taken from the forward's indices: warming up a max gradient
    compiles that path too (channels-first: the scatter), not only the recompute."""
    from fastpool import _dispatch
    fastpool.warmup(ops=["max_pool1d_backward"], dtypes=[np.float64], layouts=["cf"])
    assert any(_dispatch.kernel("max_backward", "cpu", "cf", par, True).overloads
               for par in (False, True))


def test_warmup_arguments():
    """One op, dtype or layout may be given alone; families take every rank (gradients too);
    anything else is a clear error naming warmup's parameter, raised before anything
    compiles (an op that does not take a dtype included)."""
    from fastpool import _dispatch
    assert fastpool.warmup(ops="max_pool1d", dtypes="float64", layouts="cf") == 2
    assert fastpool.warmup(ops="avg_pool_backward", dtypes=np.float64, layouts="cf") == 6
    before = _dispatch.kernel.cache_info().misses
    for kw, err, msg in (
            (dict(ops=["warmup"]), ValueError, "warmup: unknown op 'warmup'"),
            (dict(ops=["release_memory"]), ValueError, "unknown op"),
            (dict(ops=["fractional_max_pool1d"]), ValueError, "unknown op"),
            (dict(ops=[3]), TypeError, "warmup: ops must be op names"),
            (dict(ops=5), TypeError, "warmup: ops must be a string or a sequence"),
            (dict(dtypes="no such type"), TypeError, "warmup: dtypes must be NumPy dtypes"),
            (dict(layouts="xx"), ValueError, "warmup: layouts must be 'cf' or 'cl'"),
            (dict(dtypes=[np.int32]), TypeError, "lp_pool1d does not take dtype int32"),
            (dict(ops="max_pool_backward", dtypes=np.int8), TypeError,
             "max_pool1d_backward does not take dtype int8")):
        with pytest.raises(err, match=msg):
            fastpool.warmup(**kw)
    assert _dispatch.kernel.cache_info().misses == before  # (refused before compiling)


def test_serial_and_parallel_variants_cache_apart():
    """Numba's cache key ignores jit options: each option set must have its own entry."""
    from fastpool._cpu import planes
    serial = planes.make_unpool("any", False)
    parallel = planes.make_unpool("any", True)
    assert serial.py_func.__qualname__ != parallel.py_func.__qualname__
    if type(serial._cache).__name__ != "NullCache":
        assert serial._cache._cache_file._index_path != parallel._cache._cache_file._index_path


_MISSES = """
    import gc
    from numba.core.caching import FunctionCache
    from numba.core.dispatcher import Dispatcher
    missed = sorted(f"{d.py_func.__qualname__}{tuple(sig)}" for d in gc.get_objects()
                    if isinstance(d, Dispatcher) and isinstance(d._cache, FunctionCache)
                    for sig, n in d.stats.cache_misses.items() if n)
    hits = sum(n for d in gc.get_objects() if isinstance(d, Dispatcher)
               for n in d.stats.cache_hits.values())
    print("hits", hits, "missed", len(missed), missed[:5])
"""


def test_a_changed_kernel_source_invalidates_every_cached_kernel(tmp_path):
    """Numba keys a cached kernel on its own file alone: a kernel whose file is unchanged kept
    its old machine code when an intrinsic it inlines (another file) changed.  fastpool's
    kernels are keyed on every kernel source: a copy of the package loads its kernels from its
    cache on a second run, and compiles them again once any file under ``_cpu/`` changes."""
    import shutil
    from fastpool import _runtime
    _runtime.configure()
    if _runtime._CACHE is False:
        pytest.skip("Numba's cache is disabled here")
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(fastpool.__file__), pkg / "fastpool",
                    ignore=shutil.ignore_patterns("__pycache__", "*.spec"))
    code = textwrap.dedent("""
        import numpy as np, fastpool
        assert fastpool.__file__.startswith(%r), fastpool.__file__
        fastpool.max_pool1d(np.arange(12.0).reshape(1, 2, 6), 2)
    """ % str(pkg)) + textwrap.dedent(_MISSES)

    def run():
        env = dict(os.environ, PYTHONPATH=str(pkg))
        env.pop("NUMBA_CACHE_DIR", None)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        words = proc.stdout.split()
        return int(words[words.index("hits") + 1]), int(words[words.index("missed") + 1])
    run()  # compiles and saves
    hits, missed = run()
    assert hits > 0 and missed == 0, (hits, missed)
    with open(pkg / "fastpool" / "_cpu" / "_simd.py", "a") as f:
        f.write("\n# changed\n")
    hits, missed = run()
    assert missed > 0 and hits == 0, (hits, missed)  # (none of the old machine code)
    hits, missed = run()
    assert hits > 0 and missed == 0, (hits, missed)


def test_second_process_loads_every_kernel_from_the_cache(tmp_path):
    """A fresh process compiles nothing that an earlier one cached: the cache key of every
    kernel is the same in every process (a kernel that closed over a jitted function would
    get a new key, and a new cache entry, in each one).  The first process loads or compiles
    (and saves) what the workload needs; the second must then load every kernel it runs."""
    from fastpool import _runtime
    _runtime.configure()
    if _runtime._CACHE is False:
        pytest.skip("Numba's cache is disabled here")
    _run("workload(2)", "default", tmp_path)
    out = _run("workload(3)" + textwrap.dedent(_MISSES), "default", tmp_path)
    words = out.split()
    hits, missed = int(words[words.index("hits") + 1]), int(words[words.index("missed") + 1])
    assert hits > 10, out
    assert missed == 0, f"a second process compiled again: {out}"


def test_last_level_cache_size_from_sysfs(tmp_path, monkeypatch):
    """The streaming-store bound follows the largest cache that sysfs lists (8 MiB at least);
    unreadable or odd entries are skipped."""
    from fastpool import _runtime
    files = []
    for i, text in enumerate(["48K\n", "2048K\n", "491520K\n", "junk\n"]):
        f = tmp_path / f"index{i}_size"
        f.write_text(text)
        files.append(str(f))
    files.append(str(tmp_path / "missing"))
    monkeypatch.setattr(_runtime.glob, "glob", lambda pattern: files)
    assert _runtime._last_level_cache_bytes() == 491520 << 10
    monkeypatch.setattr(_runtime.glob, "glob", lambda pattern: [])
    assert _runtime._last_level_cache_bytes() == 0
    assert _runtime.STREAM_MIN_BYTES >= 8 << 20


def test_host_is_amd_follows_numbas_cpu_name(monkeypatch):
    """The adaptive average gradient streams its planes except on AMD cores: the CPU name
    Numba compiles for decides (NUMBA_CPU_NAME where set, else the host's)."""
    from numba.core import config
    from llvmlite import binding
    from fastpool import _runtime, backward as B
    for name, amd in (("znver4", True), ("znver5", True), ("skylake-avx512", False),
                      ("sapphirerapids", False)):
        monkeypatch.setattr(config, "CPU_NAME", name)
        assert _runtime.host_is_amd() is amd
        B._host_planes.cache_clear()
        try:
            lo, hi = B._host_planes()
            assert (lo <= hi) is not amd
            assert B._adaptive_streamed(64 << 20, 3600, np.dtype(np.float32)) is not amd
        finally:
            B._host_planes.cache_clear()
    monkeypatch.setattr(config, "CPU_NAME", None)
    assert _runtime.host_is_amd() is binding.get_host_cpu_name().startswith("znver")


_OPTIONAL_CODE = """
import sys
{pre}
import fastpool, numba
print("scipy" in sys.modules, "yaml" in sys.modules, numba.config.DISABLE_PERFORMANCE_WARNINGS)
with open(".numba_config.yaml", "w") as f:
    f.write("disable_performance_warnings: 1\\n")
numba.config.reload_config()
print(numba.config.DISABLE_PERFORMANCE_WARNINGS)
import scipy, yaml
print(scipy.__version__ > "1", callable(yaml.safe_load))
"""


@pytest.mark.parametrize("case", ["fresh", "config_file", "imported_first"])
def test_numbas_optional_imports_are_deferred_and_its_config_file_still_read(case, tmp_path):
    """Numba's import loads SciPy (a version check) and PyYAML (for a ``.numba_config.yaml``
    in the working directory); fastpool's start-up defers both.  A config file present at
    import, or written later and read by ``numba.config.reload_config``, is still read, and
    both import normally afterwards; already imported, they are left as they are."""
    pytest.importorskip("scipy")
    pytest.importorskip("yaml")
    if case == "config_file":
        (tmp_path / ".numba_config.yaml").write_text("disable_performance_warnings: 1\n")
    pre = "import scipy, yaml" if case == "imported_first" else ""
    env = dict(os.environ)
    env.pop("FASTPOOL_LAZY_START", None)
    env.pop("NUMBA_DISABLE_PERFORMANCE_WARNINGS", None)
    proc = subprocess.run([sys.executable, "-c", _OPTIONAL_CODE.format(pre=pre)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    first, later, after = proc.stdout.strip().splitlines()
    have_scipy, have_yaml, value = first.split()
    assert have_scipy == str(case == "imported_first")
    assert have_yaml == str(case != "fresh")  # (read for the file at import)
    assert value == ("1" if case == "config_file" else "0")
    assert later == "1"  # the file written after the import, read on reload
    assert after == "True True"
    assert "YAML" not in proc.stderr


_EXTENSION_CODE = """
import sys
{pre}
import fastpool, numba, numpy as np
from numba.core import entrypoints
print("importlib.metadata" in sys.modules, entrypoints._already_initialized)
import fake_numba_ext
print(fake_numba_ext.CALLS)
numba.njit(lambda a: a.sum())(np.arange(4))  # Numba compiles as usual
print(fake_numba_ext.CALLS)
import importlib.metadata
print(type(sys.modules["importlib.metadata"]).__name__, importlib.metadata.version("numpy"),
      len(importlib.metadata.entry_points(group="numba_extensions")))
"""


@pytest.mark.parametrize("case", ["no_extension", "extension", "imported_first"])
def test_numbas_extension_scan_is_skipped_only_where_there_is_no_extension(case, tmp_path):
    """Numba's registries call every ``numba_extensions`` entry point once, through
    ``importlib.metadata``; fastpool's start-up leaves that module unimported where no
    installed distribution declares the group, and a distribution that does (a folder on
    ``sys.path``) still has its entry point called once, at import.  ``importlib.metadata``
    imports normally afterwards, already imported it is left as it is."""
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "fake_numba_ext.py").write_text("CALLS = 0\ndef init():\n    global CALLS\n"
                                           "    CALLS += 1\n")
    dist = pkg / "fake_numba_ext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-numba-ext\n"
                                   "Version: 0.1\n")
    if case == "extension":
        (dist / "entry_points.txt").write_text("[numba_extensions]\ninit = fake_numba_ext:init\n")
    else:
        (dist / "entry_points.txt").write_text("[console_scripts]\nfake = fake_numba_ext:init\n")
    pre = "import importlib.metadata" if case == "imported_first" else ""
    env = dict(os.environ)
    env.pop("FASTPOOL_LAZY_START", None)
    env["PYTHONPATH"] = os.pathsep.join([str(pkg)] + [p for p in sys.path if p])
    proc = subprocess.run([sys.executable, "-c", _EXTENSION_CODE.format(pre=pre)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    have_metadata, initialised = lines[0].split()
    assert initialised == "True"
    calls = "1" if case == "extension" else "0"
    assert lines[1] == calls and lines[2] == calls
    kind, numpy_version, groups = lines[3].split()
    assert kind == "module" and numpy_version == np.__version__
    assert groups == ("1" if case == "extension" else "0")
    if case == "no_extension":
        assert have_metadata == "False"
    if case == "imported_first":
        assert have_metadata == "True"
