"""Recovery time of the local store after a crash, per 100,000 log records.

    python bench/recovery.py [--records N]

Builds a log of N records (default 100,000: claims and releases by ten agents), then times:

* a crash that also lost the checkpoint: opening replays the whole log;
* a crash with a torn tail and the checkpoint intact: the first writer repairs the tail;
* `dibs doctor` (every line verified, a full replay compared with the checkpoint);

each as milliseconds per 100,000 records and as a ratio to `python -c pass` measured in the
same run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.service import Coordinator
from dibs.store.local import LocalStore


def build(root: Path, records: int) -> None:
    store = LocalStore(root)
    dibs = Coordinator(store)
    for a in range(10):
        dibs.register(f"agent-{a}", ttl=86400)
    done = 10

    def batch(start: int, count: int) -> Any:
        def decide(state: Any, now: Any) -> Decision:
            events = []
            token = state.last_token
            for k in range(start, start + count, 2):
                token += 1
                fields = {"resource": f"issue:old-{k}", "agent": f"agent-{k % 10}", "token": token}
                events.append(new_event("acquire", now, mode="exclusive", ttl=90.0, **fields))
                events.append(new_event("release", now, mode="exclusive", **fields))
            return Decision(events)

        return decide

    while done < records:
        count = min(2000, records - done)
        store.transact(batch(done, count - count % 2 or 2))
        done += count - count % 2 or 2
    store.write_checkpoint()
    store.close()


def timed(fn: Any, runs: int = 5) -> float:
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    per = 100_000 / args.records
    with tempfile.TemporaryDirectory(prefix="dibs-recovery-") as tmp:
        root = Path(tmp) / "dibs"
        build(root, args.records)
        index = root / "checkpoint"
        saved = index.read_bytes()
        segment = max((root / "log").iterdir())

        def no_checkpoint() -> None:
            index.unlink(missing_ok=True)
            LocalStore(root).read()

        def torn_tail() -> None:
            index.write_bytes(saved)
            with open(segment, "ab") as f:
                f.write(b'{"schema_version":1,"seq":')
            store = LocalStore(root)
            Coordinator(store).register(f"after-{time.monotonic_ns()}")
            store.close()

        def doctor() -> None:
            LocalStore(root).check()

        base = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))
        rows = [
            ("open after a crash that lost the checkpoint (full replay)", timed(no_checkpoint)),
            ("first write after a crash with a torn tail (checkpoint kept)", timed(torn_tail)),
            ("`dibs doctor` full verification", timed(doctor, runs=3)),
        ]
    print(f"log of {args.records:,} records; python -c pass = {base * 1e3:.1f} ms")
    print("| recovery (log of 100,000 records) | ms | / python -c pass |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * per * 1e3:.0f} | {seconds * per / base:.1f}x |")


if __name__ == "__main__":
    main()
