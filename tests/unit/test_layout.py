"""
The house map stays true: every path C{docs/architecture.md} names exists,
every module of the package is on it, and no module imports one that
imports it back (the picture's "calls go down only"), in the package and in
the benchmarks' parts.  Read from the source tree, so that it checks the
checkout (or the unpacked source release) it runs in.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAP = os.path.join(ROOT, "docs", "architecture.md")
_SKIPPED_DIRECTORIES = {".git", ".venv", ".tox", "build", "dist", "__pycache__", ".pytest_cache"}


@pytest.fixture(scope="module")
def houseMap():
    with open(MAP, encoding="utf-8") as f:
        return f.read()


def _files():
    for directory, subdirectories, names in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories
                             if d not in _SKIPPED_DIRECTORIES and not d.endswith(".egg-info")]
        for name in names:
            yield os.path.relpath(os.path.join(directory, name), ROOT)


def test_every_path_the_map_names_exists(houseMap):
    paths = set(re.findall(r"(?<![\w./-])((?:beatcop|twisted|tests|docs|benchmarks|examples)/[\w./-]*)", houseMap))
    assert len(paths) > 40, sorted(paths)
    missing = sorted(path for path in paths if not os.path.exists(os.path.join(ROOT, path.rstrip("."))))
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    # Bare file names (a part named in a sentence about its directory) exist somewhere.
    basenames = {os.path.basename(path) for path in _files()}
    bare = set(re.findall(r"(?<![\w./-])([\w-]+\.(?:py|md))\b", houseMap))
    assert not sorted(bare - basenames), f"docs/architecture.md names files that do not exist: {sorted(bare - basenames)}"
    # Markdown links to other pages.
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", houseMap)
    assert not [link for link in links if not os.path.exists(os.path.join(ROOT, "docs", link))], links


def test_every_dotted_name_the_map_uses_exists(houseMap):
    """
    C{beatcop.logs.json}, C{python -m beatcop.testing.faults.chaos}: the
    module exists, and what follows it is defined there.
    """
    for dotted in set(re.findall(r"\bbeatcop(?:\.\w+)+", houseMap)):
        parts = dotted.split(".")
        for length in range(len(parts), 0, -1):
            base = os.path.join(ROOT, *parts[:length])
            module = base + ".py" if os.path.isfile(base + ".py") else os.path.join(base, "__init__.py")
            if os.path.isfile(module):
                break
        rest = parts[length:]
        assert len(rest) <= 1, f"docs/architecture.md: {dotted}: no module {'.'.join(parts[:length + 1])}"
        if rest:
            with open(module, encoding="utf-8") as f:
                source = f.read()
            assert re.search(rf"^(?:def|class) {rest[0]}\b|^{rest[0]} =", source, re.M), f"{dotted}: not in {module}"


def test_every_module_is_on_the_map(houseMap):
    package = os.path.join(ROOT, "beatcop")
    missing = []
    for name in sorted(os.listdir(package)):
        path = os.path.join(package, name)
        if name.endswith(".py") and name != "__init__.py" and f"beatcop/{name}" not in houseMap:
            missing.append(f"beatcop/{name}")
        elif os.path.isdir(path) and os.path.exists(os.path.join(path, "__init__.py")):
            if f"beatcop/{name}/" not in houseMap:
                missing.append(f"beatcop/{name}/")
            for directory, _, names in os.walk(path):
                for module in names:
                    if module.endswith(".py") and module != "__init__.py" and module not in houseMap:
                        missing.append(os.path.relpath(os.path.join(directory, module), ROOT))
    assert not missing, f"modules missing from docs/architecture.md (add a line for each): {missing}"


def _imports(path, module, isPackage):
    """
    The absolute names C{module} (at C{path}) imports, wherever in it (an
    import inside a function is a circle all the same).
    """
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if isPackage else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _graph(top, directory):
    modules = {}
    for base, _, names in os.walk(directory):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                dotted = os.path.relpath(path, os.path.dirname(directory))[:-3].replace(os.sep, ".")
                isPackage = dotted.endswith(".__init__")
                modules[dotted[:-len(".__init__")] if isPackage else dotted] = (path, isPackage)
    graph = {}
    for module, (path, isPackage) in modules.items():
        graph[module] = {name for name in _imports(path, module, isPackage) if name in modules and name != module}
        # A package's own __init__ is imported first by each of its modules,
        # not by the modules' choice: not an edge to follow back.
    return graph


def _cycle(graph):
    """
    One import circle (a list of modules), or None.
    """
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {module: WHITE for module in graph}
    stack = []

    def visit(module):
        colour[module] = GREY
        stack.append(module)
        for target in sorted(graph[module]):
            if colour[target] == GREY:
                return stack[stack.index(target):] + [target]
            if colour[target] == WHITE:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        colour[module] = BLACK
        return None

    for module in sorted(graph):
        if colour[module] == WHITE:
            found = visit(module)
            if found:
                return found
    return None


@pytest.mark.parametrize("top,directory", [
    ("beatcop", os.path.join(ROOT, "beatcop")),
    ("benchlib", os.path.join(ROOT, "benchmarks", "benchlib")),
])
def test_no_module_imports_one_that_imports_it_back(top, directory):
    graph = _graph(top, directory)
    assert len(graph) > 5
    cycle = _cycle(graph)
    assert cycle is None, f"an import circle: {' -> '.join(cycle)}"


def test_the_circle_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# What loads without Twisted: the guard's release, beatcop once's first look,
# containment as an unprivileged user with nothing but the package's own
# files (tests/system/test_containment_mode.py), the command-line tool's
# start.
STANDARD_LIBRARY_ONLY = ("beatcop.errors", "beatcop.containment", "beatcop.protocol", "beatcop.guardrelease")


@pytest.mark.parametrize("module", STANDARD_LIBRARY_ONLY)
def test_what_loads_without_twisted(module):
    import subprocess
    import sys

    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib; importlib.import_module(sys.argv[2]);"
        " loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope', 'txredisapi'));"
        " print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", program, ROOT, module],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"{module} loads {out.stdout.strip()}"
