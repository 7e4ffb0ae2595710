"""predict and export: the same probabilities as the eval step and model.apply, from one artifact.

One tiny digits run is trained once for the module; one random torchvision-layout ResNet-18 is
converted once (ImageNet architecture and 1,000 classes, served at a 32 px crop to stay fast).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import jax_utils
from PIL import Image

from conftest import REPO, command_env, train_tiny_in_process
from resnet_jax import checkpoint as checkpoint_lib
from resnet_jax import data as data_lib
from resnet_jax import runs, serving
from resnet_jax import weights
from resnet_jax.data import augment
from resnet_jax.serving import export as export_lib
from resnet_jax.serving import predict as predict_lib
from resnet_jax.train import loop
from resnet_jax.train import steps

pytestmark = pytest.mark.e2e

TOL = 1e-5


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A tiny digits run (3 steps) and its ServingModel. It trains with ``digits4`` (4 px pad, no
  flips), not the dataset's default (2 px), so its test-time views must follow the run's own."""
  workdir = str(tmp_path_factory.mktemp("digits_run"))
  train_tiny_in_process(
    workdir,
    {
      "train_augment": "digits4",
      "stop_after_steps": 3,  # ends with a checkpoint at step 3, without plotting curves
      "eval_split": "test[:16]",  # the run's own final eval: a token 16 images
    },
  )
  return workdir, serving.load(workdir)


@pytest.fixture(scope="module")
def converted_resnet18(tmp_path_factory):
  """A random torchvision-layout ResNet-18 state dict through ``weights.convert``, served at 32 px."""
  expected = checkpoint_lib.flatten(weights.expected_tree("resnet18"))
  rng = np.random.default_rng(0)
  state_dict = {}
  for path, leaf in expected.items():
    key, transform = weights._torch_key(path[0], path[1:], ndim=len(leaf.shape))
    shape = weights._torch_shape(leaf.shape, transform)
    if key.endswith("running_var") or key.endswith("bn1.weight") or key.endswith("bn2.weight"):
      value = 0.5 + rng.random(shape)
    elif transform == "conv":  # variance-preserving, so logits stay O(1) through the depth
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    else:
      value = 0.2 * rng.standard_normal(shape)
    state_dict[key] = value.astype(np.float32)
  workdir = str(tmp_path_factory.mktemp("resnet18"))
  weights.convert(state_dict, "resnet18", workdir)
  return serving.load(workdir, image_size=32)


def _reference(model, images_uint8):
  """The data package's eval transform (TF) then model.apply in inference mode and the softmax."""
  transform = augment.eval_transform(
    "center",
    image_size=model.image_size,
    resize_size=model.resize_size,
    mean=model.mean,
    std=model.std,
    channels=model.channels,
  )
  x = np.concatenate([transform(tf.constant(im)).numpy() for im in images_uint8])
  logits = jax.jit(lambda v, x: model.model.apply(v, x, train=False))(model.variables, x)
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def _check_both_formats(model, tmp_path, images, input_size=None, batches=(1, 7)):
  """StableHLO (deserialized, called) and SavedModel (tf.saved_model.load) at each batch size in
  ``batches`` (each one compiles the artifact again in both formats: the digits run checks batch 1
  beside 7, the other models only 7)."""
  want = _reference(model, images)
  assert np.ptp(want, axis=0).max() > 1e-3  # the output depends on the image
  hlo_dir = export_lib.export_model(
    model, "stablehlo", str(tmp_path / "hlo"), input_size=input_size
  )
  exported = jax.export.deserialize((tmp_path / "hlo" / export_lib.ARTIFACT).read_bytes())
  sidecar = json.loads((tmp_path / "hlo" / export_lib.SIDECAR).read_text())
  assert hlo_dir == str(tmp_path / "hlo")
  assert sidecar["labels"] == list(model.labels) and sidecar["channels"] == model.channels
  assert sidecar["checkpoint_step"] == model.step
  assert sidecar["input"]["shape"][1:] == [*images.shape[1:3], model.channels]
  tf_dir = export_lib.export_model(model, "savedmodel", str(tmp_path / "tf"), input_size=input_size)
  assert tf_dir == str(tmp_path / "tf" / "1")
  with tf.device("/CPU:0"):
    loaded = tf.saved_model.load(tf_dir)
    signature = loaded.signatures["serving_default"]
    names = tf.io.read_file(loaded.class_names.asset_path).numpy().decode().splitlines()
    assert [n.split("\t")[0] for n in names] == list(model.labels)
    for n in batches:
      got_hlo = np.asarray(exported.call(jnp.asarray(images[:n])))
      got_tf = signature(images=tf.constant(images[:n]))["probabilities"].numpy()
      np.testing.assert_allclose(got_hlo, want[:n], atol=TOL, rtol=0)
      np.testing.assert_allclose(got_tf, want[:n], atol=TOL, rtol=0)
  return sidecar


