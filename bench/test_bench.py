"""The fastpool workload table as pytest-benchmark benchmarks.

One benchmark per (workload, candidate); the group is the workload, so

    pytest bench/ --benchmark-only --benchmark-group-by=group

prints fastpool and its peers side by side for each workload.  The table, the candidates and
their setup are those of ``python -m fastpool bench`` (``fastpool/_bench.py``), which also
reports the ratio to the best peer and the memory floor.  Candidates that are not installed or do
not support a workload, and rows whose fastpool function does not exist yet, are skipped.
"""

import json
import os
import subprocess
import sys

import pytest

from fastpool import _bench

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _opt(config, name, default=None):
    try:
        return config.getoption(name)
    except ValueError:  # conftest not loaded (run from another rootdir)
        return default


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    cfg = metafunc.config
    rows = _bench.select_workloads(bool(_opt(cfg, "--bench-quick", False)),
                                   _opt(cfg, "--bench-filter"),
                                   backward=not _opt(cfg, "--bench-no-backward", False))
    peers = [p.strip() for p in (_opt(cfg, "--bench-peers") or ",".join(_bench.PEERS)).split(",")
             if p.strip()]
    cases, ids = [], []
    for w in rows:
        for cand in ("fastpool", *peers):
            cases.append((w, cand))
            ids.append(w.name.replace(" ", "_").replace("(", "").replace(")", "") + "-" + cand)
    metafunc.parametrize("case", cases, ids=ids)


@pytest.fixture(scope="session")
def bench_env(pytestconfig):
    """Thread counts and imports, once per session: (fastpool module or None, threads, peers)."""
    threads = _opt(pytestconfig, "--bench-threads") or _bench.default_threads()
    fp, _note = _bench.load_fastpool()
    threads, _ = _bench.set_numba_threads(threads)
    peers = [p.strip() for p in (_opt(pytestconfig, "--bench-peers") or ",".join(_bench.PEERS))
             .split(",") if p.strip()]
    status = _bench.load_peers(peers, threads)
    return fp, threads, status


_DATA: dict = {}


def _row_data(w, fp):
    """Input data of the current row; one row is kept at a time (inputs reach 100+ MB)."""
    if w not in _DATA:
        _DATA.clear()
        _DATA[w] = _bench.make_data(w, fp)
    return _DATA[w]


def test_pool(benchmark, case, bench_env):
    w, cand = case
    fp, threads, status = bench_env
    why = _bench.fastpool_missing(w, fp)
    if why:
        pytest.skip(why)
    if cand != "fastpool" and not status.get(cand, (False, "not requested"))[0]:
        pytest.skip(f"{cand}: {status.get(cand, (False, 'not requested'))[1]}")
    data = _row_data(w, fp)
    try:
        c = _bench.BUILDERS[cand](data, threads)
    except _bench.Unsupported as e:
        pytest.skip(f"{cand}: {e}")
    benchmark.group = w.name
    read, written = w.traffic()
    benchmark.extra_info.update({"candidate": cand, "workload": w.name, "bytes_read": read,
                                 "bytes_written": written, "threads": threads})
    c.fn()  # compile / warm up outside the measurement
    _bench._settle()  # let the previous candidate's spinning worker threads go idle
    if c.context is not None:
        with c.context():
            benchmark(c.fn)
    else:
        benchmark(c.fn)


# -- checks of the suite itself (skipped by --benchmark-only) ----------------------------------

def test_table_is_well_formed():
    names = [w.name for w in _bench.WORKLOADS]
    assert len(names) == len(set(names))
    quick = [w.name for w in _bench.WORKLOADS if w.quick]
    assert any("tiny" in n for n in quick)
    assert any(n.startswith("max2d") and n.endswith("nchw") for n in quick)
    assert any(n.startswith("max2d") and n.endswith("nhwc") for n in quick)
    assert any(n.startswith("avg2d") for n in quick)
    assert any(n.startswith("global_avg2d") for n in quick)
    for w in _bench.WORKLOADS:
        r, wr = w.traffic()
        assert r > 0 and wr > 0


def test_import_is_light():
    code = ("import sys, fastpool._bench; "
            "bad = [m for m in ('torch', 'jax', 'onnxruntime', 'onnx', 'matplotlib', 'tqdm') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cli_smoke(tmp_path):
    """``python -m fastpool bench`` end to end on the tiny workload."""
    out = tmp_path / "r.json"
    png = tmp_path / "r.png"
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "fastpool", "bench", "--filter", "tiny",
                        "--rounds", "2", "--no-compile-latency", "--no-progress",
                        "--json", str(out), "--plot", str(png)],
                       capture_output=True, text=True, env=env, cwd=_ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert [row["name"] for row in res["rows"]] == ["max2d k2s2 1x16x32x32 f32 nchw (tiny)"]
    assert res["bandwidth"]["best_gbps"] > 0
    # the copy timed in the row's rounds, behind the row's floor
    copy = res["rows"][0]["copy"]
    assert copy["method"] == res["bandwidth"]["best_method"] and len(copy["samples_s"]) == 2
    assert copy["gbps"] > 0 and _bench.row_gbps(res["rows"][0], res) == copy["gbps"]
    assert "copy GB/s" in r.stdout
    assert png.exists()
    assert "fastpool benchmark" in r.stdout


def test_info_smoke():
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "fastpool", "info"], capture_output=True,
                       text=True, env=env, cwd=_ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "numba" in r.stdout
