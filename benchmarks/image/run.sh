#!/usr/bin/env bash
# Issue 25: where the image's part is known, one command (resumable: finished runs are kept).
#
#   bash benchmarks/image/run.sh
#
# 1. synthetic: `mihd evaluate experiment=image_synthetic` -- six domains of which two pairs differ only
#    in morphology and one only in expression, at Visium-like and legacy-ST-like spot sizes, plus the same
#    slices with the image shuffled across spots and with a pure-noise image; every fusion of FUSIONS with
#    the image and without it (variant no_image), seeds 0-4 -> benchmarks/image/synthetic/summary.md
#    (its section "The image": weight, agreement, share, gain per fusion and slice).
# 2. null on real data: the four DLPFC development slices with their image features permuted across
#    spots (+encoder.permute_image=true) beside the same runs with and without the image
#    -> benchmarks/image/dlpfc_null/summary.md
# Env: FUSIONS (default the four below), SEEDS, OUT (default evaluations/image), WORKERS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
py="${MIHD_PY:-$root/.venv/bin/python}"
out="${OUT:-evaluations/image}"
fusions="${FUSIONS:-[gated,adaln_attention,concat,genes_only]}"
seeds="${SEEDS:-[0,1,2,3,4]}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$py" -m mihd.cli evaluate experiment=image_synthetic "fusions=$fusions" "seeds=$seeds" "out_dir=$out/synthetic" \
  "workers=${WORKERS:-1}"
"$py" -m mihd.cli evaluate 'slices=[dlpfc:151673,dlpfc:151674,dlpfc:151675,dlpfc:151676]' "fusions=$fusions" \
  "seeds=$seeds" "out_dir=$out/dlpfc_null" "workers=${WORKERS:-1}" \
  'variants=[default,{name:permuted_image,overrides:["+encoder.permute_image=true"]},{name:no_image,overrides:["encoder.image=none"]}]'
mkdir -p "$here/synthetic" "$here/dlpfc_null"
for part in synthetic dlpfc_null; do
  cp "$out/$part/summary.md" "$out/$part/results.csv" "$here/$part/"
done
"$py" "$here/tables.py" "$here/synthetic/results.csv" "$here/dlpfc_null/results.csv" > "$here/results.md"
echo "wrote $here/results.md"
