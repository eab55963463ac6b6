"""fastpool against ONNX pooling semantics.

Two groups of tests:

1. ``test_onnx_node_case``: the ONNX backend node test cases for MaxPool, AveragePool, LpPool,
   GlobalMaxPool, GlobalAveragePool and MaxUnpool, one pytest case per ONNX case directory.
   The directories are read from ``onnx/backend/test/data/node`` when the installed ``onnx``
   ships them. Recent ``onnx`` wheels ship only the generators
   (``onnx/backend/test/case/node/<op>.py``); then the cases are generated once from those
   generators (exactly what ``backend-test-tools generate-data`` writes: same models, same
   ``np.random.seed(0)`` data) into the same directory layout inside pytest's cache folder and
   read from there. The pooling directories of ``data/pytorch-converted`` and
   ``data/pytorch-operator`` (graphs exported from PyTorch modules) are included as well.

2. ``test_onnxruntime_random``: seeded random single-node float32 models (asymmetric pads,
   auto_pad, dilations, strides, ceil_mode, count_include_pad, p, storage_order, MaxUnpool with
   output_shape) plus a few hand-picked corners, compared with onnxruntime, or, where
   onnxruntime is known to deviate from the ONNX spec, with a spec-following oracle (see
   ``_oracle_for``). ``test_onnxruntime_dtypes``: float16/float64/int8/uint8 variants.

Every ONNX node is emulated with fastpool's public API in ``run_node_with_fastpool``; that
function is the ONNX -> fastpool translation and documents each convention difference
(index layout, LpPool's absolute value, ceil-mode LpPool scaling, MaxUnpool index space).
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import tempfile

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

POOL_OPS = (
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalMaxPool",
    "GlobalAveragePool",
    "MaxUnpool",
)
NODE_DIR_PREFIXES = (
    "test_maxpool",
    "test_averagepool",
    "test_lppool",
    "test_globalmaxpool",
    "test_globalaveragepool",
    "test_maxunpool",
)
# Pooling directories among the PyTorch-exported models shipped in onnx/backend/test/data.
PYTORCH_DIR_PREFIXES = ("test_maxpool", "test_avgpool", "test_operator_maxpool")
GENERATOR_MODULES = (
    "maxpool",
    "averagepool",
    "lppool",
    "globalmaxpool",
    "globalaveragepool",
    "maxunpool",
)

ONNX_DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")


@pytest.fixture(scope="module")
def fp():
    # Imported here (not at module level) so the file collects before fastpool exists and a
    # broken fastpool shows up as failing tests instead of a collection error.
    import fastpool

    return fastpool


# --------------------------------------------------------------------------------------------
# ONNX node -> fastpool translation
# --------------------------------------------------------------------------------------------


class UnsupportedCase(Exception):
    """An ONNX case outside fastpool's contract (the reason is the message)."""


