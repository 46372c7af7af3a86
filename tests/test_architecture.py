"""The house's shape: every module in a flow package, imports only down the flow, no cycles, and
DVC stages that depend on every package they run (docs/ARCHITECTURE.md)."""
import ast
import functools
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "provenance"
# the flow, bottom up (docs/DESIGN.md): a package may import only packages of a lower rank
RANK = {"core": 0, "store": 1, "contest": 2, "records": 3, "replay": 4, "log": 5, "release": 6, "lab": 7, "cli": 8}
SIDEWAYS = {("release", "log")}  # a release carries the log's proofs; the log knows nothing of releases
DATA = ("provenance/lab/miniature/upstream", "provenance/lab/miniature/samples")  # run in the sandbox, not imported


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(REPO)
        if str(rel).startswith(DATA):
            continue
        parts = rel.with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """Modules of this package that `name` imports (all of them, or only those run at import time)."""
    tree = _parse(path)
    is_pkg = path.name == "__init__.py"
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("provenance")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            if base.startswith("provenance"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return found


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports(m, p, top_level_only) if i in mods and i != m} for m, p in mods.items()}


def package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in g.items():
        a = package(m)
        for d in deps:
            b = package(d)
            if a is None or b is None or a == b or (a, b) in SIDEWAYS:
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{m} ({a}, rank {RANK[a]}) imports {d} ({b}, rank {RANK[b]})")
    return sorted(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = n[0]; n[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = n[0]; n[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(g.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop(); on.discard(w); comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_every_module_lives_in_a_flow_package():
    stray = [m for m in modules() if m != "provenance" and package(m) not in RANK]
    assert not stray, f"modules outside the flow packages {sorted(RANK)}: {stray}"


def test_imports_only_go_down_the_flow():
    bad = upward(graph())
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_package_cycle():
    pg: dict[str, set[str]] = {}
    for m, deps in graph().items():
        if package(m):
            pg.setdefault(package(m), set()).update(package(d) for d in deps if package(d) not in (None, package(m)))
    assert not cycles(pg), cycles(pg)


def test_no_import_time_module_cycle():
    assert not cycles(graph(top_level_only=True)), cycles(graph(top_level_only=True))


def test_no_module_cycle_through_function_level_imports_either():
    """A cycle hidden in a function's import is still two modules that need each other."""
    assert not cycles(graph()), cycles(graph())


MAX_LINES = 500  # a module past this holds more than one concept: split it along its seams (#26)


def too_long(mods: dict[str, Path]) -> list[str]:
    return sorted(f"{m}: {n} lines" for m, p in mods.items() if (n := len(p.read_text().splitlines())) > MAX_LINES)


def test_distinct_names_for_distinct_classes():
    """Two classes of one name (there were two `Limits`) make every import a question."""
    seen: dict[str, list[str]] = {}
    for m, p in modules().items():
        for n in _parse(p).body:
            if isinstance(n, ast.ClassDef):
                seen.setdefault(n.name, []).append(m)
    assert not {k: v for k, v in seen.items() if len(v) > 1}


HOUSE_TESTS = {"test_architecture.py", "test_one_home.py"}  # about the whole house: they stay at the top


def test_tests_mirror_the_packages():
    """A module's tests are found by its package: tests/<package>/test_*.py."""
    tests = REPO / "tests"
    stray = [str(f.relative_to(tests)) for f in tests.rglob("test_*.py")
             if not (f.parent == tests and f.name in HOUSE_TESTS)
             and not (f.parent.parent == tests and f.parent.name in RANK)]
    assert not stray, f"tests outside a package's folder (tests/<package>/): {stray}"


def test_no_module_over_500_lines():
    assert not too_long(modules()), "split these along their seams:\n" + "\n".join(too_long(modules()))


def test_the_checker_catches_what_it_is_for():
    g = {"provenance.store.objects": {"provenance.log.translog"}, "provenance.log.translog": {"provenance.core.errors"},
         "provenance.core.errors": set()}
    assert upward(g) == ["provenance.store.objects (store, rank 1) imports provenance.log.translog (log, rank 5)"]
    assert upward({"provenance.replay.run": {"provenance.log.translog"}, "provenance.log.translog": set()})
    assert not upward({"provenance.release.verify": {"provenance.log.logbook"}, "provenance.log.logbook": set()})
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert not cycles({"a": {"b"}, "b": set()})
    src = ("from provenance.core import errors\nimport provenance.log.translog\n"
           "def f():\n    from provenance.lab import ledger\n")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.py"; p.write_text(src)
        assert imports("provenance.store.m", p) >= {"provenance.core.errors", "provenance.log.translog",
                                                    "provenance.lab.ledger"}
        assert "provenance.lab.ledger" not in imports("provenance.store.m", p, top_level_only=True)
        # a cycle through a function-level import is one (release/trust and release/verify had one)
        m2, n2 = Path(d) / "m2.py", Path(d) / "n2.py"
        m2.write_text("def f():\n    from provenance.store import n2\n")
        n2.write_text("def g():\n    from provenance.store import m2\n")
        g = {"provenance.store.m2": imports("provenance.store.m2", m2), "provenance.store.n2": imports("provenance.store.n2", n2)}
        assert cycles(g) == [["provenance.store.m2", "provenance.store.n2"]]
        big = Path(d) / "big.py"
        big.write_text("x = 1\n" * (MAX_LINES + 1))
        assert too_long({"provenance.store.big": big}) == [f"provenance.store.big: {MAX_LINES + 1} lines"]
        big.write_text("x = 1\n" * MAX_LINES)
        assert too_long({"provenance.store.big": big}) == []


# each stage's command is one library call: the function it enters the library through
STAGE_ENTRY = {"miniature": ("provenance.lab.miniature.build", "build"), "replay": ("provenance.lab.fanout", "lab_replay"),
               "release": ("provenance.lab.pipeline", "release_all"), "verify": ("provenance.lab.pipeline", "verify_all"),
               "site": ("provenance.lab.site.build", "build_site")}
TOP, WHOLE = "<top>", "<whole>"


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _defs(path: Path) -> dict[str, ast.AST]:
    return {n.name: n for n in _parse(path).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _edges(module: str, node: ast.AST | list, mods: dict[str, Path], defs: dict[str, ast.AST], walk=True) -> set:
    """What running `node` of `module` can run: imported functions (or whole modules), and the
    functions of its own module that it names."""
    out = set()
    nodes = ast.walk(node) if walk else node
    for n in nodes:
        if isinstance(n, ast.Import):
            out |= {(a.name, WHOLE) for a in n.names if a.name in mods}
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("provenance") and not n.level:
            for a in n.names:
                sub = f"{n.module}.{a.name}"
                out.add((sub, WHOLE) if sub in mods else (n.module, a.name))
        elif walk and isinstance(n, ast.Name) and n.id in defs:
            out.add((module, n.id))
    return out


def reached(entry: tuple[str, str]) -> set[str]:
    """Modules whose code the entry function can run, following functions, not whole modules."""
    mods = modules()
    seen, todo, hit = set(), [entry], set()
    while todo:
        m, fn = todo.pop()
        if (m, fn) in seen or m not in mods:
            continue
        seen.add((m, fn))
        hit.add(m)
        tree = _parse(mods[m])
        defs = _defs(mods[m])
        if fn != TOP:
            todo.append((m, TOP))  # its module's top level runs first, and its package's
            parent = m.rpartition(".")[0]
            if parent in mods:
                todo.append((parent, TOP))
        if fn == WHOLE:
            todo += [(m, d) for d in defs]
        elif fn == TOP:
            top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            todo += _edges(m, top, mods, defs, walk=False)
            for n in top:  # module-level code that calls its own functions
                todo += [(m, x.id) for x in ast.walk(n) if isinstance(x, ast.Name) and x.id in defs]
        elif fn in defs:
            todo += _edges(m, defs[fn], mods, defs)
        else:
            todo.append((m, WHOLE))  # a name the module re-exports: be coarse
    return hit


def test_the_stage_walker_follows_functions_not_modules():
    # release_all and verify_all share a module; only the replay stage runs the replay
    assert "provenance.replay.run" in reached(STAGE_ENTRY["replay"])
    assert "provenance.replay.sandbox" in reached(STAGE_ENTRY["replay"])
    assert "provenance.replay.run" not in reached(STAGE_ENTRY["verify"])
    assert "provenance.release.verify" in reached(STAGE_ENTRY["verify"])


@pytest.mark.parametrize("stage", sorted(STAGE_ENTRY))
def test_dvc_stages_depend_on_every_package_they_run(stage):
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    spec = spec.get("do", spec)
    deps = [d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]]
    code = [d for d in deps if d.startswith("provenance")]
    for d in code:  # folders of packages, or single lab steps
        assert (REPO / d).is_dir() or d.startswith("provenance/lab/"), f"{stage}: {d} is a file outside lab/"
    mods = modules()
    missing = []
    for m in sorted(reached(STAGE_ENTRY[stage])):
        rel = mods[m].relative_to(REPO).as_posix()
        if package(m) == "cli" or m == "provenance" or (rel == "provenance/lab/__init__.py"):
            continue  # the CLI is the stage's command line; the lab's __init__ is its docstring
        if not any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in code):
            missing.append(rel)
    assert not missing, f"stage {stage} runs code it does not depend on: {missing}"


def test_the_lab_package_runs_nothing_on_import():
    body = ast.parse((PKG / "lab" / "__init__.py").read_text()).body
    assert all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def test_every_leaf_command_ends_its_help_with_an_example():
    """A newcomer's first question of a command is how to call it: each leaf's --help answers."""
    import click
    from provenance.cli.app import cli

    def leaves(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                yield from leaves(sub, path + [name])
        else:
            yield " ".join(path), cmd
    missing = [name for name, cmd in leaves(cli, []) if "Example" not in (cmd.help or "").rsplit("\n\n", 1)[-1]]
    assert not missing, f"leaf commands whose --help ends without an example: {missing}"
