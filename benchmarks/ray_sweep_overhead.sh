#!/usr/bin/env bash
# A `physim sweep` on Ray actors against the same sweep in one process (--no-ray), on this
# machine, interleaved, after one untimed warm-up run that fills Taichi's kernel cache. Needs
# Ray (pip install "physim[ray]"). Prints one line per run: wall seconds and the load averages.
#   bash benchmarks/ray_sweep_overhead.sh > benchmarks/results/ray_sweep_overhead.txt
set -euo pipefail
OUT=${OUT:-/tmp/physim_ray_sweep}
A="--envs MassSpringWalker2D,Walker2D --methods cma,random --seeds 0,1 --iters 3 --horizon 20"
physim sweep $A --no-ray --out "$OUT/warm" > /dev/null 2>&1
for r in 1 2; do
  s=$(date +%s.%N); physim sweep $A --no-ray --out "$OUT/seq_$r" > "$OUT/seq_$r.log" 2>&1; e=$(date +%s.%N)
  echo "seq round $r: $(echo "$e - $s" | bc) s load $(cut -d' ' -f1-2 /proc/loadavg)"
  s=$(date +%s.%N); physim sweep $A --workers 2 --out "$OUT/ray_$r" > "$OUT/ray_$r.log" 2>&1; e=$(date +%s.%N)
  echo "ray round $r: $(echo "$e - $s" | bc) s load $(cut -d' ' -f1-2 /proc/loadavg)"
done
