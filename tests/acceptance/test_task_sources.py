"""Task sources read as their own tools read them: beads exactly as `bd ready`, CCPM epics as
CCPM writes them, write-back to both, the `[events]` commands, roles, and bad tasks skipped.

beads rules are those of beads v1.0.5 (github.com/steveyegge/beads at fbcee6c6); each
expectation names the function of beads' source it follows. CCPM files follow CCPM at 7d7e4623
(skill/ccpm/references/conventions.md) and its task template (ccpm/commands/pm/
epic-decompose.md before v2), template comments included.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.acceptance.test_queue import branch
from tests.conftest import Cli, git

FIXTURES = Path(__file__).parent.parent / "fixtures" / "beads"


@pytest.fixture
def cli(repo: Path) -> Cli:
    out = Cli(repo, env={"DIBS_BD": "dibs-test-no-such-bd"})
    assert 0 == out("init").returncode
    return out


def ready_ids(cli: Cli, *args: str, env: dict[str, str] | None = None) -> list[str]:
    out = cli("ready", "--json", *args, env=env)
    assert 0 == out.returncode, out.stderr
    assert "skipped" not in out.stderr, out.stderr
    return [t["id"] for t in json.loads(out.stdout)["ready"]]


def beads(repo: Path, lines: list[dict[str, object]] | str) -> None:
    folder = repo / ".beads"
    folder.mkdir(exist_ok=True)
    text = lines if isinstance(lines, str) else "".join(json.dumps(x) + "\n" for x in lines)
    (folder / "issues.jsonl").write_text(text)


# beads: real exports -----------------------------------------------------------------------


def test_beads_real_export_children_of_an_open_epic_are_ready(repo: Path, cli: Cli) -> None:
    """apache/tinkerpop's export (bd 1.0.x; descriptions dropped): children of the open epic
    are ready (blocked_state.go markBlockedTemplateForIssues: a parent blocks only when it is
    blocked), ordered priority then newest first (ready_work.go buildReadyWorkOrder)."""
    beads(repo, (FIXTURES / "tinkerpop.jsonl").read_text())
    assert ["tinkerpop-usp.2", "tinkerpop-usp.1", "tinkerpop-usp"] == ready_ids(cli)


def test_beads_real_export_with_nanosecond_times_and_offsets(repo: Path, cli: Cli) -> None:
    """antiwork/gumroad's export (bd 0.x: no _type, Go's nanoseconds and -06:00 offsets):
    in_progress is not ready (cmd/bd/ready.go passes Status "open"); newest first."""
    beads(repo, (FIXTURES / "gumroad.jsonl").read_text())
    assert ["gumroad-4ay", "gumroad-6xi", "gumroad-bod"] == ready_ids(cli)


# beads: one issue per status and dependency type of the current schema --------------------


def issue(issue_id: str, status: str = "open", **extra: object) -> dict[str, object]:
    base: dict[str, object] = {"_type": "issue", "id": issue_id, "title": issue_id}
    base.update(status=status, priority=2, issue_type="task")
    base["created_at"] = "2026-01-01T00:00:00Z"
    return {**base, **extra}


def dep(issue_id: str, target: str, kind: str, metadata: str = "{}") -> dict[str, object]:
    return {"issue_id": issue_id, "depends_on_id": target, "type": kind, "metadata": metadata}


def deps(issue_id: str, *targets: tuple[str, str], **extra: object) -> dict[str, object]:
    return issue(issue_id, dependencies=[dep(issue_id, t, k) for t, k in targets], **extra)


SCHEMA_FIXTURE = [
    # internal/types/types.go: Status* constants. Only open is ready (cmd/bd/ready.go).
    issue("st-open"),
    issue("st-in-progress", "in_progress"),
    issue("st-blocked", "blocked"),
    issue("st-deferred", "deferred"),
    issue("st-closed", "closed"),
    issue("st-pinned", "pinned"),
    issue("st-hooked", "hooked"),
    issue("st-tombstone", "tombstone"),  # cmd/bd/import.go skips these rows
    # blocked_state.go markBlockedTemplateForIssues: blocks and conditional-blocks block until
    # the target is closed or pinned; a missing target does not block (the JOIN finds none).
    deps("blocks-open", ("st-in-progress", "blocks")),
    deps("blocks-closed", ("st-closed", "blocks")),
    deps("blocks-pinned", ("st-pinned", "blocks")),
    deps("blocks-deferred", ("st-deferred", "blocks")),
    deps("blocks-missing", ("no-such-issue", "blocks")),
    deps("conditional-open", ("st-open", "conditional-blocks")),
    deps("conditional-closed", ("st-closed", "conditional-blocks")),
    # Types that never block.
    deps("related", ("st-open", "related")),
    deps("discovered", ("st-open", "discovered-from")),
    deps("tracks", ("st-open", "tracks")),
    deps("relates", ("st-open", "relates-to")),
    deps("duplicates", ("st-open", "duplicates")),
    deps("supersedes", ("st-open", "supersedes")),
    deps("until", ("st-open", "until")),
    deps("caused", ("st-open", "caused-by")),
    # parent-child: a child is blocked only when its parent is blocked, to any depth.
    issue("epic-open", issue_type="epic"),
    deps("child-of-open", ("epic-open", "parent-child")),
    deps("epic-blocked", ("st-in-progress", "blocks"), issue_type="epic"),
    deps("child-of-blocked", ("epic-blocked", "parent-child")),
    deps("grandchild-of-blocked", ("child-of-blocked", "parent-child")),
    # waits-for (waitsForGateBlockedSQL): blocked while a child of the target is open; with
    # {"gate": "any-children"} free once one child is closed.
    issue("spawner"),
    deps("spawn-1", ("spawner", "parent-child")),
    deps("spawn-2", ("spawner", "parent-child"), status="closed"),
    deps("waits-all", ("spawner", "waits-for")),
    issue(
        "waits-any",
        dependencies=[dep("waits-any", "spawner", "waits-for", '{"gate":"any-children"}')],
    ),
    issue("lonely-spawner"),
    deps("waits-no-children", ("lonely-spawner", "waits-for")),
    # ready_work.go buildReadyWorkPredicates: defer_until, pinned, ephemeral, excluded types,
    # and getChildrenOfDeferredParentsInTx.
    issue("deferred-future", defer_until="2999-01-01T00:00:00Z"),
    issue("deferred-past", defer_until="2001-01-01T00:00:00Z"),
    deps("child-of-deferred", ("deferred-future", "parent-child")),
    issue("pinned-flag", pinned=True),
    issue("wisp", ephemeral=True),
    issue("type-gate", issue_type="gate"),
    issue("type-molecule", issue_type="molecule"),
    issue("type-message", issue_type="message"),
    issue("type-merge-request", issue_type="merge-request"),
    issue("type-agent", issue_type="agent"),
    issue("type-role", issue_type="role"),
    issue("type-rig", issue_type="rig"),
    issue("type-bug", issue_type="bug"),
    issue("type-decision", issue_type="decision"),
]
EXPECTED_READY = {
    "st-open",
    "blocks-closed",
    "blocks-pinned",
    "blocks-missing",
    "conditional-closed",
    "related",
    "discovered",
    "tracks",
    "relates",
    "duplicates",
    "supersedes",
    "until",
    "caused",
    "epic-open",
    "child-of-open",
    "spawner",
    "spawn-1",
    "waits-any",
    "lonely-spawner",
    "waits-no-children",
    "deferred-past",
    "type-bug",
    "type-decision",
}


def test_beads_each_status_and_dependency_type_as_bd_ready(repo: Path, cli: Cli) -> None:
    """One issue per status, dependency type, gate, defer and type rule: dibs's ready set is
    the one derived from beads' source above, and memory records raise no warning."""
    memory = {"_type": "memory", "key": "style", "value": "tabs"}  # cmd/bd/export.go
    beads(repo, [*SCHEMA_FIXTURE, memory])
    out = cli("ready", "--all", "--json")
    assert 0 == out.returncode, out.stderr
    assert "" == out.stderr
    report = json.loads(out.stdout)
    assert [] == report["problems"]
    assert EXPECTED_READY == {t["id"] for t in report["ready"]}
    why = {t["id"]: t["why"] for t in report["tasks"]}
    assert ["parent epic-blocked is blocked"] == why["child-of-blocked"]
    assert ["parent child-of-blocked is blocked"] == why["grandchild-of-blocked"]
    assert ["waits for the children of spawner: spawn-1"] == why["waits-all"]
    assert ["done"] == why["st-closed"]
    assert ["status pinned"] == why["st-pinned"]
    assert "st-tombstone" not in why


