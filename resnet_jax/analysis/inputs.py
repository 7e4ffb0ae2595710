"""What the checkpoint analyses read: which runs, their initial variables, and test images.

A run's config and trained variables come from :func:`resnet_jax.runs.load`.
"""

from __future__ import annotations

import os
from typing import Sequence

from resnet_jax import storage


def run_dirs(runs_dir: str | None = None, workdirs: Sequence[str] = ()) -> list[str]:
  """Explicit workdirs, plus every subdirectory of ``runs_dir`` holding a config.json."""
  from resnet_jax import runs  # pylint: disable=g-import-not-at-top (no JAX for the flags)

  out = [w for w in workdirs if w]
  if runs_dir:
    for path in sorted(storage.check_access(runs_dir, "--runs").iterdir()):
      if runs.is_run(path):
        out.append(os.fspath(path))
  if not out:
    raise FileNotFoundError(
      f"no training workdirs given (--workdirs) or found in --runs={runs_dir}"
    )
  return out


def init_variables(model, config, image_shape):
  """The variables training starts from (same key as ``train_and_evaluate``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  v = model.init(
    jax.random.key(config.seed), jnp.zeros((1, *image_shape), jnp.float32), train=False
  )
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def image_batch(config, *, split: str = "eval", size: int = 256):
  """``(images [N, H, W, C], labels [N])``: the first ``size`` examples of the train or eval split
  with the center (no-augmentation) transform, as numpy."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from resnet_jax import data as data_lib  # pylint: disable=g-import-not-at-top

  split_name = (config.eval_split if split == "eval" else config.train_split) or None
  if split_name is None:
    info = data_lib.dataset_info(config.dataset)
    split_name = info.eval_split if split == "eval" else info.train_split
  images, labels = [], []
  n = 0
  for batch in data_lib.eval_batches(
    config.dataset,
    global_batch_size=min(size, 256),
    method="center",
    split=split_name,
    data_dir=config.data_dir or None,
    image_size=config.image_size or None,
    local_device_count=1,
    normalization=config.get("normalization", "channel"),  # centred as the run trained
    mean_split=config.get("train_split") or None,
  ):
    mask = batch["mask"].reshape(-1)
    images.append(batch["image"].reshape((-1,) + batch["image"].shape[3:])[mask])
    labels.append(batch["label"].reshape(-1)[mask])
    n += len(images[-1])
    if n >= size:
      break
  return np.concatenate(images)[:size], np.concatenate(labels)[:size]


def across_devices(batch: Sequence, replicated: Sequence) -> tuple[list, list]:
  """``batch`` (arrays or trees of them) split along their first axis over the local devices and
  ``replicated`` (trees) copied to each, so that a jitted evaluation runs every device's share at
  once: the analyses' data parallelism on a CPU split into one device per core (every oneDNN call
  is single-threaded, ``models.onednn.conv``). With one device, or a first axis the device count
  does not divide, both are returned on the default device, as before."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  devices = jax.local_devices()
  rows = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(list(batch))}
  if len(devices) == 1 or any(r % len(devices) for r in rows):
    return [jax.device_put(b) for b in batch], [jax.device_put(r) for r in replicated]
  mesh = Mesh(np.asarray(devices), ("batch",))
  split, copy = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  return [jax.device_put(b, split) for b in batch], [jax.device_put(r, copy) for r in replicated]
