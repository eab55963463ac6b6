"""The source-level specialisation of kernel closures (fastpool/_cpu/_specialise.py).

The rewritten function must compute what the closure computes, for every combination of its
constants, with the code those constants make dead gone; and its kept code must be keyed by
source and constants.
"""
import itertools
import os

import numpy as np
import pytest

from fastpool._cpu import _specialise
from fastpool._cpu._specialise import specialise


def _helper(v):
    return v * 10


def _factory(A, B, K, SCALE):
    def kern(x, y):
        acc = 0
        flag = A and not B  # a local set once from constants
        if not A:
            acc += 1
        if A and B:
            acc += 2
        elif A or B:
            acc += 4
        if flag:
            acc += _helper(x)
        z = x if (B or K > 2) else y
        for i in range(K):
            acc += i * z
        w = (A and x) or y  # value semantics of and / or with constants
        if K == 3 and not (A or B):
            acc -= 100
        return acc * SCALE + w
    return kern


CASES = list(itertools.product([False, True], [False, True], [1, 3], [1, 2.5]))


@pytest.mark.parametrize("A,B,K,SCALE", CASES)
def test_rewrite_computes_what_the_closure_computes(A, B, K, SCALE):
    fn = _factory(A, B, K, SCALE)
    new = specialise(fn)
    assert new is not None and new is not fn
    rng = np.random.default_rng(K)
    for x, y in rng.integers(-5, 6, size=(12, 2)).tolist() + [[0, 0], [0, 3], [2, 0]]:
        assert new(x, y) == fn(x, y), (A, B, K, SCALE, x, y)
    assert new.__qualname__ == fn.__qualname__
    assert new.__code__.co_filename == fn.__code__.co_filename
    assert new.__code__.co_firstlineno == fn.__code__.co_firstlineno


def test_dead_branches_are_gone():
    live = specialise(_factory(True, False, 3, 1))
    dead = specialise(_factory(False, True, 3, 1))
    assert "_helper" in live.__code__.co_names
    assert "_helper" not in dead.__code__.co_names  # `if flag:` folded away with flag
    assert len(dead.__code__.co_code) < len(_factory(False, True, 3, 1).__code__.co_code)


def new_full(n, v):  # (the name of the kernels' allocation: a pure call to the rewriter)
    return [v] * n


def _factory_dead(FLAT, MODE, N):
    def kern(xs, log):
        OFF = 3 if FLAT else 0  # an int local set once from constants
        big = new_full(1000, 7)  # unread once folded: dropped (a pure allocation)
        side = log.append("side")  # unread, but a call with an effect: kept
        out = 0
        for j in range(N if FLAT else 0):  # an empty constant range: the loop goes
            out += _helper(j) + big[j]
        for i, v in enumerate(xs):
            if v < 0:
                out -= 1
                continue
                out += _helper(v)  # after continue: never runs
            if MODE in (1, 2):
                out += v + OFF
            else:
                out += 2 * v
        return out, side
    return kern


@pytest.mark.parametrize("FLAT,MODE", list(itertools.product([False, True], [0, 1, 2, 3])))
def test_dead_loops_statements_and_assignments_are_gone(FLAT, MODE):
    """Empty constant loops, statements after ``continue``, unread pure assignments and folded
    int locals and ``in`` tests: the rewrite computes the same, without that code, and keeps
    a call whose result is unread."""
    fn = _factory_dead(FLAT, MODE, 4)
    new = specialise(fn)
    assert new is not None
    xs = [3, -1, 0, 5, -2, 7]
    la, lb = [], []
    assert new(xs, lb) == fn(xs, la) and la == lb == ["side"]
    names = new.__code__.co_names
    assert "append" in names  # the call with an effect stays
    if not FLAT:  # the loop over range(0) and the array only it read are gone
        assert "new_full" not in names and "_helper" not in names
    else:
        assert "new_full" in names
    if FLAT and MODE in (1, 2):
        assert 3 in new.__code__.co_consts  # OFF folded to 3
    assert "OFF" not in new.__code__.co_varnames  # (an int local folded away)
    src_mode = [c for c in new.__code__.co_consts if isinstance(c, tuple) and c == (1, 2)]
    assert not src_mode  # `MODE in (1, 2)` folded


