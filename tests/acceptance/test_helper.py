"""The CLI helper (dibs.faces.cli.helper): calls it runs act as direct ones, and it fails safe.

Every test starts its own helper server in a private runtime folder of its own and runs the
installed ``dibs`` against a PostgreSQL store, with ``DIBS_HELPER=only`` (a call no helper takes
fails instead of running directly, so a test cannot pass by running direct calls only).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git, make_repo

pytestmark = pytest.mark.postgres


def wait_for(check: Any, what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Helper:
    """A helper server started by the test, in its own runtime folder."""

    def __init__(self, rundir: Path, env: dict[str, str]):
        self.rundir = rundir
        self.env = env
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, "-m", "dibs.faces.cli.helper_server"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.socket, "the helper's socket")
        wait_for(self.spare, "the helper's spare")

    def socket(self) -> Path | None:
        folder = self.rundir / f"dibs-{os.getuid()}"
        found = list(folder.glob("helper-*.sock")) if folder.exists() else []
        return found[0] if found else None

    def children(self) -> list[int]:
        assert self.server is not None
        path = Path(f"/proc/{self.server.pid}/task/{self.server.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def spare(self) -> int | None:
        """A child waiting for a call (its working directory is still the server's)."""
        for pid in self.children():
            try:
                if os.readlink(f"/proc/{pid}/cwd") == os.getcwd():
                    return pid
            except OSError:
                continue  # it ended meanwhile
        return None

    def running_in(self, folder: Path) -> int | None:
        """The child running a call made in *folder*."""
        for pid in self.children():
            try:
                if os.readlink(f"/proc/{pid}/cwd") == str(folder):
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
        if self.server is not None:
            self.server.wait(timeout=10)


@pytest.fixture
def rundir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def helper(rundir: Path, repo: Path) -> Iterator[Helper]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    started = Helper(rundir, {**base, "XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER_IDLE": "60"})
    try:
        yield started
    finally:
        started.stop()


def test_calls_through_the_helper_answer_as_direct_calls(
    tmp_path: Path, pg_database: str, helper: Helper, rundir: Path
) -> None:
    """The same calls, direct and through the helper, give the same output and exit codes."""
    helper.start()
    results = []
    for name, mode in (("direct", "off"), ("helped", "only")):
        repo = make_repo(tmp_path / name)
        env = {"DIBS_HELPER": mode, "XDG_RUNTIME_DIR": str(rundir), "DIBS_NAMESPACE": name}
        cli = Cli(repo, env=env)
        assert 0 == cli("init", "--store", pg_database).returncode
        (repo / "src").mkdir()
        (repo / "src" / "x.py").write_text("x = 1\n")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", "x")
        a1, a2 = cli.register("a1"), cli.register("a2")
        write = {
            "session_id": "s",
            "cwd": str(repo),
            "hook_event_name": "PreToolUse",
            "tool_name": "Write",
            "tool_input": {"file_path": str(repo / "src" / "x.py"), "content": ""},
        }
        calls: list[tuple[tuple[str, ...], dict[str, str], str | None]] = [
            (("claim", "path:src/**"), a1, None),
            (("claim", "path:src/x.py", "--json"), a2, None),
            (("claim", "issue:1"), {**a1, "DIBS_TOKEN": "0" * 32}, None),
            (("claim",), a1, None),
            (("claims", "--json"), {}, None),
            (("guard", "claude"), a2, json.dumps(write)),
            (("guard", "claude"), a1, json.dumps(write)),
            (("release", "path:src/**"), a1, None),
            (("claim", "path:src/x.py"), a2, None),
            (("status",), {}, None),
            (("frobnicate",), {}, None),
        ]
        seen = []
        for args, who, stdin in calls:
            out = cli(*args, env=who, stdin=stdin)
            text = (out.stdout + out.stderr).replace(str(repo), "<repo>")
            for person, reg in (("a1", a1), ("a2", a2)):
                text = text.replace(reg["DIBS_TOKEN"], f"<{person}>")
            # Durations differ from run to run (seconds left, seconds ago): not the answer.
            text = re.sub(r"\d{4}-\d\d-\d\dT[0-9:.]+Z", "<when>", text)
            text = re.sub(r"\d+\.\d+|\b\d+ (s|ms|min|h)\b", "<t>", text)
            text = re.sub(r" +", " ", text)  # and so do the columns' widths
            seen.append((args, out.returncode, text))
        results.append(seen)
        assert [0, 3, 1, 2, 0, 0, 0, 0, 0, 0, 2] == [code for _, code, _ in seen]
    direct, helped = results
    assert direct == helped


def test_direct_call_on_postgres_starts_a_helper_that_takes_the_next_calls(
    repo: Path, pg_database: str, rundir: Path, helper: Helper
) -> None:
    """Without a helper a call runs directly and starts one; later calls go through it."""
    env = {"XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER_IDLE": "60"}
    cli = Cli(repo, env={**env, "DIBS_HELPER": "off"})
    assert 0 == cli("init", "--store", pg_database).returncode
    on = Cli(repo, env={**env, "DIBS_HELPER": "on"})
    assert 1 == on("claims", env={"DIBS_HELPER": "only"}).returncode  # none runs yet
    assert 0 == on("claims").returncode  # direct, and starts one
    wait_for(helper.socket, "a helper started by a direct call")
    out = wait_for(
        lambda: (r := on("claims", "--json", env={"DIBS_HELPER": "only"})).returncode == 0 and r,
        "the started helper taking a call",
    )
    assert [] == json.loads(out.stdout)


def test_a_killed_server_loses_no_call_and_calls_then_run_directly(
    tmp_path: Path, pg_database: str, helper: Helper, rundir: Path
) -> None:
    """Killing the server mid-call: the call it runs finishes once; the next runs directly."""
    helper.start()
    repo = make_repo(tmp_path / "r")
    env = {"XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER": "only"}
    cli = Cli(repo, env=env)
    assert 0 == cli("init", "--store", pg_database).returncode
    a1, a2 = cli.register("a1"), cli.register("a2")
    assert 0 == cli("claim", "issue:7", env=a1).returncode
    waiting = subprocess.Popen(
        [str(BIN / "dibs"), "claim", "issue:7", "--wait", "60"],
        cwd=repo,
        env={**cli.env, **a2},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: helper.running_in(repo), "the helper running the waiting claim")
        assert helper.server is not None
        helper.server.kill()
        helper.server.wait(timeout=10)
        assert 0 == cli("release", "issue:7", env={**a1, "DIBS_HELPER": "off"}).returncode
        _out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate(timeout=10)
    assert 0 == waiting.returncode, err
    log = cli.jsonl("log", env={"DIBS_HELPER": "off"})
    assert 1 == sum(1 for e in log if e["op"] == "acquire" and e.get("agent") == "a2")
    assert 1 == cli("claims", env={"DIBS_HELPER": "only"}).returncode  # nobody answers now
    after = cli("claims", "--json", env={"DIBS_HELPER": "on"})
    assert 0 == after.returncode, after.stderr
    assert ["a2"] == [c["agent"] for c in json.loads(after.stdout)]


@pytest.mark.parametrize("victim", ["worker", "client"])
def test_a_killed_call_has_no_effect_after_it_died(
    tmp_path: Path, pg_database: str, helper: Helper, rundir: Path, victim: str
) -> None:
    """The process running a call, or its client, killed mid-wait: the other one goes too,
    the client is not left hanging (exit 1, outcome unknown), and the wait never grants
    afterwards."""
    helper.start()
    repo = make_repo(tmp_path / "r")
    env = {"XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER": "only"}
    cli = Cli(repo, env=env)
    assert 0 == cli("init", "--store", pg_database).returncode
    a1, a2 = cli.register("a1"), cli.register("a2")
    assert 0 == cli("claim", "issue:7", env=a1).returncode
    waiting = subprocess.Popen(
        [str(BIN / "dibs"), "claim", "issue:7", "--wait", "60"],
        cwd=repo,
        env={**cli.env, **a2},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        worker = wait_for(lambda: helper.running_in(repo), "the helper running the claim")
        if victim == "worker":
            os.kill(worker, signal.SIGKILL)
            _, err = waiting.communicate(timeout=30)
            assert 1 == waiting.returncode
            assert "whether the call took effect is unknown" in err
        else:
            waiting.kill()
            waiting.communicate(timeout=10)
            wait_for(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker), "death")
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate(timeout=10)
    assert 0 == cli("release", "issue:7", env=a1).returncode
    time.sleep(1.0)  # a waiter that survived would take it now
    log = cli.jsonl("log", env={"DIBS_HELPER": "off"})
    assert [] == [e for e in log if e["op"] == "acquire" and e.get("agent") == "a2"]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _as_nobody(path: str) -> int:
    """In a forked child running as user nobody: connect to *path* and read the first line.
    Exit 10: could not connect; 11: connected, the helper closed without a word; 12: it
    answered."""
    pid = os.fork()
    if pid == 0:
        code = 12
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            try:
                sock.connect(path)
            except OSError:
                code = 10
            else:
                code = 11 if sock.recv(64) == b"" else 12
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as a second user")
def test_a_second_user_cannot_use_the_helper() -> None:
    """Another user cannot reach the socket (its folder is the owner's only), and the helper
    refuses one that does (the kernel's peer credentials), running nothing for it."""
    import shutil
    import tempfile

    # Under /tmp itself: every folder above the runtime folder must let the other user pass.
    rundir = Path(tempfile.mkdtemp(prefix="dibs-test-user-", dir="/tmp"))
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    helper = Helper(rundir, {**base, "XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER_IDLE": "60"})
    try:
        helper.start()
        path = helper.socket()
        assert path is not None
        assert 0o700 == path.parent.stat().st_mode & 0o777
        rundir.chmod(0o755)
        assert 10 == _as_nobody(str(path))
        spare = helper.spare()
        path.parent.chmod(0o755)
        path.chmod(0o777)
        assert 11 == _as_nobody(str(path))
        # That spare ran nothing and is gone; the next one serves the owner as before.
        wait_for(lambda: helper.spare() not in (None, spare), "the next spare")
    finally:
        helper.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def test_session_agent_is_found_from_the_callers_process_not_the_helpers(
    tmp_path: Path, pg_database: str, helper: Helper, rundir: Path
) -> None:
    """The edit guard through the helper registers (to auto-claim a new file) the session agent
    of the host process that ran the hook, watching its pid, as a direct call does."""
    helper.start()
    repo = make_repo(tmp_path / "r")
    env = {"XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER": "only"}
    cli = Cli(repo, env=env)
    assert 0 == cli("init", "--store", pg_database).returncode
    payload = json.dumps(
        {
            "session_id": "sess-helper",
            "cwd": str(repo),
            "hook_event_name": "PreToolUse",
            "tool_name": "Write",
            "tool_input": {"file_path": str(repo / "a.py"), "content": ""},
        }
    )
    # A "host" process that runs the hook, as Claude Code does, and stays alive meanwhile.
    host = (
        "import subprocess, sys, time; "
        f"r = subprocess.run([{str(BIN / 'dibs')!r}, 'guard', 'claude'], input=sys.argv[1], "
        "text=True, capture_output=True); print(r.returncode, flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", host, payload],
        cwd=repo,
        env={**cli.env, "DIBS_AUTO_CLAIM": "1"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "0" == proc.stdout.readline().strip()
        agents = cli.json("agent", "list")
        mine = [a for a in agents if a["name"].startswith("claude-")]
        assert [proc.pid] == [a["pid"] for a in mine]
    finally:
        proc.kill()
        proc.communicate(timeout=10)
