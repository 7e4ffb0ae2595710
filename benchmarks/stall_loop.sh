#!/bin/bash
# Usage: benchmarks/stall_loop.sh [TEST] [LIMIT_S]; OUT=DIR for the logs (docs/DEVELOPING.md, "The stall").
# Runs one test again and again under load; a run past LIMIT seconds gets its stacks dumped and is killed.
cd "$(dirname "$0")/.."; mkdir -p "${OUT:-/tmp/stall}"
TEST=${1:-tests/test_analysis.py::test_commands_end_to_end}
LIMIT=${2:-420}
for i in 1 2 3 4 5 6; do
  start=$(date +%s)
  .venv/bin/python -m pytest -q -x -p no:cacheprovider "$TEST" > ${OUT:-/tmp/stall}/run$i.log 2>&1 &
  PID=$!
  while kill -0 $PID 2>/dev/null; do
    sleep 5
    if (( $(date +%s) - start > LIMIT )); then
      echo "run $i HUNG at $(date)" >> ${OUT:-/tmp/stall}/summary.log
      for p in $(pgrep -P $PID) $PID; do
        .venv/bin/py-spy dump --native --pid $p > ${OUT:-/tmp/stall}/pyspy_$i_$p.txt 2>&1
        gdb -p $p -batch -ex "thread apply all bt 25" > ${OUT:-/tmp/stall}/gdb_${i}_$p.txt 2>&1
      done
      ps -eLo pid,lwp,pcpu,comm | awk '$3>5' > ${OUT:-/tmp/stall}/threads_$i.txt
      pkill -9 -P $PID; kill -9 $PID
      break
    fi
  done
  wait $PID; echo "run $i rc=$? $(( $(date +%s) - start ))s $(cat /proc/loadavg)" >> ${OUT:-/tmp/stall}/summary.log
done
