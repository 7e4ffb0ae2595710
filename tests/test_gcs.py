"""Runs on a bucket: ``--workdir=gs://...`` end to end, against a GCS emulator on 127.0.0.1.

The emulator (PyPI ``gcp-storage-emulator``, in memory) serves the GCS JSON API from a thread of
this process on a free loopback port. Every client is pointed at it and every credential lookup is
disarmed, so no test sends a packet anywhere but 127.0.0.1:
  gcsfs (etils.epath's gs:// backend here; pandas and TensorBoard reach it through fsspec):
    ``STORAGE_EMULATOR_HOST``, ``FSSPEC_GCS_TOKEN=anon`` (no credential search), and
    ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (no gRPC bucket-type probe, a 60 s wait here);
  TensorStore (Orbax's array writer): ``TENSORSTORE_GCS_HTTP_URL``;
  google-auth's and TensorStore's credential search: ``GCE_METADATA_HOST``/``_IP``/``_ROOT`` at a
    loopback port nobody listens on, ``NO_GCE_CHECK=true``, ``CLOUDSDK_CONFIG`` an empty folder,
    no ``GOOGLE_APPLICATION_CREDENTIALS``.
Checked with ``strace -f -e trace=connect`` over this whole file (README: "Runs on a bucket").

Not exercised: tf.data reading a gs:// ``data_dir``'s TFRecords, which goes through TensorFlow's own
GCS file system (it has no endpoint setting); the digits come from the local tfds folder.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

# Before anything imports gcsfs: its default class first probes the bucket type over gRPC.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import numpy as np
import pytest

from conftest import REPO, TINY_CONFIG, command_env, free_port, train_command, train_tiny_in_process
from test_train import final_params, losses

pytestmark = pytest.mark.e2e

BUCKET = "resnet-jax-test"
FORBIDDEN_BUCKET = "resnet-jax-forbidden"  # the emulator has no IAM: the fixture answers 403
READ_ONLY_BUCKET = "resnet-jax-read-only"  # listed and read, but not written, by this account


class Emulator:
  """The emulator's address, a gcsfs client of it, and the environment that points runs at it."""

  def __init__(self, url, closed_port, cloudsdk_config):
    import gcsfs.core

    self.url = url
    self._closed = f"127.0.0.1:{closed_port}"
    self._cloudsdk = cloudsdk_config
    self.fs = gcsfs.core.GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)

  def env(self, devices=1, anonymous=True, **extra):
    env = command_env(devices, **extra)
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "FSSPEC_GCS_TOKEN", "FSSPEC_GCS", "FSSPEC_GS"):
      env.pop(name, None)
    env.update(
      STORAGE_EMULATOR_HOST=self.url,
      TENSORSTORE_GCS_HTTP_URL=self.url,
      EPATH_USE_TF="false",
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
      GCE_METADATA_HOST=self._closed,
      GCE_METADATA_IP=self._closed,
      GCE_METADATA_ROOT=self._closed,
      NO_GCE_CHECK="true",
      CLOUDSDK_CONFIG=self._cloudsdk,
    )
    if anonymous:
      env["FSSPEC_GCS_TOKEN"] = "anon"
    return env

  def read_json(self, path):
    self.fs.invalidate_cache()
    return json.loads(self.fs.cat(path))

  def committed_steps(self, checkpoints):
    """Checkpoint steps Orbax has finalised (on GCS it marks them with commit_success.txt)."""
    self.fs.invalidate_cache()
    return sorted(
      int(p.split("/")[-2]) for p in self.fs.glob(f"{checkpoints}/*/commit_success.txt")
    )


