#!/usr/bin/env python3
"""Checks that imports between the modules of a crate point one way.

For every crate listed in LAYERS below, this script reads each `.rs` file
under the crate's `src/`, strips comments and string literals, and collects
every path that names a module of the same crate: `crate::a::b`, `super::x`
(relative to the file's module, or to an inline `mod` block), in `use`
declarations and in expressions alike. It then fails when

1. a top-level module imports a top-level module of a *higher* layer (the
   layer lists below, bottom first; modules on the same line share a layer and
   may import each other as long as rule 2 holds);
2. top-level modules import each other in a circle;
3. sibling submodules of one module (e.g. `driver/setup.rs` and
   `driver/submit.rs`) import each other in a circle. A child may use its
   parent's items (`super::Thing`): the parent file is the module's facade and
   is left out of the sibling graph;
4. a top-level module is missing from the layer list (so a new module must be
   placed consciously);
5. a crate depends on a ringwire crate it must not know: `ringwire-proto`
   depends on no ringwire crate; `ringwire-runtime` depends on neither
   `ringwire-proto` nor `ringwire-transports` (it knows io_uring, not the
   wire format).

The crate root (`lib.rs`) re-exports from everywhere and is not a layer.

Usage: .ci/layers.py [repo-root]        (exit status 1 on any violation)
       .ci/layers.py --graph            (also prints each crate's edges)
"""

import os
import re
import sys

# Bottom first. A module may import modules of its own layer or of any layer
# below it, never above. Keep docs/ARCHITECTURE.md ("Module map") in step.
LAYERS = {
    "runtime": [
        # Leaves: raw syscalls, the loom shim, scoped thread-locals, the
        # start-up error type, log-bucketed histograms.
        ["sys", "loom", "scoped", "error", "histogram"],
        # Per-core counters and the process-wide registry of named counters;
        # the stall detector (markers, watchdog, stack capture).
        ["stats", "stall"],
        # Which core this thread is (index, CPU), and its shutdown state.
        ["context"],
        # The io_uring driver: ring set-up, submission, completion dispatch,
        # operation lifecycle, operation types, buffer ring, send pool, the
        # user_data tag space.
        ["driver"],
        # Buffers handed to and from the kernel.
        ["buf"],
        # Cross-thread control queue, wake flag, eventfd, executor registry.
        ["remote"],
        # Tasks and wakers.
        ["executor"],
        # Timers and sockets.
        ["time", "net"],
        # Cross-core rings, doorbells, typed channels, lent buffers.
        ["mailbox"],
        # The event loop of one core.
        ["core"],
        # The metrics endpoint (an HTTP server task on a core).
        ["metrics"],
        # Builder, placement, handles; Ctrl-C.
        ["runtime", "signal"],
    ],
    "proto": [
        # Leaves.
        ["writer", "time", "format"],
        ["mismatch", "close_reason"],
        # The crate's error type: imports only the leaves above.
        ["error"],
        ["header", "message"],
        ["access", "bulk", "control"],
        ["schema"],
        ["hello", "decoder", "encoder", "replay"],
        ["session"],
    ],
}

# Ringwire crates each crate must not depend on (any dependency table).
FORBIDDEN_DEPS = {
    "proto": ["ringwire", "ringwire-runtime", "ringwire-transports", "ringwire-ring"],
    "runtime": ["ringwire", "ringwire-proto", "ringwire-transports"],
}


def strip_code(text):
    """Returns `text` with comments, string and char literals blanked out
    (newlines kept), so that only code remains."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if c == "/" and nxt == "*":
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
            continue
        m = re.match(r'(?:b|c)?r(#*)"', text[i:i + 260]) if c in "bcr" else None
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append("\n" * text.count("\n", i, j))
            out.append('""')
            i = j
            continue
        if c == '"' or (c == "b" and nxt == '"' and (i == 0 or not text[i - 1].isalnum())):
            j = i + (2 if c == "b" else 1)
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j))
            out.append('""')
            i = j + 1
            continue
        if c == "'":
            # A char literal ('x', '\n', '\u{..}') but not a lifetime ('a).
            m = re.match(r"'(?:\\.[^']*|[^\\'])'", text[i:i + 16])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def module_of(src_dir, path):
    """Module path (list of names) of a source file; [] for the crate root."""
    rel = os.path.relpath(path, src_dir)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


# `crate::a::b`, `super::super::x`, and grouped `use` trees: the simple path
# regex below sees `crate::a::{b, c}` as a use of `crate::a` (enough for the
# module graph, which resolves to the longest known module prefix).
PATH_RE = re.compile(r"\b((?:crate|super|self)(?:\s*::\s*(?:super|[A-Za-z_][A-Za-z0-9_]*))*)")
INLINE_MOD_RE = re.compile(r"\bmod\s+([A-Za-z_][A-Za-z0-9_]*)\s*\{")


def references(code, file_mod):
    """Yields module paths (lists of names, absolute from the crate root) that
    the code refers to, resolving `super::`/`self::` against inline modules."""
    # Inline `mod x { ... }` blocks shift what `super` means inside them.
    spans = []  # (start, end, inline module path)
    for m in INLINE_MOD_RE.finditer(code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            if code[j] == "{":
                depth += 1
            elif code[j] == "}":
                depth -= 1
            j += 1
        spans.append((m.start(), j, m.group(1)))

    def base_at(pos):
        inner = list(file_mod)
        for start, end, name in sorted(spans):
            if start <= pos < end:
                inner.append(name)
        return inner

    for m in PATH_RE.finditer(code):
        parts = [p.strip() for p in m.group(1).split("::")]
        if len(parts) < 2 and parts[0] != "crate":
            continue
        if parts[0] == "crate":
            yield parts[1:]
            continue
        base = base_at(m.start())
        if parts[0] == "self":
            yield base + parts[1:]
            continue
        while parts and parts[0] == "super":
            base = base[:-1]
            parts = parts[1:]
        yield base + parts


def known_prefix(path, modules):
    """Longest prefix of `path` that names a module of the crate."""
    for k in range(len(path), 0, -1):
        if tuple(path[:k]) in modules:
            return tuple(path[:k])
    return ()


def sccs(nodes, edges):
    """Strongly connected components (Tarjan), as lists of nodes."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
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
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def cycle_path(comp, edges):
    """One concrete circle through a strongly connected component: the
    shortest way from its first node back to itself."""
    comp_set = set(comp)
    start = sorted(comp)[0]
    prev, queue = {}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ())):
            if w not in comp_set:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return sorted(comp)


