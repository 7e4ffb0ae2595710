"""Every door refuses bad input the same way (issue 34): exit status 2, one `error:` line on stderr,
no traceback, and the workdir and output paths byte-identical before and after.

One table, one subprocess per row. Rows whose refusal comes before TensorFlow loads are the quick
tier; rows that need TensorFlow, or the tiny trained run the module makes once, are `slow`.
Placeholders in a row's arguments: {tmp} (the row's own folder, hashed whole), {file} (a file in
it), {bad_py} (a Python file with a syntax error), {run} (the trained run, hashed too), {images}
(a folder of two 28x28 PNGs, hashed too), {tiny} (the tests' tiny digits config), {scratch} (a
folder that is not watched).
"""

import hashlib
import os

import numpy as np
import pytest

from conftest import TINY_CONFIG, train_tiny_in_process
from test_main import _run

SLOW = pytest.mark.slow


def _row(name, *args, words="", slow=False, run=False):
  """A refusal: ``args`` of ``python -m resnet_jax.main``; ``words`` must be in its error line.
  ``run``: it reads the module's trained run (slow: the run is trained once, in seconds)."""
  marks = [SLOW] if slow or run else []
  return pytest.param(args, words, run, id=name, marks=marks)


ROWS = [
  # train
  _row("train-workdir-is-a-file", "train", "--workdir={file}", words="is a file"),
  _row("train-workdir-under-a-file", "train", "--workdir={file}/run", words="a file"),
  _row(
    "train-config-syntax-error", "train", "--config={bad_py}", "--workdir={tmp}/w", words="line"
  ),
  _row("train-config-missing", "train", "--config={tmp}/none.py", "--workdir={tmp}/w"),
  _row("train-flagfile-missing", "train", "--flagfile={tmp}/flags.txt", "--workdir={tmp}/w"),
  _row(
    "train-config-key-typo",
    "train",
    "--workdir={tmp}/w",
    "--config.learning_rat=0.1",
    words="unknown key config.learning_rat; did you mean config.learning_rate?",
  ),
  _row(
    "train-nested-key-typo",
    "train",
    "--workdir={tmp}/w",
    "--config.model_overrides.widht_multiplier=2",
    words="config.model_overrides.width_multiplier?",
  ),
  _row(
    "train-config-value-of-wrong-type",
    "train",
    "--workdir={tmp}/w",
    "--config.learning_rate=abc",
  ),
  _row(
    "train-negative-width",
    "train",
    "--workdir={tmp}/w",
    "--config.model_overrides.width_multiplier=-1",
    words="width_multiplier",
  ),
  _row(
    "train-zero-blocks",
    "train",
    "--workdir={tmp}/w",
    "--config.model_overrides.stage_sizes=(1,0,1)",
  ),
  _row("train-unknown-model", "train", "--workdir={tmp}/w", "--config.model=resnet21"),
  _row("train-unknown-flag", "train", "--workdir={tmp}/w", "--learning_rate=0.1"),
  _row("train-positional", "train", "--workdir={tmp}/w", "extra"),
  _row("train-no-such-command", "trian", "--workdir={tmp}/w", words="did you mean train"),
  _row(
    "train-missing-init-from",
    "train",
    "--config={tiny}",
    "--workdir={tmp}/w",
    "--config.init_from={tmp}/nothing",
    words="init_from",
  ),
  _row(
    "train-shortcut-e",
    "train",
    "--config={tiny}",
    "--workdir={tmp}/w",
    "--config.model_overrides.shortcut=E",
    words="shortcut",
  ),
  _row(
    "train-resume-with-another-schedule",
    "train",
    "--config={tiny}",
    "--workdir={run}",
    "--config.learning_rate=0.2",
    words="learning_rate 0.05 -> 0.2",
    run=True,
  ),
  _row(
    "train-offline-dataset",
    "train",
    "--config={tiny}",
    "--workdir={tmp}/w",
    "--config.dataset=cifar10",
    "--config.data_dir={scratch}/data",
    words="cifar10",
    slow=True,
  ),
  # eval
  _row("eval-no-workdir", "eval", words="--workdir"),
  _row("eval-not-a-run", "eval", "--workdir={tmp}/w", words="config.json"),
  _row("eval-bad-method", "eval", "--workdir={tmp}/w", "--eval_method=five_crop"),
  _row("eval-missing-step", "eval", "--workdir={run}", "--eval_step=999", words="3", run=True),
  # models
  _row("models-unknown-flag", "models", "--family=cifar"),
  # bench (helper R2)
  _row(
    "bench-batch-size-0", "bench", "--model=resnet20", "--batch_size=0", "--jsonl={tmp}/b.jsonl"
  ),
  _row(
    "bench-override-not-a-number",
    "bench",
    "--model=resnet20",
    "--override=width_multiplier=abc",
    "--jsonl={tmp}/b.jsonl",
  ),
  _row(
    "bench-jsonl-unwritable",
    "bench",
    "--model=resnet20",
    "--batch_size=2",
    "--image_size=32",
    "--steps=1",
    "--jsonl={file}/bench.jsonl",
  ),
  _row("bench-unknown-model", "bench", "--model=resnet21", "--jsonl={tmp}/b.jsonl"),
  # convert (helper R2)
  _row(
    "convert-into-a-run",
    "convert",
    "--model=resnet18",
    "--src={file}",
    "--workdir={run}",
    words="--workdir",
    run=True,
  ),
  # predict (helper R2)
  _row(
    "predict-output-is-a-directory",
    "predict",
    "--workdir={run}",
    "{images}",
    "--output={tmp}",
    words="--output",
    run=True,
  ),
  _row("predict-no-such-image", "predict", "--workdir={run}", "{tmp}/none.png", run=True),
  # export (helper R2)
  _row("export-not-a-run", "export", "--workdir={tmp}/w", "--out={tmp}/out"),
  _row("eval-workdir-is-a-file", "eval", "--workdir={file}", words="config.json"),
  _row("export-bad-format", "export", "--workdir={tmp}/w", "--format=onnx", "--out={tmp}/out"),
  # sweep (helper R3)
  _row("sweep-syntax-error", "sweep", "{bad_py}", "--workdir={tmp}/sweep"),
  _row("sweep-missing-file", "sweep", "{tmp}/none.py", "--workdir={tmp}/sweep"),
  _row(
    "sweep-unknown-key-emit",
    "sweep",
    "{tmp}/typo_sweep.py",
    "--workdir={tmp}/sweep",
    "--emit=slurm",
    words="learning_rat",
  ),
  _row(
    "sweep-unknown-model-local",
    "sweep",
    "{tmp}/model_sweep.py",
    "--workdir={tmp}/sweep",
    words="resnet21",
  ),
  # analyze
  _row("analyze-unknown-analysis", "analyze", "nosuch", "--out={tmp}/o"),
  _row("analyze-no-name", "analyze", "--out={tmp}/o"),
  _row(
    "analyze-degradation-depth-no-net-has",
    "analyze",
    "degradation",
    "--out={tmp}/o",
    "--depths=20,21",
    words="plain21",
  ),
  _row(
    "analyze-degradation-seeds-not-numbers",
    "analyze",
    "degradation",
    "--out={tmp}/o",
    "--seeds=a,b",
    words="e.g. 0,1,2",
  ),
]


