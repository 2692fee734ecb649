"""No project module uses another project module's private (`_name`) names.

A leading underscore says "free to change without notice"; a second module that reaches
for it couples the two silently. Every .py of the library and the applications is parsed
(nothing is imported or run) and each use of a private name of another project module is
reported: `from clade_tf.x import _name`, `mod._name` / `pkg.mod._name` where `mod` is an
imported project module, and imports of a private module (`clade_tf.x._impl`) from outside
the package that holds it (a package's own modules may share a private module).
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("clade_tf", "train", "export", "evaluate", "benchmarks")


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def project_modules(root=ROOT):
    """{dotted module name: path} of every .py under the project packages."""
    mods = {}
    for pkg in PACKAGES:
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__" and not x.startswith("."))
            for f in files:
                if f.endswith(".py"):
                    parts = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    mods[".".join(parts)] = os.path.join(d, f)
    return mods


def _is_package(module, path):
    return os.path.basename(path) == "__init__.py"


def _resolve(module, is_pkg, level, target):
    """The absolute module a (possibly relative) `from ... import` names."""
    if not level:
        return target
    base = module.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _private_module_outsider(user, target):
    """True when `user` may not import `target` because a part of it is private to a package `user` is not in."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part):
            owner = ".".join(parts[:i])  # the package the private module belongs to
            return not (user == owner or user.startswith(owner + "."))
    return False


def violations(module, source, modules, is_pkg=False):
    """The private-name uses of other project modules in `source` (the text of `module`), as strings."""
    tree = ast.parse(source)
    found = []
    bound = {}  # local name -> project module it refers to

    def note(node, what):
        found.append(f"{module}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] not in PACKAGES:
                    continue
                if _private_module_outsider(module, a.name):
                    note(node, f"imports the private module {a.name}")
                if a.asname:
                    bound[a.asname] = a.name
                else:
                    bound[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, is_pkg, node.level, node.module or "")
            if src.split(".")[0] not in PACKAGES:
                continue
            if _private_module_outsider(module, src):
                note(node, f"imports from the private module {src}")
            for a in node.names:
                full = f"{src}.{a.name}"
                if full in modules:  # a submodule
                    if _private_module_outsider(module, full):
                        note(node, f"imports the private module {full}")
                    bound[a.asname or a.name] = full
                elif _private(a.name) and src != module:
                    note(node, f"imports {a.name} from {src}")
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:  # each chain once, from its outer end
            continue
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not (isinstance(base, ast.Name) and base.id in bound):
            continue
        target = bound[base.id]
        # walk outwards through submodules: `clade_tf.torchio.reader._Bad` resolves to reader, then `_Bad`
        for attr in reversed(chain):
            if f"{target}.{attr}" in modules:
                target = f"{target}.{attr}"
                continue
            if _private(attr) and target != module:
                note(node, f"uses {target}.{attr}")
            break
    return found


def test_checker_finds_each_kind_of_private_use():
    mods = {"clade_tf": "", "clade_tf.a": "", "clade_tf.a.b": "", "clade_tf.a._impl": "", "train": ""}
    src = (
        "import clade_tf.a.b\n"
        "from clade_tf.a import b, _helper\n"
        "from clade_tf.a import b as bee\n"
        "from clade_tf.a._impl import thing\n"
        "def f():\n"
        "    return b._x, bee._y, clade_tf.a.b._z, b.public, b.__name__\n"
    )
    got = violations("train", src, mods)
    assert [g.split(": ", 1)[1] for g in got] == [
        "imports _helper from clade_tf.a",
        "imports from the private module clade_tf.a._impl",
        "uses clade_tf.a.b._x",
        "uses clade_tf.a.b._y",
        "uses clade_tf.a.b._z",
    ]
    # within the package that owns it, a private module is shared; a module's own privates are its own
    assert violations("clade_tf.a.b", "from clade_tf.a._impl import thing\nfrom . import _impl\n", mods) == []
    assert violations("clade_tf.a.b", "from . import b\nx = b._own\n", mods) == []
    # a package's __init__ is a module like any other: its submodules' privates are not its own
    assert violations("clade_tf.a", "from .b import _helper\nfrom . import b\nb._x\n", mods, is_pkg=True) == [
        "clade_tf.a:1: imports _helper from clade_tf.a.b", "clade_tf.a:3: uses clade_tf.a.b._x"]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_uses_another_modules_private_names(package):
    modules = project_modules()
    found = []
    for module, path in sorted(modules.items()):
        if module.split(".")[0] != package:
            continue
        with open(path, encoding="utf-8") as f:
            found += violations(module, f.read(), modules, _is_package(module, path))
    assert not found, f"{len(found)} uses of another module's private names:\n" + "\n".join(found)
