#!/usr/bin/env bash
# Issue 17 item 8: how fast `mihd` answers --help and config errors (no torch / scanpy / Lightning import).
# Usage (from the repository root): bash benchmarks/startup/bench_cli.sh [repeats, default 5]
# Another checkout: MIHD="env PYTHONPATH=/path/to/checkout .venv/bin/python -m mihd.cli" bash ...
# Prints, per command, the exit code and the median / max wall time over the repeats. Run it from an
# empty folder so that a command that wrongly starts work writes nothing here.
set -u
MIHD="${MIHD:-$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/mihd}"
REPEATS="${1:-5}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cases=(
  "--help"
  "train --help"
  "evaluate --help"
  "train trainer.max_epoch=5"
  "train +trainer.max_epoch=5"
  "train cluster=spectral"
  "train fusion=typo"
  "train seed=abc"
  "evaluate trainer.max_epoch=5"
  "evaluate out_dri=x"
)
printf '%-34s %4s %9s %9s\n' "command" "rc" "median_s" "max_s"
for c in "${cases[@]}"; do
  times=()
  for _ in $(seq "$REPEATS"); do
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086  # MIHD and the case are word-split on purpose
    $MIHD $c >/dev/null 2>&1
    rc=$?
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  stats=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%9.2f %9.2f", a[int((NR+1)/2)], a[NR]}')
  printf '%-34s %4s %s\n' "mihd $c" "$rc" "$stats"
done
left=$(ls -A "$work")
[ -z "$left" ] || echo "files left behind: $left"
