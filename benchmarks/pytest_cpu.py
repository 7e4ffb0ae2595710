"""A pytest plugin that adds up each test's CPU time: the test process's and its reaped children's.

Where `make test`'s CPU goes, test by test (docs/benchmarks.md, "2026-12-07 evening")::

    PYTHONPATH=benchmarks PYTEST_ADDOPTS="-p pytest_cpu" RESNET_JAX_CPU_CENSUS=/tmp/census make test

Each pytest process (every xdist worker, and the controller) writes ``<worker>.tsv`` into
``RESNET_JAX_CPU_CENSUS``: a ``TOTAL`` line (its own CPU, its children's), then one line per test:
CPU in all, the worker's, the children's, wall seconds, test id. Children count once they are
waited for, as ``subprocess.run`` and ``Popen.wait`` do; a grandchild counts when its parent waited
for it.
"""

import os
import resource
import time

import pytest

_rows = []


def _cpu():
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  del nextitem
  own, children = _cpu()
  start = time.time()
  yield
  own_after, children_after = _cpu()
  own, children = own_after - own, children_after - children
  _rows.append((own + children, own, children, time.time() - start, item.nodeid))


def pytest_sessionfinish(session):
  del session
  folder = os.environ.get("RESNET_JAX_CPU_CENSUS")
  if not folder:
    return
  os.makedirs(folder, exist_ok=True)
  own, children = _cpu()
  name = os.environ.get("PYTEST_XDIST_WORKER", "controller")
  with open(os.path.join(folder, f"{name}.tsv"), "w") as f:
    f.write(f"TOTAL\t{own:.1f}\t{children:.1f}\n")
    for total, own, children, wall, nodeid in _rows:
      f.write(f"{total:.2f}\t{own:.2f}\t{children:.2f}\t{wall:.2f}\t{nodeid}\n")
