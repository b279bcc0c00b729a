"""The local store on disk: torn tails, damage, checkpoints, segments, failed writes."""

from __future__ import annotations

import json
import marshal
import os
from pathlib import Path

import pytest

from dibs.ground.errors import Conflict, CorruptLog, LogBehind, StoreIOError
from dibs.service import Coordinator
from dibs.store.local import LocalStore
from tests.conftest import FakeClock, FakeLiveness


def open_store(root: Path, clock: FakeClock, **kw: int) -> LocalStore:
    return LocalStore(root, clock=clock, **kw)


def use(store: LocalStore, agent: str = "a1") -> Coordinator:
    c = Coordinator(store, liveness=FakeLiveness())
    c.register(agent)
    return c


def segment(root: Path) -> Path:
    return max((root / "log").iterdir())


def test_store_lives_in_its_folder_with_a_lock_file(tmp_path: Path, clock: FakeClock) -> None:
    """The first write creates the folder, the lock file and the first segment."""
    root = tmp_path / "dibs"
    use(open_store(root, clock))
    assert (root / "lock").is_file()
    assert ["00000000000000000001.jsonl"] == [p.name for p in (root / "log").iterdir()]


def test_every_line_is_a_schema_1_event(tmp_path: Path, clock: FakeClock) -> None:
    """The log is JSONL: one event per line, with the documented fields."""
    root = tmp_path / "dibs"
    use(open_store(root, clock)).claim(["issue:X"], note="why")
    lines = segment(root).read_text().splitlines()
    events = [json.loads(line) for line in lines]
    acquire = events[-1]
    assert 1 == acquire["schema_version"]
    assert {
        "seq",
        "op",
        "resource",
        "agent",
        "mode",
        "token",
        "ttl",
        "wall",
        "mono",
        "boot",
    } <= set(acquire)
    assert "why" == acquire["note"]


def test_torn_last_line_is_truncated_before_the_next_append(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A crash mid-write leaves a line without its newline: the next writer cuts it off."""
    root = tmp_path / "dibs"
    use(open_store(root, clock)).claim(["issue:X"])
    path = segment(root)
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"schema_version":1,"seq":3,"op":"acq')
    store = open_store(root, clock)
    c = Coordinator(store, liveness=FakeLiveness())
    c.register("a2")
    assert any("torn tail of 37 bytes" in note for note in store.repairs)
    data = path.read_bytes()
    assert data.startswith(good)
    assert [1, 2, 3] == [json.loads(line)["seq"] for line in data.splitlines()]


def test_incomplete_transaction_at_the_tail_is_dropped_whole(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Half of an all-or-nothing claim never survives a crash."""
    root = tmp_path / "dibs"
    store = open_store(root, clock)
    use(store).claim(["issue:A", "issue:B", "issue:C"])
    path = segment(root)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))  # the crash lost the batch's last line
    reader = open_store(root, clock)
    assert [] == sorted(reader.read()[0].claims)  # readers never apply half a transaction
    Coordinator(reader, liveness=FakeLiveness()).register("a2")
    ops = [json.loads(line)["op"] for line in path.read_bytes().splitlines()]
    assert ["register", "register"] == ops


def test_damaged_line_inside_the_log_is_a_hard_error(tmp_path: Path, clock: FakeClock) -> None:
    """A corrupt line that is not the torn tail names the file and line and stops everything."""
    root = tmp_path / "dibs"
    c = use(open_store(root, clock))
    c.claim(["issue:X"])
    c.claim(["issue:Y"])
    path = segment(root)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"this is": "not an event"\n'
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptLog) as info:
        open_store(root, clock).read()
    assert f"{path} line 2" in info.value.message
    assert "dibs doctor" in (info.value.hint or "")
    assert lines[2] == path.read_bytes().splitlines(keepends=True)[2]  # nothing was dropped