def _digit_images(n, offset=0):
  source = data_lib.load_source("digits", "test", train=False)
  return source.images[offset : offset + n], source.labels[offset : offset + n]


def test_exports_match_model_apply_for_the_digits_run(digits_run, tmp_path):
  _, model = digits_run
  images, _ = _digit_images(7)
  sidecar = _check_both_formats(model, tmp_path, images)
  assert sidecar["labels"] == [str(i) for i in range(10)] and sidecar["resize_size"] is None
  views = {"method": "center", "crop": 28, "resize": None, "pad": 0, "flip": False}
  assert sidecar["eval_views"] == views
  # TF Serving's layout: a second export is the next version beside the first.
  assert export_lib.export_model(model, "savedmodel", str(tmp_path / "tf")) == str(
    tmp_path / "tf" / "2"
  )


def test_export_command_writes_one_artifact_for_cpu_cuda_and_tpu_that_matches_predict(
  digits_run, tmp_path
):
  """Issue 34: ``export --format=stablehlo`` lowers for every platform the README names (each its
  own form, as test_lowering shows per platform), and on this cpu the artifact gives predict's
  probabilities."""
  workdir, model = digits_run
  out = tmp_path / "hlo"
  line = serving.export_command(workdir, "stablehlo", str(out))
  assert line.endswith(f"as stablehlo for cpu/cuda/tpu -> {out}")
  exported = jax.export.deserialize((out / export_lib.ARTIFACT).read_bytes())
  assert exported.platforms == ("cpu", "cuda", "tpu")
  sidecar = json.loads((out / export_lib.SIDECAR).read_text())
  assert sidecar["platforms"] == ["cpu", "cuda", "tpu"]
  images, _ = _digit_images(5, offset=200)
  for i, im in enumerate(images):
    Image.fromarray(im[..., 0]).save(tmp_path / f"{i}.png")
  predictions, failed = serving.classify(model, [str(tmp_path)], top_k=10)
  assert not failed and len(predictions) == len(images)
  got = np.asarray(exported.call(jnp.asarray(images)))
  for i, p in enumerate(sorted(predictions, key=lambda p: p.path)):
    np.testing.assert_allclose(got[i], _probabilities(p), atol=TOL, rtol=0)
  best, probability = predictions[0].top[0]
  assert f"{probability:8.4f}  {model.names[best]}" in serving.format_table(model, predictions)


def test_exports_match_model_apply_for_a_converted_resnet18(converted_resnet18, tmp_path):
  model = converted_resnet18
  assert model.labels[0] == "n01440764" and model.names[0] == "tench, Tinca tinca"
  assert model.num_classes == 1000 and (model.image_size, model.resize_size) == (32, 37)
  # A non-square input exercises the resize of the shorter side (45 -> 37) and the centre crop.
  images = np.random.default_rng(1).integers(0, 256, (7, 45, 60, 3), dtype=np.uint8)
  sidecar = _check_both_formats(model, tmp_path, images, input_size=(45, 60), batches=(7,))
  assert sidecar["names"][1] == "goldfish, Carassius auratus"