def fmt(mod):
    return "::".join(mod) if mod else "crate"


def check_deps(root, crate):
    """Rule 5: forbidden ringwire dependencies in the crate's Cargo.toml."""
    errors = []
    manifest = os.path.join(root, crate, "Cargo.toml")
    section = None
    with open(manifest, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[]")
                continue
            if section is None or "dependencies" not in section:
                continue
            m = re.match(r'^([A-Za-z0-9_-]+)\s*=', line)
            if m and m.group(1) in FORBIDDEN_DEPS.get(crate, ()):
                errors.append(
                    f"{crate}/Cargo.toml [{section}]: depends on {m.group(1)}, "
                    f"which the layering forbids"
                )
    return errors


def check_crate(root, crate, layers, show_graph):
    src_dir = os.path.join(root, crate, "src")
    files = []
    for dirpath, _, names in os.walk(src_dir):
        for name in sorted(names):
            if name.endswith(".rs"):
                files.append(os.path.join(dirpath, name))
    modules = {tuple(module_of(src_dir, p)): p for p in files}
    layer_of = {}
    for i, names in enumerate(layers):
        for name in names:
            layer_of[name] = i

    errors = []
    top_edges = {}   # top-level module -> {top-level module: example file}
    sib_edges = {}   # parent -> {child -> set(child)}
    for mod, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            code = strip_code(f.read())
        for ref in references(code, list(mod)):
            target = known_prefix(ref, modules)
            if not target or not mod:
                continue
            src_top, dst_top = mod[0], target[0]
            if src_top != dst_top:
                top_edges.setdefault(src_top, {}).setdefault(dst_top, path)
                continue
            # Within one top-level module: sibling edges under each common
            # parent (child -> child), ignoring the parent facade itself.
            k = 0
            while k < min(len(mod), len(target)) and mod[k] == target[k]:
                k += 1
            parent = mod[:k]
            if len(mod) > k and len(target) > k:
                a, b = mod[k], target[k]
                sib_edges.setdefault(parent, {}).setdefault(a, set()).add(b)

    rel = lambda p: os.path.relpath(p, root)
    tops = {m[0] for m in modules if m}
    for name in sorted(tops):
        if name not in layer_of:
            errors.append(
                f"{crate}: module `{name}` is not in the layer list of .ci/layers.py; "
                f"place it in a layer"
            )
    for name in sorted(layer_of):
        if name not in tops:
            errors.append(f"{crate}: layer list names `{name}`, which does not exist")
    for src, dsts in sorted(top_edges.items()):
        for dst, path in sorted(dsts.items()):
            if src in layer_of and dst in layer_of and layer_of[dst] > layer_of[src]:
                errors.append(
                    f"{crate}: `{src}` (layer {layer_of[src]}) imports `{dst}` "
                    f"(layer {layer_of[dst]}, above it), e.g. in {rel(path)}"
                )
    plain = {s: set(d) for s, d in top_edges.items()}
    for comp in sccs(tops, plain):
        if len(comp) > 1:
            errors.append(
                f"{crate}: import circle among top-level modules: "
                + " -> ".join(cycle_path(comp, plain))
            )
    for parent, edges in sorted(sib_edges.items()):
        nodes = set(edges) | {b for bs in edges.values() for b in bs}
        for comp in sccs(nodes, edges):
            if len(comp) > 1:
                errors.append(
                    f"{crate}: import circle among the submodules of `{fmt(parent)}`: "
                    + " -> ".join(fmt(parent + (c,)) for c in cycle_path(comp, edges))
                )
    if show_graph:
        print(f"{crate}: module graph (importer -> imported)")
        for i, names in enumerate(layers):
            for name in names:
                dsts = sorted(top_edges.get(name, {}))
                print(f"  [{i}] {name} -> {', '.join(dsts) if dsts else '(nothing)'}")
    return errors


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_graph = "--graph" in sys.argv
    root = args[0] if args else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    root = os.path.abspath(root)
    errors = []
    for crate, layers in LAYERS.items():
        errors += check_crate(root, crate, layers, show_graph)
    for crate in FORBIDDEN_DEPS:
        errors += check_deps(root, crate)
    if errors:
        for e in errors:
            print(f"layers: {e}", file=sys.stderr)
        print(f"layers: {len(errors)} violation(s)", file=sys.stderr)
        return 1
    print("layers: module imports point one way in " + ", ".join(LAYERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
