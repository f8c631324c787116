#!/usr/bin/env bash
# Run the peers (BANKSY, SpaGCN, CellCharter, STAGATE, GraphST) on datasets x seeds, then score them
# with mihd's metrics. Resumable: a run whose labels CSV + JSON already exist is skipped; one run at a time.
#
#   bash benchmarks/peers/run_all.sh                                   # every tool, 7 datasets, seeds 0-4
#   DATASETS="starmap_BZ5 dlpfc_151675" SEEDS="0" TOOLS="banksy stagate" bash benchmarks/peers/run_all.sh
#   SLICES="151673" SEEDS="0" TOOLS="graphst" bash benchmarks/peers/run_all.sh   # old form: DLPFC slice ids
#
# Datasets: dlpfc_<slice> (Space Ranger folder $DATA_DIR/dlpfc/<slice>, K=7) and starmap_<section>
# ($DATA_DIR/starmap_mpfc/<section>.h5ad, K=4).
# Env: DATA_DIR (default ../shared/data or $MIHD_DATA_DIR), OUT_DIR (default benchmarks/peers/out),
# PEERS_PY (peers venv python), MIHD_PY (mihd venv python), K_DLPFC (7), K_STARMAP (4),
# OMP_NUM_THREADS / MKL_NUM_THREADS (default 1), NICE (default 10), SETUP=0 to skip creating the peers
# venv when it is missing, SCORE=0 to skip scoring.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DATA_DIR="${DATA_DIR:-${MIHD_DATA_DIR:-$root/../shared/data}}"
OUT_DIR="${OUT_DIR:-$here/out}"
PEERS_PY="${PEERS_PY:-$here/.venv-peers/bin/python}"
MIHD_PY="${MIHD_PY:-$root/.venv/bin/python}"
ALL_DATASETS="dlpfc_151673 dlpfc_151674 dlpfc_151675 dlpfc_151676 starmap_BZ5 starmap_BZ9 starmap_BZ14"
if [ -n "${SLICES:-}" ]; then DATASETS="${DATASETS:-$(for s in $SLICES; do printf 'dlpfc_%s ' "$s"; done)}"; fi
DATASETS="${DATASETS:-$ALL_DATASETS}"
SEEDS="${SEEDS:-0 1 2 3 4}"
TOOLS="${TOOLS:-banksy spagcn cellcharter stagate graphst}"
K_DLPFC="${K_DLPFC:-${K:-7}}"
K_STARMAP="${K_STARMAP:-4}"
NICE="${NICE:-10}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}" MPLBACKEND=Agg

if [ ! -x "$PEERS_PY" ] && [ "${SETUP:-1}" = 1 ]; then bash "$here/setup_peers.sh" || exit 1; fi

n_fail=0
for tool in $TOOLS; do
  case "$tool" in
    spagcn) script="$here/run_spagcn.py"; name=SpaGCN ;;
    graphst) script="$here/run_graphst.py"; name=GraphST ;;
    stagate) script="$here/run_stagate.py"; name=STAGATE ;;
    cellcharter) script="$here/run_cellcharter.py"; name=CellCharter ;;
    banksy) script="$here/run_banksy.py"; name=BANKSY ;;
    *) echo "unknown tool $tool (banksy, spagcn, cellcharter, stagate, graphst)" >&2; exit 2 ;;
  esac
  for ds in $DATASETS; do
    case "$ds" in
      dlpfc_*) input=(--slice-dir "$DATA_DIR/dlpfc/${ds#dlpfc_}"); k="$K_DLPFC" ;;
      starmap_*) input=(--h5ad "$DATA_DIR/starmap_mpfc/${ds#starmap_}.h5ad"); k="$K_STARMAP" ;;
      *) echo "unknown dataset $ds (dlpfc_<slice>, starmap_<section>)" >&2; exit 2 ;;
    esac
    for seed in $SEEDS; do
      dir="$OUT_DIR/$name/$ds/seed$seed"
      labels="$dir/labels.csv"
      if [ -f "$labels" ] && [ -f "$labels.json" ]; then echo "skip $name $ds seed $seed (done)"; continue; fi
      if [ -n "${STOP_AT:-}" ] && [ "$(date -u +%H%M)" \> "$STOP_AT" ]; then echo "$(date -u +%T) STOP_AT $STOP_AT UTC reached: not starting $name $ds seed $seed"; continue; fi
      mkdir -p "$dir"; rm -f "$dir/error.txt"
      echo "$(date +%T) run $name $ds seed $seed"
      if ! (cd "$here" && nice -n "$NICE" "$PEERS_PY" "$script" "${input[@]}" --slice-name "$ds" \
              --n-domains "$k" --seed "$seed" --out "$labels") > "$dir/log.txt" 2>&1; then
        tail -n 20 "$dir/log.txt" > "$dir/error.txt"; n_fail=$((n_fail + 1))
        echo "  FAILED (see $dir/log.txt)"
      else
        tail -n 1 "$dir/log.txt"
      fi
    done
  done
done

if [ "${SCORE:-1}" = 1 ]; then
  # Score every finished run on every dataset and tool, not only this call's subset: a resumed
  # call for one slice must not drop the other slices' rows from results.csv.
  "$MIHD_PY" "$here/score_peers.py" --out-dir "$OUT_DIR" --data-dir "$DATA_DIR" --datasets $ALL_DATASETS \
    --tools banksy spagcn cellcharter stagate graphst --command "bash benchmarks/peers/run_all.sh"
fi
exit $((n_fail > 0))
