#!/usr/bin/env python3
"""Check that TensorBoard reads the event files of `deit-pipe train --tensorboard`.

Usage:
    pip install tensorboard        # tested with tensorboard 2.21.0
    python tools/check_tensorboard_events.py RUN_DIR/tb [EXPECTED_EPOCHS]

Loads RUN_DIR/tb with TensorBoard's own EventAccumulator (the code `tensorboard
--logdir` runs), prints every scalar tag with its steps and values, and fails (exit 1)
unless the epoch tags main.py's log.txt has (train/loss, train/lr, test/loss, test/acc1,
test/acc5) and the step tags (step/loss, step/lr) are there, with EXPECTED_EPOCHS points
for the epoch tags when given. TensorBoard checks each record's CRCs while reading and
reports a corrupt file as data loss.
"""

import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    logdir = sys.argv[1]
    expected = int(sys.argv[2]) if len(sys.argv) > 2 else None
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    ok = True
    for tag in sorted(tags):
        events = acc.Scalars(tag)
        points = ", ".join(f"{e.step}:{e.value:.6g}" for e in events)
        print(f"{tag}: {len(events)} points [{points}]")
    for tag in ["train/loss", "train/lr", "test/loss", "test/acc1", "test/acc5", "step/loss", "step/lr"]:
        if tag not in tags:
            print(f"MISSING {tag}")
            ok = False
        elif expected is not None and not tag.startswith("step/") and len(acc.Scalars(tag)) != expected:
            print(f"{tag}: expected {expected} points")
            ok = False
    print("OK: TensorBoard reads the scalars" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
