#!/usr/bin/env bash
# Table 2 at 1,000 and 2,000 videos on one GPU (issue 19), resuming from whatever is committed:
#   1. the stacked-training benchmark (docs/protocol.md), printed into logs/stacked.txt;
#   2. both selection grids (table2_1000_grid.yaml, table2_high_grid.yaml) with many one-thread
#      sweep workers sharing the GPU, each claiming unfinished runs under the runs' file locks;
#   3. `python -m lightning_ttn.protocol.select --require-interior-lr` writes
#      table2_1000_final.yaml and table2_high_final.yaml (10 fresh runs per family) from each
#      finished grid, or stops that size where a selected rate is on the grid's edge;
#   4. both finals with the same workers.
# Usage: DEADLINE_S=500 bash configs/sweeps/table2_gpu.sh  (stops workers at the deadline;
# re-running resumes). BENCHMARK=0 skips step 1. Results are packed into $OUT/results.tar every
# 20 s when OUT is set. Cost: not measured on a GPU yet; on one CPU thread a 1,000-video run
# takes ~900 s (3D) / ~250 s (TT), a 2,000-video run about twice that.
set -u
cd "$(dirname "$0")/../.."
deadline=$(( $(date +%s) + ${DEADLINE_S:-500} ))
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORKERS=${WORKERS:-12}
SIZES="1000 high"
RESULTS="results/table2_1000_grid results/table2_1000_final results/table2_high_grid
results/table2_high_final configs/sweeps/table2_1000_final.yaml configs/sweeps/table2_high_final.yaml
logs"
pack() {
  [ -n "${OUT:-}" ] || return 0
  tar -cf "$OUT/.results.tar" $(ls -d $RESULTS 2>/dev/null) && mv "$OUT/.results.tar" "$OUT/results.tar"
}
( while sleep 20; do pack; done ) & packer=$!
. configs/sweeps/gpu_workers.sh  # workers, wait_until_deadline
mkdir -p logs
if [ "${BENCHMARK:-1}" = 1 ]; then
  timeout $(( deadline - $(date +%s) )) $PY benchmarks/stacked.py --members 1 8 30 --device cuda \
    --epochs 2 --train-videos 100 > logs/stacked.txt 2>&1
fi
# Render the cache once before the workers start (they would wait on its lock anyway).
$PY -c "from lightning_ttn.data import VideoMNISTDataModule as D; D(source='embedded').prepare_data()"
for size in $SIZES; do
  workers $(( WORKERS / 2 )) configs/sweeps/table2_${size}_grid.yaml logs/grid_$size
done
grids=$(jobs -p | grep -v "^$packer$")
if wait_until_deadline $grids; then
  for size in $SIZES; do
    # A selected rate on the grid's edge stops this size here (the log names it): add the next
    # rate beyond it to the grid file and run this script again.
    $PY -m lightning_ttn.protocol.select results/table2_${size}_grid \
      --out configs/sweeps/table2_${size}_final.yaml \
      --output-dir results/table2_${size}_final --runs 10 --require-interior-lr \
      >> logs/select_$size.log 2>&1 \
      && workers $(( WORKERS / 2 )) configs/sweeps/table2_${size}_final.yaml logs/final_$size
  done
  wait_until_deadline $(jobs -p | grep -v "^$packer$")
fi
kill $packer 2>/dev/null
pack
for f in logs/*.log; do tail -n 2 "$f"; done
ls results/table2_*/runs/*.json 2>/dev/null | cut -d/ -f2 | sort | uniq -c
