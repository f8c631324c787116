#!/usr/bin/env bash
# Create benchmarks/peers/.venv-peers with GraphST, SpaGCN, STAGATE (stagate-modern), BANKSY (pybanksy)
# and CellCharter (+ scvi-tools) (side-by-side benchmarks only; mihd never imports these). Follows /work/shared/PEERS.md: keep the CPU torch by installing
# torch==2.13.0 first and passing a constraints file pinning it to every later pip call.
# Network: only the package registries (pip's configured indexes).
# R and mclust must be installed system-wide (apt-get install -y r-base-core r-cran-mclust).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${PEERS_VENV:-$here/.venv-peers}"
python="${PYTHON:-python3}"

Rscript -e 'suppressPackageStartupMessages(library(mclust)); cat("R mclust", as.character(packageVersion("mclust")), "\n")' \
  || { echo "R mclust missing: apt-get install -y r-base-core r-cran-mclust" >&2; exit 1; }

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)
"$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip

constraints="$here/constraints.txt"   # torch==2.13.0, so no later pip call swaps in another (CUDA) torch

# torch first, as the Makefile does (pip here finds the CPU wheel through its configured find-links;
# elsewhere set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to get the CPU build)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${pip[@]}" -c "$constraints" --index-url "$TORCH_INDEX_URL" torch
else
  "${pip[@]}" -c "$constraints" torch
fi
"${pip[@]}" -c "$constraints" graphst pot scikit-misc spagcn "setuptools<81" "leidenalg<0.11" "igraph==0.11.9" "rpy2==3.5.17" \
  "stagate-modern==1.0.0.post1" "pybanksy==1.3.5" "cellcharter==0.3.7" scvi-tools

"$venv/bin/python" - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
for m in ("GraphST", "SpaGCN", "STAGATE_pyG", "banksy", "cellcharter", "scvi", "squidpy", "torch_geometric",
          "ot", "skmisc", "louvain", "leidenalg", "igraph", "rpy2"):
    mod = importlib.import_module(m)
    print(m, getattr(mod, "__version__", "?"))
import rpy2.robjects as ro
ro.r("suppressPackageStartupMessages(library(mclust))")
print("rpy2 -> R mclust OK")
PY
"$venv/bin/python" -m pip freeze > "$here/.venv-peers/freeze.txt"
echo "peers venv ready: $venv"
