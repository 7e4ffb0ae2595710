"""Process set-up, done once by the front door (``resnet_jax.main``) and by the tests.

Importing any module of the package changes nothing global. Everything a process needs before it
trains -- environment, log filters, quieting TensorFlow, the compile cache, the CPU device split,
the allocator setting, ``jax.distributed.initialize`` -- is an explicit call made here.
"""

from __future__ import annotations

import os
import sys


def exit_with_error(message, status: int = 2):
  """Writes ``error: message`` as the process's last stderr line and exits at once.

  Whatever other threads print afterwards (Orbax and TensorStore tracebacks after a failed read, the
  runtime's own logs while it fails) would bury the line, so stderr is pointed at /dev/null first;
  whichever thread gets here first writes the one line.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  real_stderr = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  os.write(real_stderr, f"error: {message}\n".encode())
  os._exit(status)  # pylint: disable=protected-access