def test_beads_order_priority_then_newest_then_id(repo: Path, cli: Cli) -> None:
    """ready_work.go buildReadyWorkOrder (bd ready's default --sort priority): priority
    ascending, created_at descending, id ascending; file position plays no part."""
    beads(
        repo,
        [
            issue("b-old", priority=1, created_at="2026-01-01T00:00:00Z"),
            issue("b-new", priority=1, created_at="2026-01-02T00:00:00Z"),
            issue("a-p0", priority=0, created_at="2025-01-01T00:00:00Z"),
            issue("z-same", priority=1, created_at="2026-01-02T00:00:00Z"),
            issue("c-same", priority=1, created_at="2026-01-02T00:00:00Z"),
        ],
    )
    assert ["a-p0", "b-new", "c-same", "z-same", "b-old"] == ready_ids(cli)


def test_a_beads_project_without_an_export_or_bd_says_how_to_read_it(repo: Path, cli: Cli) -> None:
    """Current beads keeps its data in Dolt: with neither bd nor the export, dibs says so."""
    (repo / ".beads").mkdir()
    out = cli("ready", "--json")
    assert 0 == out.returncode
    assert "bd export -o .beads/issues.jsonl" in "\n".join(json.loads(out.stdout)["problems"])


# beads through bd ---------------------------------------------------------------------------

