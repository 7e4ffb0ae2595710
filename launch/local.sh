#!/usr/bin/env bash
# N processes of resnet_jax.main on one machine, joined by JAX's distributed runtime on 127.0.0.1:
# the CPU multi-host setup the tests use, or one process per GPU on one box.
#
#   launch/local.sh -n 2 --devices-per-process=2 --config=configs/digits.py --workdir=runs/mp \
#       --config.num_train_steps=20
#
# Options (anywhere before `--`; every other argument goes to `python -m MODULE`):
#   -n N, --num-processes=N     processes (default 2)
#   --devices-per-process=D     force D CPU devices per process (JAX_PLATFORMS=cpu and
#                               XLA_FLAGS=--xla_force_host_platform_device_count=D)
#   --port=P                    coordinator port on 127.0.0.1 (default: a free one)
#   --init-timeout=S            seconds a process waits for the others (RESNET_JAX_INIT_TIMEOUT, 60)
#   --python=PY                 interpreter (default .venv/bin/python, else python3)
#   --module=M                  module to run (default resnet_jax.main)
#   --log-dir=DIR               write process I's output to DIR/process_I.log (default: terminal)
#   --grace=S                   seconds between SIGTERM and SIGKILL when stopping (default 10)
#   --dry-run                   print the commands, run nothing
# Process I gets RESNET_JAX_COORDINATOR=127.0.0.1:P, RESNET_JAX_NUM_PROCESSES=N,
# RESNET_JAX_PROCESS_ID=I (read by resnet_jax.distributed.initialize). The script waits for all;
# if one fails it stops the others and exits with that status. SIGTERM or Ctrl-C is forwarded to
# every process as SIGTERM: they agree on one step, save it and exit, and local.sh exits 0 once all
# of them did (a second signal stops them at once: SIGTERM, then SIGKILL after --grace seconds).
# Each process compiles the train step, then waits (up to 30 min) until every process has, before
# the first step: 8 processes compiling on 2 cores finish far apart, and a collective's first
# set-up has a short deadline of its own.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
num=2 devices="" port="" timeout=60 module="resnet_jax.main" log_dir="" grace=10 dry_run=0
python=""
args=()

need() { [[ $# -ge 2 && -n "$2" ]] || { echo "local.sh: $1 needs a value" >&2; exit 2; }; }
while (($#)); do
  case "$1" in
    -n|--num-processes) need "$@"; num="$2"; shift ;;
    --num-processes=*) num="${1#*=}" ;;
    --devices-per-process) need "$@"; devices="$2"; shift ;;
    --devices-per-process=*) devices="${1#*=}" ;;
    --port) need "$@"; port="$2"; shift ;;
    --port=*) port="${1#*=}" ;;
    --init-timeout) need "$@"; timeout="$2"; shift ;;
    --init-timeout=*) timeout="${1#*=}" ;;
    --python) need "$@"; python="$2"; shift ;;
    --python=*) python="${1#*=}" ;;
    --module) need "$@"; module="$2"; shift ;;
    --module=*) module="${1#*=}" ;;
    --log-dir) need "$@"; log_dir="$2"; shift ;;
    --log-dir=*) log_dir="${1#*=}" ;;
    --grace) need "$@"; grace="$2"; shift ;;
    --grace=*) grace="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; args+=("$@"); break ;;
    *) args+=("$1") ;;
  esac
  shift
done

int() { [[ "$2" =~ ^[0-9]+$ ]] || { echo "local.sh: $1 must be a non-negative integer, got '$2'" >&2; exit 2; }; }
int --num-processes "$num"; int --init-timeout "$timeout"; int --grace "$grace"
((num >= 1)) || { echo "local.sh: --num-processes must be >= 1" >&2; exit 2; }
[[ -z "$devices" ]] || int --devices-per-process "$devices"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
if [[ -z "$port" ]]; then
  if ((dry_run)); then
    port=12355  # printed only; a real run picks a free port
  else
    port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi
int --port "$port"

show() { local out; printf -v out '%q ' "$@"; printf '%s\n' "${out% }"; }

cmd=()
command_for() {  # sets cmd to process $1's command
  cmd=(env "RESNET_JAX_COORDINATOR=127.0.0.1:$port" "RESNET_JAX_NUM_PROCESSES=$num"
       "RESNET_JAX_PROCESS_ID=$1" "RESNET_JAX_INIT_TIMEOUT=$timeout")
  if [[ -n "$devices" ]]; then
    cmd+=("JAX_PLATFORMS=cpu"
          "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices")
  fi
  cmd+=("$python" -m "$module" ${args[@]+"${args[@]}"})
}

if ((dry_run)); then
  echo "# local.sh: $num processes, coordinator 127.0.0.1:$port; started together, waited for;" \
       "one failing stops the others"
  for ((i = 0; i < num; i++)); do command_for "$i"; show "${cmd[@]}"; done
  exit 0
fi

[[ -z "$log_dir" ]] || mkdir -p "$log_dir"
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$((SECONDS + grace))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}
forwarded=0
forward_stop() {  # first signal: every process saves the same step and exits; second: stop now
  if ((forwarded)); then
    echo "local.sh: interrupted again; stopping all processes" >&2
    trap - INT TERM
    stop_all
    exit 130
  fi
  forwarded=1
  echo "local.sh: forwarding SIGTERM to all $num processes: they save and exit" \
       "(signal again to stop them at once)" >&2
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap forward_stop INT TERM

for ((i = 0; i < num; i++)); do
  command_for "$i"
  if [[ -n "$log_dir" ]]; then
    "${cmd[@]}" >"$log_dir/process_$i.log" 2>&1 &
  else
    # Gloo's connection lines ("[Gloo] Rank 0 is connected to 7 peer ranks...", one per process)
    # are printed by the C++ library straight to stdout; the terminal gets everything else.
    "${cmd[@]}" > >(grep --line-buffered -v '^\[Gloo\] Rank ') &
  fi
  pids+=($!)
done
echo "local.sh: started $num processes (pids ${pids[*]}), coordinator 127.0.0.1:$port" >&2

running=$num
declare -A finished=()
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    [[ -z "${finished[$i]:-}" ]] || continue
    pid="${pids[$i]}"
    if ! kill -0 "$pid" 2>/dev/null; then
      rc=0; wait "$pid" || rc=$?
      finished[$i]=1
      running=$((running - 1))
      if ((rc != 0)); then
        echo "local.sh: process $i (pid $pid) exited with status $rc; stopping the others" >&2
        trap - INT TERM
        stop_all
        exit "$rc"
      fi
    fi
  done
  ((running == 0)) || sleep 0.2
done
if ((forwarded)); then
  echo "local.sh: all $num processes saved and exited; rerun the same command to resume" >&2
else
  echo "local.sh: all $num processes finished" >&2
fi
