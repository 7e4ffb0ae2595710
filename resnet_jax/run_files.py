"""The names of a run's files, in a module light enough for anything to import.

:mod:`resnet_jax.runs` owns what these files mean and :mod:`resnet_jax.metrics` writes and reads
``metrics.jsonl``; both take the names from here, and so does ``resnet-jax sweep``, whose
``--emit`` and summaries must start without JAX or TensorFlow (``runs`` imports both).
"""

CHECKPOINT_DIR = "checkpoints"  # Orbax checkpoints, one folder per saved step
CONFIG_FILE = "config.json"  # the config the run was trained with
DONE_FILE = "DONE"  # the final metrics, written after the last step
METRICS_FILE = "metrics.jsonl"  # one JSON object per line: {"step": int, <name>: value, ...}