FAKE_BD = """#!/bin/sh
# A stand-in for bd: answers list and ready from files, records every other call.
here=$(dirname "$0")
echo "$*" >> "$here/calls"
case "$1" in
  list) cat "$here/list.json" ;;
  ready) cat "$here/ready.json" ;;
  update|close)
    [ -f "$here/fail" ] && { echo "dolt: database is locked" >&2; exit 1; }
    echo '{}' ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def fake_bd(tmp_path: Path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    bd = folder / "bd"
    bd.write_text(FAKE_BD)
    bd.chmod(bd.stat().st_mode | stat.S_IXUSR)
    (folder / "calls").write_text("")
    listed = [issue("bd-a", priority=1), issue("bd-b", priority=1), issue("bd-c", "closed")]
    (folder / "list.json").write_text(json.dumps(listed))
    # bd's own answer: bd-b before bd-a (dibs takes bd's order, whatever it computes itself).
    (folder / "ready.json").write_text(json.dumps([listed[1], listed[0]]))
    return folder


def test_bd_on_path_is_asked_and_hears_of_hand_out_and_release(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """With bd on PATH dibs reads `bd list`/`bd ready` (no export needed) and tells bd when it
    hands a task out (update --status in_progress --assignee) and when it is let go."""
    folder = fake_bd(tmp_path)
    (repo / ".beads").mkdir()
    env = {"DIBS_BD": str(folder / "bd")}
    assert ["bd-b", "bd-a"] == ready_ids(cli, env=env)
    worker = {**cli.register("worker"), **env}
    assert "bd-b" == cli.json("next", env=worker)["id"]
    calls = (folder / "calls").read_text().splitlines()
    assert "update bd-b --status in_progress --assignee worker" in calls
    # bd now says in_progress, as dibs told it.
    listed = json.loads((folder / "list.json").read_text())
    listed[1]["status"] = "in_progress"
    (folder / "list.json").write_text(json.dumps(listed))
    assert 0 == cli("release", "issue:bd-b", env=worker).returncode
    calls = (folder / "calls").read_text().splitlines()
    assert "update bd-b --status open --assignee " in calls


def test_a_failing_tracker_never_blocks_the_claim_and_is_retried(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """bd refusing the update: the task is still handed out, the failure is reported, and a
    later CLI call delivers it (at least once)."""
    folder = fake_bd(tmp_path)
    (repo / ".beads").mkdir()
    (folder / "fail").write_text("")
    env = {**cli.register("worker"), "DIBS_BD": str(folder / "bd")}
    out = cli("next", "--json", env=env)
    assert 0 == out.returncode, out.stderr
    assert "bd-b" == json.loads(out.stdout)["id"]
    assert "database is locked" in out.stderr
    assert "will retry" in out.stderr
    (folder / "fail").unlink()
    assert 0 == cli("claim", "issue:other", env=env).returncode
    calls = (folder / "calls").read_text().splitlines()
    tries = [c for c in calls if c == "update bd-b --status in_progress --assignee worker"]
    assert 2 == len(tries)


def test_a_delivery_that_keeps_failing_is_given_up_after_five_attempts(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """Retried on each later call, then reported as given up (the outbox does not grow)."""
    folder = fake_bd(tmp_path)
    (repo / ".beads").mkdir()
    (folder / "fail").write_text("")
    env = {**cli.register("worker"), "DIBS_BD": str(folder / "bd")}
    said = [cli("next", env=env).stderr]
    said += [cli("claim", f"issue:x{n}", env=env).stderr for n in range(5)]
    assert "attempt 1 of 5" in said[0]
    assert "attempt 4 of 5" in said[3]
    assert "gave up" in said[4]
    assert "bd-b" not in said[5]
    tries = [c for c in (folder / "calls").read_text().splitlines() if "bd-b" in c]
    assert 5 == len(tries)


@pytest.mark.skipif(shutil.which("bd") is None, reason="the real bd is not on PATH")
def test_dibs_ready_equals_the_real_bd_ready(repo: Path, tmp_path: Path) -> None:
    """Where the real bd is installed: the same statuses and dependencies made with bd, and
    dibs reading bd's JSONL export, hand out exactly what `bd ready` lists."""
    import subprocess

    def bd(*args: str) -> str:
        return subprocess.run(
            ["bd", *args], cwd=repo, check=True, capture_output=True, text=True
        ).stdout

    bd("init", "--quiet")
    made = {}
    for name in ("a", "b", "epic", "child"):
        made[name] = json.loads(bd("create", name, "--json"))["id"]
    bd("dep", "add", made["b"], made["a"])
    bd("dep", "add", made["child"], made["epic"], "--type", "parent-child")
    bd("export", "-o", ".beads/issues.jsonl")
    expected = [i["id"] for i in json.loads(bd("ready", "--json", "--limit", "0"))]
    cli = Cli(repo, env={"DIBS_BD": "dibs-test-no-such-bd"})
    assert 0 == cli("init").returncode
    assert expected == ready_ids(cli)


