"""`dibs demo` (what `make demo` runs) tells a true story."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import BIN


def test_the_demo_runs_and_its_story_holds() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    out = subprocess.run(
        [str(BIN / "dibs"), "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert 0 == out.returncode, out.stderr
    outcome = json.loads(out.stdout[out.stdout.rindex("\n{\n") + 1 :])
    assert 8 == len(outcome["done"])  # every issue done, each by one agent
    assert ["holder-dead"] == [e["reason"] for e in outcome["evictions"]]
    assert len(outcome["tokens"]) == len(set(outcome["tokens"]))
    assert {"WT-1: the work", "WT-3: the work"} <= set(outcome["landed"])
    assert "WT-2: the work" not in outcome["landed"]  # killed before it landed
    assert "agent dead" in out.stdout
    assert "dead-agent: wt-2's process" in out.stdout
