"""Source-level specialisation of kernel closures on their compile-time constants.

A kernel factory's closure reads flags and sizes (``MAX``, ``CLAST``, ``KW`` ...) as free
variables.  LLVM folds them, but Numba types and lowers every branch first, and its own pruning
only removes ``if FLAG:`` branches: ``if not FLAG``, ``FLAG and x``, locals set from flags and
the branches they guard all stay.  On a first call in a fresh process that front-end work is
most of the compile time.  ``specialise`` rewrites the function's syntax tree with the
constants substituted and the dead branches removed, then compiles it as a closure over the
same cells, so that Numba's cache keys it as before (bytecode plus closure contents) and finds
its source file and line as before.
"""
import ast
import copy
import dis
import hashlib
import linecache
import marshal
import os
import sys
import textwrap
import threading

_SCALARS = (bool, int, float)
_VERSION = 8  # of the rewrite: part of the key of the kept code
PART, PARTS = "_fp_part", "_fp_parts"  # the parameters a split kernel gains
NONNEG = "_fp_nonneg"  # ... and the global it reads (_cpu/_intrinsics.nonneg)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp,
           ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Global, ast.Nonlocal)


class _Fold(ast.NodeTransformer):
    """Substitute constant names and fold what becomes constant."""

    def __init__(self, consts):
        self.consts = consts

    def visit_Name(self, node):
        if isinstance(node.ctx, ast.Load) and node.id in self.consts:
            return ast.copy_location(ast.Constant(self.consts[node.id]), node)
        return node

    def visit_UnaryOp(self, node):
        self.generic_visit(node)
        if isinstance(node.op, ast.Not) and isinstance(node.operand, ast.Constant):
            return ast.copy_location(ast.Constant(not node.operand.value), node)
        return node

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        vals = []
        for v in node.values:  # keep Python's short-circuit value semantics for constants
            if isinstance(v, ast.Constant):
                if isinstance(node.op, ast.And) and not v.value:
                    return ast.copy_location(ast.Constant(v.value), node) if not vals else \
                        ast.copy_location(ast.BoolOp(node.op, vals + [v]), node)
                if isinstance(node.op, ast.Or) and v.value:
                    return ast.copy_location(ast.Constant(v.value), node) if not vals else \
                        ast.copy_location(ast.BoolOp(node.op, vals + [v]), node)
                if not isinstance(v.value, bool):
                    vals.append(v)
                continue  # a true operand of "and" / a false one of "or": drop it
            vals.append(v)
        if not vals:
            return ast.copy_location(ast.Constant(isinstance(node.op, ast.And)), node)
        if len(vals) == 1:
            return vals[0]
        node.values = vals
        return node

    def generic_visit(self, node):
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                setattr(node, field, _reachable(stmts))
        return node

    def visit_For(self, node):
        self.generic_visit(node)
        it = node.iter
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and \
                it.func.id in ("range", "prange") and not it.keywords and \
                1 <= len(it.args) <= 3 and all(isinstance(a, ast.Constant) and
                                                type(a.value) is int for a in it.args):
            if len(range(*[a.value for a in it.args])) == 0:  # the body never runs
                return node.orelse or ast.copy_location(ast.Pass(), node)
        return node

    def visit_Compare(self, node):
        self.generic_visit(node)
        if isinstance(node.left, ast.Constant) and len(node.ops) == 1 and \
                isinstance(node.ops[0], (ast.In, ast.NotIn)) and \
                isinstance(node.comparators[0], ast.Tuple) and \
                all(isinstance(e, ast.Constant) for e in node.comparators[0].elts):
            found = node.left.value in [e.value for e in node.comparators[0].elts]
            return ast.copy_location(
                ast.Constant(found if isinstance(node.ops[0], ast.In) else not found), node)
        if isinstance(node.left, ast.Constant) and len(node.ops) == 1 and \
                isinstance(node.comparators[0], ast.Constant):
            a, b = node.left.value, node.comparators[0].value
            ops = {ast.Eq: lambda: a == b, ast.NotEq: lambda: a != b, ast.Lt: lambda: a < b,
                   ast.LtE: lambda: a <= b, ast.Gt: lambda: a > b, ast.GtE: lambda: a >= b}
            f = ops.get(type(node.ops[0]))
            if f is not None:
                return ast.copy_location(ast.Constant(f()), node)
        return node

    def visit_IfExp(self, node):
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant):
            return node.body if node.test.value else node.orelse
        return node

    def visit_If(self, node):
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant):
            keep = node.body if node.test.value else node.orelse
            return keep or ast.copy_location(ast.Pass(), node)
        return node