def emulator_handler():
  """The emulator's request handler, with the parts of GCS it lacks and the tests rely on.

  gcp-storage-emulator 2026.7.19 ignores generation preconditions and sends no ``x-goog-generation``
  header with a download. TensorStore's OCDBT (Orbax's checkpoint format) depends on both, as on
  GCS: it writes manifests with ``ifGenerationMatch`` and revalidates cached reads with
  ``ifGenerationNotMatch`` (without them a save fails with "Malformed StorageGeneration"). The
  emulator has no IAM, so the handler plays it: one bucket answers 403, as GCS does to an account
  without access; another can be listed but not written; ``testIamPermissions`` grants what each
  bucket allows.
  """
  import re
  import urllib.parse

  from gcp_storage_emulator import server as emulator
  from gcp_storage_emulator.exceptions import NotFound

  object_path = re.compile(r"^(?:/download)?/storage/v1/b/([^/]+)/o/([^/]+)$")
  upload_path = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")

  class Handler(emulator.RequestHandler):
    def send_response(self, code, message=None):
      self._status = code
      super().send_response(code, message)

    def end_headers(self):
      if getattr(self, "_status", None) in (200, 206):
        for name, value in getattr(self, "_generation_headers", {}).items():
          self.send_header(name, value)
      super().end_headers()

    def _json(self, payload, code=200):
      body = json.dumps(payload).encode() if payload is not None else b""
      self.send_response(code)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      self.end_headers()
      self.wfile.write(body)
      return True

    def _answer(self, code, message=""):
      return self._json({"error": {"code": code, "message": message}} if message else None, code)

    def _intercepted(self):
      """Answers a request the emulator would get wrong; False lets the emulator answer."""
      url = urllib.parse.urlsplit(self.path)
      query = urllib.parse.parse_qs(url.query)
      if f"/b/{FORBIDDEN_BUCKET}" in url.path:
        return self._answer(403, "caller does not have storage.objects.list access")
      if url.path.endswith("/iam/testPermissions"):
        wanted = query.get("permissions", [])
        if f"/b/{READ_ONLY_BUCKET}/" in url.path:
          wanted = [p for p in wanted if p in ("storage.objects.list", "storage.objects.get")]
        return self._json(
          {"kind": "storage#testIamPermissionsResponse", "permissions": wanted} if wanted else {}
        )
      if f"/b/{READ_ONLY_BUCKET}" in url.path:
        if self.command == "GET" and url.path.endswith(f"/b/{READ_ONLY_BUCKET}/o"):
          return self._json({"kind": "storage#objects"})
        return self._answer(403, "caller does not have storage.objects.create access")
      found = object_path.match(url.path) or upload_path.match(url.path)
      if not found or (found.re is upload_path and "name" not in query):
        return False  # a multipart upload names its object in the body: no precondition to play
      bucket = found.group(1)
      name = urllib.parse.unquote(found.group(2) if found.re is object_path else query["name"][0])
      try:
        current = self.storage.get_file_obj(bucket, name)
        generation = str(current["generation"])
      except NotFound:
        current, generation = None, "0"
      wanted = query.get("ifGenerationMatch", [None])[0]
      if wanted is not None and wanted != generation:
        return self._answer(412, "ifGenerationMatch: precondition failed")
      unwanted = query.get("ifGenerationNotMatch", [None])[0]
      if unwanted is not None and unwanted == generation and current is not None:
        return self._answer(304)
      if current is not None:
        self._generation_headers = {
          "x-goog-generation": generation,
          "x-goog-metageneration": str(current.get("metageneration", "1")),
        }
      return False

    def do_GET(self):
      if not self._intercepted():
        super().do_GET()

    def do_POST(self):
      if not self._intercepted():
        super().do_POST()

    def do_PUT(self):
      if not self._intercepted():
        super().do_PUT()

    def do_DELETE(self):
      if not self._intercepted():
        super().do_DELETE()

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
      pass

  return Handler


def start_emulator(port):
  """The emulator, in memory, serving 127.0.0.1:``port`` from a thread of this process."""
  import logging

  from gcp_storage_emulator import server as emulator

  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  original, emulator.RequestHandler = emulator.RequestHandler, emulator_handler()
  try:
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
  finally:
    emulator.RequestHandler = original
  # Clients that give up on a request (a killed run) are not errors worth a traceback here.
  server._api._httpd.handle_error = lambda request, address: None
  return server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  # A port bound but not listening: credential lookups sent there are refused at once.
  closed = socket.socket()
  closed.bind(("127.0.0.1", 0))
  port = free_port()
  server = start_emulator(port)
  cloudsdk = tmp_path_factory.mktemp("empty_cloudsdk_config")
  try:
    yield Emulator(f"http://127.0.0.1:{port}", closed.getsockname()[1], str(cloudsdk))
  finally:
    server.stop()
    closed.close()


def start(args, env, **kwargs):
  return subprocess.Popen(
    args,
    env=env,
    cwd=kwargs.pop("cwd", REPO),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
    **kwargs,
  )