def test_converted_checkpoint_predicts_imagenet_names(converted_resnet18, tmp_path):
  rng = np.random.default_rng(2)
  Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
  Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(tmp_path / "gray.png")
  predictions, failed = serving.classify(converted_resnet18, [str(tmp_path)], top_k=3)
  assert not failed and [os.path.basename(p.path) for p in predictions] == ["a.jpg", "gray.png"]
  imagenet_names = set(data_lib.readable_class_names("imagenet2012"))
  for p in predictions:
    record = p.to_json(converted_resnet18)
    assert len(record["top_k"]) == 3
    assert all(t["name"] in imagenet_names and t["label"].startswith("n") for t in record["top_k"])


def _eval_step_probs(model, n):
  """Per-example probabilities of the first ``n`` test digits through the eval path of training:
  data.eval_batches + the pmapped steps.predict_step."""
  predict = jax.pmap(lambda s, b: steps.predict_step(s, b, model=model.model), axis_name=steps.AXIS)
  state = jax_utils.replicate(predict_lib._inference_state(model))
  batch = next(iter(data_lib.eval_batches("digits", global_batch_size=n, local_device_count=1)))
  return np.asarray(predict(state, batch)).reshape(n, -1)


def test_predict_cli_on_pngs_agrees_with_the_eval_step(digits_run, tmp_path):
  workdir, model = digits_run
  n = 12
  images, _ = _digit_images(n)
  folder = tmp_path / "pngs"
  (folder / "nested").mkdir(parents=True)
  paths = []
  for i, im in enumerate(images):
    path = folder / ("nested" if i % 2 else "") / f"{i:02d}.png"
    Image.fromarray(im[..., 0]).save(path)
    paths.append(str(path))
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
  # Smaller than the 28 px crop: resized up and classified, named, not the whole run's failure.
  small = folder / "nested" / "small.png"
  Image.fromarray(np.asarray(Image.fromarray(images[0][..., 0]).resize((20, 20)))).save(small)
  out = tmp_path / "predictions.jsonl"
  proc = subprocess.run(
    [sys.executable, "-m", "resnet_jax.main", "predict", f"--workdir={workdir}", str(folder)]
    + ["--top_k=10", f"--output={out}"],
    env=command_env(2),  # batches split over two devices
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  summary = "13 images classified, 1 unreadable skipped, 1 smaller than the crop resized up"
  assert f"{summary}; JSON lines in {out}" in proc.stderr
  # Each problem once, by name; nothing of TensorFlow's; the table went to the file, not the terminal.
  assert proc.stderr.count("broken.png") == 1 and "rendezvous" not in proc.stderr
  assert f"resized: {small}: 20x20 is smaller than the 28 px crop" in proc.stderr
  assert proc.stdout == ""
  records = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
  assert records.pop(str(small))["resized_from"] == [20, 20]
  assert len(records) == n and not (tmp_path / "predictions.jsonl.partial").exists()
  want = _eval_step_probs(model, n)
  for i, path in enumerate(paths):
    top = records[path]["top_k"]
    assert top[0]["index"] == int(np.argmax(want[i]))
    got = np.zeros(10)
    got[[t["index"] for t in top]] = [t["probability"] for t in top]
    np.testing.assert_allclose(got, want[i], atol=TOL, rtol=0)
    assert "resized_from" not in records[path]


def test_predict_converts_rgb_and_rgba_to_the_models_one_channel(digits_run, tmp_path):
  _, model = digits_run
  (digit,), _ = _digit_images(1, offset=500)
  gray = digit[..., 0]
  Image.fromarray(gray).save(tmp_path / "gray.png")
  Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
  Image.fromarray(np.stack([gray] * 3 + [np.full_like(gray, 255)], -1)).save(tmp_path / "rgba.png")
  predictions, failed = serving.classify(model, [str(tmp_path)], top_k=10)
  assert not failed and len(predictions) == 3
  probs = [dict(p.top) for p in predictions]
  for other in probs[1:]:
    assert max(abs(other[c] - probs[0][c]) for c in range(10)) < 1e-3


def test_bad_input_is_one_line_and_exit_2_and_leaves_nothing(digits_run, tmp_path):
  workdir, model = digits_run
  empty = tmp_path / "empty"
  empty.mkdir()
  # Through the command: absl refuses the format before anything loads (exit 2, one line).
  proc = subprocess.run(
    [sys.executable, "-m", "resnet_jax.main", "export", f"--workdir={workdir}", "--format=onnx"]
    + [f"--out={tmp_path / 'x'}"],
    env=command_env(1),
    capture_output=True,
    text=True,
    timeout=120,
    cwd=REPO,
  )
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(lines) == 1 and "stablehlo" in lines[0], proc.stderr
  # The others are ServingErrors (ValueErrors: main prints their one line and exits 2).
  with pytest.raises(serving.ServingError, match=f"no checkpoint in {empty}: pass the --workdir"):
    serving.predict_command(lambda: serving.load(str(empty)), [str(tmp_path)])
  with pytest.raises(serving.ServingError, match="--format='onnx': choose one of stablehlo"):
    serving.export_command(workdir, "onnx", str(tmp_path / "x"))
  assert sorted(os.listdir(tmp_path)) == ["empty"]

  # Unwritable for any user, root included: a path below a regular file.
  blocker = tmp_path / "a_file"
  blocker.write_text("keep")
  for fmt in export_lib.FORMATS:
    with pytest.raises(serving.ServingError, match="writable"):
      export_lib.export_model(model, fmt, str(blocker / "model"))
  with pytest.raises(serving.ServingError, match="writable"):
    serving.predict_command(lambda: model, [str(tmp_path)], output=str(blocker / "p.jsonl"))
  # An existing folder as --output: refused before the model loads, not after classifying.
  with pytest.raises(serving.ServingError, match="is a folder; give a file path"):
    serving.predict_command(lambda: pytest.fail("loaded"), [str(tmp_path)], output=str(empty))
  assert sorted(os.listdir(tmp_path)) == ["a_file", "empty"] and blocker.read_text() == "keep"
  # An existing StableHLO path is never overwritten; nothing readable is an error, not an empty run.
  (tmp_path / "taken").write_text("keep")
  with pytest.raises(serving.ServingError, match="already exists"):
    export_lib.export_model(model, "stablehlo", str(tmp_path / "taken"))
  assert (tmp_path / "taken").read_text() == "keep"
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "a.png").write_text("not an image")
  with pytest.raises(serving.ServingError, match="no image could be read"):
    serving.predict_command(lambda: model, [str(tmp_path / "junk")], output=None)


