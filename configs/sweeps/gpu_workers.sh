# Shared by the one-GPU scripts beside it (sourced, not run): sweep workers that share the GPU and
# a deadline. Needs $PY (the python to run) and $deadline (seconds since the epoch).
workers() {  # workers N CONFIG LOG
  for i in $(seq 1 "$1"); do
    $PY -m lightning_ttn.sweep --config "$2" --threads 1 >> "$3.$i.log" 2>&1 &
  done
}
wait_until_deadline() {  # waits for the given pids, kills them at the deadline
  for pid in "$@"; do
    while kill -0 "$pid" 2>/dev/null; do
      [ "$(date +%s)" -ge "$deadline" ] && kill "$@" 2>/dev/null && return 1
      sleep 2
    done
  done
}