def finish(procs, timeout):
  """Waits for every process; kills the rest on failure or timeout. Returns their stderr."""
  try:
    errs = []
    for p in procs:
      _, err = p.communicate(timeout=timeout)
      errs.append(err)
    return errs
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.fixture(scope="module")
def runs(gcs, tmp_path_factory):
  """Runs shared by the tests below, all on the bucket but the reference:

  ``local``     12 uninterrupted steps in a local folder (the reference), trained in this process
                while the bucket run resumes: a process start saved, and the same numbers as the
                command's, bit for bit (one process, one device, the same XLA flags);
  ``bucket``    the same run on the bucket, killed with SIGKILL once a checkpoint is there, then
                started again; then ``--mode=eval`` on it;
  ``finetune``  1 step started from ``bucket`` (``--config.init_from=gs://...``) with a learning
                rate too small to change any float32 parameter: it ends with the parameters it
                loaded.
  """
  local = str(tmp_path_factory.mktemp("local") / "run")
  bucket = f"gs://{BUCKET}/digits"
  finetune = f"gs://{BUCKET}/finetune"
  killed = start(train_command(bucket, "--config.num_train_steps=1000"), gcs.env())
  try:
    deadline = time.time() + 300
    while not gcs.committed_steps(f"{BUCKET}/digits/checkpoints"):
      assert killed.poll() is None, killed.stderr.read()[-3000:]
      assert time.time() < deadline, "no checkpoint reached the bucket in time"
      time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
  finally:
    if killed.poll() is None:
      os.killpg(killed.pid, signal.SIGKILL)
  killed_at = max(gcs.committed_steps(f"{BUCKET}/digits/checkpoints"))
  resumed = start(
    train_command(bucket, "--config.num_train_steps=12", "--config.plot_curves=True"), gcs.env()
  )
  try:
    # After the kill, not before: it takes this process for seconds, and the killed run must be
    # stopped soon after its first checkpoint.
    train_tiny_in_process(local, {"num_train_steps": 12})
  finally:
    (resumed_err,) = finish([resumed], timeout=400)
  assert resumed.returncode == 0, resumed_err[-3000:]
  assert "resumed from gs://" in resumed_err
  procs = [
    start(train_command(bucket, "--mode=eval"), gcs.env()),
    start(
      train_command(
        finetune,
        f"--config.init_from={bucket}",
        "--config.num_train_steps=1",
        "--config.learning_rate=1e-30",
      ),
      gcs.env(),
    ),
  ]
  for proc, err in zip(procs, finish(procs, timeout=400)):
    assert proc.returncode == 0, err[-3000:]
  return {"local": local, "bucket": bucket, "finetune": finetune, "killed_at": killed_at}


# Standard readers, in a fresh process: TensorBoard without TensorFlow (its own gfile reads gs://
# through fsspec; with TensorFlow loaded it would use TF's GCS file system, which cannot be
# pointed at the emulator) and plain Orbax. Prints, per workdir: the TensorBoard train_loss points
# and the latest committed checkpoint step; saves that checkpoint's params to OUT_DIR/<i>.npz.
READERS = r"""
import json, sys, types
import numpy as np
sys.modules["tensorboard.compat.notf"] = types.ModuleType("tensorboard.compat.notf")
from tensorboard.backend.event_processing import event_accumulator
import jax
import orbax.checkpoint as ocp
from etils import epath

out_dir, workdirs = sys.argv[1], sys.argv[2:]
results = []
for i, workdir in enumerate(workdirs):
  events = event_accumulator.EventAccumulator(workdir + "/tensorboard", {"scalars": 0})
  events.Reload()
  checkpoints = epath.Path(workdir) / "checkpoints"
  step = max(int(p.name) for p in checkpoints.iterdir() if (p / "commit_success.txt").exists())
  state = ocp.StandardCheckpointer().restore(checkpoints / str(step) / "state")
  flat = jax.tree_util.tree_flatten_with_path(state["params"])[0]
  np.savez(f"{out_dir}/{i}.npz", **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
  results.append({"tensorboard": [[e.step, e.value] for e in events.Scalars("train_loss")],
                  "step": step})
print(json.dumps(results))
"""


def flat_params(params):
  import jax

  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.fixture(scope="module")
