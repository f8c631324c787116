#!/usr/bin/env bash
# GPU checks for mihd's CUDA paths, in one bounded run (any CUDA machine with mihd importable).
#
#   benchmarks/scale/gpu_check.sh [OUTDIR]        # OUTDIR: default $OUT, else /tmp/mihd_gpu_check
#
# Settings (environment):
#   GPU_CHECK_BUDGET  seconds for the whole run (default 380); later steps are shortened or skipped
#   GPU_CHECK_SIZES   N values (default "1000000 10000000"; the first is the "small" one)
#   GPU_CHECK_STEPS   steps to run (default all, in the order below)
#   GPU_CHECK_DEVICE  cuda (default) or cpu, to try the script out on a machine without a GPU
#   GPU_CHECK_E2E_CAP seconds the end-to-end step may take at most (default 200)
#
# Steps, in priority order, each under `timeout` so one slow step cannot eat the rest:
#
#   env          nvidia-smi, python / torch / package versions          -> OUTDIR/env.txt
#   pytest       tests/test_knn_torch.py tests/test_refine.py (their CUDA tests skip without a GPU)
#                                                                       -> OUTDIR/pytest.txt
#   refine_cuda  refine_labels(device="cuda") and knn_indices(engine="torch", device="cuda") at
#                10^6 and 10^7 random points (the layout and labels of benchmarks/refine/bench_refine.py),
#                k = 6, 18, 50, best of 3, peak GPU memory, with the CPU grid engine on the same
#                machine once for comparison and a check that both give the same labels
#                                                                       -> OUTDIR/refine_cuda.md
#   scale_*      benchmarks/scale/bench_scale.py --device cuda: graph + refine at 10^6 and 10^7,
#                epoch at 10^6, e2e at 10^6, epoch at 10^7 (e2e at 10^7 is left out: the CPU-bound
#                feature preparation alone took 200-450 s at 10^6 on 2 cores)  -> OUTDIR/scale.md
#                (the graph stage is the CPU kNN + CSR build whatever --device says)
#   refine_cpu   benchmarks/refine/bench_refine.py (no GPU option; CPU grid engine on this machine,
#                10^6 random points, k = 6 and 50, one repeat)          -> OUTDIR/bench_refine_cpu.md
#
# The benchmark scripts get --output under OUTDIR, so results.md files in the checkout are not touched.
set -u
cd "$(dirname "$0")/../.."
export OUTDIR=${1:-${OUT:-/tmp/mihd_gpu_check}}
mkdir -p "$OUTDIR"
export PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export DEV=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-380}
STEPS=${GPU_CHECK_STEPS:-"env pytest refine_cuda scale_graph_refine scale_epoch_small scale_e2e_small scale_epoch_big refine_cpu"}
SIZES=${GPU_CHECK_SIZES:-"1000000 10000000"}
read -r -a SIZE_ARR <<<"$SIZES"
N_SMALL=${SIZE_ARR[0]}
N_BIG=${SIZE_ARR[${#SIZE_ARR[@]}-1]}
START=$SECONDS

step() {  # step NAME CAP_SECONDS CMD...
    local name=$1 cap=$2
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    local left=$((BUDGET - (SECONDS - START)))
    local t=$((cap < left ? cap : left))
    if ((t < 15)); then
        echo "### $name: SKIPPED (budget of ${BUDGET}s spent)"
        return
    fi
    echo "### $name (timeout ${t}s): $*"
    local t0=$SECONDS rc
    timeout -k 10 "$t" bash -c '"$@"' _ "$@"
    rc=$?
    local note=""
    ((rc == 124 || rc == 137)) && note=" TIMED OUT"
    echo "### $name: rc=$rc in $((SECONDS - t0)) s$note"
}

env_info() {
    {
        date -u +"%Y-%m-%d %H:%M UTC"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi failed"
        echo "nproc: $(nproc)"
        "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ["torch", "numpy", "scipy", "numba", "pandas", "sklearn", "pytorch_lightning", "anndata", "scanpy", "hydra", "omegaconf"]:
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "MISSING:", e)
import torch
print("cuda available:", torch.cuda.is_available(), "| torch cuda:", torch.version.cuda)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF
    } 2>&1 | tee "$OUTDIR/env.txt"
}

run_pytest() {
    set -o pipefail
    "$PY" -m pytest -q -x -rs -p no:cacheprovider tests/test_knn_torch.py tests/test_refine.py 2>&1 | tee "$OUTDIR/pytest.txt"
}

refine_cuda() {  # sizes as arguments
    "$PY" - "$OUTDIR/refine_cuda.md" "$DEV" "$@" <<'EOF'
import gc, os, sys, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "benchmarks/refine")
import bench_refine as br  # noqa: E402  (its layouts and labels; importing runs nothing)
from mihd.graph import knn_indices  # noqa: E402
from mihd.refine import refine_labels  # noqa: E402

out = Path(sys.argv[1])
dev = sys.argv[2]  # "cuda"; "cpu" only to try the script out (torch engine on the CPU)
sizes = [int(s) for s in sys.argv[3:]]
KS = (6, 18, 50)
cuda = dev == "cuda"
refine_kw = {"device": "cuda"} if cuda else {"engine": "torch"}


def sync():
    if cuda:
        torch.cuda.synchronize()


def best(fn, repeats=3):
    t = np.inf
    for _ in range(repeats):
        gc.collect()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        t = min(t, time.perf_counter() - t0)
    return t


# compile / initialise outside the timings: numba grid kernels, CUDA context, torch kernels
pts = np.random.default_rng(0).random((5000, 2)) * 70
for k in KS:
    refine_labels(pts, np.arange(5000) % 7, n_neighbors=k, **refine_kw)
    refine_labels(pts, np.arange(5000) % 7, n_neighbors=k, engine="grid")

lines = [
    f"GPU: {torch.cuda.get_device_name(0) if cuda else 'none (device=' + dev + ')'}, torch {torch.__version__}; "
    f"CPU grid engine: numba, {os.cpu_count()} cores.",
    "",
    "Random layout at unit density, 7 wavy bands, 10% of labels flipped (bench_refine.py's data).",
    "`cuda total` = `refine_labels(coords, labels, n_neighbors=k, device='cuda')` (numpy in, numpy out: "
    "copy to the GPU, torch grid kNN, vote, copy back), best of 3; `cuda knn` = "
    "`knn_indices(coords, k, engine='torch', device='cuda')` (int32 numpy result), best of 3; "
    "`GPU peak` = torch.cuda.max_memory_allocated during one cuda refine; `cpu grid total` = "
    "`refine_labels(..., engine='grid')` once; `same` = the CUDA and CPU labels are identical.",
    "",
    "| N | k | cuda total s | cuda knn s | GPU peak MiB | cpu grid total s | same | accuracy |",
    "|---:|---:|---:|---:|---:|---:|---|---|",
]
for n in sizes:
    rng = np.random.default_rng(0)
    coords = br.make_layout("random", n, rng)
    truth, noisy = br.make_labels(coords, rng)
    for k in KS:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        gpu = refine_labels(coords, noisy, n_neighbors=k, **refine_kw)
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")
        t_total = best(lambda: refine_labels(coords, noisy, n_neighbors=k, **refine_kw))
        t_knn = best(lambda: knn_indices(coords, k, engine="torch", device=dev))
        t0 = time.perf_counter()
        cpu = refine_labels(coords, noisy, n_neighbors=k, engine="grid")
        t_cpu = time.perf_counter() - t0
        same = bool(np.array_equal(gpu, cpu))
        acc = f"{(noisy == truth).mean():.3f} -> {(gpu == truth).mean():.3f}"
        row = f"| {n:,} | {k} | {t_total:.3f} | {t_knn:.3f} | {peak:,.0f} | {t_cpu:.3f} | {'yes' if same else 'NO'} | {acc} |"
        lines.append(row)
        print(row, flush=True)
        out.write_text("\n".join(lines) + "\n")  # rewritten per row: a timeout keeps what ran
    del coords, truth, noisy
EOF
}

scale() {  # scale N... STAGE...
    "$PY" benchmarks/scale/bench_scale.py --device "$DEV" --output "$OUTDIR/scale.md" "$@"
}

export -f env_info run_pytest refine_cuda scale
step env 60 env_info
step pytest 120 run_pytest
step refine_cuda 120 refine_cuda "${SIZE_ARR[@]}"
step scale_graph_refine 120 scale --n "${SIZE_ARR[@]}" --stages graph refine
step scale_epoch_small 90 scale --n "$N_SMALL" --stages epoch
step scale_e2e_small "${GPU_CHECK_E2E_CAP:-200}" scale --n "$N_SMALL" --stages e2e
step scale_epoch_big 150 scale --n "$N_BIG" --stages epoch
step refine_cpu 60 "$PY" benchmarks/refine/bench_refine.py --n "$N_SMALL" --k 6 50 --engine grid --layout random \
    --repeats 1 --output "$OUTDIR/bench_refine_cpu.md"
echo "### all steps done in $((SECONDS - START)) s; results in $OUTDIR"
