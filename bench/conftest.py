"""pytest configuration of the benchmark suite (run explicitly: ``pytest bench/``).

The default ``pytest`` run (``testpaths = ["tests"]``) does not collect this folder.

    pytest bench/ --benchmark-only --benchmark-group-by=group            # the full table
    pytest bench/ --benchmark-only --benchmark-group-by=group --bench-quick
    pytest bench/ --benchmark-only --bench-threads 4 --bench-filter nhwc --bench-peers torch
"""

import importlib.util

import pytest


def pytest_addoption(parser):
    g = parser.getgroup("fastpool-bench")
    g.addoption("--bench-quick", action="store_true", help="only the quick subset of workloads")
    g.addoption("--bench-threads", type=int, default=None,
                help="thread count for fastpool and the peers (default: Numba's default)")
    g.addoption("--bench-filter", default=None,
                help="only workloads whose name contains this (comma-separated alternatives)")
    g.addoption("--bench-peers", default="torch,onnxruntime,jax",
                help="comma-separated peers (default torch,onnxruntime,jax)")
    g.addoption("--bench-no-backward", action="store_true", help="skip the backward rows")


if importlib.util.find_spec("pytest_benchmark") is None:
    @pytest.fixture
    def benchmark():
        pytest.skip("pytest-benchmark is not installed")
