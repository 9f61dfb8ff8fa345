#!/usr/bin/env python3
"""Open a deit-pipe teacher cache with pyarrow and pandas and print what is in it.

Checks that the files written by `formats::cache_schema` (Rust) are ordinary Parquet that
other tools read: schema, footer metadata, rows, and the schema's invariants, through
pyarrow and pandas, then the whole directory through DuckDB's SQL (if installed).

Usage:
    python tools/check_cache_pyarrow.py CACHE_DIR [--rows 5]

Make a cache to look at with:
    cargo run --release -p formats --features parquet --example cache_size -- /tmp/cache 1000 10

Pinned versions (what this was run with): Python 3, pyarrow 26.0.1, pandas 3.1.1,
numpy 2.4.6, duckdb 2.0.1 (optional). Only pyarrow, pandas and numpy are needed (no torch: the torch wheels from
PyPI pull ~6 GB of CUDA libraries and are not used here).
"""
import argparse
import json
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq

HEADER_KEY = b"deit_pipe.teacher_cache"


def check_file(path: pathlib.Path, show_rows: int) -> int:
    pf = pq.ParquetFile(path)
    meta = pf.metadata
    kv = meta.metadata or {}
    if HEADER_KEY not in kv:
        sys.exit(f"{path}: footer key {HEADER_KEY!r} missing")
    header = json.loads(kv[HEADER_KEY])
    b = header["binding"]
    k, c = b["top_k"], b["num_classes"]
    print(f"== {path.name}: {meta.num_rows} rows, {meta.num_row_groups} row groups, "
          f"{path.stat().st_size} bytes ({path.stat().st_size / max(meta.num_rows, 1):.2f} per row)")
    print(f"   epoch {header['epoch']} part {header['part']['index']}/{header['part']['count']} "
          f"of {header['epoch_slots']} slots; K={k} C={c} teacher={b['teacher_arch']}")
    print("   schema:", ", ".join(f"{f.name}: {f.type}" for f in pf.schema_arrow))
    cols = {}
    for rg in range(meta.num_row_groups):
        for ci in range(meta.num_columns):
            cc = meta.row_group(rg).column(ci)
            root = cc.path_in_schema.split(".")[0]
            cols.setdefault(root, [0, set()])
            cols[root][0] += cc.total_compressed_size
            cols[root][1].update(cc.encodings)
    rows = max(meta.num_rows, 1)
    print("   bytes/row by column:", ", ".join(
        f"{n} {v[0] / rows:.2f} [{'/'.join(sorted(v[1]))}]" for n, v in cols.items()))

    table = pf.read()
    df = table.to_pandas()
    ids = np.stack(df["topk_ids"].to_numpy()) if k > 0 else None
    top1 = df["top1_logit"].to_numpy().astype(np.float32)
    gaps = (np.stack(df["logit_gaps"].to_numpy()).astype(np.float32)
            if k > 1 else np.zeros((len(df), 0), np.float32))
    lse = top1 + df["lse_gap"].to_numpy().astype(np.float32)
    logits = np.concatenate([top1[:, None], top1[:, None] - gaps], axis=1)

    # Invariants of the schema (what the Rust reader also enforces).
    slots = df["slot"].to_numpy()
    assert (df["epoch"] == header["epoch"]).all(), "epoch column differs from the footer"
    assert (np.diff(slots.astype(np.int64)) > 0).all(), "slots not strictly increasing"
    assert (slots < header["epoch_slots"]).all(), "slot out of range"
    assert ids.shape == (len(df), k) and (ids < c).all(), "bad top-k ids"
    assert all(len(set(r)) == k for r in ids), "repeated id in a top-k row"
    assert (np.diff(gaps, axis=1) >= 0).all() and (gaps >= 0).all(), "gaps not ordered"
    assert (lse >= top1).all(), "lse below the top-1 logit"
    probs = np.exp(logits - lse[:, None])
    assert (probs.sum(axis=1) <= 1.0 + 1e-2).all(), "top-k mass above 1"

    view = df.head(show_rows).copy()
    view["hard_label"] = ids[:show_rows, 0]
    view["topk_logits"] = [np.round(r, 3).tolist() for r in logits[:show_rows]]
    view["lse"] = lse[:show_rows]
    view["view_hash"] = [f"{h:016x}" for h in view["view_hash"]]
    with_cols = ["epoch", "slot", "sample", "partner", "lam", "view_hash", "hard_label",
                 "topk_ids", "topk_logits", "lse"]
    print(view[with_cols].to_string(index=False))
    print(f"   top-k mass: mean {probs.sum(axis=1).mean():.4f}, "
          f"top-1 prob mean {probs[:, 0].mean():.4f}")
    return meta.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cache_dir", type=pathlib.Path)
    ap.add_argument("--rows", type=int, default=5)
    args = ap.parse_args()
    files = sorted(args.cache_dir.glob("epoch-*.parquet"))
    if not files:
        sys.exit(f"{args.cache_dir}: no epoch-*.parquet files")
    total = sum(check_file(f, args.rows) for f in files)
    # The whole directory as one dataset, as DuckDB or pyarrow.dataset users would open it.
    import pyarrow.dataset as ds
    n = ds.dataset([str(f) for f in files], format="parquet").count_rows()
    assert n == total, f"dataset view sees {n} rows, files hold {total}"
    check_duckdb(files, total)
    print(f"OK: {len(files)} files, {total} rows, all invariants hold")


def check_duckdb(files, total: int) -> None:
    """The same files through DuckDB's SQL (skipped, with a note, if duckdb is absent)."""
    try:
        import duckdb
    except ImportError:
        print("   duckdb not installed: DuckDB check skipped (pip install duckdb)")
        return
    paths = [str(f) for f in files]
    con = duckdb.connect()
    rows, epochs, slots_ok, hard = con.execute(
        "SELECT count(*), count(DISTINCT epoch), "
        "bool_and(len(topk_ids) = len(logit_gaps) + 1), "
        "count(*) FILTER (WHERE topk_ids[1] IS NOT NULL) "
        "FROM read_parquet(?)", [paths]).fetchone()
    assert rows == total, f"DuckDB sees {rows} rows, files hold {total}"
    assert slots_ok, "DuckDB: a row with len(topk_ids) != len(logit_gaps) + 1"
    assert hard == total, "DuckDB: a row without a hard label (topk_ids[1])"
    dup = con.execute(
        "SELECT count(*) FROM (SELECT epoch, slot FROM read_parquet(?) "
        "GROUP BY epoch, slot HAVING count(*) > 1)", [paths]).fetchone()[0]
    assert dup == 0, f"DuckDB: {dup} duplicated (epoch, slot)"
    print(f"   DuckDB {duckdb.__version__}: {rows} rows over {epochs} epochs, "
          "no duplicated (epoch, slot), hard label = topk_ids[1] on every row")


if __name__ == "__main__":
    main()
