"""The CLI helper (dibs.faces.cli.helper): calls it runs act as direct ones, and it fails safe.

Every test starts its own helper server in a private runtime folder of its own and runs the
installed ``dibs`` against a PostgreSQL store, with ``DIBS_HELPER=only`` (a call no helper takes
fails instead of running directly, so a test cannot pass by running direct calls only).

The tests that find the helper's processes through ``/proc`` run on Linux only; the others run
on macOS too (the helper checks peer credentials with getpeereid there), and the ones marked
``needs_macos`` only there.
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

from dibs.faces.cli import helper as client
from tests.conftest import BIN, Cli, git, make_repo

ON_MACOS = sys.platform == "darwin"
HAS_PROC = Path("/proc/self/stat").exists()
needs_proc = pytest.mark.skipif(not HAS_PROC, reason="finds the helper's processes in /proc")
needs_macos = pytest.mark.skipif(not ON_MACOS, reason="getpeereid and LOCAL_PEERPID: macOS only")


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
        wait_for(self.spare if HAS_PROC else self.answers, "the helper's spare")

    def answers(self) -> bool:
        """Whether a spare answers a connection (it then runs nothing: no "go" follows)."""
        path = self.socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        try:
            sock.connect(str(path))
            return sock.recv(64).startswith(b"S")
        except OSError:
            return False
        finally:
            sock.close()

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
def rundir() -> Iterator[Path]:
    """A private runtime folder under /tmp: pytest's own folders are under $TMPDIR, too long on
    macOS for a socket address (the helper would then rightly pass them over)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="dibs-run-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def helper(rundir: Path, repo: Path) -> Iterator[Helper]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    started = Helper(rundir, {**base, "XDG_RUNTIME_DIR": str(rundir), "DIBS_HELPER_IDLE": "60"})
    try:
        yield started
    finally:
        started.stop()


@pytest.mark.postgres
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


@pytest.mark.postgres
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


@needs_proc
@pytest.mark.postgres
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


@needs_proc
@pytest.mark.postgres
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


@needs_proc
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


@pytest.mark.postgres
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


# Where the socket goes ------------------------------------------------------------------------

TMP = "/tmp"  # noqa: S108 -- where the helper falls back to, not a file of ours
#: macOS's $TMPDIR is a per-user folder like this one (49 bytes with its trailing slash).
MAC_TMPDIR = "/var/folders/zz/zyxvpxvq6csfxvn_n0000000000000/T/"


def test_linux_keeps_its_runtime_folder_and_ignores_tmpdir() -> None:
    """Linux: $XDG_RUNTIME_DIR, else /tmp, as always; $TMPDIR plays no part."""
    env = {"XDG_RUNTIME_DIR": "/run/user/1000", "TMPDIR": "/home/me/tmp"}
    assert "/run/user/1000/dibs-1000" == client.pick_folder(env, 1000, "linux", 107)
    assert TMP + "/dibs-1000" == client.pick_folder({"TMPDIR": "/x"}, 1000, "linux", 107)


def test_macos_uses_its_private_tmpdir_when_the_socket_fits() -> None:
    """macOS: $XDG_RUNTIME_DIR when set, else the per-user $TMPDIR, whose socket path fits in
    sun_path's 104 bytes."""
    env = {"TMPDIR": MAC_TMPDIR}
    where = client.pick_folder(env, 501, "darwin", 103)
    assert MAC_TMPDIR + "dibs-501" == where
    assert len(os.path.join(where, "helper-0123456789abcdef.sock")) <= 103
    assert "/run/dibs-501" == client.pick_folder(
        {**env, "XDG_RUNTIME_DIR": "/run"}, 501, "darwin", 103
    )


@pytest.mark.parametrize("system", ["darwin", "freebsd14"])
def test_a_folder_too_long_for_a_socket_address_falls_back_to_tmp(system: str) -> None:
    """A $TMPDIR or $XDG_RUNTIME_DIR whose socket path would pass 103 bytes is passed over for
    /tmp, which always fits (even for the largest uid): never a socket that cannot be bound."""
    long = "/Users/someone/" + "x" * 70
    env = {"TMPDIR": long, "XDG_RUNTIME_DIR": long}
    assert TMP + "/dibs-501" == client.pick_folder(env, 501, system, 103)
    largest = client.pick_folder(env, 2**32 - 1, system, 103)
    assert len(os.path.join(largest, "helper-0123456789abcdef.sock")) <= 103
    # A path that fits exactly is kept; one byte more is not.
    base = "/" + "y" * (103 - len("/dibs-501/helper-0123456789abcdef.sock") - 1)
    assert base + "/dibs-501" == client.pick_folder({"TMPDIR": base}, 501, "darwin", 103)
    assert TMP + "/dibs-501" == client.pick_folder({"TMPDIR": base + "y"}, 501, "darwin", 103)


def test_the_socket_path_of_this_system_fits_its_socket_address() -> None:
    """The socket's name has the length the check counts, and the limit is this system's."""
    assert len(os.path.basename(client.socket_path())) == len("helper-0123456789abcdef.sock")
    assert (107 if sys.platform.startswith("linux") else 103) == client.SUN_PATH_MAX


