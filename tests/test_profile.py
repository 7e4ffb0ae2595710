"""config.profile_steps: process 0 leaves a jax.profiler trace of those steps under WORKDIR/profile."""

import logging

import pytest
from conftest import train_tiny_in_process

from resnet_jax.train import config as config_lib
from resnet_jax.train import profiling


def test_a_tiny_run_leaves_a_trace_of_its_profiled_steps(tmp_path, caplog):
  # Trained in the worker: the profiler is the subject, not the front door, and a process start
  # costs more CPU than the tiny run (this process is process 0 of its one-process run).
  caplog.set_level(logging.INFO, logger="absl")
  workdir = tmp_path / "run"
  train_tiny_in_process(workdir, {"profile_steps": (3, 5)})
  traces = list((workdir / profiling.PROFILE_DIR).glob("plugins/profile/*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert list(traces[0].parent.glob("perfetto_trace.json.gz"))  # Perfetto's format beside it
  assert "profiling steps 3..5" in caplog.text


def test_no_trace_without_profile_steps(tmp_path):
  profiler = profiling.Profiler((), tmp_path)
  for step in (1, 2, 3):
    with profiler.step(step):
      pass
    profiler.after_step(step, None)
  assert not profiler.active and not (tmp_path / profiling.PROFILE_DIR).exists()


@pytest.mark.parametrize("steps", [(0, 2), (5, 3), (1, 2, 3), (4,)])
def test_bad_profile_steps_fail_before_anything_runs(steps):
  c = config_lib.base_config()
  c.profile_steps = steps
  with pytest.raises(ValueError, match="config.profile_steps"):
    config_lib.validate(c, known_models=[c.model], known_datasets=[c.dataset])


def test_auto_precision_is_bf16_on_accelerators_and_fp32_on_cpu():
  c = config_lib.base_config()
  c.precision = "auto"
  assert config_lib.for_platform(c, "gpu").precision == "bf16"
  assert config_lib.for_platform(c, "tpu").precision == "bf16"
  assert config_lib.for_platform(c, "cpu").precision == "fp32"
  assert c.precision == "auto"  # the user's config is left as it was
  c.precision = "fp16"
  assert config_lib.for_platform(c, "tpu").precision == "fp16"