def test_deleting_the_checkpoint_loses_nothing(tmp_path: Path, clock: FakeClock) -> None:
    """The checkpoint is a cache: without it the state is rebuilt from the log, identically."""
    root = tmp_path / "dibs"
    store = open_store(root, clock, checkpoint_bytes=1)
    c = use(store)
    for n in range(20):
        c.claim([f"issue:{n}"])
    assert (root / "checkpoint").exists()
    expected = store.read()[0].to_json()
    (root / "checkpoint").unlink()
    assert expected == open_store(root, clock).read()[0].to_json()


def test_opening_starts_from_the_checkpoint(tmp_path: Path, clock: FakeClock) -> None:
    """Opening reads the checkpoint and only the tail after it (the head can be unreadable)."""
    root = tmp_path / "dibs"
    store = open_store(root, clock, checkpoint_bytes=1)
    c = use(store)
    for n in range(5):
        c.claim([f"issue:{n}"])
    expected = store.read()[0].to_json()
    path = segment(root)
    data = bytearray(path.read_bytes())
    data[2:10] = b"XXXXXXXX"  # damage the first line: only a full replay would see it
    path.write_bytes(bytes(data))
    assert expected == open_store(root, clock).read()[0].to_json()


def test_log_cut_back_behind_its_checkpoint_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    """A log shorter than its checkpoint lost acknowledged events: opening it is refused.

    (A checkpoint is written only after the log is synced up to it, so power loss alone
    cannot leave the checkpoint ahead; see tests/faults/test_power_loss.py.)
    """
    root = tmp_path / "dibs"
    store = open_store(root, clock, checkpoint_bytes=1)
    c = use(store)
    for n in range(3):
        c.claim([f"issue:{n}"])
    path = segment(root)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))  # an acknowledged claim is gone
    with pytest.raises(LogBehind) as caught:
        open_store(root, clock).read()
    assert (3, 4) == (caught.value.details["ends"], caught.value.details["reached"])


def test_checkpoint_not_matching_a_longer_log_is_ignored(tmp_path: Path, clock: FakeClock) -> None:
    """A checkpoint that does not fit a log at least as long as it is a cache: replayed."""
    root = tmp_path / "dibs"
    store = open_store(root, clock, checkpoint_bytes=1)
    c = use(store)
    for n in range(3):
        c.claim([f"issue:{n}"])
    index = root / "checkpoint"
    raw = index.read_bytes()
    # The same checkpoint, pointing one byte off the end of its event: it no longer fits.
    header, body = raw.split(b"\n", 1)
    data = marshal.loads(body)  # noqa: S302 -- the test's own checkpoint
    data["offset"] -= 1
    index.write_bytes(header + b"\n" + marshal.dumps(data, 4))
    state = open_store(root, clock).read()[0]
    assert 4 == state.seq
    assert ["issue:0", "issue:1", "issue:2"] == sorted(state.claims)


def test_a_checkpoint_whose_path_index_lost_a_claim_is_found_and_rewritten(
    tmp_path: Path, clock: FakeClock
) -> None:
    """The checkpoint carries the derived path index beside the claims, and openers trust it.
    An index that lost a claim's entry would let them grant an overlapping path claim: check
    reports it (it once compared the claims alone and found nothing), repair rewrites it."""
    root = tmp_path / "dibs"
    store = open_store(root, clock)
    use(store).claim(["path:src/**"])
    store.read()
    store.write_checkpoint()
    index = root / "checkpoint"
    header, body = index.read_bytes().split(b"\n", 1)
    data = marshal.loads(body)  # noqa: S302 -- the test's own checkpoint
    data["state"]["indexes"]["prefixes"] = {}
    index.write_bytes(header + b"\n" + marshal.dumps(data, 4))
    doctor = open_store(root, clock)
    assert ["checkpoint-differs"] == [f["kind"] for f in doctor.check()]
    assert ["checkpoint-differs"] == [f["kind"] for f in doctor.check(repair=True)]
    assert [] == doctor.check()
    with pytest.raises(Conflict, match="held by a1"):
        use(open_store(root, clock), "a2").claim(["path:src/app.py"])


