"""The package's intra-package import graph has no cycle, lazy (function-level) imports included.

The graph is read from the source with `ast`, without importing anything: every `import` and
`from ... import` statement anywhere in a module (top level, functions, methods) is an edge to
the module it names. `from package import name` is an edge to the submodule `package.name` when
that is a module, else to the package itself (its `__init__`). Importing a submodule also runs
its parent packages' `__init__`, but that is Python's normal package order, not a cycle: those
implicit edges are left out.
"""

import ast
import importlib.util
import os
import pkgutil

import pytest

PACKAGE = 'efficientnetv2'


def package_modules(name, path):
    """{module name: source file} of a package and every module under it, found on disk."""
    modules = {name: os.path.join(path, '__init__.py')}
    for info in pkgutil.iter_modules([path]):
        full = f'{name}.{info.name}'
        if info.ispkg:
            modules.update(package_modules(full, os.path.join(path, info.name)))
        else:
            modules[full] = os.path.join(path, info.name + '.py')
    return modules


def _resolve(module, is_package, node):
    """The absolute module named by an ImportFrom (relative imports included)."""
    if not node.level:
        return node.module
    parts = module.split('.')
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return '.'.join(base + ([node.module] if node.module else []))


def import_graph(modules):
    """{module: set of modules of `modules` it imports anywhere in its source}."""
    graph = {}
    for module, path in modules.items():
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=path)
        is_package = path.endswith('__init__.py')
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                targets = []
                for alias in node.names:
                    sub = f'{base}.{alias.name}'
                    targets.append(sub if sub in modules else base)
            else:
                continue
            edges.update(t for t in targets if t in modules and t != module)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """One cycle as a list [a, b, ..., a], or None."""
    state = {}  # 1: on the current path, 2: done.
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def _package_path():
    spec = importlib.util.find_spec(PACKAGE)  # Locates the package without running it.
    return list(spec.submodule_search_locations)[0]


def test_package_import_graph_has_no_cycle():
    modules = package_modules(PACKAGE, _package_path())
    assert {
        'efficientnetv2.model',
        'efficientnetv2.weights',
        'efficientnetv2.convert',
        'efficientnetv2.train.ema',
    } <= set(modules)
    graph = import_graph(modules)
    # The graph is really read: known edges are present.
    assert 'efficientnetv2.model' in graph['efficientnetv2.weights']
    assert 'efficientnetv2.variables' in graph['efficientnetv2.train.ema']
    cycle = find_cycle(graph)
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_model_package_knows_nothing_of_weight_formats():
    graph = import_graph(package_modules(PACKAGE, _package_path()))
    loaders = {'efficientnetv2.weights', 'efficientnetv2.convert'}
    for name in ('blocks', 'architectures', 'layers', 'model'):
        assert not graph['efficientnetv2.' + name] & loaders, name
    # Inference-side loading does not pull in training code.
    assert not any(m.startswith('efficientnetv2.train') for m in graph['efficientnetv2.weights'])


def test_cycle_detection_on_a_synthetic_graph():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'x': {'x2'}, 'x2': set(), 'y': {'z'}, 'z': {'y'}}) == ['y', 'z', 'y']


@pytest.mark.parametrize('lazy', [False, True])
def test_a_lazy_import_cycle_is_found(tmp_path, lazy):
    """A package whose `a` imports `b` and whose `b` imports `a` (inside a function if lazy)."""
    root = tmp_path / 'pkg'
    (root / 'sub').mkdir(parents=True)
    (root / '__init__.py').write_text('')
    (root / 'sub' / '__init__.py').write_text('')
    (root / 'a.py').write_text('from pkg.sub import b\n')
    body = '    from .. import a\n' if lazy else ''
    (root / 'sub' / 'b.py').write_text(
        'def f():\n' + (body or '    pass\n') + ('' if lazy else 'import pkg.a\n')
    )
    graph = import_graph(package_modules('pkg', str(root)))
    assert graph['pkg.a'] == {'pkg.sub.b'} and graph['pkg.sub.b'] == {'pkg.a'}
    assert find_cycle(graph) == ['pkg.a', 'pkg.sub.b', 'pkg.a']
