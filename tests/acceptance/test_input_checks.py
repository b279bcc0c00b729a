"""Bad input on every face is a usage error (exit 2, HTTP 400, a tool error) that changes
nothing: NaN, infinities, numbers too large to mean anything, bytes that are not UTF-8."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dibs.ground.errors import UsageError
from dibs.integrations import limits, queue
from dibs.service import Coordinator
from tests.conftest import BIN, Cli, git, store_dir

HUGE = "9" * 5000


def _log_size(repo: Path) -> int:
    return sum(p.stat().st_size for p in (store_dir(repo) / "log").iterdir())


def _refused(out: subprocess.CompletedProcess[Any], *said: str) -> None:
    assert 2 == out.returncode, out.stdout + out.stderr
    assert "internal error" not in out.stderr
    for text in said:
        assert text in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("limit", "update", "gh", "--remaining", "nan", "--reset-at", "inf"),
        ("limit", "update", "gh", "--remaining", "inf", "--reset-at", "1795000000"),
        ("limit", "update", "gh", "--remaining", "5", "--reset-at", "nan"),
        ("limit", "update", "gh", "--remaining", "5", "--reset-at", "-1"),
        ("limit", "update", "gh", "--remaining", HUGE, "--reset-at", "1795000000"),
        ("limit", "take", "gh", "--wait", "inf"),
        ("limit", "take", "gh", "--wait", "-1"),
        ("pool", "take", "--wait", "inf"),
        ("next", "--wait", "nan"),
        ("next", "--wait", "-1"),
        ("log", "--since", "-1"),
        ("metrics", "--since", "999999999999w"),
        ("metrics", "--since", HUGE),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_refused_and_change_nothing(
    cli: Cli, repo: Path, args: tuple[str, ...]
) -> None:
    """Each bad number is exit 2 with a message (never an internal error), nothing logged."""
    env = cli.register("a1")
    assert 0 == cli("limit", "set", "gh", "--capacity", "10", "--per", "60", env=env).returncode
    before = _log_size(repo)
    _refused(cli(*args, env=env))
    assert before == _log_size(repo)


@pytest.mark.parametrize(
    "resource", ["path:a.py#L²", "path:a.py#L\u0661", f"path:a.py#L{HUGE}", f"path:a.py#L1-{HUGE}"]
)
def test_line_ranges_take_only_plain_digits_of_sensible_length(
    cli: Cli, repo: Path, resource: str
) -> None:
    """Superscript or other-script digits and 5,000-digit line numbers: exit 2, named."""
    env = cli.register("a1")
    before = _log_size(repo)
    _refused(cli("claim", resource, env=env), "malformed line range")
    assert before == _log_size(repo)
    _refused(cli("log", "--resource", resource), "malformed line range")


def _run_bytes(repo: Path, *args: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")} | env
    return subprocess.run(
        [os.fsencode(BIN / "dibs"), *args],
        cwd=repo,
        env=full,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        (b"claim", b"issue:\xff\xfe"),
        (b"claim", b"path:src/\xff.py"),
        (b"claim", b"issue:ok", b"--note", b"caf\xe9"),
        (b"evict", b"issue:ok", b"--reason", b"\xff"),
        (b"land", b"\xff"),
        (b"log", b"--agent", b"\xff"),
    ],
)
def test_undecodable_bytes_in_arguments_are_a_usage_error(
    cli: Cli, repo: Path, args: tuple[bytes, ...]
) -> None:
    """Command-line bytes that are not UTF-8 (a Latin-1 terminal, a script): exit 2, nothing
    logged."""
    env = cli.register("a1")
    before = _log_size(repo)
    _refused(_run_bytes(repo, *args, env=env), "not UTF-8")
    assert before == _log_size(repo)


def test_binary_standard_input_to_doc_write_is_refused_before_anything_is_recorded(
    cli: Cli, repo: Path
) -> None:
    """`doc write` reading bytes that are not text: exit 2, no version, no file, no temp file."""
    env = cli.register("a1")
    before = _log_size(repo)
    full = cli.env | env
    out = subprocess.run(
        [str(BIN / "dibs"), "doc", "write", "notes.md", "--if-version", "0"],
        cwd=repo,
        env=full,
        input=b"\x89PNG\r\n\x1a\n\x00\x00\xff",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 2 == out.returncode, out.stderr
    assert b"not text" in out.stderr
    assert before == _log_size(repo)
    assert ["README.md"] == sorted(p.name for p in repo.iterdir() if p.name != ".git")


def test_python_api_refuses_nan_infinity_and_huge_numbers(repo: Path) -> None:
    """The Python API checks what the CLI checks (the MCP tools call it)."""
    with Coordinator.open(repo) as dibs:
        dibs.register("a1")
        limits.set_limit(dibs, "gh", capacity=10, per=60)
        seq = dibs.store.read()[0].seq
        calls = [
            lambda: limits.update(dibs, "gh", remaining=math.nan, reset_at=math.inf),
            lambda: limits.take(dibs, "gh", cost=1, wait=math.inf),
            lambda: limits.set_limit(dibs, "gh", capacity=10**5000, per=1),
            lambda: dibs.claim(["issue:a"], wait=math.nan),
            lambda: dibs.claim(["issue:a"], ttl=-math.inf),
            lambda: dibs.claim(["issue:a"], note="caf\udce9"),
            lambda: dibs.register("a2", pid=10**5000),
            lambda: dibs.log(limit=-1),
            lambda: queue.land(dibs, "feature", wait=math.nan),
            lambda: queue.process(dibs, batch=10**5000),
        ]
        for call in calls:
            with pytest.raises(UsageError):
                call()
        assert seq == dibs.store.read()[0].seq


@pytest.fixture
def dashboard(repo: Path, cli: Cli) -> Any:
    pytest.importorskip("starlette", reason="pip install 'dibs[web]'")
    from tests.acceptance.test_dashboard import Server

    assert 0 == cli("init").returncode
    server = Server(repo)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("since", ["999999999999w", HUGE])
def test_http_metrics_with_an_impossible_since_is_a_400(dashboard: Any, since: str) -> None:
    """`/api/metrics?since=...` out of range: HTTP 400 with the reason, never a 500."""
    status, body = dashboard.get(f"/api/metrics?since={since}")
    assert 400 == status, body
    assert "not a duration" in json.loads(body)["error"]


def test_mcp_tool_called_with_infinity_or_nan_is_a_usage_tool_error(
    repo: Path, cli: Cli, procs: list[subprocess.Popen[Any]]
) -> None:
    """JSON-RPC text may carry ``Infinity`` and ``NaN``: the tool answers with the usage error
    (exit code 2 in its JSON) and the bucket is unchanged."""
    pytest.importorskip("mcp", reason="pip install 'dibs[mcp]'")
    assert (
        0
        == cli("limit", "set", "gh", "--capacity", "10", "--per", "60", "--as-operator").returncode
    )
    hello = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    }
    lines = [
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello}),
        json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    ]
    calls = ['{"name": "gh", "cost": 1, "wait": Infinity}', '{"name": "gh", "cost": NaN}']
    for n, arguments in enumerate(calls, start=2):
        lines.append(
            f'{{"jsonrpc": "2.0", "id": {n}, "method": "tools/call", '
            f'"params": {{"name": "limit_take", "arguments": {arguments}}}}}'
        )
    proc = subprocess.Popen(
        [str(BIN / "dibs"), "mcp"],
        cwd=repo,
        env=cli.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    procs.append(proc)
    assert proc.stdin is not None
    assert proc.stdout is not None
    answers: dict[int, Any] = {}
    for line in lines:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        wanted = json.loads(line.replace("Infinity", "0").replace("NaN", "0")).get("id")
        while wanted is not None and wanted not in answers:
            message = json.loads(proc.stdout.readline())
            answers[message.get("id", 0)] = message
    for n in (2, 3):
        result = answers[n]["result"]
        assert result["isError"], result
        # Refused by dibs (a usage error, exit code 2) or, where the tool's schema bounds the
        # argument, by the SDK's validation of that schema before dibs is called.
        text = result["content"][0]["text"]
        assert '"exit_code": 2' in text or "validation error" in text, text
    [bucket] = cli.json("limit", "status")
    assert 10 == round(bucket["tokens"])


# Store addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["env", "dibs.toml"])
def test_a_relative_store_path_is_refused_before_any_store_is_made(
    cli: Cli, repo: Path, where: str
) -> None:
    """A relative store.url (or DIBS_STORE) would be a different folder, a store of its own,
    in each worktree: agents would stop seeing each other's claims. It is exit 2 with what to
    write instead, and no folder is made."""
    env = {"DIBS_STORE": "shared-store"} if where == "env" else {}
    if where == "dibs.toml":
        (repo / "dibs.toml").write_text('[store]\nurl = "shared-store"\n')
    out = cli("status", env=env)
    _refused(out, "store.url = 'shared-store'", "absolute folder path", "worktree")
    assert not (repo / "shared-store").exists()


def test_an_absolute_store_folder_is_one_store_from_every_worktree(
    cli: Cli, repo: Path, tmp_path: Path
) -> None:
    """The same absolute folder from the main checkout and from a worktree is one store."""
    env = {"DIBS_STORE": str(tmp_path / "store")}
    here = Cli(repo, env=env)
    alice = here.register("alice")
    assert 0 == here("claim", "issue:7", env=alice).returncode
    tree = tmp_path / "tree"
    git(repo, "worktree", "add", "-q", "-b", "side", str(tree))
    there = Cli(tree, env=env)
    assert [("issue:7", "alice")] == [(c["resource"], c["agent"]) for c in there.json("claims")]