@pytest.mark.skipif(shutil.which("bd") is None, reason="the real bd is not on PATH")
@pytest.mark.parametrize("fixture", ["schema", "tinkerpop.jsonl", "gumroad.jsonl"])
def test_the_fixtures_ready_sets_equal_the_real_bd_ready(tmp_path: Path, fixture: str) -> None:
    """Where the real bd is installed: each fixture imported into bd (`bd import`) gives the
    ready set this file expects of dibs."""
    import subprocess

    path = tmp_path / "issues.jsonl"
    if fixture == "schema":
        path.write_text("".join(json.dumps(x) + "\n" for x in SCHEMA_FIXTURE))
    else:
        path.write_text((FIXTURES / fixture).read_text())
    project = tmp_path / "project"
    project.mkdir()

    def bd(*args: str) -> str:
        out = subprocess.run(
            ["bd", *args], cwd=project, capture_output=True, text=True, check=False
        )
        assert 0 == out.returncode, out.stderr
        return out.stdout

    bd("init", "--quiet", "--non-interactive", "--prefix", "fx")
    bd("import", str(path))
    theirs = [i["id"] for i in json.loads(bd("ready", "--json", "--limit", "0"))]
    expected = {
        "schema": EXPECTED_READY,
        "tinkerpop.jsonl": {"tinkerpop-usp.2", "tinkerpop-usp.1", "tinkerpop-usp"},
        "gumroad.jsonl": {"gumroad-4ay", "gumroad-6xi", "gumroad-bod"},
    }[fixture]
    assert expected == set(theirs)


