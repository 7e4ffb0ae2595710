"""The committed degradation reproduction (docs/figures/degradation.json) is reproducible from its
own record: the cheapest member's recorded ``command`` trains again to its recorded final training
error.

Minutes of CPU (one full-width ResNet-20-sized run of the paper's recipe), so `make test` skips it;
`make test-reproduction` runs it (RESNET_JAX_REPRODUCTION=1).
"""

import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(REPO, "docs", "figures")
# Across processes, thread counts and machines the oneDNN path is not bit-exact (a run pinned to one
# core, as `analyze degradation --parallel=2` trains, sums in another order than one on two), and
# a thousand steps carry such differences into the final error. docs/analyses.md gives the
# differences observed; this bound is their scale.
ALLOWED = 0.01  # 1 percentage point of training error

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    os.environ.get("RESNET_JAX_REPRODUCTION") != "1",
    reason="minutes of CPU: `make test-reproduction` runs it",
  ),
]


def _cheapest(runs):
  """The member with the fewest layers (then the lowest seed): the one quickest to retrain."""
  return min(runs, key=lambda r: (int("".join(c for c in r["model"] if c.isdigit())), r["seed"]))


@pytest.mark.timeout(3600)
def test_the_cheapest_member_retrains_to_its_committed_final_training_error(tmp_path):
  result = json.load(open(os.path.join(FIGURES, "degradation.json")))
  member = _cheapest(result["runs"])
  args = shlex.split(member["command"])
  assert args[:3] == ["resnet-jax", "analyze", "degradation"] and args[-1] == "--out=DIR"
  out = tmp_path / "rerun"
  cmd = [sys.executable, "-m", "resnet_jax.main", *args[1:-1], f"--out={out}"]
  subprocess.run(cmd, cwd=REPO, check=True, timeout=3600)
  (again,) = json.load(open(out / "degradation.json"))["runs"]
  assert again["command"] == member["command"]
  print(
    f"{member['model']} seed {member['seed']}: committed {member['final_train_error']:.4f}, "
    f"rerun {again['final_train_error']:.4f}"
  )
  assert abs(again["final_train_error"] - member["final_train_error"]) <= ALLOWED