def test_closure_keeps_every_constant():
    """Numba's cache keys a closure by bytecode and closure contents: two specialisations must
    differ in the contents even where their bytecode coincides."""
    a = specialise(_factory(True, False, 3, 1))
    b = specialise(_factory(True, False, 3, 2))
    cells = lambda f: tuple(c.cell_contents for c in f.__closure__)  # noqa: E731
    assert set(a.__code__.co_freevars) >= {"A", "B", "K", "SCALE"}
    assert cells(a) != cells(b)


def test_kept_code_is_reused_and_keyed(tmp_path, monkeypatch):
    fn = _factory(True, True, 3, 1)
    first = specialise(fn, str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1 and files[0].endswith(".spec")

    def no_rewrite(*a, **k):
        raise AssertionError("rewritten again instead of loaded")

    monkeypatch.setattr(_specialise, "_rewrite", no_rewrite)
    again = specialise(fn, str(tmp_path))
    assert again(2, 5) == first(2, 5) == fn(2, 5)
    monkeypatch.undo()
    # other constants: another file; a damaged file is rewritten
    specialise(_factory(True, True, 1, 1), str(tmp_path))
    assert len(os.listdir(tmp_path)) == 2
    path = os.path.join(tmp_path, files[0])
    with open(path, "wb") as f:
        f.write(b"\x00garbage")
    assert specialise(fn, str(tmp_path))(2, 5) == fn(2, 5)


def test_functions_without_source_are_left_alone():
    ns = {}
    exec("def outer(K):\n    def f(x):\n        return x + K\n    return f\n", ns)
    assert specialise(ns["outer"](3)) is None


def test_each_kind_compiles_only_its_own_finish():
    """A max kernel holds no division, an average kernel no Lp root."""
    from fastpool import _runtime
    from fastpool._cpu import separable
    captured = []
    real = _runtime.jit
    try:
        _runtime.jit = lambda fn, **kw: captured.append(fn) or fn
        for kind in ("max", "avg", "lp"):
            separable.make_sep(kind, False, 1, 3, 3, 2) if kind != "lp" else \
                separable.make_sep(kind, False, 0, 0, 0, 0)
    finally:
        _runtime.jit = real
    smax, savg, slp = (specialise(f).__code__.co_names for f in captured)
    assert {"divide", "_lp_norm"} <= set(captured[0].__code__.co_names)
    assert "divide" not in smax and "_lp_norm" not in smax
    assert "divide" in savg and "_lp_norm" not in savg
    assert "_lp_norm" in slp


def test_parameters_and_nested_scopes_are_not_folded():
    def outer(K):
        def f(x, flag):
            if x > 0:
                flag = False  # a parameter assigned once stays a variable
            return (1 if flag else 2) + K
        return f

    fn = outer(3)
    new = specialise(fn)
    assert [new(x, fl) for x in (-1, 1) for fl in (True, False)] == \
        [fn(x, fl) for x in (-1, 1) for fl in (True, False)]

    def outer2(K):
        def g(x):
            return sum([K for K in range(x)]) + K  # a comprehension rebinding the name
        return g

    assert specialise(outer2(7)) is None


def test_a_source_file_edited_after_import_is_not_specialised(tmp_path):
    """The rewrite reads the file: if it no longer holds the code that runs, keep the code."""
    import importlib.util
    import linecache
    path = tmp_path / "edited_kernels.py"
    path.write_text("def make(K):\n    def f(x):\n        return x + K\n    return f\n")
    spec = importlib.util.spec_from_file_location("edited_kernels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = mod.make(3)
    assert specialise(fn)(4) == 7  # the file as imported: rewritten
    path.write_text("def make(K):\n    def f(x):\n        y = x * 2\n        return y - K\n"
                    "    return f\n")
    linecache.checkcache(str(path))
    assert specialise(fn) is None
    assert specialise(fn, str(tmp_path)) is None
    assert fn(4) == 7
