"""The layout's rules, read from the imports (ast): one folder per design on a shared core.

A design folder imports only the shared parts and itself, never another design; nothing
shared imports a design; no module imports itself back through a cycle, and no shared
package depends on another in both directions.
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DESIGNS = ("then", "hrsa", "hrrm", "dcm", "latentem")


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for base, pkg in ((ROOT / "memjax", "memjax"), (ROOT / "kernels", "memjax.kernels")):
    for f in base.rglob("*.py"):
      rel = f.relative_to(base).with_suffix("").parts
      if rel[-1] == "__init__":
        rel = rel[:-1]
      mods[".".join((pkg,) + rel)] = f
  return mods


def _imports(mods) -> dict[str, set[str]]:
  """Every memjax module each module imports, lazy (in-function) imports included."""
  graph = {}
  for name, path in mods.items():
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
          base = ".".join(parts + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                   for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in mods:      # `from pkg import name`: the module, else its package
          t = t.rpartition(".")[0]
        if t and t != name and t != "memjax":
          out.add(t)
    graph[name] = out
  return graph


def _part(module: str) -> str:
  """'then', 'hrsa', ... for a design module; 'shared:<package>' otherwise."""
  sub = module.split(".")[1] if module.count(".") else ""
  return sub if sub in DESIGNS else f"shared:{sub}"


MODS = _modules()
GRAPH = _imports(MODS)


def test_the_graph_is_read():
  assert "memjax.core.loop" in GRAPH and "memjax.then.system" in GRAPH
  assert "memjax.core.system" in GRAPH["memjax.then.system"]
  assert "memjax.kernels.local_attention_reference" in GRAPH["memjax.layers.local_attention"]


def test_designs_import_only_shared_parts_and_themselves():
  bad = [(m, t) for m, ts in GRAPH.items() for t in ts
         if _part(m) in DESIGNS and _part(t) in DESIGNS and _part(t) != _part(m)]
  assert not bad, f"a design imports another design: {bad}"


def test_nothing_shared_imports_a_design():
  bad = [(m, t) for m, ts in GRAPH.items() for t in ts
         if _part(m).startswith("shared") and _part(t) in DESIGNS]
  assert not bad, f"shared code imports a design: {bad}"


def test_no_import_cycles():
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = 1
    for t in sorted(GRAPH.get(m, ())):
      if state.get(t) == 1:
        cycles.append(stack[stack.index(t):] + [t])
      elif t not in state:
        visit(t, stack + [t])
    state[m] = 2

  for m in sorted(GRAPH):
    if m not in state:
      visit(m, [m])
  assert not cycles, f"import cycles: {cycles}"


def test_shared_packages_are_layered():
  deps = {}
  for m, ts in GRAPH.items():
    for t in ts:
      a, b = _part(m), _part(t)
      if a != b and a.startswith("shared") and b.startswith("shared"):
        deps.setdefault(a, set()).add(b)
  both = sorted((a, b) for a in deps for b in deps[a] if a in deps.get(b, ()) and a < b)
  assert not both, f"shared packages importing each other: {both}"
