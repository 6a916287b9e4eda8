"""Print the import cycles between the modules of picnn_ext (every import statement, at module level or in a
function, TYPE_CHECKING blocks included), found with ast; exits 1 when there is one.

    python scripts/import_cycles.py [--pairs]

A package's ``__init__`` counts as a module of its own; ``from pkg import name`` is an edge to the submodule
``pkg.name`` where one exists, else to ``pkg``. ``--pairs`` also lists the pairs of modules that import each
other (the two-module circles of an import drawing).
"""
import ast
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "picnn_ext")


def modules():
    found = {}
    for folder, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                relative = os.path.relpath(os.path.join(folder, name), os.path.dirname(ROOT))[:-3].split(os.sep)
                if relative[-1] == "__init__":
                    relative = relative[:-1]
                found[".".join(relative)] = os.path.join(folder, name)
    return found


def edges(name, path, known):
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def main():
    known = modules()
    graph = {name: set(edges(name, path, known)) for name, path in known.items()}
    # A package's __init__ importing its own submodules (re-exports) is not a circle through the package.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (known[name].endswith("__init__.py") and t.startswith(name + "."))}
    found = cycles(graph)
    for component in found:
        print("cycle:", " <-> ".join(component))
    if "--pairs" in sys.argv:
        for a in sorted(graph):
            for b in sorted(graph[a]):
                if a < b and a in graph[b]:
                    print("pair:", a, "<->", b)
    print(f"{len(known)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycle(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
