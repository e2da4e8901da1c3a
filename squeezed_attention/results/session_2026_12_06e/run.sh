#!/bin/bash
# one line per setting: policy, threads, results
cd /work/main
for rep in 1 2; do
for setting in "default" "PASSIVE" "spin10k"; do
  case $setting in
    default) env_args="";;
    PASSIVE) env_args="OMP_WAIT_POLICY=PASSIVE";;
    spin10k) env_args="GOMP_SPINCOUNT=10000";;
  esac
  for t in 2; do
    out=$(env $env_args .venv/bin/python /tmp/omp/gen.py $t 2>/dev/null | tail -1)
    echo "$rep $setting threads=$t $out load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
done
