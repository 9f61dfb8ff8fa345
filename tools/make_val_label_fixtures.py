#!/usr/bin/env python3
"""Make the ImageNet devkit-style `meta.mat` fixtures read by `deit-pipe shard --val-labels`
(tests/fixtures/val_labels/). The devkit's `data/meta.mat` holds a struct array `synsets`
(one entry per WordNet synset: ILSVRC2012_ID, WNID, words, gloss, num_children, children,
wordnet_height, num_train_images); `ILSVRC2012_validation_ground_truth.txt` gives, per val
image in file order, the ILSVRC2012_ID of its class, which is NOT sorted-wnid order. These
fixtures are tiny: 4 leaf synsets whose ID order differs from sorted wnid order, one parent
synset (ID 5, with children), written by scipy.io.savemat (MAT v5, as the devkit's file)
both zlib-compressed and not.

Usage: python3 tools/make_val_label_fixtures.py [OUT_DIR]   (needs numpy and scipy;
tested with numpy 2.4.6, scipy 1.17.1). Tests read the files; they never run Python.
"""
import os
import sys

import numpy as np
import scipy.io

# (ILSVRC2012_ID, WNID, words): IDs in the devkit's order, deliberately not sorted by wnid.
LEAVES = [
    (1, "n01751748", "sea snake"),
    (2, "n01440764", "tench, Tinca tinca"),
    (3, "n01484850", "great white shark"),
    (4, "n01443537", "goldfish, Carassius auratus"),
]
PARENT = (5, "n01439121", "cyprinid")


def synsets():
    dt = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    rows = []
    for i, w, words in LEAVES:
        rows.append((np.array([[i]], dtype=np.float64), w, words, "a fish or a snake",
                     np.array([[0]], dtype=np.float64), np.zeros((1, 0)),
                     np.array([[0]], dtype=np.float64), np.array([[1300]], dtype=np.float64)))
    i, w, words = PARENT
    rows.append((np.array([[i]], dtype=np.float64), w, words, "a family of fish",
                 np.array([[2]], dtype=np.float64), np.array([[2, 4]], dtype=np.float64),
                 np.array([[1]], dtype=np.float64), np.array([[2600]], dtype=np.float64)))
    arr = np.empty((len(rows), 1), dtype=dt)
    for k, r in enumerate(rows):
        arr[k, 0] = r
    return arr


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "tests", "fixtures", "val_labels")
    os.makedirs(out, exist_ok=True)
    s = synsets()
    scipy.io.savemat(os.path.join(out, "meta.mat"), {"synsets": s}, do_compression=True)
    scipy.io.savemat(os.path.join(out, "meta_uncompressed.mat"), {"synsets": s},
                     do_compression=False)
    # Check the files read back as the devkit's readers (torchvision) read them.
    for name in ("meta.mat", "meta_uncompressed.mat"):
        m = scipy.io.loadmat(os.path.join(out, name), squeeze_me=True)["synsets"]
        got = [(int(r[0]), str(r[1])) for r in m]
        assert got == [(i, w) for i, w, _ in LEAVES] + [PARENT[:2]], got


if __name__ == "__main__":
    main()
