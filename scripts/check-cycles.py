#!/usr/bin/env python3
"""Import cycles between the modules of src/.

At every level of the module tree, the children of one module are nodes,
and A -> B when any file inside A names anything inside B (`crate::…`,
`super::…` paths, in `use` lines or inline). A strongly connected set of
more than one sibling is a cycle. A parent and its own children are not
compared (a `mod.rs` that declares and re-exports its children is the
usual shape). Exits 1 and prints each cycle when there is one.

It also checks the layering that `src/lib.rs` documents under "# Layout":
a top-level module may only name modules listed before it there, and
every top-level module must be listed.

    scripts/check-cycles.py [src]
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
ROOT = os.path.normpath(ROOT)


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


PATH = re.compile(r"\b(crate|super)((?:::\w+)+)")
GROUP = re.compile(r"\b(crate|super)((?:::\w+)*)::\{([^;]*?)\}", re.S)


def references(module, text):
    """Module paths (tuples) that `module`'s file text names."""
    out = set()

    def resolve(head, rest):
        parts = [p for p in rest.split("::") if p]
        base = [] if head == "crate" else list(module[:-1])
        return tuple(base + parts)

    for m in GROUP.finditer(text):
        prefix = resolve(m.group(1), m.group(2))
        for item in re.split(r"[,\s]+", m.group(3)):
            item = item.strip().split(" as ")[0].strip()
            if item and item not in ("self", "*"):
                out.add(prefix + tuple(p for p in item.split("::") if p and p != "{"))
            elif item == "self":
                out.add(prefix)
    for m in PATH.finditer(GROUP.sub("", text)):
        out.add(resolve(m.group(1), m.group(2)))
    return out


def check_layout(edges, top):
    """Every top-level edge points up the list of lib.rs's "# Layout"."""
    lib = os.path.join(ROOT, "lib.rs")
    if not os.path.exists(lib):
        return False
    with open(lib, encoding="utf-8") as fh:
        text = fh.read()
    section = text.split("# Layout", 1)[-1].split("\n\n", 1)[0]
    order = re.findall(r"^//! - \[`(\w+)`\]", section, flags=re.M)
    rank = {name: i for i, name in enumerate(order)}
    failed = False
    for name in sorted(top - set(rank) - {"lib", "main"}):
        if (name,) in edges or any(name == b[0] for bs in edges.values() for b in bs):
            print(f"layout: src/{name} is not listed in src/lib.rs's # Layout")
            failed = True
    for a, bs in sorted(edges.items()):
        if len(a) != 1 or a[0] not in rank:
            continue
        for b in sorted(bs):
            if len(b) == 1 and b[0] in rank and rank[b[0]] > rank[a[0]]:
                print(f"layout: {a[0]} uses {b[0]}, which src/lib.rs lists after it")
                failed = True
    if not failed:
        print(f"layering holds: {' < '.join(order)}")
    return failed


def main():
    modules = {}
    for dirpath, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                with open(path, encoding="utf-8") as fh:
                    modules[module_of(path)] = strip_comments(fh.read())
    known = set(modules)

    def owner(path):
        """The longest known module that is a prefix of `path`."""
        for n in range(len(path), 0, -1):
            if path[:n] in known:
                return path[:n]
        return None

    edges = {}
    for module, text in modules.items():
        for ref in references(module, text):
            target = owner(ref)
            if target is None or target == module:
                continue
            # Compare at the level where the two part ways.
            n = 0
            while n < min(len(module), len(target)) and module[n] == target[n]:
                n += 1
            if n == len(module) or n == len(target):
                continue  # a parent and its own descendant
            a, b = module[: n + 1], target[: n + 1]
            edges.setdefault(a, set()).add(b)

    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    failed = check_layout(edges, {m[0] for m in known if m})

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    if not sccs:
        print(f"no import cycles among the modules of {ROOT}")
        return 1 if failed else 0
    for comp in sccs:
        names = sorted("::".join(c) for c in comp)
        print("import cycle: " + " <-> ".join(names))
        for a in sorted(comp):
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"    {'::'.join(a)} -> {'::'.join(b)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
