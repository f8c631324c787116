"""The issue-25 tables from the results of benchmarks/image/run.sh: per slice and fusion, mean refined ARI
(± sd over seeds) with the image, without it (variant no_image) and, on DLPFC, with the image permuted
across spots; the image weight, the agreement and the image's share of the embedding.

    python benchmarks/image/tables.py synthetic/results.csv dlpfc_null/results.csv > results.md
"""
from __future__ import annotations

import sys

import pandas as pd


def table(path: str) -> str:
    t = pd.read_csv(path)
    t = t[t["status"] == "ok"].copy()
    t["variant"] = t["variant"].fillna("default")
    rows = []
    for (slice_name, fusion), runs in t.groupby(["slice", "fusion"], sort=False):
        row = {"slice": slice_name, "fusion": fusion}
        for variant, label in (("default", "with image"), ("no_image", "without"), ("permuted_image", "image permuted")):
            a = runs.loc[runs["variant"] == variant, "ari_after"]
            if len(a):
                row[label] = f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0:.3f}"
                row[f"_{variant}"] = a.mean()
        if "_no_image" in row:
            row["gain"] = f"{row['_default'] - row['_no_image']:+.3f}"
            if "_permuted_image" in row:
                row["permuted - without"] = f"{row['_permuted_image'] - row['_no_image']:+.3f}"
        base = runs[runs["variant"] == "default"]
        for col, label in (("image_weight", "weight"), ("image_agreement", "agreement"), ("image_share", "share")):
            row[label] = f"{base[col].mean():.2f}" if base[col].notna().any() else "–"
        row["n"] = len(base)
        rows.append({k: v for k, v in row.items() if not k.startswith("_")})
    frame = pd.DataFrame(rows).fillna("–")
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "\n".join("| " + " | ".join(str(v) for v in r) + " |" for r in frame.itertuples(index=False))


if __name__ == "__main__":
    print("# Image benchmark (issue 25): refined ARI, seeds as run\n\n`bash benchmarks/image/run.sh`\n")
    for p in sys.argv[1:]:
        print(f"## {p}\n\n{table(p)}\n")
