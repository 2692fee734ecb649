"""The project's import structure, read from the sources' ASTs (nothing is imported).

Every import counts: top-level, inside functions (a lazy import still ties two modules
together) and a string that is exactly a project module's dotted name (what
`importlib.import_module` is given by the packages whose names load on first use).
Importing `a.b.c` also runs the `__init__` of `a.b` and of `a` (their top-level imports,
not the names they load on first use), except the importer's own packages, which are
already loading when it runs.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = "clade_tf"
APPLICATIONS = ("train", "export", "evaluate", "benchmarks")


def module_files(root, packages):
    """`{dotted module name: file}` of every `.py` file under the top-level `packages`."""
    out = {}
    for top in packages:
        for folder, dirs, files in os.walk(os.path.join(root, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            rel = os.path.relpath(folder, root).split(os.sep)
            for f in sorted(files):
                if not f.endswith(".py"):
                    continue
                name = rel if f == "__init__.py" else [*rel, f[:-3]]
                out[".".join(name)] = os.path.join(folder, f)
    return out


def _ancestors(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


STRING = object()  # marks a string constant among the imports
INIT = " [__init__ runs]"  # the node of a package's __init__ running: its top-level imports only


def _imports(tree):
    """`(name, alias, line, top_level)` of each import in `tree` (`from` imports with `name`
    a `(level, module)` pair) and of each dotted string (`alias` is `STRING`);
    `top_level`: it runs when the module is imported (not inside a function)."""
    out = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((alias.name, None, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                out.extend(((child.level, child.module), alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.Constant) and isinstance(child.value, str) and "." in child.value:
                # maybe a module's dotted name, for `importlib`: not imported by running this code
                out.append((child.value, STRING, child.lineno, False))
            visit(child, inner)

    visit(tree, True)
    return out


def import_graph(root, packages):
    """`{node: {imported node: (file, line)}}` over the project's own modules.

    A node is a module with everything it imports anywhere (`a.b`), or, for a package,
    its `__init__` running (`a.b [__init__ runs]`): importing `a.b.c` runs the
    `__init__` of `a.b` first, and only that code's top-level imports.
    """
    files = module_files(root, packages)
    is_package = {m for m, f in files.items() if f.endswith("__init__.py")}
    graph = {}
    for module, path in files.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = module if module in is_package else module.rpartition(".")[0]
        own = {module, *_ancestors(module)}  # already loading when `module` runs
        edges, init_edges = {}, {}
        for name, alias, line, top in _imports(tree):
            if alias is not STRING and isinstance(name, tuple):  # from <level dots><module> import <alias>
                level, base = name
                if level:
                    parts = package.split(".")
                    base = ".".join([*parts[: len(parts) - level + 1], *([base] if base else [])])
                sub = f"{base}.{alias}"
                name = sub if sub in files else base
            if alias is STRING and name not in files:
                continue  # only a string that is exactly a module's name ("config.json" is not `config`)
            while name and name not in files:  # `a.b.attr` -> the module `a.b`
                name = name.rpartition(".")[0]
            if not name or name == module:
                continue
            targets = [a + INIT for a in _ancestors(name) if a in is_package and a not in own] + [name]
            for t in targets:
                edges.setdefault(t, (path, line))
                if top:
                    init_edges.setdefault(t, (path, line))
        graph[module] = edges
        if module in is_package:
            graph[module + INIT] = init_edges
    return graph


def find_cycles(graph):
    """The import circles of `graph`: each strongly connected component with more than one
    module, as a sorted list of its modules (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def describe(graph, cycle):
    """One line per import inside `cycle`: `a -> b (file:line)`."""
    members = set(cycle)
    return "; ".join(f"{a} -> {b} ({os.path.relpath(f, ROOT)}:{line})"
                     for a in cycle for b, (f, line) in sorted(graph[a].items()) if b in members)


@pytest.fixture(scope="module")
def project_graph():
    return import_graph(ROOT, (LIBRARY, *APPLICATIONS))


def test_the_project_has_no_import_circle(project_graph):
    assert len(project_graph) > 50  # the whole project was read, not an empty folder
    assert "clade_tf.data.pipeline" in project_graph["clade_tf.data.sources"]
    cycles = find_cycles(project_graph)
    assert not cycles, "import circles: " + " | ".join(describe(project_graph, c) for c in cycles)


def _write(root, files):
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_the_graph_sees_lazy_relative_and_package_imports(tmp_path):
    """Each kind of import the project uses makes an edge, so a circle through any of
    them is found."""
    _write(tmp_path, {
        "p/__init__.py": '_EXPORTS = {"thing": "p.lazy"}\n',
        "p/a.py": "def f():\n    from p.b import g\n    return g\n",  # function-level
        "p/b.py": "from . import c\nNAME = 'p.lazy.json'\n",  # relative; a string that is no module
        "p/c.py": "import p.a\n",  # plain, closes a -> b -> c -> a
        "p/lazy.py": "",
        "p/sub/__init__.py": "from p import a\n\n\ndef f():\n    import p.lazy\n",
        "p/sub/leaf.py": "",
        "p/d.py": "from p.sub import leaf\n",  # runs p.sub's __init__ first
        "q/__init__.py": "",
        "q/e.py": "import p.sub.leaf as x\n",
    })
    graph = import_graph(str(tmp_path), ("p", "q"))
    assert graph["p.a"] == {"p.b": (str(tmp_path / "p" / "a.py"), 2)}
    assert set(graph["p.b"]) == {"p.c"} and set(graph["p.c"]) == {"p.a"}
    assert set(graph["p"]) == {"p.lazy"}  # the string naming a module
    assert set(graph["p.sub"]) == {"p.a", "p.lazy"} and set(graph["p.sub" + INIT]) == {"p.a"}
    assert set(graph["p.d"]) == {"p.sub" + INIT, "p.sub.leaf"}  # the package above, not its own
    assert set(graph["q.e"]) == {"p" + INIT, "p.sub" + INIT, "p.sub.leaf"}
    assert find_cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert "p.c -> p.a (" in describe(graph, ["p.a", "p.b", "p.c"])


def test_a_circle_through_a_package_init_is_found(tmp_path):
    """`x.config` importing `x.data.scenes` runs `x.data`'s `__init__`; when that imports
    `x.data.sources`, which imports `x.config`, it is a circle no single import line shows.
    A name the `__init__` loads on first use is not imported by running it."""
    _write(tmp_path, {
        "x/__init__.py": "",
        "x/config.py": "from x.data import scenes\n",
        "x/data/__init__.py": "from x.data.sources import make\n",
        "x/data/scenes.py": "",
        "x/data/sources.py": "import x.config\n",
    })
    assert find_cycles(import_graph(str(tmp_path), ("x",))) == [["x.config", "x.data" + INIT, "x.data.sources"]]
    _write(tmp_path, {"x/data/__init__.py": '_EXPORTS = {"make": "x.data.sources"}\n'})
    assert find_cycles(import_graph(str(tmp_path), ("x",))) == []
    _write(tmp_path, {"x/config.py": "from x.data import make\n"})  # the name itself: x.data loads x.data.sources
    assert find_cycles(import_graph(str(tmp_path), ("x",))) == [["x.config", "x.data", "x.data.sources"]]
