#!/usr/bin/env bash
# The low-data study on one GPU (how the committed results/lowdata_study_* and
# results/authors_recipe were produced): many one-thread sweep workers share the GPU, each
# claiming unfinished runs under the runs' file locks (dynamic load balancing, no shards).
#   1. arm B (configs/sweeps/authors_recipe.yaml) with 3 workers, in the background;
#   2. arm A's selection grid (configs/sweeps/lowdata_study_grid.yaml) with 10 workers;
#   3. `python -m lightning_ttn.protocol.select` writes configs/sweeps/lowdata_study_final.yaml;
#   4. arm A's final runs with 12 workers.
# Usage: DEADLINE_S=450 bash configs/sweeps/lowdata_study_gpu.sh  (stops workers at the deadline;
# re-running resumes). Results are packed into $OUT/results.tar every 20 s when OUT is set.
set -u
cd "$(dirname "$0")/../.."
deadline=$(( $(date +%s) + ${DEADLINE_S:-450} ))
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
RESULTS="results/lowdata_study_grid results/lowdata_study_final results/authors_recipe"
pack() { [ -n "${OUT:-}" ] && tar -cf "$OUT/.results.tar" $RESULTS configs/sweeps/lowdata_study_final.yaml 2>/dev/null; [ -n "${OUT:-}" ] && mv "$OUT/.results.tar" "$OUT/results.tar"; }
( while sleep 20; do pack; done ) & packer=$!
. configs/sweeps/gpu_workers.sh  # workers, wait_until_deadline
mkdir -p logs
# Render both caches once before the workers start (they would wait on its lock anyway).
$PY -c "from lightning_ttn.data import VideoMNISTDataModule as D
for m in ('table1', 'authors'): D(source='embedded', motion=m).prepare_data()"
workers 3 configs/sweeps/authors_recipe.yaml logs/authors; arm_b=$(jobs -p | tail -3)
workers 10 configs/sweeps/lowdata_study_grid.yaml logs/grid; grid=$(jobs -p | tail -10)
wait_until_deadline $grid && {
  $PY -m lightning_ttn.protocol.select results/lowdata_study_grid \
    --out configs/sweeps/lowdata_study_final.yaml --output-dir results/lowdata_study_final --runs 8
  workers 12 configs/sweeps/lowdata_study_final.yaml logs/final; final=$(jobs -p | tail -12)
  wait_until_deadline $final
}
wait_until_deadline $arm_b
kill $packer 2>/dev/null
pack
for f in logs/*.log; do tail -n 2 "$f"; done
ls results/*/runs/*.json 2>/dev/null | cut -d/ -f2 | sort | uniq -c
