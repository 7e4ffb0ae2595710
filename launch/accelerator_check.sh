#!/usr/bin/env bash
# One command for someone with one GPU or TPU host: how fast and how right this codebase is there.
#
#   launch/accelerator_check.sh [RESULTS.jsonl]          # default accelerator_check.jsonl
#   launch/accelerator_check.sh --smoke [RESULTS.jsonl]  # tiny model and batch: runs on a CPU
#   (or RESNET_JAX_CHECK_SMOKE=1)
#
# Measures, prints, and appends as one JSON line to RESULTS.jsonl:
#   * ResNet-50 train step, bf16, synthetic batches already on the devices, batch 256 per device at
#     224 px, on both data-parallel paths (pmap and jit): images/s, MFU against the device's dense
#     peak (resnet_jax/bench/peaks.py), compile time, peak device memory (memory_stats()
#     peak_bytes_in_use where the backend has it, else XLA's memory analysis of the step);
#   * a 200-step run of configs/digits.py: its final top-1 error (the whole loop, real data);
#   * the ImageNet-shaped input pipeline (JPEG decode + the paper's augmentation at 224,
#     benchmarks/throughput.py): images/s and images/s per host core.
#
# Anchor: NVIDIA's ResNet-50 v1.5 (PyTorch, DALI) trains at 2,470 images/s on one A100-80GB with
# AMP (NVIDIA Deep Learning Examples, ResNet50 v1.5 performance table). Goal: >= 3,000 images/s
# bf16 synthetic at batch 256 on one H100.
#
# Environment: PYTHON (default .venv/bin/python, else python3); RESNET_JAX_CHECK_STEPS (timed steps,
# default 20). Run from anywhere; the script works from the checkout it lives in.
set -euo pipefail

cd "$(dirname "$0")/.."
smoke="${RESNET_JAX_CHECK_SMOKE:-0}"
out="accelerator_check.jsonl"
for arg in "$@"; do
  case "$arg" in
    --smoke) smoke=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $arg (see --help)" >&2; exit 2 ;;
    *) out="$arg" ;;
  esac
done
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi

RESNET_JAX_CHECK_SMOKE="$smoke" RESNET_JAX_CHECK_OUT="$out" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  exec "$python" - <<'PY'
import json, os, subprocess, sys, tempfile, time

from resnet_jax import runtime

runtime.setup()
runtime.pause_collection()  # while the libraries load, as the front door does
import jax  # noqa: E402

from resnet_jax import bench  # noqa: E402
from resnet_jax.bench import report  # noqa: E402

runtime.resume_collection()

smoke = os.environ["RESNET_JAX_CHECK_SMOKE"] not in ("", "0")
out = os.environ["RESNET_JAX_CHECK_OUT"]
steps = int(os.environ.get("RESNET_JAX_CHECK_STEPS", "2" if smoke else "20"))
n_dev = jax.local_device_count()
device = jax.local_devices()[0]
record = {
  "check": "accelerator_check",
  "smoke": smoke,
  "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
  "backend": jax.default_backend(),
  "device": str(device.device_kind),
  "num_devices": n_dev,
  "jax_version": jax.__version__,
  "host_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
}


def device_peak_bytes():
  stats = device.memory_stats() or {}
  return stats.get("peak_bytes_in_use")


# 1. ResNet-50 bf16 synthetic train step, batch 256 per device, pmap and jit.
model, per_device, size = ("resnet20", 2, 32) if smoke else ("resnet50", 256, 224)
# The smoke run checks the script end to end, not a figure: a ResNet-20 one block per stage and a
# few channels wide compiles in a fraction of the full net's time.
tiny = {"stage_sizes": (1, 1, 1), "stem_width": 4, "stage_widths": (4, 8, 8)}
r = bench.run_benchmark(
  model, per_device * n_dev, size, "bf16", steps=steps, loop=False, parallelism=("pmap", "jit"),
  overrides=tiny if smoke else None,
)
print(bench.format_report(r), flush=True)
record["train"] = {
  "model": model,
  "overrides": r["overrides"],
  "batch_per_device": per_device,
  "image_size": size,
  "precision": r["precision"],
  "analytic_flops_per_step": r["analytic_flops_per_step"],
  "peak_tflops": r["peak_tflops"],
  "device_peak_bytes_in_use": device_peak_bytes(),
  **{
    name: {
      k: p.get(k)
      for k in ("images_per_sec", "images_per_sec_median", "mfu", "compile_train_s",
                "compile_eval_s", "peak_memory_bytes")
    }
    for name, p in r["paths"].items()
  },
}

# 2. A 200-step digits run (the whole loop on real data): its accuracy.
with tempfile.TemporaryDirectory() as workdir:
  config = "tests/configs/tiny_digits.py" if smoke else "configs/digits.py"
  n = 4 if smoke else 200
  cmd = [sys.executable, "-m", "resnet_jax.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.num_train_steps={n}", f"--config.eval_every_steps={n}",
         f"--config.checkpoint_every_steps={n}"]
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  if proc.returncode:
    sys.stderr.write(proc.stderr[-4000:])
    record["digits"] = {"steps": n, "error": f"exit {proc.returncode}"}
  else:
    done = json.load(open(os.path.join(workdir, "DONE")))
    record["digits"] = {"config": config, "steps": n, "seconds": seconds,
                        "eval_top1_error": done.get("eval_top1_error"),
                        "accuracy": 1.0 - done["eval_top1_error"]}
print("digits:", record["digits"], flush=True)

# 3. The ImageNet-shaped input pipeline on this host's cores.
sys.path.insert(0, "benchmarks")
import throughput  # noqa: E402

failed = "error" in record["digits"]
try:  # a failing part is recorded, and the figures of the others are still appended
  rows = throughput.measure(*((40, 8, 2) if smoke else (300, 32, 8)))
  cores = record["host_cores"]
  record["input_pipeline"] = {name: {"images_per_sec": rate, "per_core": rate / cores}
                              for name, rate in rows}
except Exception as e:  # noqa: BLE001
  failed = True
  record["input_pipeline"] = {"error": f"{type(e).__name__}: {str(e)[-500:]}"}

report.append_result(out, record)
print(json.dumps(record, sort_keys=True))
print(f"appended to {out}")
runtime.spare_the_final_collection()
sys.exit(1 if failed else 0)
PY
