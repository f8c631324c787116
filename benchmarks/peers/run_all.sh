#!/usr/bin/env bash
# Run the peers (SpaGCN, GraphST) on DLPFC slices x seeds, then score them with mihd's metrics.
# Resumable: a run whose labels CSV + JSON already exist is skipped; one run at a time.
#
#   bash benchmarks/peers/run_all.sh                                   # 151673 151674, seeds 0-4, both tools
#   SLICES="151673" SEEDS="0" TOOLS="graphst" bash benchmarks/peers/run_all.sh
#
# Env: DATA_DIR (default /work/shared/data or $MIHD_DATA_DIR), OUT_DIR (default benchmarks/peers/out),
# PEERS_PY (peers venv python), MIHD_PY (mihd venv python), K (default 7), OMP_NUM_THREADS (default 1),
# SETUP=0 to skip creating the peers venv when it is missing, SCORE=0 to skip scoring.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DATA_DIR="${DATA_DIR:-${MIHD_DATA_DIR:-$root/../shared/data}}"
OUT_DIR="${OUT_DIR:-$here/out}"
PEERS_PY="${PEERS_PY:-$here/.venv-peers/bin/python}"
MIHD_PY="${MIHD_PY:-$root/.venv/bin/python}"
SLICES="${SLICES:-151673 151674}"
SEEDS="${SEEDS:-0 1 2 3 4}"
TOOLS="${TOOLS:-spagcn graphst}"
K="${K:-7}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

if [ ! -x "$PEERS_PY" ] && [ "${SETUP:-1}" = 1 ]; then bash "$here/setup_peers.sh" || exit 1; fi

n_fail=0
for tool in $TOOLS; do
  case "$tool" in
    spagcn) script="$here/run_spagcn.py"; name=SpaGCN ;;
    graphst) script="$here/run_graphst.py"; name=GraphST ;;
    *) echo "unknown tool $tool (spagcn, graphst)" >&2; exit 2 ;;
  esac
  for s in $SLICES; do
    for seed in $SEEDS; do
      dir="$OUT_DIR/$name/dlpfc_$s/seed$seed"
      labels="$dir/labels.csv"
      if [ -f "$labels" ] && [ -f "$labels.json" ]; then echo "skip $name dlpfc_$s seed $seed (done)"; continue; fi
      mkdir -p "$dir"; rm -f "$dir/error.txt"
      echo "$(date +%T) run $name dlpfc_$s seed $seed"
      if ! (cd "$here" && "$PEERS_PY" "$script" --slice-dir "$DATA_DIR/dlpfc/$s" --slice-name "dlpfc_$s" \
              --n-domains "$K" --seed "$seed" --out "$labels") > "$dir/log.txt" 2>&1; then
        tail -n 20 "$dir/log.txt" > "$dir/error.txt"; n_fail=$((n_fail + 1))
        echo "  FAILED (see $dir/log.txt)"
      else
        tail -n 1 "$dir/log.txt"
      fi
    done
  done
done

if [ "${SCORE:-1}" = 1 ]; then
  "$MIHD_PY" "$here/score_peers.py" --out-dir "$OUT_DIR" --data-dir "$DATA_DIR" --slices $SLICES --seeds $SEEDS --tools $TOOLS \
    --command "SLICES=\"$SLICES\" SEEDS=\"$SEEDS\" TOOLS=\"$TOOLS\" bash benchmarks/peers/run_all.sh"
fi
exit $((n_fail > 0))