def read_back(gcs, runs, tmp_path_factory):
  """What TensorBoard's event reader and plain Orbax read from the bucket, per run."""
  out = tmp_path_factory.mktemp("readers")
  names = ("bucket", "finetune")
  proc = subprocess.run(
    [sys.executable, "-c", READERS, str(out), *(runs[n] for n in names)],
    env=gcs.env(),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = dict(zip(names, json.loads(proc.stdout.strip().splitlines()[-1])))
  for i, name in enumerate(names):
    with np.load(out / f"{i}.npz") as params:
      results[name]["params"] = dict(params)
  return results


@pytest.fixture(scope="module")
def local_params(runs):
  step, state, _ = final_params(runs["local"])
  assert step == 12
  return flat_params(state["params"])


def test_killed_and_restarted_bucket_run_ends_bit_identical_to_a_local_run(
  gcs, runs, read_back, local_params
):
  import pandas as pd

  assert 3 <= runs["killed_at"] < 12, runs["killed_at"]
  # pandas through fsspec (gcsfs), as a user reads a run on a bucket.
  frame = pd.read_json(
    f"{runs['bucket']}/metrics.jsonl",
    lines=True,
    precise_float=True,  # the default parser rounds the last digit of some doubles
    storage_options={"endpoint_url": gcs.url, "token": "anon"},
  )
  train = frame.dropna(subset=["train_loss"])
  # Every step exactly once, though the killed run may have logged steps past its checkpoint.
  assert train["step"].tolist() == list(range(1, 13))
  assert dict(zip(train["step"], train["train_loss"])) == losses(runs["local"])
  # Plain Orbax reads the checkpoint from the bucket: the local run's parameters, bit for bit.
  assert read_back["bucket"]["step"] == 12
  params = read_back["bucket"]["params"]
  assert params.keys() == local_params.keys()
  for name, value in local_params.items():
    assert np.array_equal(value, params[name]), name
  done = gcs.read_json(f"{BUCKET}/digits/DONE")
  assert done["step"] == 12 and done["eval_count"] == 1000
  assert gcs.read_json(f"{BUCKET}/digits/config.json")["num_train_steps"] == 12
  assert gcs.fs.size(f"{BUCKET}/digits/curves.png") > 10_000


def test_tensorboard_reads_the_scalars_from_the_bucket_once_per_step(runs, read_back):
  points = read_back["bucket"]["tensorboard"]
  assert [s for s, _ in points] == list(range(1, 13))  # the killed run's later points dropped
  reference = losses(runs["local"])
  for step, value in points:
    assert value == np.float32(reference[step])


def test_eval_mode_and_init_from_read_the_bucket(gcs, runs, read_back, local_params):
  evaluated = gcs.read_json(f"{BUCKET}/digits/eval_center_step12.json")
  done = gcs.read_json(f"{BUCKET}/digits/DONE")
  assert evaluated["eval_count"] == 1000
  assert evaluated["eval_top1_error"] == pytest.approx(done["eval_top1_error"], abs=1e-6)
  # The fine-tuned run started from the bucket run's parameters (a fresh init differs by ~1e-1).
  assert read_back["finetune"]["step"] == 1
  started = read_back["finetune"]["params"]
  assert started.keys() == local_params.keys()
  for name, value in local_params.items():
    np.testing.assert_allclose(started[name], value, rtol=0, atol=1e-20, err_msg=name)
  assert gcs.read_json(f"{BUCKET}/finetune/config.json")["init_from"] == runs["bucket"]


def test_two_processes_resume_and_train_on_one_bucket(gcs, runs, tmp_path):
  """``launch/local.sh -n 2``: 2 processes x 1 CPU device, both given the same gs:// workdir, which
  holds the single-process bucket run's checkpoint of step 3 (a checkpoint restores on any process
  count). Both restore it from the bucket, train on and save there; process 0 alone logs."""
  workdir = f"gs://{BUCKET}/two_processes"
  source = f"{BUCKET}/digits/checkpoints/3"
  for path in gcs.fs.find(source):
    gcs.fs.pipe_file(
      path.replace(source, f"{BUCKET}/two_processes/checkpoints/3"), gcs.fs.cat(path)
    )
  assert gcs.committed_steps(f"{BUCKET}/two_processes/checkpoints") == [3]
  logs = tmp_path / "logs"
  proc = start(
    [
      os.path.join(REPO, "launch", "local.sh"),
      "-n",
      "2",
      "--devices-per-process=1",
      "--init-timeout=120",
      f"--python={sys.executable}",
      f"--log-dir={logs}",
      f"--config={TINY_CONFIG}",
      f"--workdir={workdir}",
      "--config.num_train_steps=5",
      "--config.checkpoint_every_steps=2",
      "--config.eval_split=test[:64]",  # what is checked is where things land, not the digits
    ],
    gcs.env(),
  )
  (err,) = finish([proc], timeout=480)
  process_logs = [(logs / f"process_{i}.log").read_text() for i in range(2)]
  assert proc.returncode == 0, err[-2000:] + process_logs[0][-2000:] + process_logs[1][-2000:]
  assert all(f"resumed from {workdir}" in log for log in process_logs), process_logs[1][-2000:]
  gcs.fs.invalidate_cache()
  lines = gcs.fs.cat(f"{BUCKET}/two_processes/metrics.jsonl").decode().splitlines()
  assert [json.loads(line)["step"] for line in lines if "train_loss" in line] == [4, 5]
  assert gcs.read_json(f"{BUCKET}/two_processes/DONE")["eval_count"] == 64
  assert gcs.committed_steps(f"{BUCKET}/two_processes/checkpoints") == [3, 4, 5]
  # Process 0 alone wrote the logs: one TensorBoard event file, not one per process.
  assert len(gcs.fs.ls(f"{BUCKET}/two_processes/tensorboard")) == 1


SWEEP = """
from resnet_jax.sweep import product

CONFIG = {config!r}
OVERRIDES = {{"num_train_steps": 2, "checkpoint_every_steps": 2}}


def get_sweep():
  return product(seed=[0, 1])
"""


def test_sweep_rooted_on_a_bucket_writes_its_summary_there_and_skips_finished_members(
  gcs, tmp_path
):
  sweep_file = tmp_path / "bucket_sweep.py"
  sweep_file.write_text(
    SWEEP.format(config=os.path.join(REPO, "tests", "configs", "tiny_digits.py"))
  )
  root = f"gs://{BUCKET}/sweep"
  command = [sys.executable, "-m", "resnet_jax.main", "sweep", str(sweep_file), f"--workdir={root}"]
  first = subprocess.run(
    [*command, "--parallel=2"], env=gcs.env(), capture_output=True, text=True, timeout=600, cwd=REPO
  )
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  gcs.fs.invalidate_cache()
  summary = gcs.fs.cat(f"{BUCKET}/sweep/summary.csv").decode().splitlines()
  assert len(summary) == 3 and all(",ok," in row for row in summary[1:]), summary
  for seed in (0, 1):
    assert gcs.read_json(f"{BUCKET}/sweep/seed={seed}/DONE")["step"] == 2
    assert "train finished" in gcs.fs.cat(f"{BUCKET}/sweep/seed={seed}/sweep.log").decode()
  again = subprocess.run(
    command, env=gcs.env(), capture_output=True, text=True, timeout=120, cwd=REPO
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert "2 already done, 0 to run" in again.stdout
  gcs.fs.invalidate_cache()
  assert gcs.fs.cat(f"{BUCKET}/sweep/summary.csv").decode().count(",done,") == 2


def test_bad_bucket_inputs_are_one_line_and_create_nothing(gcs, tmp_path):
  cases = {
    "missing": (f"gs://no-such-bucket-{os.getpid()}/run", True, "does not exist"),
    "forbidden": (f"gs://{FORBIDDEN_BUCKET}/run", True, "no permission"),
    "read_only": (f"gs://{READ_ONLY_BUCKET}/run", True, "can read gs://"),
    "no_credentials": (f"gs://{BUCKET}/no_credentials", False, "no Google Cloud credentials"),
  }
  procs, cwds = {}, {}
  for name, (workdir, anonymous, _) in cases.items():
    cwds[name] = tmp_path / name
    cwds[name].mkdir()
    procs[name] = start(train_command(workdir), gcs.env(anonymous=anonymous), cwd=str(cwds[name]))
  cwds["sweep"] = tmp_path / "sweep"
  cwds["sweep"].mkdir()
  procs["sweep"] = start(
    [
      sys.executable,
      "-m",
      "resnet_jax.main",
      "sweep",
      os.path.join(REPO, "launch", "sweeps", "digits_tiny.py"),
      f"--workdir=gs://{FORBIDDEN_BUCKET}/sweep",
    ],
    gcs.env(),
    cwd=str(cwds["sweep"]),
  )
  errs = dict(zip(procs, finish(list(procs.values()), timeout=300)))
  cases["sweep"] = (f"gs://{FORBIDDEN_BUCKET}/sweep", True, "no permission")
  for name, (workdir, _, cause) in cases.items():
    assert procs[name].returncode == 2, (name, errs[name][-3000:])
    last = errs[name].strip().splitlines()[-1]
    assert last.startswith(f"error: --workdir={workdir}: ") and cause in last, (name, last)
    assert not any(cwds[name].iterdir()), name  # nothing local, e.g. no folder named 'gs:'
  gcs.fs.invalidate_cache()
  assert not gcs.fs.exists(f"{BUCKET}/no_credentials")
  assert f"no-such-bucket-{os.getpid()}" not in [b.rstrip("/") for b in gcs.fs.ls("")]
