"""The one way a command fails: one ``error: ...`` line on stderr and exit status 2.

A leaf: it imports nothing of ours, so that the front door, process start-up (`runtime`) and the
distributed runtime's join watchdog (`distributed`) can all end a process the same way without
importing each other.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

EXIT_STATUS = 2


def exit_with_error(message, status: int = EXIT_STATUS) -> NoReturn:
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