def test_segments_roll_over_and_replay_across(tmp_path: Path, clock: FakeClock) -> None:
    """A full segment is followed by a new one named by its first seq; readers follow."""
    root = tmp_path / "dibs"
    store = open_store(root, clock, segment_bytes=600, checkpoint_bytes=10**9)
    c = use(store)
    for n in range(12):
        c.claim([f"issue:{n}"])
    names = sorted(p.name for p in (root / "log").iterdir())
    assert len(names) > 2
    assert "00000000000000000001.jsonl" == names[0]
    fresh = open_store(root, clock)
    assert store.read()[0].to_json() == fresh.read()[0].to_json()
    assert list(range(1, 14)) == [e["seq"] for e in fresh.events()]
    assert [11, 12, 13] == [e["seq"] for e in fresh.tail(3)]


def test_failed_write_is_cut_back_and_not_acknowledged(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (disk full) fails closed and leaves no bytes behind."""
    root = tmp_path / "dibs"
    store = open_store(root, clock)
    c = use(store)
    size = segment(root).stat().st_size
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        if len(data) > 20:
            real_write(fd, data[:20])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(StoreIOError, match="No space left on device; nothing was done"):
        c.claim(["issue:X"])
    monkeypatch.undo()
    assert size == segment(root).stat().st_size
    assert {} == open_store(root, clock).read()[0].claims
    assert "issue:X" == c.claim(["issue:X"])[0]["resource"]


def test_failed_sync_is_not_acknowledged(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When fdatasync fails, the claim is not reported as done, and the store stays usable."""
    root = tmp_path / "dibs"
    store = open_store(root, clock)
    c = use(store)

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(StoreIOError, match="Input/output error; the operation was not ackn"):
        c.claim(["issue:X"])
    monkeypatch.undo()
    assert [] == [f for f in open_store(root, clock).check() if f["kind"] != "no-checkpoint"]
    assert "issue:Y" == c.claim(["issue:Y"])[0]["resource"]


def test_doctor_rebuilds_a_damaged_checkpoint(tmp_path: Path, clock: FakeClock) -> None:
    """check() reports a checkpoint that does not match; repair rewrites it."""
    root = tmp_path / "dibs"
    store = open_store(root, clock, checkpoint_bytes=1)
    c = use(store)
    c.claim(["issue:X"])
    (root / "checkpoint").write_text('{"schema_version": 1, "segment": "nope"}')
    findings = open_store(root, clock).check()
    assert ["checkpoint-invalid"] == [f["kind"] for f in findings]
    assert [True] == [f["repaired"] for f in open_store(root, clock).check(repair=True)]
    assert [] == open_store(root, clock).check()


def test_doctor_reports_and_repairs_a_torn_tail(tmp_path: Path, clock: FakeClock) -> None:
    """A torn tail is reported (not silently dropped) and removed by --repair."""
    root = tmp_path / "dibs"
    use(open_store(root, clock)).claim(["issue:X"])
    with open(segment(root), "ab") as f:
        f.write(b'{"schema_ver')
    kinds = [f["kind"] for f in open_store(root, clock).check()]
    assert "torn-tail" in kinds
    open_store(root, clock).check(repair=True)
    assert not segment(root).read_bytes().endswith(b"ver")
    assert [] == [f for f in open_store(root, clock).check() if f["kind"] == "torn-tail"]


def test_full_segments_are_sealed_read_only(tmp_path: Path, clock: FakeClock) -> None:
    """A rolled-over segment loses its write bits: readers learn of the rollover from fstat."""
    root = tmp_path / "dibs"
    c = use(open_store(root, clock, segment_bytes=600))
    for n in range(8):
        c.claim([f"issue:{n}"])
    *old, current = sorted((root / "log").iterdir())
    assert old
    assert all(0o444 == p.stat().st_mode & 0o777 for p in old)
    assert current.stat().st_mode & 0o200


def test_a_seal_without_a_next_segment_is_finished_by_the_next_writer(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A crash between sealing and creating the next segment: the next writer rolls over."""
    root = tmp_path / "dibs"
    c = use(open_store(root, clock))
    c.claim(["issue:A"])
    first = segment(root)
    first.chmod(0o444)  # sealed, and the process died before creating the next segment
    reader = open_store(root, clock)
    assert ["issue:A"] == sorted(reader.read()[0].claims)
    Coordinator(open_store(root, clock), liveness=FakeLiveness()).register("a2")
    assert first != segment(root)
    assert ["issue:A"] == sorted(reader.read()[0].claims)
    assert 3 == reader.read()[0].seq


def test_doctor_reports_damage_it_cannot_repair(tmp_path: Path, clock: FakeClock) -> None:
    """Damage inside the log is a finding naming file and line; --repair does not guess."""
    root = tmp_path / "dibs"
    c = use(open_store(root, clock))
    c.claim(["issue:X"])
    c.claim(["issue:Y"])
    path = segment(root)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b"not json\n"
    path.write_bytes(b"".join(lines))
    [finding] = open_store(root, clock).check(repair=True)
    assert ("corrupt-log", False, False) == (
        finding["kind"],
        finding["repaired"],
        finding.get("repairable"),
    )
    assert f"{path} line 2" in finding["message"]
    assert b"not json\n" == path.read_bytes().splitlines(keepends=True)[1]


def test_polling_events_yields_each_new_event_once_across_segments(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Following the log (events after the last one seen) works across segment rollovers."""
    root = tmp_path / "dibs"
    writer = use(open_store(root, clock, segment_bytes=700))
    reader = open_store(root, clock, segment_bytes=700)
    seen: list[int] = []
    last = 0
    for n in range(15):
        writer.claim([f"issue:{n}"])
        for event in reader.events(last):
            seen.append(event["seq"])
            last = event["seq"]
    assert list(range(1, 17)) == seen
    assert len(list((root / "log").iterdir())) > 3


def test_events_reads_transactions_longer_than_a_read(tmp_path: Path, clock: FakeClock) -> None:
    """A transaction spanning several 1 MiB reads comes out whole, once, in order (and is not
    re-parsed for every read: scanning resumes only when the buffer has doubled)."""
    from dibs.core.events import new_event
    from dibs.core.leases import Decision

    store = open_store(tmp_path / "store", clock)
    dibs = Coordinator(store, liveness=FakeLiveness())
    dibs.register("bulk")
    note = "x" * 200

    def bulk(_state: object, ctx: object) -> Decision:
        now = ctx.now  # type: ignore[attr-defined]
        return Decision(
            [new_event("record", now, table="t", key=str(k), value=note) for k in range(12_000)]
        )

    dibs.transact(bulk)
    dibs.claim(["issue:after"])
    seqs = [e["seq"] for e in LocalStore(tmp_path / "store", clock=clock).events(0)]
    assert list(range(1, 12_003)) == seqs
    assert (tmp_path / "store" / "log").stat().st_size > 0


def test_missing_sealed_segment_is_refused_by_the_high_water_mark(
    tmp_path: Path, clock: FakeClock
) -> None:
    """Sealing a segment records how far the log reached: losing sealed segments (and the
    checkpoint, which may be deleted) is refused, not replayed as a shorter history."""
    root = tmp_path / "dibs"
    c = use(open_store(root, clock, segment_bytes=600, checkpoint_bytes=10**9))
    for n in range(12):
        c.claim([f"issue:{n}"])
    names = sorted((root / "log").iterdir())
    assert len(names) > 3
    for path in names[-2:]:  # the open segment and the last sealed one
        path.unlink()
    (root / "checkpoint").unlink(missing_ok=True)
    with pytest.raises(LogBehind) as caught:
        open_store(root, clock).read()
    assert caught.value.details["reached"] > caught.value.details["ends"]


def test_log_cut_back_under_an_open_store_is_refused_on_its_next_read(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A process that has the store open notices the log shrink behind its checkpoint too."""
    root = tmp_path / "dibs"
    store = open_store(root, clock, checkpoint_bytes=1)
    c = use(store)
    for n in range(5):
        c.claim([f"issue:{n}"])
    path = segment(root)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))
    with pytest.raises(LogBehind):
        store.read()
    with pytest.raises(LogBehind):
        c.claim(["issue:late"])
