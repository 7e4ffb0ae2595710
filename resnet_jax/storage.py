"""Where runs live: local folders or bucket URLs (``gs://BUCKET/...``), through ``etils.epath``.

Every location a user gives (workdirs, ``init_from``, sweep roots, analysis ``--out``, bench
``--jsonl``) goes through ``location()``, so a bucket URL works wherever a folder does. Orbax and
tfds use the same ``epath`` layer; Orbax's arrays go through TensorStore's own ``gs://`` driver.

Buckets are reached through fsspec's gcsfs (``EPATH_USE_TF=false``), not TensorFlow's file system:
one client, configured the fsspec way (``FSSPEC_GCS_TOKEN``, ``STORAGE_EMULATOR_HOST``), for every
file this program writes. etils reads that choice from the environment, once, at the first bucket
path; ``resnet_jax.runtime.setup`` makes it (a library user without it gets etils' default, which
is TensorFlow's file system where TensorFlow is installed). ``check_access`` turns the ways a bucket location fails (no
credentials, no such bucket, no permission to list it, or, for a location that will be written, no
permission to write) into one ``StorageError`` line naming the path and the cause, before anything
is written anywhere.
"""

from __future__ import annotations

import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike]
# Object stores: no append, no rename, no directories; an upload replaces the object atomically.
_OBJECT_STORE_SCHEMES = ("gs://", "s3://", "az://", "hf://")


# What writing a run needs: new objects, and replacing or removing old ones (Orbax's temporary
# checkpoint folders, rewritten results files).
WRITE_PERMISSIONS = ("storage.objects.create", "storage.objects.delete")


class StorageError(ValueError):
  """A user-given location that cannot be used: no credentials, no such bucket, no permission."""


def location(path: PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: bucket URLs as given, local paths made absolute (``~`` too)."""
  text = os.fspath(path)
  if is_object_store(text):
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def is_object_store(path: PathLike) -> bool:
  """Whether ``path`` is a bucket URL: its files cannot be appended to, only rewritten whole."""
  return os.fspath(path).startswith(_OBJECT_STORE_SCHEMES)


def check_access(path: PathLike, purpose: str, *, write: bool = False) -> epath.Path:
  """Fails early, with one line, if the bucket behind ``path`` cannot be used; local paths pass.

  ``purpose`` names the location in the message (e.g. ``"--workdir"``). Checks, in order, that
  credentials exist (unless anonymous access is configured, ``FSSPEC_GCS_TOKEN=anon``), that the
  bucket exists, that its objects can be listed and, with ``write``, that this account may create
  and delete objects in it (GCS's testIamPermissions, which needs no permission itself), so a
  read-only bucket fails now rather than at the first checkpoint. Creates nothing, here or in the
  bucket (gcsfs's ``makedirs`` would create a missing bucket, so this runs before any of them).
  """
  where = location(path)
  text = os.fspath(where)
  if not text.startswith("gs://"):
    return where
  bucket, _, prefix = text[len("gs://") :].partition("/")
  if not bucket:
    raise StorageError(f"{purpose}={text}: no bucket name; use gs://BUCKET/PATH")
  fs = _gcs_filesystem()
  if _token_setting() != "anon":
    _check_credentials(text, purpose)
  try:
    fs.call("GET", "b/{}/o", bucket, prefix=prefix.rstrip("/"), maxResults=1, json_out=True)
  except FileNotFoundError:
    raise StorageError(
      f"{purpose}={text}: bucket gs://{bucket} does not exist; create it "
      f"(gcloud storage buckets create gs://{bucket}) or fix the name"
    ) from None
  except Exception as e:  # noqa: BLE001 - gcsfs raises OSError/HttpError with the HTTP status
    raise StorageError(f"{purpose}={text}: {_describe_failure(e, bucket)}") from None
  if write:
    missing = _missing_write_permissions(fs, bucket)
    if missing:
      raise StorageError(
        f"{purpose}={text}: this account can read gs://{bucket} but not write to it (lacks "
        f"{', '.join(missing)}); grant it roles/storage.objectAdmin on the bucket, or choose a "
        f"bucket it can write to"
      )
  return where


def _missing_write_permissions(fs, bucket: str) -> list[str]:
  """The WRITE_PERMISSIONS this account lacks on ``bucket``; [] when GCS cannot say."""
  try:
    answer = fs.call(
      "GET",
      "b/{}/iam/testPermissions",
      bucket,
      permissions=list(WRITE_PERMISSIONS),
      json_out=True,
    )
  except Exception:  # noqa: BLE001 - a server without the IAM API: the first write will tell
    return []
  granted = set(answer.get("permissions", ()))
  return [p for p in WRITE_PERMISSIONS if p not in granted]


def _describe_failure(error: Exception, bucket: str) -> str:
  status = getattr(error, "code", None)
  text = " ".join(str(error).split())
  if status == 401 or "401" in text or "Anonymous caller" in text:
    return (
      f"not authenticated for gs://{bucket} ({text[:160]}); run "
      f"`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
    )
  if status == 403 or text.startswith("Forbidden"):
    return (
      f"no permission to use gs://{bucket} ({text.splitlines()[0][:160]}); grant this account "
      f"roles/storage.objectAdmin on the bucket"
    )
  return f"cannot reach gs://{bucket}: {type(error).__name__}: {text[:200]}"


def _check_credentials(text: str, purpose: str):
  import google.auth  # pylint: disable=g-import-not-at-top
  from google.auth import exceptions  # pylint: disable=g-import-not-at-top

  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError:
    raise StorageError(
      f"{purpose}={text}: no Google Cloud credentials found; run `gcloud auth "
      f"application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, or run on a Cloud VM "
      f"with a service account"
    ) from None


def _token_setting():
  import fsspec  # pylint: disable=g-import-not-at-top

  return fsspec.config.conf.get("gcs", {}).get("token") or fsspec.config.conf.get("gs", {}).get(
    "token"
  )


def _gcs_filesystem():
  """The gcsfs client epath uses for gs:// (the same instance: fsspec caches by arguments)."""
  import fsspec  # pylint: disable=g-import-not-at-top

  return fsspec.filesystem("gcs", finalize_on_close=True)


def write_atomically(path: PathLike, data: Union[str, bytes]):
  """Replaces the file at ``path`` whole: readers see the old or the new content, never a part.

  Local files go through a temporary file and a rename; an object store's upload is already
  atomic (the new object appears only once complete), and it has no rename.
  """
  target = location(path)
  mode = "wb" if isinstance(data, bytes) else "w"
  if is_object_store(target):
    with target.open(mode) as f:
      f.write(data)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / (target.name + ".tmp")
  with tmp.open(mode) as f:
    f.write(data)
  tmp.replace(target)


def append_text(path: PathLike, text: str):
  """Adds ``text`` at the end of the file at ``path`` (made if missing, its folder too).

  A file system appends; an object store cannot, so the object is rewritten whole with the text
  added (fine for the small results files this is for, e.g. ``bench --jsonl``).
  """
  target = location(path)
  if is_object_store(target):
    write_atomically(target, (target.read_text() if target.exists() else "") + text)
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  with target.open("a") as f:
    f.write(text)