# CCPM ---------------------------------------------------------------------------------------

TEMPLATE = """---
name: {name}
status: {status}
created: 2026-03-18T12:00:00Z
updated: 2026-03-18T12:00:00Z
github: {github}
depends_on: {depends}  # List of task numbers this depends on, e.g., [001, 002]
parallel: {parallel}  # Can this run in parallel with other tasks?
conflicts_with: {conflicts}  # Tasks that modify same files, e.g., [003, 004]
---

# Task: {name}

## Description
Clear, concise description of what needs to be done

## Acceptance Criteria
- [ ] Specific criterion 1

## Effort Estimate
- Size: S
- Parallel: {parallel} (can run in parallel with other tasks)
"""


def ccpm_task(
    folder: Path,
    number: str,
    name: str,
    *,
    status: str = "open",
    depends: str = "[]",
    parallel: str = "true",
    conflicts: str = "[]",
    github: str = "[Will be updated when synced to GitHub]",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{number}.md"
    path.write_text(
        TEMPLATE.format(
            name=name,
            status=status,
            depends=depends,
            parallel=parallel,
            conflicts=conflicts,
            github=github,
        )
    )
    return path


def ccpm_epic(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "epic.md").write_text(
        f"---\nname: {name}\nstatus: in-progress\ncreated: 2026-03-18T12:00:00Z\n"
        f"updated: 2026-03-18T12:00:00Z\nprogress: 0%\nprd: .claude/prds/{name}.md\n"
        "github: [Will be updated when synced to GitHub]\n---\n\n# Epic: auth\n"
    )
    (folder / "001-analysis.md").write_text("---\nissue: 1\ntitle: Schema\n---\n# Streams\n")
    (folder / "execution-status.md").write_text("---\nstarted: 2026-03-18T12:00:00Z\n---\n")
    (folder / "github-mapping.md").write_text("# GitHub Issue Mapping\n")
    (folder / "updates" / "001").mkdir(parents=True)
    (folder / "updates" / "001" / "progress.md").write_text("---\nissue: 1\n---\n")


def test_ccpm_epics_found_without_settings_numbered_files_only(repo: Path, cli: Cli) -> None:
    """.claude/epics/*/ is read by default; only the numbered files are tasks (no warning for
    epic.md and the rest); ids are per epic before sync; template comments are comments:
    `parallel: false  # ...` is false and `depends_on: []  # ...` is empty."""
    auth = repo / ".claude" / "epics" / "auth"
    billing = repo / ".claude" / "epics" / "billing"
    ccpm_epic(auth, "auth")
    ccpm_task(auth, "001", "Schema")
    ccpm_task(auth, "002", "Tokens", depends="[001]", parallel="false")
    ccpm_epic(billing, "billing")
    ccpm_task(billing, "001", "Invoices", status="closed")
    ccpm_task(billing, "002", "Refunds", depends="[001]")
    out = cli("ready", "--all", "--json")
    assert 0 == out.returncode, out.stderr
    assert "" == out.stderr
    report = json.loads(out.stdout)
    assert [] == report["problems"]
    rows = {t["id"]: t for t in report["tasks"]}
    assert {"auth-001", "auth-002", "billing-001", "billing-002"} == set(rows)
    assert ["waits for auth-001"] == rows["auth-002"]["why"]
    assert rows["auth-002"]["parallel"] is False
    assert rows["auth-001"]["depends_on"] == []
    assert ["auth-001", "billing-002"] == [t["id"] for t in report["ready"]]
    path = repo / "dibs.toml"
    path.write_text(
        path.read_text().replace("[tasks]\n", '[tasks]\nsources = [".claude/epics/"]\n')
    )
    assert ["auth-001", "billing-002"] == ready_ids(cli)  # the epics folder itself: every epic


def test_ccpm_conflicts_and_parallel_false_hold_both_ways(repo: Path, cli: Cli) -> None:
    """conflicts_with is symmetric; a parallel: false task runs alone in its epic, and while
    it is in progress nothing else of the epic starts; a closed task still held is not in
    progress."""
    auth = repo / ".claude" / "epics" / "auth"
    ccpm_epic(auth, "auth")
    ccpm_task(auth, "001", "Schema", conflicts="[3]")
    ccpm_task(auth, "002", "Alone", parallel="false")
    ccpm_task(auth, "003", "Docs")
    ccpm_task(auth, "004", "Other")
    env = cli.register("worker")
    assert "auth-001" == cli.json("next", env=env)["id"]
    why = {t["id"]: t["why"] for t in cli.json("ready", "--all")["tasks"]}
    assert ["conflicts with auth-001 (in progress)"] == why["auth-003"]  # 001 lists 003
    assert ["conflicts with auth-001 (in progress)"] == why["auth-002"]  # runs alone
    assert [] == why["auth-004"]
    ccpm_task(auth, "001", "Schema", status="closed", conflicts="[3]")
    why = {t["id"]: t["why"] for t in cli.json("ready", "--all")["tasks"]}
    assert [] == why["auth-003"]  # closed, though its claim is still held
    assert "auth-002" == cli.json("next", env=env)["id"]
    why = {t["id"]: t["why"] for t in cli.json("ready", "--all")["tasks"]}
    assert ["conflicts with auth-002 (in progress)"] == why["auth-004"]  # 002 runs alone


def test_ccpm_after_sync_ids_are_issue_numbers_in_numeric_order(repo: Path, cli: Cli) -> None:
    """Synced tasks are their GitHub numbers (from `github:`), dependencies use them, and
    1000 sorts after 998."""
    auth = repo / ".claude" / "epics" / "auth"
    ccpm_epic(auth, "auth")
    url = "https://github.com/acme/app/issues/{}"
    ccpm_task(auth, "1000", "Later", github=url.format(1000))
    ccpm_task(auth, "998", "First", github=url.format(998))
    ccpm_task(auth, "999", "Waits", github=url.format(999), depends="[998]")
    ccpm_task(auth, "1001", "Renamed, github: not filled in")
    (auth / "github-mapping.md").write_text(
        "# GitHub Issue Mapping\nEpic: #997 - https://github.com/acme/app/issues/997\n"
        "Tasks:\n- #1001: Renamed - https://github.com/acme/app/issues/1001\n"
    )
    assert ["998", "1000", "1001"] == ready_ids(cli)


def test_ccpm_numbers_with_leading_zeros_are_decimal(repo: Path, cli: Cli) -> None:
    """`depends_on: [010]` is task 010, not the octal 8 YAML 1.1 would read."""
    auth = repo / ".claude" / "epics" / "auth"
    ccpm_epic(auth, "auth")
    ccpm_task(auth, "008", "Eight")
    ccpm_task(auth, "010", "Ten", status="closed")
    ccpm_task(auth, "011", "Eleven", depends="[010]")
    assert ["auth-008", "auth-011"] == ready_ids(cli)


def test_ccpm_hears_of_hand_out_release_and_landing(repo: Path, cli: Cli) -> None:
    """The task file's status and updated lines change (in-progress, open, closed) and every
    other byte stays, comments included."""
    auth = repo / ".claude" / "epics" / "auth"
    ccpm_epic(auth, "auth")
    path = ccpm_task(auth, "001", "Schema")
    before = path.read_text()
    env = cli.register("worker")
    assert "auth-001" == cli.json("next", env=env)["id"]
    text = path.read_text()
    assert "status: in-progress\n" in text
    assert "updated: 2026-03-18T12:00:00Z" not in text

    def kept(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith(("status", "updated"))]

    assert kept(before) == kept(text)
    assert 0 == cli("release", "issue:auth-001", env=env).returncode
    assert "status: open\n" in path.read_text()
    assert "auth-001" == cli.json("next", env=env)["id"]
    branch(repo, "agent/auth-001", {"schema.sql": "create table t ();\n"})
    out = cli("land", "agent/auth-001", env=env)
    assert 0 == out.returncode, out.stderr
    assert "status: closed\n" in path.read_text()
    assert "done" in {t["id"]: t["why"] for t in cli.json("ready", "--all")["tasks"]}["auth-001"]


def test_ccpm_tasks_are_the_main_checkouts_from_any_worktree(repo: Path, cli: Cli) -> None:
    """An agent in its worktree reads and writes the main checkout's task files; finishing
    there (which removes that worktree) puts the unlanded task back to open."""
    auth = repo / ".claude" / "epics" / "auth"
    ccpm_epic(auth, "auth")
    path = ccpm_task(auth, "001", "Schema")
    ccpm_task(auth, "002", "Tokens")
    env = cli.register("worker")
    started = cli.json("next", "--start", env=env)["started"]
    assert "status: in-progress\n" in path.read_text()
    inside = Cli(Path(started["path"]), env={"DIBS_BD": "dibs-test-no-such-bd"})
    assert ["auth-002"] == ready_ids(inside, env=env)
    out = inside("finish", env=env)
    assert 0 == out.returncode, out.stderr
    assert "status: open\n" in path.read_text()


def test_a_task_whose_lease_ran_out_is_free_though_its_tool_says_in_progress(
    repo: Path, cli: Cli
) -> None:
    """dibs told CCPM in-progress; once that lease has run out the task is free again and the
    next claim takes it over (the tool is not left saying in-progress for nobody)."""
    import time

    auth = repo / ".claude" / "epics" / "auth"
    ccpm_epic(auth, "auth")
    path = ccpm_task(auth, "001", "Schema")
    ghost = cli.register("ghost", "--ttl", "1")
    assert "auth-001" == cli.json("next", "--ttl", "1", env=ghost)["id"]
    assert "status: in-progress\n" in path.read_text()
    time.sleep(1.5)  # past the 1 s lease: expired, not yet evicted
    worker = cli.register("worker")
    assert "auth-001" == cli.json("next", env=worker)["id"]
    assert "status: in-progress\n" in path.read_text()


# [events] -----------------------------------------------------------------------------------


def events_settings(repo: Path, table: str) -> None:
    path = repo / "dibs.toml"
    path.write_text(path.read_text().replace("[events]\n", f"[events]\n{table}\n", 1))


def test_events_commands_get_the_event_as_json_and_failures_are_retried(
    repo: Path, cli: Cli
) -> None:
    """acquire and release run their commands with the event on stdin; a failing command is
    reported, never blocks the claim, and is delivered by a later call."""
    (repo / "tasks.toml").write_text('[[task]]\nid = "T-1"\n')
    log = repo.parent / "events.log"
    flag = repo.parent / "broken"
    events_settings(
        repo,
        f'acquire = "cat >> {log}; echo >> {log}"\n'
        f'release = "test ! -f {flag} && cat >> {log} && echo >> {log}"',
    )
    env = cli.register("worker")
    assert "T-1" == cli.json("next", env=env)["id"]
    got = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert [("acquire", "T-1", "worker")] == [(e["event"], e["issue"], e["agent"]) for e in got]
    flag.write_text("")
    out = cli("release", "issue:T-1", env=env)
    assert 0 == out.returncode
    assert "could not tell [events] release" in out.stderr
    flag.unlink()
    assert 0 == cli("claim", "issue:x", env=env).returncode
    got = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert [("acquire", "T-1"), ("release", "T-1"), ("acquire", "x")] == [
        (e["event"], e["issue"]) for e in got
    ]


def test_landing_closes_the_beads_issue_and_runs_land_and_landing_failed(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """A landed task: `bd close` and the land command (with the commit); a landing that fails
    its gate: the landing-failed command, and the issue stays open in beads."""
    folder = fake_bd(tmp_path)
    (repo / ".beads").mkdir()
    log = tmp_path / "events.log"
    events_settings(
        repo,
        f'land = "cat >> {log}; echo >> {log}"\nlanding-failed = "cat >> {log}; echo >> {log}"',
    )
    path = repo / "dibs.toml"
    path.write_text(path.read_text().replace("[gates]\n", '[gates]\ntests = "test -f ok.txt"\n'))
    env = {**cli.register("worker"), "DIBS_BD": str(folder / "bd")}
    assert "bd-b" == cli.json("next", env=env)["id"]
    branch(repo, "agent/bd-b", {"work.txt": "no ok.txt here\n"})
    assert 0 != cli("land", "agent/bd-b", env=env).returncode
    git(repo, "branch", "-D", "agent/bd-b")
    branch(repo, "agent/bd-b", {"ok.txt": "fixed\n"})
    out = cli("land", "agent/bd-b", "--json", env=env)
    assert 0 == out.returncode, out.stderr
    commit = json.loads(out.stdout)["commit"]
    got = [json.loads(line) for line in log.read_text().splitlines() if line]
    assert ["landing-failed", "land"] == [e["event"] for e in got]
    assert commit == got[1]["commit"]
    calls = (folder / "calls").read_text().splitlines()
    assert f"close bd-b --reason landed by dibs as {commit}" in calls
    assert 1 == len([c for c in calls if c.startswith("close")])


def test_an_unknown_event_name_is_a_clear_settings_error(repo: Path, cli: Cli) -> None:
    """[events] names only the events dibs has."""
    events_settings(repo, 'landed = "true"')
    out = cli("ready")
    assert 2 == out.returncode
    assert "unknown event 'landed'" in out.stderr


# Roles --------------------------------------------------------------------------------------


def test_roles_take_only_matching_work(repo: Path, cli: Cli) -> None:
    """`next --role reviewer` and an agent registered with --role reviewer take only tasks
    labelled reviewer (role = in tasks.toml, labels in beads)."""
    (repo / "tasks.toml").write_text(
        '[[task]]\nid = "code"\npriority = 0\n[[task]]\nid = "review"\nrole = "reviewer"\n'
    )
    beads(repo, [issue("bd-review", labels=["reviewer", "backend"], priority=3)])
    assert ["review", "bd-review"] == ready_ids(cli, "--role", "reviewer")
    anyone = cli.register("anyone")
    assert "review" == cli.json("next", "--role", "reviewer", env=anyone)["id"]
    reviewer = cli.register("rev", "--role", "reviewer")
    assert "bd-review" == cli.json("next", env=reviewer)["id"]
    out = cli("next", env=reviewer)
    assert 1 == out.returncode
    assert "not for role reviewer" in out.stderr


# One bad task never stops the others (issue 14, item 10) -------------------------------------


def test_a_huge_priority_is_a_per_task_error(repo: Path, cli: Cli) -> None:
    """A 5,000-digit priority is reported for that task, which is skipped; the rest count."""
    (repo / "tasks.toml").write_text(
        f'[[task]]\nid = "huge"\npriority = "{"9" * 5000}"\n[[task]]\nid = "fine"\n'
    )
    beads(repo, [issue("bd-huge", priority=int("9" * 4000)), issue("bd-fine")])
    out = cli("ready", "--json")
    assert 0 == out.returncode, out.stderr
    report = json.loads(out.stdout)
    assert ["fine", "bd-fine"] == [t["id"] for t in report["ready"]]
    problems = "\n".join(report["problems"])
    assert "task 'huge': priority '99999" in problems
    assert "issue bd-huge: priority 9999" in problems
    assert "is not a whole number from 0 to 1000000" in problems


def test_a_task_id_that_is_no_issue_name_is_skipped_with_a_warning(repo: Path, cli: Cli) -> None:
    """A task whose id cannot be issue:<id> is skipped with a warning; `next` still works."""
    (repo / "tasks.toml").write_text(
        '[[task]]\nid = "bad id"\npriority = 0\n[[task]]\nid = "ok"\npriority = 1\n'
    )
    env = cli.register("worker")
    out = cli("next", "--json", env=env)
    assert 0 == out.returncode, out.stderr
    assert "ok" == json.loads(out.stdout)["id"]
    assert "skipped" in out.stderr
    assert "white space" in out.stderr


def test_the_claim_path_never_imports_yaml(repo: Path, cli: Cli) -> None:
    """PyYAML is imported only when a markdown task file is read."""
    env = {**cli.register("worker"), "PYTHONVERBOSE": ""}
    probe = (
        "import sys; from dibs.faces.cli import main; main(['claim', 'path:a.py']);"
        " print('yaml' in sys.modules)"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=repo,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "False" == out.stdout.strip().splitlines()[-1]
    git(repo, "status")
