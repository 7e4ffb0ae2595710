"""The rules of the house (docs/DEVELOPING.md, with their reasons), read off the source so that
they keep holding.

- A function that does not fit on a screen (80 lines) is two functions; no class over 250 lines.
- No module does anything global on import: environment writes, log filters, hooks, fd redirection
  and ``sys.modules`` edits happen only in ``resnet_jax/runtime.py``, called once by the front door,
  and in ``resnet_jax/failure.py``, on a failed command's way out.
- A package ``__init__.py`` exports; logic lives in named modules, none of them a ``utils``.
- One flag family (absl): no argparse. Developer tools live in ``benchmarks/``, not in the package.
- ``models`` and ``data`` import nothing else of ours; nothing imports ``main``.
- No import circle among the package's modules; an import inside a function counts too.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = pathlib.Path(REPO) / "resnet_jax"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250
# The modules allowed to change process-wide state, only inside functions they are asked to run:
# process set-up, and the one way a command fails (it points fd 2 at /dev/null on its way out).
RUNTIME = PACKAGE / "runtime.py"
FAILURE = PACKAGE / "failure.py"


def _tree(path):
  return ast.parse(path.read_text(), filename=str(path))


def _rel(path):
  return str(path.relative_to(REPO))


def _spans(kind):
  for path in SOURCES:
    for node in ast.walk(_tree(path)):
      if isinstance(node, kind):
        yield path, node, node.end_lineno - node.lineno + 1


def test_no_function_is_longer_than_a_screen():
  long = [
    f"{_rel(p)}:{n.lineno} {n.name} ({lines} lines)"
    for p, n, lines in _spans((ast.FunctionDef, ast.AsyncFunctionDef))
    if lines > MAX_FUNCTION_LINES
  ]
  assert not long, long


def test_no_class_is_longer_than_250_lines():
  long = [
    f"{_rel(p)}:{n.lineno} {n.name} ({lines} lines)"
    for p, n, lines in _spans(ast.ClassDef)
    if lines > MAX_CLASS_LINES
  ]
  assert not long, long


def _dotted(node) -> str:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    parts.append(node.id)
  return ".".join(reversed(parts))


GLOBAL_WRITES = (
  "os.environ.setdefault",
  "os.environ.update",
  "os.putenv",
  "os.dup2",
  "sys.modules.__setitem__",
  "addFilter",
  "sys.unraisablehook",
  "sys.excepthook",
)


def _global_effects(path):
  """Calls and assignments anywhere in a module that change process-wide state."""
  found = []
  for node in ast.walk(_tree(path)):
    if isinstance(node, ast.Call):
      name = _dotted(node.func)
      if name in GLOBAL_WRITES or name.endswith(".addFilter"):
        found.append(f"{_rel(path)}:{node.lineno} {name}()")
    elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
      targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
      for target in targets:
        base = target.value if isinstance(target, ast.Subscript) else target
        name = _dotted(base)
        if name in ("os.environ", "sys.modules", "sys.unraisablehook", "sys.excepthook"):
          found.append(f"{_rel(path)}:{node.lineno} {name} written")
  return found


def test_process_wide_state_changes_only_in_runtime():
  found = [f for p in SOURCES if p not in {RUNTIME, FAILURE} for f in _global_effects(p)]
  assert not found, found


def test_runtime_does_nothing_on_import():
  module_level = [
    n for n in _tree(RUNTIME).body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
  ]
  assert not module_level, [ast.unparse(n) for n in module_level]


def test_package_inits_only_export():
  logic = []
  for init in PACKAGE.rglob("__init__.py"):
    for node in _tree(init).body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        logic.append(f"{_rel(init)}:{node.lineno} {node.name}")
  assert not logic, logic


def test_no_argparse_and_no_developer_tools_in_the_package():
  offenders = [_rel(p) for p in SOURCES if "argparse" in p.read_text()]
  assert not offenders, offenders
  for tool in ("bench_conv.py", "data/throughput.py"):
    assert not (PACKAGE / tool).exists(), f"{tool} belongs in benchmarks/"


def test_no_utils_module():
  grab_bags = [_rel(p) for p in SOURCES if p.stem in ("utils", "util", "helpers", "misc")]
  assert not grab_bags, grab_bags


def _imports(path):
  for node in ast.walk(_tree(path)):
    if isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
    elif isinstance(node, ast.Import):
      yield from (a.name for a in node.names)


@pytest.mark.parametrize("package", ["models", "data"])
def test_models_and_data_import_nothing_else_of_ours(package):
  own = f"resnet_jax.{package}"
  bad = [
    f"{_rel(p)} imports {m}"
    for p in (PACKAGE / package).rglob("*.py")
    for m in _imports(p)
    if m.startswith("resnet_jax") and not m.startswith(own)
  ]
  assert not bad, bad


def _module_name(path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def _dependencies(path) -> set[str]:
  """The package's modules that ``path`` imports anywhere: at the top, or lazily in a function
  (a lazy import still needs the module; it only moves the moment, and so hides a circle)."""
  name = _module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(_tree(path)):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # from . import x, from ..models import y
        base = f"{package.rsplit('.', node.level - 1)[0]}.{base}".rstrip(".")
      # `from P import x` imports the module P.x where there is one, else a name defined in P.
      found.update(
        f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
      )
  return {m for m in found if m in MODULES and m != name}


def _import_graph() -> dict[str, set[str]]:
  """Module -> the modules it imports. Python's own import of a parent package on the way is not an
  edge: a package's ``__init__`` exports its modules, and they import each other."""
  return {name: _dependencies(path) for name, path in MODULES.items()}


