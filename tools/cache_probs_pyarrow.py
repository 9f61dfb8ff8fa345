#!/usr/bin/env python3
"""Rebuild a deit-pipe teacher cache's top-K probabilities with pyarrow, from the file alone.

Reads every `*.parquet` file of CACHE_DIR using only what the file's own footer documents
(footer key `deit_pipe.doc`: the probability formula; the Arrow field descriptions; the class
names under `deit_pipe.class_names`) and writes CACHE_DIR/probs_pyarrow.json:
{"rows": [{"slot", "ids", "probs"}], "top1_names": [...], "doc": ...}.

The Rust test `formats/tests/cache_integrity.rs::pyarrow_reconstruction_matches_our_reader`
checks that deit-pipe's reader gives the same probabilities (1e-6) on the committed file
formats/tests/fixtures/cache_small/epoch-00000.parquet.

Usage:
    pip install pyarrow numpy
    python3 tools/cache_probs_pyarrow.py formats/tests/fixtures/cache_small

Run with: Python 3.11, pyarrow 26.0.1, numpy 2.4.6.
"""
import json
import pathlib
import sys

import numpy as np
import pyarrow.parquet as pq


def main() -> None:
    cache = pathlib.Path(sys.argv[1])
    out_rows, names_out, doc = [], [], None
    for path in sorted(cache.glob("*.parquet")):
        pf = pq.ParquetFile(path)
        kv = pf.metadata.metadata
        doc = kv[b"deit_pipe.doc"].decode()
        names = json.loads(kv[b"deit_pipe.class_names"])
        for field in pf.schema_arrow:
            desc = (field.metadata or {}).get(b"description", b"").decode()
            print(f"{path.name} {field.name}: {desc}")
        print(doc)
        t = pf.read()
        # The formula of deit_pipe.doc, in float32 from the float16 columns:
        # logit_0 = top1_logit; logit_i = top1_logit - logit_gaps[i-1];
        # lse = top1_logit + lse_gap; p(topk_ids[i]) = exp(logit_i - lse).
        top1 = t.column("top1_logit").to_numpy().astype(np.float32)
        gaps = np.stack(t.column("logit_gaps").to_numpy(zero_copy_only=False)).astype(np.float32)
        lse = top1 + t.column("lse_gap").to_numpy().astype(np.float32)
        logits = np.concatenate([top1[:, None], top1[:, None] - gaps], axis=1)
        probs = np.exp(logits - lse[:, None])
        ids = np.stack(t.column("topk_ids").to_numpy(zero_copy_only=False))
        slots = t.column("slot").to_numpy()
        for s, i, p in zip(slots, ids, probs):
            out_rows.append({"slot": int(s), "ids": [int(v) for v in i],
                             "probs": [float(v) for v in p]})
            names_out.append(names[int(i[0])])
    result = {"rows": out_rows, "top1_names": names_out, "doc": doc}
    (cache / "probs_pyarrow.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {cache / 'probs_pyarrow.json'}: {len(out_rows)} rows")


if __name__ == "__main__":
    main()