def _probabilities(prediction: predict_lib.Prediction) -> np.ndarray:
  got = np.zeros(10)
  got[[c for c, _ in prediction.top]] = [q for _, q in prediction.top]
  return got


def test_predict_and_export_ten_crop_have_evals_error_on_digit_files(digits_run, tmp_path):
  """Issue 33: ``predict --eval_method=ten_crop`` over test digits written as PNG files errs as
  ``eval --eval_method=ten_crop`` does on the same digits -- per image, the same probabilities --
  and so does the exported function (the tf and jnp views agree on other input sizes too:
  test_data's test_eval_and_export_apply_the_same_views). Serving once mirrored every view (8.0 %
  against eval's 3.0 % on the digits run, whose net never saw a mirrored digit), and eval once
  padded by the dataset's 2 px, not this digits4 run's 4."""
  _, model = digits_run
  assert model.eval_views("ten_crop") == augment.EvalViews("ten_crop", 28, pad=4, flip=False)
  n = 60
  images, labels = _digit_images(n)
  for i, im in enumerate(images):
    Image.fromarray(im[..., 0]).save(tmp_path / f"{i:03d}.png")
  predictions, failed = serving.classify(model, [str(tmp_path)], top_k=10, method="ten_crop")
  assert not failed and len(predictions) == n
  got = np.stack([_probabilities(p) for p in sorted(predictions, key=lambda p: p.path)])
  # eval's own path: the run's config through the training program's Evaluator.
  config = model.config.copy_and_resolve_references()
  config.eval_split = f"test[:{n}]"
  evaluator = loop.Evaluator(config, model.model)
  state = evaluator.par.replicate(predict_lib._inference_state(model))
  want = np.concatenate(
    [
      np.asarray(evaluator._p_predict(state, b)).reshape(-1, 10)[b["mask"].reshape(-1)]
      for b in evaluator._batches("ten_crop")
    ]
  )
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  result = evaluator(state, "ten_crop")
  assert result["eval_count"] == n
  assert np.mean(got.argmax(-1) != labels) == pytest.approx(result["eval_top1_error"], abs=1e-9)
  exported = export_lib.export_stablehlo(model, "ten_crop", (28, 28))
  np.testing.assert_allclose(np.asarray(exported.call(images)), want, atol=TOL, rtol=0)