def test_a_runtime_folder_too_long_for_a_socket_serves_from_tmp(
    tmp_path: Path, rundir: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server and a client whose $XDG_RUNTIME_DIR is too long both use /tmp/dibs-<uid>, and
    the calls go through it; neither crashes."""
    # /tmp/dibs-<uid> is shared with any helper of this venv a person started by hand: a
    # start-up setting of this test's own gives its helper a socket name no other one has.
    monkeypatch.setenv("PYTHONHASHSEED", str(int.from_bytes(os.urandom(3), "big")))
    long = rundir / ("x" * (client.SUN_PATH_MAX - len(str(rundir)) - 10))
    long.mkdir(mode=0o700)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    env = {**base, "XDG_RUNTIME_DIR": str(long), "DIBS_HELPER_IDLE": "60"}
    name = f"helper-{client.key()}"
    folder = Path(f"/tmp/dibs-{os.getuid()}")  # noqa: S108
    server = subprocess.Popen(
        [sys.executable, "-m", "dibs.faces.cli.helper_server"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for((folder / f"{name}.sock").exists, "the helper's socket in /tmp")
        assert not (long / f"dibs-{os.getuid()}").exists()
        cli = Cli(repo, env={"XDG_RUNTIME_DIR": str(long), "DIBS_HELPER": "only"})
        out = wait_for(
            lambda: (r := cli("claims", "--json")).returncode == 0 and r, "a call through it"
        )
        assert [] == json.loads(out.stdout)
    finally:
        server.kill()
        _, err = server.communicate(timeout=10)
        for suffix in (".sock", ".sock.lock", ".store"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
    assert b"Traceback" not in err


# Without peer credentials ----------------------------------------------------------------------


@pytest.mark.postgres
def test_without_peer_credentials_calls_run_directly_and_no_helper_starts(
    repo: Path, pg_database: str, rundir: Path
) -> None:
    """With only the portable primitives (DIBS_PLATFORM=posix: no peer credentials, as on the
    BSDs) a call never tries the helper, even with DIBS_HELPER=only: it runs directly, starts
    no server, and a server started by hand refuses to run."""
    env = {"XDG_RUNTIME_DIR": str(rundir), "DIBS_PLATFORM": "posix"}
    cli = Cli(repo, env={**env, "DIBS_HELPER": "off"})
    assert 0 == cli("init", "--store", pg_database).returncode
    for mode in ("on", "only"):
        out = cli("claims", "--json", env={"DIBS_HELPER": mode})
        assert 0 == out.returncode, out.stderr
        assert [] == json.loads(out.stdout)
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    server = subprocess.run(
        [sys.executable, "-m", "dibs.faces.cli.helper_server"],
        env={**base, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 1 == server.returncode
    time.sleep(0.5)  # a server a direct call had started would have made its folder by now
    assert [] == list(rundir.iterdir())


def test_the_client_skips_the_helper_where_the_platform_names_no_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """enabled() asks the platform layer: no peer-credential primitive, no helper."""
    from dibs.ground import platform

    monkeypatch.delenv("DIBS_HELPER", raising=False)
    monkeypatch.setattr(platform, "peer_credentials_name", lambda: "SO_PEERCRED")
    assert client.enabled(["claims"])
    assert not client.enabled(["run"])
    monkeypatch.setattr(platform, "peer_credentials_name", lambda: None)
    assert not client.enabled(["claims"])


# macOS -----------------------------------------------------------------------------------------


@needs_macos
def test_macos_calls_go_through_the_helper_checked_by_getpeereid(
    repo: Path, helper: Helper, rundir: Path
) -> None:
    """macOS: the spare checks the client with getpeereid and LOCAL_PEERPID, the client the
    spare with getpeereid; the calls run in the helper (DIBS_HELPER=only) and answer as
    direct ones."""
    helper.start()
    env = {"XDG_RUNTIME_DIR": str(rundir)}
    direct = Cli(repo, env={**env, "DIBS_HELPER": "off"})
    helped = Cli(repo, env={**env, "DIBS_HELPER": "only"})
    a1 = direct.register("a1")
    assert 0 == helped("claim", "issue:1", env=a1).returncode
    mine = helped("claims", "--json")
    assert 0 == mine.returncode, mine.stderr
    assert ["a1"] == [c["agent"] for c in json.loads(mine.stdout)]
    seen = direct("claims", "--json").stdout

    def lasting(claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if not isinstance(v, float)} for c in claims]

    assert lasting(json.loads(seen)) == lasting(json.loads(mine.stdout))  # times differ
    a2 = direct.register("a2")
    refused = helped("claim", "issue:1", env=a2)
    assert 3 == refused.returncode
    assert "issue:1 is held by a1" in refused.stderr


@needs_macos
def test_macos_helper_folder_is_in_the_users_tmpdir() -> None:
    """macOS: without $XDG_RUNTIME_DIR the helper's folder is in the per-user $TMPDIR when its
    socket fits there (it does with the system's own $TMPDIR), else in /tmp."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    where = client.pick_folder(env, os.getuid(), sys.platform, client.SUN_PATH_MAX)
    mine = os.path.join(env.get("TMPDIR", "/nowhere"), f"dibs-{os.getuid()}")
    fits = len(os.fsencode(mine)) + len("/helper-0123456789abcdef.sock") <= 103
    assert (mine if fits else f"/tmp/dibs-{os.getuid()}") == where  # noqa: S108
