#!/bin/bash
# bash squeezed_attention/results/session_2026_12_06e/run.sh PACK   (from the repository root; the stop used the 2k
# real-prose pack /tmp/dx/doc.pack): one line per repetition and OpenMP wait setting, 2 threads.
here=$(dirname "$0")
for rep in 1 2; do
for setting in default PASSIVE spin10k; do
  case $setting in
    default) env_args="";;
    PASSIVE) env_args="OMP_WAIT_POLICY=PASSIVE";;
    spin10k) env_args="GOMP_SPINCOUNT=10000";;
  esac
  out=$(env $env_args PYTHONPATH=. .venv/bin/python "$here/gen.py" 2 "$1" 2>/dev/null | tail -1)
  echo "$rep $setting threads=2 $out load=$(cut -d' ' -f1 /proc/loadavg)"
done
done