def _reachable(stmts):
    """``stmts`` up to and including the first that always leaves the block (``continue``,
    ``break``, ``return``, ``raise``): what follows it never runs."""
    for i, st in enumerate(stmts):
        if isinstance(st, (ast.Continue, ast.Break, ast.Return, ast.Raise)):
            return stmts[:i + 1]
    return stmts


# calls without side effects that the kernels make (allocations, conversions, constants):
# an assignment of their result to a local that nothing reads is dropped
_PURE_CALLS = frozenset({"max", "min", "abs", "len", "int", "float", "bool", "new_full",
                         "new_zeros", "new_empty", "as_acc", "vector_lanes", "int_lanes", "U",
                         "flat_view", "to_storage", "load"})


def _pure(expr):
    for n in ast.walk(expr):
        if isinstance(n, ast.Call) and not (isinstance(n.func, ast.Name) and
                                            n.func.id in _PURE_CALLS and not n.keywords):
            return False
        if isinstance(n, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return False
    return True


def _drop_dead_assignments(fdef):
    """Remove ``name = expr`` statements whose local is never read and whose value has no
    side effect (``_pure``), until none is left: what folding left unused (a scratch array of
    a case the constants ruled out, a size only that case needed) is then neither typed nor
    lowered."""
    while True:
        read = {n.id for n in ast.walk(fdef) if isinstance(n, ast.Name) and
                not isinstance(n.ctx, ast.Store)}
        read |= {n.target.id for n in ast.walk(fdef) if isinstance(n, ast.AugAssign) and
                 isinstance(n.target, ast.Name)}
        dropped = False
        for node in ast.walk(fdef):
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                if not isinstance(stmts, list) or not stmts or \
                        not isinstance(stmts[0], ast.stmt):
                    continue
                keep = [st for st in stmts if not (
                    isinstance(st, ast.Assign) and len(st.targets) == 1 and
                    isinstance(st.targets[0], ast.Name) and st.targets[0].id not in read and
                    _pure(st.value))]
                if len(keep) != len(stmts):
                    dropped = True
                    setattr(node, field, keep or [ast.copy_location(ast.Pass(), stmts[0])])
        if not dropped:
            return


def _single_constant_assignments(fdef):
    """Locals assigned exactly once in the function, to a bool or int constant (a walk over
    the statements only: the kernels assign in statements, never in expressions)."""
    counts, values = {}, {}

    def names(target):
        if isinstance(target, ast.Name):
            yield target.id
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                yield from names(t)

    def scan(body):
        for st in body:
            targets = []
            if isinstance(st, ast.Assign):
                targets = st.targets
            elif isinstance(st, (ast.AugAssign, ast.AnnAssign, ast.For)):
                targets = [st.target]
            for t in targets:
                for n in names(t):
                    counts[n] = counts.get(n, 0) + 1
                    if isinstance(st, ast.Assign) and isinstance(st.value, ast.Constant) and \
                            type(st.value.value) in (bool, int):
                        values[n] = st.value.value
            for field in ("body", "orelse", "finalbody"):
                scan(getattr(st, field, ()) or ())
            for h in getattr(st, "handlers", ()) or ():
                scan(h.body)

    scan(fdef.body)
    a = fdef.args  # a parameter assigned once is not a constant
    for arg in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
        if arg is not None:
            counts[arg.arg] = 2
    return {k: v for k, v in values.items() if counts.get(k) == 1}


def _source(fn):
    """The dedented source of ``fn``: its ``def`` line and every line after it that is blank
    or indented deeper (``inspect.getsource`` tokenizes the block: 30-45 ms for a kernel)."""
    code = fn.__code__
    lines = linecache.getlines(code.co_filename)
    first = code.co_firstlineno - 1
    if not lines or first >= len(lines) or not lines[first].lstrip().startswith("def "):
        return None  # (decorated, or not a plain def: leave it alone)
    indent = len(lines[first]) - len(lines[first].lstrip())
    end = first + 1
    while end < len(lines):
        text = lines[end]
        if text.strip() and len(text) - len(text.lstrip()) <= indent:
            break
        end += 1
    return textwrap.dedent("".join(lines[first:end]))


def _split_prange(fdef):
    """Rewrite the kernel's one task loop ``for t in prange(E):`` (the last statement of its
    body) into ``for t in range(lo, hi):`` over the tasks of one part, ``lo = max(E * part //
    parts, 0)`` and ``hi = E * (part + 1) // parts``, with ``part``, ``parts`` two new
    trailing parameters; False (``fdef`` untouched) for any other shape.

    The loop's first statement tells the compiler the task index is never negative
    (``_fp_nonneg``, an ``llvm.assume``, true since ``lo >= 0``): it then drops the
    negative-index wraparound and the floor-division sign fixes of everything the index
    feeds, as in the parallel kernel, whose task index is unsigned.  Without it a global
    average ran ~12% slower; counting from 0 and skipping the tasks before ``lo`` instead
    cost a compare per skipped task (a part of a 65536-task call ran 1.6x slower)."""
    loops = [n for n in ast.walk(fdef) if isinstance(n, ast.For) and
             isinstance(n.iter, ast.Call) and isinstance(n.iter.func, ast.Name) and
             n.iter.func.id == "prange"]
    body = fdef.body
    if len(loops) != 1 or not body or body[-1] is not loops[0] or \
            len(loops[0].iter.args) != 1 or loops[0].iter.keywords or loops[0].orelse or \
            not isinstance(loops[0].target, ast.Name):
        return False
    loop = loops[0]
    names = {n.id for n in ast.walk(fdef) if isinstance(n, ast.Name)}
    if names & {PART, PARTS, NONNEG, "_fp_ntask", "_fp_lo", "_fp_hi"}:
        return False
    t = loop.target.id
    pre = ast.parse(f"_fp_ntask = 0\n"
                    f"_fp_lo = max(_fp_ntask * {PART} // {PARTS}, 0)\n"
                    f"_fp_hi = _fp_ntask * ({PART} + 1) // {PARTS}\n").body
    pre[0].value = loop.iter.args[0]
    loop.iter = ast.parse("range(_fp_lo, _fp_hi)", mode="eval").body
    assume = ast.parse(f"{t} = {NONNEG}({t})").body[0]
    loop.body.insert(0, assume)
    body[-1:-1] = pre
    fdef.args.args += [ast.arg(PART), ast.arg(PARTS)]
    for n in [n for st in pre + [assume, loop.iter] for n in ast.walk(st)] + \
            fdef.args.args[-2:]:
        ast.copy_location(n, loop)
    return True


def specialise(fn, folder=None, split=False):
    """``fn`` (a closure) rewritten with its scalar free variables as constants and the code
    they make dead removed; None when its source cannot be read (the caller then keeps ``fn``).

    ``split``: also turn its task loop into the range of one part of the tasks
    (``_split_prange``; any function, closure or not); None where it has no such loop.

    ``folder``: where to keep the rewritten code (marshalled, keyed by the function's source
    and constants) so that later processes skip the rewrite (~10 ms a kernel, which a first call
    that finds the kernel in Numba's cache would otherwise pay); None: rewrite every time.
    """
    src = _source(fn)
    if src is None:
        return None
    cells = dict(zip(fn.__code__.co_freevars, [c.cell_contents for c in fn.__closure__ or ()]))
    consts = {k: v for k, v in cells.items() if type(v) in _SCALARS}
    names = list(cells)
    path = None
    if folder:
        key = repr((_VERSION, split, sys.version_info[:2], fn.__code__.co_filename,
                    fn.__code__.co_firstlineno, src, sorted(consts.items()), names,
                    hashlib.sha256(fn.__code__.co_code).hexdigest()))
        tag = "".join(ch if ch.isalnum() else "_" for ch in fn.__qualname__)[-60:]
        tag += "_split" if split else ""
        path = os.path.join(folder, f"{tag}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.spec")
    code = None
    if path:
        try:
            with open(path, "rb") as f:
                code = marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            code = None
    if code is None:
        code = _rewrite(fn, src, consts, names, split)
        if code is None:
            return None
        if path:
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
            try:
                with open(tmp, "wb") as f:
                    marshal.dump(code, f)
                os.replace(tmp, path)  # (atomic: a reader sees the old file or the whole new one)
            except OSError:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
    ns = {}
    glob = fn.__globals__
    if split:  # (the kernel's globals and the one its rewritten loop adds)
        from ._intrinsics import nonneg
        glob = {**glob, NONNEG: nonneg}
    exec(code, glob, ns)
    new = ns["_factory"](*[cells[n] for n in names])
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    new.__doc__ = fn.__doc__
    return new


def _closure_module(fdef, names):
    """A module defining ``_factory(*names)`` that returns the function ``fdef``."""
    outer = ast.FunctionDef(name="_factory", args=ast.arguments(
        posonlyargs=[], args=[ast.arg(n) for n in names], kwonlyargs=[], kw_defaults=[],
        defaults=[]), body=[fdef, ast.Return(ast.Name(fdef.name, ast.Load()))],
        decorator_list=[], returns=None, type_params=[])
    for n in [outer, outer.args] + outer.args.args + list(ast.walk(outer.body[1])):
        ast.copy_location(n, fdef)  # the new nodes: at the def line
    return ast.Module(body=[outer], type_ignores=[])


def _same_function(fn, fdef, names):
    """Does the source read now still compile to ``fn``'s code (same names, same number of
    instructions)?  A file edited after import would otherwise be specialised in place of the
    code that runs."""
    ns = {}
    exec(compile(_closure_module(copy.deepcopy(fdef), names), fn.__code__.co_filename, "exec"),
         {}, ns)
    new = ns["_factory"].__code__.co_consts
    code = next((c for c in new if getattr(c, "co_name", None) == fdef.name), None)
    if code is None:
        return False
    old = fn.__code__
    return (code.co_names, code.co_varnames, code.co_freevars, code.co_argcount) == \
        (old.co_names, old.co_varnames, old.co_freevars, old.co_argcount) and \
        sum(1 for _ in dis.get_instructions(code)) == sum(1 for _ in dis.get_instructions(old))


def _rewrite(fn, src, consts, names, split=False):
    """The compiled module that defines ``_factory(*names)``, returning the rewritten ``fn``;
    None for a function with nested scopes."""
    # (blank lines first: the tree then carries the file's line numbers as it is)
    tree = ast.parse("\n" * (fn.__code__.co_firstlineno - 1) + src)
    fdef = tree.body[0]
    if any(isinstance(n, _SCOPES) for n in ast.walk(fdef) if n is not fdef):
        return None  # (a nested scope could rebind a constant's name: left as it is)
    fdef.decorator_list = []
    if not _same_function(fn, fdef, names):
        return None  # the file changed since the function was defined: left as it is
    folder = _Fold(dict(consts))
    for _ in range(4):  # locals set once to a folded constant fold on in the next round
        fdef = folder.visit(fdef)
        more = {k: v for k, v in _single_constant_assignments(fdef).items()
                if k not in folder.consts}
        if not more:
            break
        folder.consts.update(more)
    _drop_dead_assignments(fdef)
    # a closure over every original cell, the constants named in a first statement: the cache
    # key (bytecode, closure contents) then differs between specialisations even where their
    # folded bytecode happens to coincide
    first = ast.Expr(ast.Tuple([ast.Name(n, ast.Load()) for n in consts], ast.Load())) \
        if consts else ast.Pass()
    for n in ast.walk(first):
        ast.copy_location(n, fdef)
    fdef.body.insert(0, first)
    if split and not _split_prange(fdef):
        return None
    return compile(_closure_module(fdef, names), fn.__code__.co_filename, "exec")