def node_attrs(node):
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def resolve_pads(padding, in_sp, k, s, d):
    """(before, after) per spatial dim for a fastpool ``padding`` value (contract formulas)."""
    if not isinstance(padding, str):
        return [tuple(p) for p in padding]
    pairs = []
    for i, n in enumerate(in_sp):
        if padding == "valid":
            pairs.append((0, 0))
            continue
        out = -(-n // s[i])
        total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pairs.append((small, big) if padding == "same" else (big, small))
    return pairs


def pool_geometry(attrs, nd):
    """kernel, strides, dilations, fastpool padding, ceil_mode from ONNX attributes."""
    k = [int(v) for v in attrs["kernel_shape"]]
    s = [int(v) for v in attrs.get("strides") or [1] * nd]  # ONNX default stride is 1
    d = [int(v) for v in attrs.get("dilations") or [1] * nd]
    pads = [int(v) for v in attrs.get("pads") or [0] * (2 * nd)]
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    ceil = bool(attrs.get("ceil_mode", 0))
    if auto_pad == "NOTSET":
        padding = tuple((pads[i], pads[nd + i]) for i in range(nd))
    else:
        padding = {"SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}.get(
            auto_pad
        )
        if padding is None:
            raise UnsupportedCase(f"auto_pad={auto_pad!r}")
        # The spec's output-shape formulas for auto_pad (see the MaxPool/LpPool docs) give the
        # same size with and without ceil_mode: VALID ceil((in - k_eff + 1) / s) equals
        # floor((in - k_eff) / s) + 1, SAME ceil(in / s) either way. For "valid" fastpool
        # would apply ceil rounding (like onnxruntime), so it gets ceil_mode=False; for the
        # SAME modes ceil rounding is moot with the SAME padding, and ceil_mode is passed on.
        if auto_pad == "VALID":
            ceil = False
    return k, s, d, padding, ceil


def _to_onnx_indices(idx, x_shape, storage_order):
    """fastpool per-plane row-major indices -> ONNX flat indices over the whole tensor.

    ONNX: ``(n * C + c) * plane + spatial_offset`` where the spatial offset is row-major, or
    column-major over the spatial dims with storage_order=1 (the n, c part stays outermost).
    """
    n, c, *sp = x_shape
    coords = np.unravel_index(np.asarray(idx, dtype=np.int64), sp)
    flat = np.ravel_multi_index(coords, sp, order="F" if storage_order else "C")
    plane = np.arange(n * c, dtype=np.int64).reshape(n, c, *([1] * len(sp)))
    return (flat + plane * math.prod(sp)).astype(np.int64)


def lp_ceil_cells(in_sp, out_sp, k, s, d, pairs):
    """Number of window taps inside the padded extent [-before, in + after), per output cell.

    fastpool (PyTorch) scales an Lp window cut by ceil mode by kernel_numel / cells; ONNX does
    not scale. Only ceil-mode overhang windows have cells < kernel_numel.
    """
    counts = []
    for i, n in enumerate(in_sp):
        before, after = pairs[i]
        starts = np.arange(out_sp[i]) * s[i] - before
        taps = starts[:, None] + np.arange(k[i])[None, :] * d[i]
        counts.append(((taps >= -before) & (taps < n + after)).sum(axis=1))
    cells = counts[0]
    for c in counts[1:]:
        cells = np.multiply.outer(cells, c)
    return cells


def run_node_with_fastpool(fp, node, inputs, *, lp_mode="abs", unpool_index_space="output"):
    """Emulate one ONNX pooling node with fastpool's public API; returns the ONNX outputs.

    lp_mode: "abs" feeds |x| to fastpool.lp_pool (ONNX's LpPool is (sum |x|^p)^(1/p); fastpool
    uses PyTorch's (sum x^p)^(1/p)), "direct" feeds x unchanged.
    unpool_index_space: how MaxUnpool's flat indices are read when output_shape is given:
    "output" (the spec text, onnxruntime and PyTorch: row-major over the whole output tensor)
    or "inferred" (the ONNX reference implementation and its node test data: row-major over the
    inferred shape (in - 1) * stride - pads + kernel, then that block is placed at the origin
    of the larger output, see onnx/onnx#2398 and microsoft/onnxruntime#2193).
    """
    op = node.op_type
    attrs = node_attrs(node)
    x = inputs[0]
    if x.dtype.kind not in "fiu":
        raise UnsupportedCase(f"dtype {x.dtype}")
    nd = x.ndim - 2
    if nd not in (1, 2, 3):
        raise UnsupportedCase(f"{nd} spatial dims")
    n_out = len([o for o in node.output if o])

    if op in ("GlobalMaxPool", "GlobalAveragePool"):
        f = getattr(fp, f"adaptive_{'max' if op == 'GlobalMaxPool' else 'avg'}_pool{nd}d")
        return [np.asarray(f(x, 1))]

    if op == "MaxPool":
        if "storage_order" in attrs and attrs["storage_order"] not in (0, 1):
            raise UnsupportedCase(f"storage_order={attrs['storage_order']}")
        k, s, d, padding, ceil = pool_geometry(attrs, nd)
        f = getattr(fp, f"max_pool{nd}d")
        if n_out == 1:
            return [np.asarray(f(x, k, s, padding, d, ceil, False))]
        y, idx = f(x, k, s, padding, d, ceil, True)
        return [
            np.asarray(y),
            _to_onnx_indices(np.asarray(idx), x.shape, attrs.get("storage_order", 0)),
        ]

    if op == "AveragePool":
        k, s, d, padding, ceil = pool_geometry(attrs, nd)
        f = getattr(fp, f"avg_pool{nd}d")
        cip = bool(attrs.get("count_include_pad", 0))
        return [np.asarray(f(x, k, s, padding, ceil_mode=ceil, count_include_pad=cip, dilation=d))]

    if op == "LpPool":
        k, s, d, padding, ceil = pool_geometry(attrs, nd)
        p = attrs.get("p", 2)
        f = getattr(fp, f"lp_pool{nd}d")
        xin = np.abs(x) if lp_mode == "abs" else x
        y = np.asarray(f(xin, p, k, s, ceil, padding=padding, dilation=d))
        if ceil:
            pairs = resolve_pads(padding, x.shape[2:], k, s, d)
            cells = lp_ceil_cells(x.shape[2:], y.shape[2:], k, s, d, pairs)
            if (cells != math.prod(k)).any():
                factor = (cells / math.prod(k)) ** (1.0 / p)
                y = (y.astype(np.float64) * factor).astype(y.dtype)
        return [y]

    if op == "MaxUnpool":
        idx = np.asarray(inputs[1], dtype=np.int64)
        k = [int(v) for v in attrs["kernel_shape"]]
        s = [int(v) for v in attrs.get("strides") or [1] * nd]
        pads = [int(v) for v in attrs.get("pads") or [0] * (2 * nd)]
        pairs = [(pads[i], pads[nd + i]) for i in range(nd)]
        n, c, *in_sp = x.shape
        inferred = [(in_sp[i] - 1) * s[i] - sum(pairs[i]) + k[i] for i in range(nd)]
        if len(inputs) > 2 and inputs[2] is not None:
            target = [int(v) for v in np.asarray(inputs[2]).reshape(-1)[2:]]
        else:
            target = inferred
        space = target if unpool_index_space == "output" else inferred
        plane = np.arange(n * c, dtype=np.int64).reshape(n, c, *([1] * nd))
        per_plane = idx - plane * math.prod(space)
        if space != target:
            per_plane = np.ravel_multi_index(np.unravel_index(per_plane, space), target)
        if all(b == a for b, a in pairs):
            padding = tuple(b for b, _ in pairs)
        else:
            padding = tuple(pairs)
        f = getattr(fp, f"max_unpool{nd}d")
        return [np.asarray(f(x, per_plane, k, s, padding, tuple(target)))]

    raise UnsupportedCase(f"op {op}")


def run_graph_with_fastpool(fp, model, inputs, **kw):
    """Run a graph of one pooling node plus shape glue (Unsqueeze/Squeeze) with fastpool."""
    env = {vi.name: arr for vi, arr in zip(model.graph.input, inputs)}
    opset = {o.domain: o.version for o in model.opset_import}.get("", 1)
    for node in model.graph.node:
        ins = [env[name] if name else None for name in node.input]
        if node.op_type in ("Unsqueeze", "Squeeze"):
            axes = node_attrs(node).get("axes")
            if axes is None and len(ins) > 1 and opset >= 13:
                axes = [int(a) for a in ins[1]]
            if node.op_type == "Unsqueeze":
                outs = [np.expand_dims(ins[0], tuple(axes))]
            else:
                outs = [np.squeeze(ins[0], axis=None if axes is None else tuple(axes))]
        elif node.op_type in POOL_OPS:
            outs = run_node_with_fastpool(fp, node, ins, **kw)
        else:
            raise UnsupportedCase(f"graph node {node.op_type}")
        for name, val in zip(node.output, outs):
            if name:
                env[name] = val
    return [env[o.name] for o in model.graph.output]


def pool_node(model):
    nodes = [n for n in model.graph.node if n.op_type in POOL_OPS]
    assert len(nodes) == 1, [n.op_type for n in model.graph.node]
    return nodes[0]


# --------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------


def tolerances(dtype, op):
    if op in ("MaxPool", "GlobalMaxPool", "MaxUnpool"):
        return 0.0, 0.0  # pure selection: bit-exact
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return 2e-3, 1e-3
    if dtype == np.float64:
        return 1e-10, 1e-12
    return 1e-5, 1e-6


def assert_matches(got, want, op, what, rtol=None):
    want = np.asarray(want)
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != expected {want.shape}"
    if want.dtype.kind in "iu" or (what.endswith("indices")):
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != expected {want.dtype}"
    default_rtol, atol = tolerances(want.dtype, op)
    rtol = default_rtol if rtol is None else rtol
    if rtol == 0 and atol == 0:
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(
            got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, err_msg=what
        )


# --------------------------------------------------------------------------------------------
# 1. ONNX backend node test cases
# --------------------------------------------------------------------------------------------


def _read_tensor(path):
    t = TensorProto()
    with open(path, "rb") as fh:
        t.ParseFromString(fh.read())
    return numpy_helper.to_array(t)


def _write_case(case, dest):
    os.makedirs(os.path.join(dest, "test_data_set_0"))
    onnx.save(case.model, os.path.join(dest, "model.onnx"))
    ins, outs = case.data_sets[0]
    for kind, arrays in (("input", ins), ("output", outs)):
        for i, arr in enumerate(arrays):
            t = arr if isinstance(arr, TensorProto) else numpy_helper.from_array(np.asarray(arr))
            with open(os.path.join(dest, "test_data_set_0", f"{kind}_{i}.pb"), "wb") as fh:
                fh.write(t.SerializeToString())


def _generate_node_cases(root):
    """Write the pooling node cases from onnx's generators into ``root`` (dir per case)."""
    import importlib

    import onnx.backend.test.case.node as node_cases

    for mod in GENERATOR_MODULES:
        # Importing the module runs its export_* functions (seeded with np.random.seed(0)),
        # which register the cases in node_cases._NodeTestCases.
        importlib.import_module(f"onnx.backend.test.case.node.{mod}")
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=os.path.dirname(root))
    try:
        for case in node_cases._NodeTestCases:
            if case.name.startswith(NODE_DIR_PREFIXES) and not os.path.exists(
                os.path.join(tmp, case.name)
            ):
                _write_case(case, os.path.join(tmp, case.name))
        try:
            os.rename(tmp, root)  # atomic: concurrent xdist workers race harmlessly
        except OSError:
            if not os.path.isdir(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _node_case_root(config):
    shipped = os.path.join(ONNX_DATA, "node")
    if os.path.isdir(shipped):
        return shipped, "node"
    key = f"fastpool-onnx-node-cases-onnx-{onnx.__version__}"
    try:
        base = str(config.cache.mkdir(key))
    except Exception:  # cache provider disabled
        base = os.path.join(tempfile.gettempdir(), key)
        os.makedirs(base, exist_ok=True)
    root = os.path.join(base, "node")
    if not os.path.isdir(root):
        _generate_node_cases(root)
    return root, "node(generated)"


def collect_node_case_dirs(config):
    root, label = _node_case_root(config)
    found = []
    for d in sorted(glob.glob(os.path.join(root, "test_*"))):
        name = os.path.basename(d)
        if name.startswith(NODE_DIR_PREFIXES) and "_expanded" not in name:
            found.append((name, d))
    for sub in ("pytorch-converted", "pytorch-operator"):
        for d in sorted(glob.glob(os.path.join(ONNX_DATA, sub, "test_*"))):
            if os.path.basename(d).lower().startswith(PYTORCH_DIR_PREFIXES):
                found.append((f"{sub}/{os.path.basename(d)}", d))
    return found


def pytest_generate_tests(metafunc):
    if "onnx_case_dir" in metafunc.fixturenames:
        cases = collect_node_case_dirs(metafunc.config)
        metafunc.parametrize(
            "onnx_case_dir", [d for _, d in cases], ids=[name for name, _ in cases]
        )


def _load_case(case_dir):
    model = onnx.load(os.path.join(case_dir, "model.onnx"))
    data = os.path.join(case_dir, "test_data_set_0")
    n_in = len(glob.glob(os.path.join(data, "input_*.pb")))
    n_out = len(glob.glob(os.path.join(data, "output_*.pb")))
    ins = [_read_tensor(os.path.join(data, f"input_{i}.pb")) for i in range(n_in)]
    outs = [_read_tensor(os.path.join(data, f"output_{i}.pb")) for i in range(n_out)]
    return model, ins, outs


def test_node_cases_found(request):
    """The ONNX node suite must yield cases for every pooling op (guards against silent 0)."""
    names = [n for n, _ in collect_node_case_dirs(request.config)]
    for prefix in NODE_DIR_PREFIXES:
        assert any(n.startswith(prefix) for n in names), (prefix, names)


# Cases whose expected outputs onnx's generator hard-codes rounded to 4 decimals; compared with
# the ONNX backend runner's own tolerance (rtol=1e-3).
NODE_CASE_RTOL = {"test_averagepool_2d_ceil_last_window_starts_on_pad": 1e-3}


def test_onnx_node_case(fp, onnx_case_dir):
    model, ins, want = _load_case(onnx_case_dir)
    node = pool_node(model)
    name = os.path.basename(onnx_case_dir)
    # The node test data for MaxUnpool with output_shape follows the ONNX reference
    # implementation's index space (see run_node_with_fastpool); elsewhere the two agree.
    try:
        got = run_graph_with_fastpool(fp, model, ins, unpool_index_space="inferred")
    except UnsupportedCase as exc:
        pytest.skip(f"outside fastpool's contract: {exc}")
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        what = f"{name} output {i}" + (" indices" if node.op_type == "MaxPool" and i == 1 else "")
        assert_matches(g, w, node.op_type, what, rtol=NODE_CASE_RTOL.get(name))

    if node.op_type == "LpPool":
        _check_lp_direct(fp, model, node, ins, want[0], name)


def _check_lp_direct(fp, model, node, ins, want, name):
    """fastpool.lp_pool on the raw input against ONNX where both definitions coincide.

    ONNX: (sum |x|^p)^(1/p). fastpool/PyTorch: (sum x^p)^(1/p). They coincide for even p and
    for windows without negative cells. Windows with negatives and odd p differ (fastpool gives
    the signed power sum's root, NaN when that sum is negative): those are not compared.
    """
    direct = run_graph_with_fastpool(fp, model, ins, lp_mode="direct")[0]
    p = node_attrs(node).get("p", 2)
    x = ins[0]
    if p % 2 == 0 or not (x < 0).any():
        assert_matches(direct, want, "LpPool", f"{name} (direct, no abs)")
        return
    # Window contains a negative cell <=> max-pool of the negative mask is 1 (same windows).
    attrs = node_attrs(node)
    nd = x.ndim - 2
    k, s, d, padding, ceil = pool_geometry(attrs, nd)
    neg = np.asarray(
        getattr(fp, f"max_pool{nd}d")((x < 0).astype(np.uint8), k, s, padding, d, ceil)
    ).astype(bool)
    assert neg.shape == want.shape
    same = ~neg
    assert_matches(direct[same], want[same], "LpPool", f"{name} (direct, windows >= 0)")


# --------------------------------------------------------------------------------------------
# 2. Random single-node models against onnxruntime
# --------------------------------------------------------------------------------------------

OPSET = 22
RANDOM_OPS = ["MaxPool", "AveragePool", "LpPool", "MaxPool", "AveragePool", "MaxUnpool"] * 4 + [
    "MaxPool",
    "AveragePool",
    "LpPool",
    "GlobalMaxPool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "GlobalAveragePool",
]  # 31 configurations
# auto_pad and ceil_mode are assigned round-robin (explicit asymmetric pads twice as often) so
# every op meets every mode whatever the seed; MaxUnpool always uses explicit pads.
AUTO_PAD_CYCLE = ["NOTSET", "SAME_UPPER", "NOTSET", "SAME_LOWER", "VALID"]


def _windows_ok(in_sp, k, s, d, pairs, ceil):
    """Every window holds an input cell and the output is non-empty (fastpool's contract)."""
    for i, n in enumerate(in_sp):
        before, after = pairs[i]
        keff = (k[i] - 1) * d[i] + 1
        num = n + before + after - keff
        if num < 0:
            return False
        out = (-(-num // s[i]) if ceil else num // s[i]) + 1
        if ceil and (out - 1) * s[i] >= n + before:
            out -= 1
        taps = (np.arange(out) * s[i] - before)[:, None] + np.arange(k[i])[None, :] * d[i]
        if not ((taps >= 0) & (taps < n)).any(axis=1).all():
            return False
    return True


def _random_config(rng, op, auto_pad, ceil):
    nd = int(rng.integers(1, 4))
    n, c = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    hi = 13 if nd < 3 else 8
    in_sp = [int(rng.integers(4, hi)) for _ in range(nd)]
    cfg = {"op": op, "shape": [n, c, *in_sp], "attrs": {}, "seed": int(rng.integers(2**31))}
    if op.startswith("Global"):
        return cfg
    while True:
        k = [int(rng.integers(1, 5)) for _ in range(nd)]
        s = [int(rng.integers(1, 4)) for _ in range(nd)]
        d = [int(rng.choice([1, 1, 1, 2, 3])) for _ in range(nd)]
        if op == "MaxUnpool":
            d = [1] * nd  # MaxUnpool has no dilations; keep the producing MaxPool plain
        attrs = {"kernel_shape": k, "strides": s}
        if any(v != 1 for v in d) or rng.integers(0, 2):
            attrs["dilations"] = d
        if auto_pad == "NOTSET":
            # asymmetric; onnxruntime requires every pad < kernel
            pads = [int(rng.integers(0, k[i % nd])) for i in range(2 * nd)]
            attrs["pads"] = pads
            pairs = [(pads[i], pads[nd + i]) for i in range(nd)]
        else:
            attrs["auto_pad"] = auto_pad
            padding = {"SAME_UPPER": "same", "SAME_LOWER": "same_lower", "VALID": "valid"}[auto_pad]
            pairs = resolve_pads(padding, in_sp, k, s, d)
        if ceil:
            attrs["ceil_mode"] = 1
        eff_ceil = bool(ceil) and auto_pad == "NOTSET"
        if not _windows_ok(in_sp, k, s, d, pairs, eff_ceil):
            continue
        if op == "AveragePool":
            attrs["count_include_pad"] = int(rng.integers(0, 2))
        if op == "LpPool":
            attrs["p"] = int(rng.choice([1, 2, 3, 4]))
        if op == "MaxPool":
            cfg["with_indices"] = bool(rng.integers(0, 2))
            if cfg["with_indices"]:
                attrs["storage_order"] = int(rng.integers(0, 2))
        if op == "MaxUnpool":
            cfg["with_output_shape"] = bool(rng.integers(0, 3))  # mostly given
        cfg["attrs"] = attrs
        return cfg


def _random_configs(seed=20240611, ops=RANDOM_OPS):
    rng = np.random.default_rng(seed)
    out = []
    for i, op in enumerate(ops):
        auto_pad = "NOTSET" if op == "MaxUnpool" else AUTO_PAD_CYCLE[(i // 2) % len(AUTO_PAD_CYCLE)]
        out.append(_random_config(rng, op, auto_pad, ceil=int(i % 4 >= 2)))
    return out


# Hand-picked corners the random draw may miss: ceil-mode windows that overhang the padded
# input (LpPool's partial-window scaling, AveragePool's count_include_pad divisor), with
# asymmetric pads and dilation.
FIXED_CONFIGS = [
    {"op": "LpPool", "shape": [2, 3, 7, 8], "seed": 1, "attrs": {
        "kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1, "p": 3}},
    {"op": "LpPool", "shape": [1, 2, 9], "seed": 2, "attrs": {
        "kernel_shape": [2], "strides": [3], "dilations": [2], "pads": [0, 1], "ceil_mode": 1,
        "p": 2}},
    {"op": "AveragePool", "shape": [2, 2, 6, 7], "seed": 3, "attrs": {
        "kernel_shape": [3, 2], "strides": [2, 3], "pads": [0, 1, 2, 0], "ceil_mode": 1,
        "count_include_pad": 1}},
    {"op": "MaxPool", "shape": [2, 3, 7, 6], "seed": 4, "with_indices": True, "attrs": {
        "kernel_shape": [2, 3], "strides": [2, 2], "dilations": [2, 1], "pads": [1, 0, 0, 2],
        "ceil_mode": 1, "storage_order": 1}},
]
RANDOM_CONFIGS = _random_configs() + FIXED_CONFIGS


def _cfg_id(i, cfg):
    a = cfg["attrs"]
    n_random = len(RANDOM_OPS)
    tag = f"r{i:02d}" if i < n_random else f"fixed{i - n_random}"
    parts = [tag, cfg["op"], f"{len(cfg['shape']) - 2}d"]
    if "auto_pad" in a:
        parts.append(a["auto_pad"].lower())
    elif "pads" in a:
        parts.append("pads")
    if a.get("ceil_mode"):
        parts.append("ceil")
    if any(v != 1 for v in a.get("dilations", [])):
        parts.append("dil")
    return "-".join(parts)


def _make_model(op, input_arrays, n_out, attrs, out_dtypes):
    names = [f"in{i}" for i in range(len(input_arrays))]
    ins = [
        helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
        for nm, a in zip(names, input_arrays)
    ]
    outs = [
        helper.make_tensor_value_info(f"out{i}", helper.np_dtype_to_tensor_dtype(np.dtype(t)), None)
        for i, t in enumerate(out_dtypes[:n_out])
    ]
    node = helper.make_node(op, names, [o.name for o in outs], **attrs)
    graph = helper.make_graph([node], f"fastpool_{op}", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", OPSET)])
    model.ir_version = min(model.ir_version, 10)  # stay loadable by older onnxruntime
    return model, node, dict(zip(names, input_arrays))


def _run_ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _run_reference(model, feeds):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def _oracle_for(cfg):
    """How to get the ONNX-spec answer for this configuration: (oracle, attrs to run it with).

    onnxruntime (checked with 1.32) deviates from the spec in some auto_pad corners, and the
    ONNX reference implementation (onnx.reference) fails on them too, so such nodes are
    rewritten into an equivalent spec-conforming node first:
    * auto_pad=VALID with ceil_mode=1: onnxruntime applies ceil rounding (an extra partial
      window) where the spec's VALID formula ceil((in - k_eff + 1) / s) is the floor size;
      the reference implementation raises "ceil_mode is not supported with auto_pad" for
      AveragePool. Rewritten: ceil_mode dropped (it is moot for auto_pad by the spec).
    * auto_pad=SAME_UPPER/SAME_LOWER with dilations > 1: onnxruntime sizes the padding from the
      undilated kernel (wrong output shape, e.g. 4x4 instead of 5x5); the reference gives zeros
      (AveragePool, LpPool), a wrong window (MaxPool) or crashes.
    * auto_pad=SAME_* where (ceil(in / s) - 1) * s + k_eff - in < 0 (stride > kernel): the
      spec formula gives a negative total pad. fastpool (and TF, whose SAME the spec copies)
      clip it at 0; onnxruntime's MaxPool fails ("padding values must be non-negative") and its
      AveragePool/LpPool return values of shifted windows.
      Both SAME cases are rewritten: explicit pads by the spec formula with the dilated kernel,
      clipped at 0 (odd cell at the end for SAME_UPPER, at the start for SAME_LOWER), and
      ceil_mode dropped.
    The rewritten node runs on onnxruntime ("ort-rewritten"), or on the reference where
    onnxruntime refuses it (it requires every pad < kernel): "reference-rewritten".
    * MaxUnpool whose output_shape is smaller than the inferred (in - 1) * s - pads + k in some
      dim (a ceil-mode or padded MaxPool produced the input): onnxruntime refuses ("output_shape
      is smaller than minimum required"), the spec allows it and the reference implementation
      uses another index space (see run_node_with_fastpool). Oracle: the spec's definition
      itself, a scatter of X at the flat indices I into zeros(output_shape) ("scatter").
    Everything else is compared with onnxruntime directly ("ort").
    """
    a = dict(cfg["attrs"])
    auto_pad = a.get("auto_pad", "NOTSET")
    in_sp = cfg["shape"][2:]
    nd = len(in_sp)
    if cfg["op"] == "MaxUnpool":
        k, s, _, pairs, ceil = pool_geometry(a, nd)
        pooled = [_out_len(in_sp[i], k[i], s[i], 1, pairs[i], ceil) for i in range(nd)]
        inferred = [(pooled[i] - 1) * s[i] - sum(pairs[i]) + k[i] for i in range(nd)]
        if any(inferred[i] > in_sp[i] for i in range(nd)):
            return "scatter", a
        return "ort", a
    if auto_pad == "VALID" and a.get("ceil_mode"):
        a.pop("ceil_mode")
        return "ort-rewritten", a
    if auto_pad.startswith("SAME"):
        k, s, d, padding, _ = pool_geometry(a, nd)
        dil = any(v != 1 for v in d)
        raw = [
            (-(-n // s[i]) - 1) * s[i] + (k[i] - 1) * d[i] + 1 - n for i, n in enumerate(in_sp)
        ]
        if dil or min(raw) < 0:
            pairs = resolve_pads(padding, in_sp, k, s, d)
            a.pop("auto_pad")
            a.pop("ceil_mode", None)
            a["pads"] = [b for b, _ in pairs] + [e for _, e in pairs]
            if all(max(pairs[i]) < k[i] for i in range(nd)):
                return "ort-rewritten", a
            return "reference-rewritten", a
    return "ort", a


def _out_len(n, k, s, d, pair, ceil):
    num = n + sum(pair) - ((k - 1) * d + 1)
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= n + pair[0]:
        out -= 1
    return out


def _scatter_unpool(x, idx, output_shape):
    """ONNX MaxUnpool by its definition: Y = zeros(output_shape); Y.flat[I] = X."""
    y = np.zeros(output_shape, dtype=x.dtype)
    y.reshape(-1)[idx.reshape(-1)] = x.reshape(-1)
    return [y]


@pytest.mark.parametrize(
    "cfg", RANDOM_CONFIGS, ids=[_cfg_id(i, c) for i, c in enumerate(RANDOM_CONFIGS)]
)
def test_onnxruntime_random(fp, cfg):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(cfg["seed"])
    op = cfg["op"]
    x = rng.standard_normal(cfg["shape"]).astype(np.float32)
    attrs = dict(cfg["attrs"])
    oracle, oracle_attrs = _oracle_for(cfg)

    if op == "MaxUnpool":
        # Produce (values, indices) with an onnxruntime MaxPool of the same geometry, then
        # unpool them back to the pooled input's shape.
        pool_model, _, feeds = _make_model("MaxPool", [x], 2, attrs, [np.float32, np.int64])
        y, idx = _run_ort(pool_model, feeds)
        inputs = [y, idx.astype(np.int64)]
        k, s, pads = attrs["kernel_shape"], attrs["strides"], attrs["pads"]
        nd = len(k)
        inferred = [(y.shape[2 + i] - 1) * s[i] - pads[i] - pads[nd + i] + k[i] for i in range(nd)]
        if cfg["with_output_shape"] or inferred != list(x.shape[2:]):
            inputs.append(np.asarray(x.shape, dtype=np.int64))
        unpool_attrs = {k: v for k, v in attrs.items() if k in ("kernel_shape", "strides", "pads")}
        model, node, feeds = _make_model("MaxUnpool", inputs, 1, unpool_attrs, [np.float32])
        n_out = 1
        if oracle == "scatter":
            want = _scatter_unpool(y, idx, x.shape)
        else:
            want = _run_ort(model, feeds)
    else:
        n_out = 2 if cfg.get("with_indices") else 1
        model, node, feeds = _make_model(op, [x], n_out, attrs, [np.float32, np.int64])
        oracle_model, _, _ = _make_model(op, [x], n_out, oracle_attrs, [np.float32, np.int64])
        if oracle.startswith("reference"):
            want = _run_reference(oracle_model, feeds)
        else:
            want = _run_ort(oracle_model, feeds)

    got = run_node_with_fastpool(fp, node, list(feeds.values()), unpool_index_space="output")
    assert len(got) == n_out
    for i in range(n_out):
        what = f"{cfg['op']} vs {oracle} output {i}" + (" indices" if i == 1 else "")
        assert_matches(got[i], want[i], op, what)


# Other dtypes of the contract, wherever onnxruntime's CPU provider has a kernel (MaxPool:
# float16/64, int8, uint8; the other pooling ops: float16 only). float64 AveragePool/LpPool are
# compared with the ONNX reference implementation instead. Small integer ranges make ties
# common, so the first-in-window tie rule is exercised too (values and indices).
DTYPE_CASES = [
    ("MaxPool", "float16", "ort"),
    ("MaxPool", "float64", "ort"),
    ("MaxPool", "int8", "ort"),
    ("MaxPool", "uint8", "ort"),
    ("AveragePool", "float16", "ort"),
    ("AveragePool", "float64", "reference"),
    ("LpPool", "float16", "ort"),
    ("LpPool", "float64", "reference"),
    ("GlobalMaxPool", "float16", "ort"),
    ("GlobalAveragePool", "float16", "ort"),
]


@pytest.mark.parametrize(
    "op,dtype,oracle", DTYPE_CASES, ids=[f"{o}-{d}" for o, d, _ in DTYPE_CASES]
)
def test_onnxruntime_dtypes(fp, op, dtype, oracle):
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(7)
    shape = (2, 3, 9, 8)
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        x = (x // 16).astype(dtype)  # few distinct values: many ties
    else:
        x = rng.standard_normal(shape).astype(dtype)
    attrs = {}
    if not op.startswith("Global"):
        attrs = {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1}
    if op == "MaxPool":
        attrs["dilations"] = [1, 2]
    if op == "AveragePool":
        attrs["count_include_pad"] = 1
    if op == "LpPool":
        attrs["p"] = 2
        if oracle == "reference":
            # The reference implementation scales ceil-mode-cut LpPool windows like PyTorch
            # (by kernel_numel / cells); the spec and onnxruntime do not. Keep it out of that.
            del attrs["ceil_mode"]
    n_out = 2 if op == "MaxPool" else 1
    model, node, feeds = _make_model(op, [x], n_out, attrs, [dtype, np.int64])
    want = _run_ort(model, feeds) if oracle == "ort" else _run_reference(model, feeds)
    got = run_node_with_fastpool(fp, node, [x])
    for i in range(n_out):
        what = f"{op} {dtype} vs {oracle} output {i}" + (" indices" if i == 1 else "")
        if dtype == np.float16 and op in ("AveragePool", "LpPool", "GlobalAveragePool"):
            # fastpool computes in float32 and rounds once; onnxruntime may round differently:
            # allow one float16 ulp.
            np.testing.assert_allclose(
                got[i].astype(np.float64), want[i].astype(np.float64), rtol=1e-3, atol=1e-3,
                err_msg=what,
            )
            assert got[i].dtype == want[i].dtype
        else:
            assert_matches(got[i], want[i], op, what)