def test_a_run_trained_with_onednn_exports_portably_with_predicts_numbers(tmp_path):
  """oneDNN's convolutions are custom calls jax.export cannot serialize: the artifact of a run
  trained with them computes its convolutions with lax.conv, and agrees with predict (which runs
  the run as trained) to fp32 rounding."""
  from resnet_jax.models import onednn  # pylint: disable=g-import-not-at-top

  if onednn.load() is None:
    pytest.skip(f"oneDNN kernel unavailable: {onednn.unavailable_reason()}")
  workdir = str(tmp_path / "run")
  train_tiny_in_process(
    workdir,
    {"model_overrides.conv_impl": "onednn", "stop_after_steps": 3, "eval_split": "test[:16]"},
  )
  out = tmp_path / "hlo"
  # `export --format=stablehlo` in this process (the command's door, exit codes and one-line
  # errors, is test_bad_input_...'s; a process start here cost 5.7 s of imports).
  line = serving.export_command(workdir, "stablehlo", str(out))
  assert line.endswith(f"as stablehlo for cpu/cuda/tpu -> {out}")
  exported = jax.export.deserialize((out / export_lib.ARTIFACT).read_bytes())
  # The program without its source locations (which, traced in this process, name this test).
  program = "\n".join(
    line for line in exported.mlir_module().splitlines() if not line.startswith("#loc")
  )
  assert "onednn" not in program
  assert "stablehlo.convolution" in program
  model = serving.load(workdir)
  assert model.model.conv_impl == "onednn"
  images, _ = _digit_images(6, offset=100)
  for i, im in enumerate(images):
    Image.fromarray(im[..., 0]).save(tmp_path / f"{i}.png")
  predictions, failed = serving.classify(model, [str(tmp_path)], top_k=10)
  assert not failed and len(predictions) == len(images)
  got = np.asarray(exported.call(jnp.asarray(images)))
  for i, p in enumerate(sorted(predictions, key=lambda p: p.path)):
    want = np.zeros(10)
    want[[c for c, _ in p.top]] = [q for _, q in p.top]
    np.testing.assert_allclose(got[i], want, atol=TOL, rtol=0)


def test_a_run_trained_on_the_per_pixel_mean_is_served_centred_on_it(digits_run, tmp_path):
  # config.normalization='pixel_mean' (the paper's preprocessing): predict, export and the eval
  # pipeline all subtract the training split's mean image, not the per-channel constants.
  workdir, _ = digits_run
  config = runs.read_config(workdir)
  config.normalization = "pixel_mean"
  model = serving.load(workdir, config=config)
  image = data_lib.input_mean("digits", "pixel_mean")
  assert np.asarray(model.mean).shape == (28, 28, 1)
  np.testing.assert_array_equal(model.mean, image)
  assert np.ptp(image) > 50  # a real image, not a constant
  images, _ = _digit_images(7)
  _check_both_formats(model, tmp_path, images, batches=(7,))  # exports == the data's transform
  # ... which is what training's eval pipeline feeds the net.
  batch = next(
    iter(
      data_lib.eval_batches(
        "digits", global_batch_size=7, local_device_count=1, normalization="pixel_mean"
      )
    )
  )
  np.testing.assert_allclose(
    _reference(model, images),
    np.asarray(
      jax.nn.softmax(model.model.apply(model.variables, batch["image"][0, :, 0], train=False))
    ),
    atol=1e-6,
  )
  assert serving.load(workdir).mean == tuple(data_lib.dataset_info("digits").mean)
