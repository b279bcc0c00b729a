"""Clock faults: agents whose wall clock jumps an hour either way or runs ten times fast.

Expiry is decided by ``CLOCK_BOOTTIME``, which wall-clock changes (``date``, NTP steps, a bad
RTC) cannot move, so such agents neither take a live lease early nor keep theirs too long.
Debian's ``faketime`` fakes the wall clock of each agent process; its monotonic clocks are left
alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``), which is what a wall-clock fault is.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from dibs.store.local import LocalStore
from tests.conftest import Cli, store_dir
from tests.faults.history import check

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
TTL = 1.5

needs_faketime = pytest.mark.skipif(
    not os.path.exists(LIBFAKETIME) and os.environ.get("CI") != "true",
    reason="Debian's faketime is not installed (apt-get install faketime); CI installs it",
)


def faked(spec: str) -> dict[str, str]:
    return {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME": spec,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


@needs_faketime
@pytest.mark.parametrize("spec", ["+1h", "-1h", "+0 x10"])
def test_wall_clock_faults_neither_shorten_nor_extend_leases(
    cli: Cli, repo: Path, spec: str
) -> None:
    """A skewed agent cannot take a live lease, and its own lease lasts its ttl, no more."""
    honest = cli.register("honest")
    skewed = {**cli.register("skewed"), **faked(spec)}
    assert 0 == cli("claim", "issue:held", "--ttl", str(TTL), env=honest).returncode
    refused = cli("claim", "issue:held", env=skewed)
    assert 3 == refused.returncode, refused.stderr
    assert 0 == cli("claim", "issue:own", "--ttl", str(TTL), env=skewed).returncode
    taken_at = time.monotonic()
    early = cli("claim", "issue:own", env=honest)
    if time.monotonic() - taken_at < TTL:
        assert 3 == early.returncode, "a skewed agent's lease ended early"
    time.sleep(max(0.0, TTL + 0.2 - (time.monotonic() - taken_at)))
    late = cli("claim", "issue:own", env=honest)
    assert 0 == late.returncode, "a skewed agent's lease outlived its ttl"
    check(LocalStore(store_dir(repo)).events()).assert_clean()
    walls = [e["wall"] for e in cli.jsonl("log", "--agent", "skewed", "--op", "acquire")]
    if spec != "+0 x10":
        # The fault really fired: the skewed agent's events carry its faked wall time.
        honest_wall = cli.jsonl("log", "--agent", "honest", "--op", "acquire")[0]["wall"]
        assert walls[0][:13] != honest_wall[:13]


@needs_faketime
def test_faketime_really_fakes_the_wall_clock() -> None:
    """The fault is real: under faketime the wall clock is an hour off, the boot clock is not."""
    code = "import time; print(time.time(), time.clock_gettime(time.CLOCK_BOOTTIME))"
    real = subprocess.run(["python3", "-c", code], capture_output=True, text=True, check=True)
    fake = subprocess.run(
        ["python3", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **faked("+1h")},
    )
    (real_wall, real_boot), (fake_wall, fake_boot) = (
        map(float, out.stdout.split()) for out in (real, fake)
    )
    assert 3500 < fake_wall - real_wall < 3700
    assert abs(fake_boot - real_boot) < 5