def _circles(graph) -> list[str]:
  """Each import circle a depth-first walk of ``graph`` closes, as 'a -> b -> a'."""
  circles, done, path = [], set(), []

  def visit(module):
    path.append(module)
    for dependency in sorted(graph[module]):
      if dependency in path:
        circles.append(" -> ".join(path[path.index(dependency) :] + [dependency]))
      elif dependency not in done:
        visit(dependency)
    path.pop()
    done.add(module)

  for module in sorted(graph):
    if module not in done:
      visit(module)
  return circles


def test_no_import_circle():
  graph = _import_graph()
  # runtime joins the distributed runtime from inside `start`: lazy imports are edges too.
  assert "resnet_jax.distributed" in graph["resnet_jax.runtime"]
  circles = _circles(graph)
  assert not circles, circles


def test_nothing_imports_the_entry_point():
  bad = [module for module, imports in _import_graph().items() if "resnet_jax.main" in imports]
  assert not bad, bad


# What the libraries we build on do to the process when they load is theirs, not ours: jax sets
# TF_CPP_MIN_LOG_LEVEL, TensorFlow a handful of variables of its own. The probe loads them first and
# then checks that our modules, loaded and used, add nothing.
_GLOBAL_STATE = (
  "(dict(os.environ), sys.unraisablehook, list(logging.root.handlers),"
  " list(logging.getLogger('absl').filters), list(absl_logging.get_absl_handler().filters))"
)


def test_importing_the_models_changes_nothing_global():
  probe = (
    "import os, sys, logging, tempfile\n"
    "import jax, flax, optax\n"
    "from absl import logging as absl_logging\n"
    f"before = {_GLOBAL_STATE}\n"
    "from resnet_jax.models import get_model\n"
    "assert 'tensorflow' not in sys.modules, 'importing the models loaded TensorFlow'\n"
    f"assert {_GLOBAL_STATE} == before, 'importing the models changed the process'\n"
    # TensorFlow as the front door loads it (without its eager Keras import: seconds here).
    "from resnet_jax import runtime; runtime.import_tensorflow()\n"
    "import tensorflow_datasets, orbax.checkpoint, etils.epath\n"
    f"before = {_GLOBAL_STATE}\n"
    "import resnet_jax.train.loop, resnet_jax.storage, resnet_jax.checkpoint, resnet_jax.data\n"
    "ckpt = resnet_jax.checkpoint.Checkpointer(tempfile.mkdtemp()); ckpt.close()\n"
    f"after = {_GLOBAL_STATE}\n"
    "changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))\n"
    "assert not changed, changed\n"
    "assert after[1:] == before[1:], (before[1:], after[1:])\n"
  )
  # No environment from the test runner, so that nothing set up front hides a write.
  result = subprocess.run(
    [sys.executable, "-c", probe],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO, "HOME": "/tmp"},
  )
  assert result.returncode == 0, result.stderr[-2000:]
