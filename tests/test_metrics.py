"""resnet_jax.metrics: the throughput window (images/s, step time, share of time waiting for data)."""

import pytest

from resnet_jax import metrics


def test_throughput_window_excludes_pauses_and_measures_the_data_wait(monkeypatch):
  clock = [100.0]
  monkeypatch.setattr(metrics.time, "perf_counter", lambda: clock[0])
  t = metrics.Throughput(global_batch_size=32)
  assert t.window() == {}  # no step yet: nothing to report
  for _ in range(4):  # 4 steps of 0.5 s, 0.1 s of each waiting for the next batch
    with t.waiting():
      clock[0] += 0.1
    clock[0] += 0.4
    t.step()
  with t.paused():  # an evaluation: 10 s that are not training time
    clock[0] += 10.0
  figures = t.window()
  assert figures["step_time_ms"] == pytest.approx(500)
  assert figures["images_per_sec"] == pytest.approx(64)
  assert figures["data_wait_fraction"] == pytest.approx(0.2)
  clock[0] += 1.0  # the next window starts where the last one ended
  t.step()
  assert t.window()["step_time_ms"] == pytest.approx(1000)