def _tree_digest(root) -> str:
  """Every path under ``root`` with its bytes: equal digests, an untouched tree."""
  digest = hashlib.sha256()
  if not os.path.exists(root):
    return "absent"
  for folder, dirs, files in sorted(os.walk(root)):
    dirs.sort()
    digest.update(f"d {os.path.relpath(folder, root)}\n".encode())
    for name in sorted(files):
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        digest.update(f"f {os.path.relpath(path, root)} ".encode() + f.read())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A finished 3-step tiny digits run, made once and in this process (the rows read it; how it
  was trained is not their subject). Its last checkpoint: step 3."""
  workdir = str(tmp_path_factory.mktemp("doors") / "run")
  train_tiny_in_process(workdir, {"num_train_steps": 3})
  return workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Two 28x28 grey PNGs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  folder = tmp_path_factory.mktemp("images")
  for i in range(2):
    pixels = np.random.default_rng(i).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"digit{i}.png")
  return str(folder)


def _inputs(tmp) -> dict[str, str]:
  """The row's own folder with its bad files."""
  (tmp / "a_file").write_text("not a directory\n")
  (tmp / "bad.py").write_text("def get_config(:\n  return None\n")
  (tmp / "typo_sweep.py").write_text(
    "from resnet_jax.sweep import product\n\n\ndef get_sweep():\n"
    "  return product(learning_rat=[0.1, 0.2])\n"
  )
  (tmp / "model_sweep.py").write_text(
    "from resnet_jax.sweep import product\n\n\ndef get_sweep():\n"
    "  return product(model=['resnet20', 'resnet21'])\n"
  )
  return {"tmp": str(tmp), "file": str(tmp / "a_file"), "bad_py": str(tmp / "bad.py")}


@pytest.mark.parametrize("args, words, needs_run", ROWS)
def test_a_refusal_is_one_line_exit_2_and_touches_nothing(
  args, words, needs_run, tmp_path, request, images
):
  tmp = tmp_path / "row"
  tmp.mkdir()
  values = {**_inputs(tmp), "images": images, "tiny": TINY_CONFIG, "run": ""}
  values["scratch"] = str(tmp_path)  # not watched: a dataset's download folder, say
  if needs_run or any("{run}" in a for a in args):
    values["run"] = request.getfixturevalue("trained_run")
  argv = [a.format(**values) for a in args]
  watched = [str(tmp), images] + ([values["run"]] if values["run"] else [])
  before = [_tree_digest(p) for p in watched]

  proc = _run(*argv, timeout=180)

  lines = proc.stderr.strip().splitlines()
  shown = f"{argv}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
  assert proc.returncode == 2, shown
  assert "Traceback" not in proc.stderr, shown
  assert len(lines) == 1 and lines[0].startswith("error: "), shown
  assert words in lines[0], shown
  assert [_tree_digest(p) for p in watched] == before, f"touched: {shown}"
