"""``--config``: an experiment's config file for ``train``; for ``eval``, ``predict`` and ``export``
the run's own config.json, the record of how it was trained.

Either way ``--config.key=value`` overrides apply on top. ``--config=NAME`` names a file in
``configs/`` (the wheel ships them): the front door makes it a path before the flags are parsed.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from resnet_jax.train import config as config_lib

# configs/digits.py, which the wheel ships too: `train` and a sweep member without a config file run
# it outside a checkout.
DEFAULT_CONFIG_FILE = config_lib.default_config_file()

_OF_A_RUN = (
  "The config to read the run with. Default: the run's own config.json, the record of how it was "
  "trained; --config.key=value overrides apply on top of it (e.g. --config.eval_split=train). "
  "--config=FILE replaces config.json (e.g. for converted weights, which have none); overrides "
  "then apply on top of FILE."
)


def define_experiment_config(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  """``train``'s ``--config``: the experiment to train, by default the built-in digits one."""
  _define(
    flag_values,
    args,
    "Experiment config file (configs/NAME.py, or NAME); override keys with --config.key=value. "
    "Default: the built-in digits experiment. With --mode=eval, the run's own config.json (as "
    "`resnet-jax eval`).",
  )


def define_config_of_a_run(flag_values: flags.FlagValues, args: Sequence[str]) -> None:
  """The ``--config`` of a command that reads a trained run back (eval, predict, export)."""
  _define(flag_values, args, _OF_A_RUN)
  flag_values["config"].default_as_str = "the run's config.json"


def _define(flag_values: flags.FlagValues, args: Sequence[str], help_string: str) -> None:
  # The default file gives the keys (and their types) every --config.key=value override is
  # parsed against, given --config=FILE or not.
  config_flags.DEFINE_config_file(
    "config",
    DEFAULT_CONFIG_FILE,
    help_string,
    lock_config=True,
    flag_values=flag_values,
    sys_argv=["", *config_lib.with_config_files(args)],  # which --config.key overrides to define
  )


def of_a_run(
  flag_values: flags.FlagValues, workdir: str, *, required: bool = True
) -> ml_collections.ConfigDict | None:
  """The config to read run ``workdir`` with: ``--config=FILE`` if given, else the run's
  config.json; the ``--config.key=value`` overrides on top either way. With ``required=False``,
  None when neither a file nor an override was given (the reader then reads the run itself).

  Reads config.json with :mod:`resnet_jax.runs`, which loads TensorFlow: call it after
  ``runtime.start``.
  """
  config_flag = flag_values["config"]
  if config_flag.present:
    return flag_values.config
  overrides = config_flags.get_override_values(config_flag)
  if not overrides and not required:
    return None
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top

  config = runs.read_config(workdir)
  config.update_from_flattened_dict(overrides)
  return config
