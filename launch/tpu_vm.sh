#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice: (create,) copy this checkout, set up, run.
#
#   launch/tpu_vm.sh --name=my-v4-32 --zone=us-central2-b [--create --accelerator-type=v4-32] \
#       --config=configs/imagenet.py --workdir=gs://BUCKET/runs/resnet50 [--config.key=value ...]
#
# Options (every other argument, and everything after `--`, goes to `python -m resnet_jax.main`):
#   --name=NAME             TPU VM name (default $TPU_NAME)
#   --zone=ZONE             zone (default $TPU_ZONE)
#   --project=PROJECT       gcloud project (default: gcloud's configured one, or $TPU_PROJECT)
#   --create                create the TPU VM first, with:
#     --accelerator-type=T  e.g. v4-32, v5litepod-16 (default $TPU_ACCELERATOR_TYPE, else v4-8)
#     --version=V           runtime image (default $TPU_VERSION, else tpu-ubuntu2204-base;
#                           v5e wants v2-alpha-tpuv5-lite)
#     --spot                a Spot VM
#   --config=FILE           config file, relative to the repo root (required)
#   --workdir=gs://...      shared run directory, a GCS bucket every worker can write (required)
#   --no-copy               do not copy the checkout (it is already on the workers)
#   --no-setup              skip the virtualenv / pip install step
#   --detach                run under nohup on the workers (log: ~/resnet_jax/train.log) and return
#   --dry-run               print the commands, run nothing
# The code shipped is `git archive HEAD` of this checkout (commit first). Every worker runs the same
# command; resnet_jax.distributed finds the other workers through JAX's Cloud TPU detection, process
# 0 writes the logs, and re-running the same command resumes from the last checkpoint in --workdir.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
name="${TPU_NAME:-}" zone="${TPU_ZONE:-}" project="${TPU_PROJECT:-}"
accel="${TPU_ACCELERATOR_TYPE:-v4-8}" version="${TPU_VERSION:-tpu-ubuntu2204-base}"
create=0 spot=0 copy=1 setup=1 detach=0 dry_run=0 config="" workdir=""
train=()

need() { [[ $# -ge 2 && -n "$2" ]] || { echo "tpu_vm.sh: $1 needs a value" >&2; exit 2; }; }
while (($#)); do
  case "$1" in
    --name) need "$@"; name="$2"; shift ;;
    --name=*) name="${1#*=}" ;;
    --zone) need "$@"; zone="$2"; shift ;;
    --zone=*) zone="${1#*=}" ;;
    --project) need "$@"; project="$2"; shift ;;
    --project=*) project="${1#*=}" ;;
    --accelerator-type) need "$@"; accel="$2"; shift ;;
    --accelerator-type=*) accel="${1#*=}" ;;
    --version) need "$@"; version="$2"; shift ;;
    --version=*) version="${1#*=}" ;;
    --config) need "$@"; config="$2"; shift ;;
    --config=*) config="${1#*=}" ;;
    --workdir) need "$@"; workdir="$2"; shift ;;
    --workdir=*) workdir="${1#*=}" ;;
    --create) create=1 ;;
    --spot) spot=1 ;;
    --no-copy) copy=0 ;;
    --no-setup) setup=0 ;;
    --detach) detach=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; train+=("$@"); break ;;
    *) train+=("$1") ;;
  esac
  shift
done

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
[[ -n "$name" ]] || die "--name (or \$TPU_NAME) is required"
[[ -n "$zone" ]] || die "--zone (or \$TPU_ZONE) is required"
[[ -n "$config" ]] || die "--config is required (e.g. --config=configs/imagenet.py)"
[[ -n "$workdir" ]] || die "--workdir is required (a gs:// bucket path shared by all workers)"
[[ "$workdir" == gs://* ]] ||
  echo "tpu_vm.sh: warning: --workdir=$workdir is not gs://; multi-worker slices need a shared bucket" >&2

show() { local out; printf -v out '%q ' "$@"; printf '%s\n' "${out% }"; }
run() { if ((dry_run)); then show "$@"; else "$@"; fi; }
quoted() { local out; printf -v out '%q ' "$@"; printf '%s' "${out% }"; }

where=(--zone="$zone")
[[ -z "$project" ]] || where+=(--project="$project")

if ((create)); then
  create_cmd=(gcloud compute tpus tpu-vm create "$name" "${where[@]}"
              --accelerator-type="$accel" --version="$version")
  ((spot)) && create_cmd+=(--spot)
  run "${create_cmd[@]}"
fi

# The command every worker runs. Our own text is written out; every user value goes through %q.
remote="set -euo pipefail; mkdir -p ~/resnet_jax && cd ~/resnet_jax"
if ((copy)); then
  archive="resnet_jax-$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo worktree).tar.gz"
  if ((!dry_run)) && [[ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    echo "tpu_vm.sh: warning: uncommitted changes are not shipped (git archive HEAD)" >&2
  fi
  tmp="${TMPDIR:-/tmp}/$archive"
  run git -C "$repo" archive --format=tar.gz -o "$tmp" HEAD
  run gcloud compute tpus tpu-vm scp "$tmp" "$name:$archive" "${where[@]}" --worker=all
  remote+=" && tar -xzf ~/$(quoted "$archive")"
fi
if ((setup)); then
  remote+=" && { test -x .venv/bin/python || python3 -m venv .venv; }"
  remote+=" && .venv/bin/pip install -q --upgrade pip"
  remote+=" && .venv/bin/pip install -q -e . 'jax[tpu]>=0.10.2,<0.11'"
fi
train_cmd=".venv/bin/python -m resnet_jax.main $(quoted --config="$config" --workdir="$workdir" ${train[@]+"${train[@]}"})"
if ((detach)); then
  remote+=" && nohup $train_cmd > train.log 2>&1 < /dev/null &"
else
  remote+=" && $train_cmd"
fi
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$remote"
