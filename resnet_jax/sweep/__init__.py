"""Sweeps: a Python file of config overrides -> members -> run locally, or print launch commands.

A sweep file is Python, like a config::

    # launch/sweeps/degradation.py
    from resnet_jax.sweep import product, zipped

    CONFIG = "configs/cifar10_resnet20.py"  # optional; default: the built-in digits recipe
    OVERRIDES = {"num_train_steps": 64000}  # optional; every member, not part of the names

    def get_sweep():
      return product(model=["plain20", "resnet20"], seed=[0, 1])          # 4 members
      # zipped(model=[...], learning_rate=[...])  pairs values up (equal lengths)
      # product(zipped(...), seed=[0, 1]), sweep_a + sweep_b  also work

``get_sweep()`` returns a list of dicts ``{config_key: value}``; a dotted key such as
``"model_overrides.shortcut"`` goes in a positional dict: ``product({"model_overrides.shortcut":
["A", "B"]}, seed=[0])``. The key ``config`` picks a member's config file
(``product(config=["configs/cifar10_plain20.py", ...], seed=[0])``; names start ``config=STEM``).

Each member runs ``python -m resnet_jax.main --config=CONFIG --workdir=ROOT/NAME --config.k=v ...``
(argument lists, never a shell); with no CONFIG it leaves ``--config`` out, so the training program
uses the package's default experiment (``resnet_jax.train.config.digits``), which an installed wheel
has too.

The arguments after ``--`` (``resnet-jax sweep S.py --workdir=ROOT -- --config.num_train_steps=5``)
go to every member and are part of what a member is: a member whose workdir holds a run started
with other arguments (or another config file or ``OVERRIDES``; ``sweep_member.json`` records them)
is refused with one line before anything runs, rather than counted as done; give another ROOT or
the arguments it ran with. ``summary.csv``'s ``arguments`` column holds what each member ran with
(its overrides, then the arguments after ``--``). ``resnet-jax sweep`` checks every member as
``train`` checks its input (config file, keys, flags, model) before anything prints or runs.

``spec``: the file format and member names; ``runner``: local runs; ``results``: a member's results
and the summary; ``emit``: launch commands (no JAX, no TensorFlow at import).
"""

from resnet_jax.sweep.emit import EMIT_KINDS, MemberCheck, emit_commands, print_commands
from resnet_jax.sweep.results import SUMMARY_COLUMNS, read_results, write_summary
from resnet_jax.sweep.runner import LOG_FILE, MEMBER_FILE, run_sweep
from resnet_jax.sweep.spec import (
  DEFAULT_CONFIG,
  Member,
  format_value,
  load_sweep,
  member_name,
  product,
  zip_,
  zipped,
)

__all__ = [
  "DEFAULT_CONFIG",
  "EMIT_KINDS",
  "LOG_FILE",
  "MEMBER_FILE",
  "SUMMARY_COLUMNS",
  "Member",
  "MemberCheck",
  "emit_commands",
  "format_value",
  "load_sweep",
  "member_name",
  "print_commands",
  "product",
  "read_results",
  "run_sweep",
  "write_summary",
  "zip_",
  "zipped",
]
