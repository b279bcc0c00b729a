"""A log cut back behind what it is known to have reached (a restored backup, a truncated disk):
the installed CLI refuses it, `dibs doctor --repair` keeps the evidence, tokens never go back."""

from __future__ import annotations

import shutil
from pathlib import Path

from dibs.service import Coordinator
from tests.conftest import Cli, store_dir


def _history(repo: Path, claims: int, name: str = "history") -> int:
    """*claims* claims and releases (in this process: quick); the highest token granted."""
    with Coordinator.open(repo) as dibs:
        dibs.register(name, ttl=3600)
        token = 0
        for n in range(claims):
            token = dibs.claim([f"issue:H-{n}"])[0]["token"]
            dibs.release()
        return token


def _cut_log(repo: Path, keep_lines: int) -> Path:
    """Keep the first *keep_lines* lines of the log (whole lines, as an older copy has)."""
    [segment] = (store_dir(repo) / "log").iterdir()
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(b"".join(lines[:keep_lines]))
    return segment


def test_log_cut_back_behind_its_checkpoint_is_refused_and_nothing_is_granted(
    cli: Cli, repo: Path
) -> None:
    """Every command that opens the store exits 1 naming the missing events and the repair
    command; no claim is granted and nothing is appended."""
    _history(repo, 150)
    env = cli.register("a1")
    segment = _cut_log(repo, 20)
    size = segment.stat().st_size
    status = cli("status")
    assert 1 == status.returncode
    assert "ends at seq 20" in status.stderr
    assert "dibs doctor --repair" in status.stderr
    claim = cli("claim", "issue:new", "--json", env=env)
    assert 1 == claim.returncode
    assert '"error": "log-behind"' in claim.stdout
    assert size == segment.stat().st_size


def test_doctor_repair_keeps_the_evidence_and_tokens_continue_above_every_one_granted(
    cli: Cli, repo: Path
) -> None:
    """`dibs doctor` reports and changes nothing; `--repair` keeps the old checkpoint aside
    (same bytes), logs a `log-repair`, and the next grant's token is above every earlier one."""
    highest = _history(repo, 150)
    checkpoint = store_dir(repo) / "checkpoint"
    before = checkpoint.read_bytes()
    _cut_log(repo, 20)
    report = cli("doctor")
    assert 1 == report.returncode
    assert "log-behind: the log ends at seq 20" in report.stdout
    assert before == checkpoint.read_bytes()
    assert not (store_dir(repo) / "evidence").exists()
    repaired = cli("doctor", "--repair")
    assert 0 == repaired.returncode, repaired.stdout + repaired.stderr
    [kept] = (store_dir(repo) / "evidence").iterdir()
    assert before == (kept / "checkpoint").read_bytes()
    assert 0 == cli("doctor").returncode
    env = cli.register("a1")
    [grant] = cli.json("claim", "issue:H-3", env=env)
    assert grant["token"] > highest
    [repair] = cli.jsonl("log", "--op", "log-repair")
    assert 20 == repair["details"]["ended"]


def test_restored_backup_of_log_and_checkpoint_is_refused_by_the_high_water_mark(
    cli: Cli, repo: Path
) -> None:
    """A backup of the log and its checkpoint, taken before more than a block of tokens was
    granted and restored afterwards, is consistent in itself: the high-water file still
    tells, and the repair continues tokens above every one granted after the backup."""
    _history(repo, 150)
    backup = repo.parent / "backup"
    shutil.copytree(store_dir(repo) / "log", backup / "log")
    shutil.copy2(store_dir(repo) / "checkpoint", backup / "checkpoint")
    highest = _history(repo, 1100, "more")  # past the first reserved block of 1,024 tokens
    shutil.rmtree(store_dir(repo) / "log")
    shutil.copytree(backup / "log", store_dir(repo) / "log")
    shutil.copy2(backup / "checkpoint", store_dir(repo) / "checkpoint")
    status = cli("status")
    assert 1 == status.returncode
    assert "high-water shows it reached" in status.stderr
    assert 0 == cli("doctor", "--repair").returncode
    env = cli.register("a1")
    [grant] = cli.json("claim", "issue:after-restore", env=env)
    assert grant["token"] > highest


def test_deleted_log_with_its_checkpoint_left_is_refused(cli: Cli, repo: Path) -> None:
    """An emptied log folder does not start a fresh history under the old checkpoint."""
    _history(repo, 150)
    shutil.rmtree(store_dir(repo) / "log")
    out = cli("status")
    assert 1 == out.returncode
    assert "ends at seq 0" in out.stderr
