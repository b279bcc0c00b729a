"""The platform layer: each primitive chosen per platform, and nobody else calling them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from dibs.ground import platform
from dibs.ground.platform import darwin, linux, posix
from dibs.ground.platform.darwin import Darwin
from dibs.ground.platform.linux import Linux
from dibs.ground.platform.posix import UNKNOWN_START, Posix

SRC = Path(__file__).resolve().parents[2] / "src" / "dibs"
ON_LINUX = sys.platform.startswith("linux")
ON_MACOS = sys.platform == "darwin"
needs_linux = pytest.mark.skipif(not ON_LINUX, reason="reads Linux's /proc: runs on Linux only")
needs_macos = pytest.mark.skipif(
    not ON_MACOS, reason="calls macOS's sysctl/fcntl through ctypes: runs on macOS only"
)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class Calls:
    """Records the file descriptors a fake primitive was called with."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def __call__(self, fd: int, *_args: Any) -> None:
        self.fds.append(fd)


# The one place -----------------------------------------------------------------------------

# What only dibs.ground.platform may call: durable sync, file locks, the clocks, the boot id,
# process identity, the machine's name, and the system libraries behind them.
FORBIDDEN_CALLS = {
    "os.fsync",
    "os.fdatasync",
    "os.uname",
    "os.kill",
    "time.clock_gettime",
    "time.clock_gettime_ns",
    "os.O_DIRECTORY",
    "socket.SO_PEERCRED",
    "_socket.SO_PEERCRED",
}
FORBIDDEN_MODULES = {"fcntl", "ctypes"}


def direct_uses(source: str) -> list[str]:
    """The system primitives *source* uses directly: attributes, imports, ``/proc`` paths."""
    import ast

    tree = ast.parse(source)
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        where = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            name = f"{node.value.id}.{node.attr}"
            if name in FORBIDDEN_CALLS or name.startswith("time.CLOCK_"):
                found.append(f"{where}: {name}")
        elif isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] in FORBIDDEN_MODULES
        ):
            found.append(f"{where}: from {node.module} import")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and node.value.startswith("/proc")
        ):
            found.append(f"{where}: {node.value!r}")
    return found


def test_only_the_platform_layer_calls_the_system_primitives() -> None:
    """No module outside src/dibs/ground/platform/ calls fsync, flock, the clocks, /proc or
    ctypes."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.parent.name != "platform":
            found += [f"{path.relative_to(SRC)}:{u}" for u in direct_uses(path.read_text())]
    assert [] == found


def test_the_boundary_check_finds_a_direct_call() -> None:
    """The check above catches the calls it is meant to catch, and not a docstring."""
    source = (
        '"""Reads /proc."""\nimport fcntl\nfrom ctypes import CDLL\nos.fdatasync(fd)\n'
        'open(f"/proc/{pid}/stat")\nopen("/proc/1/stat")\ntime.CLOCK_BOOTTIME\nos.kill(p, 0)\n'
    )
    assert [
        "2: import fcntl",
        "3: from ctypes import",
        "4: os.fdatasync",
        "5: '/proc/'",
        "6: '/proc/1/stat'",
        "7: time.CLOCK_BOOTTIME",
        "8: os.kill",
    ] == sorted(direct_uses(source))


# Choosing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), [("linux", Linux), ("darwin", Darwin), ("posix", Posix)])
def test_select_returns_the_named_implementation(name: str, kind: type[Posix]) -> None:
    """select(name) gives that platform's implementation."""
    chosen = platform.select(name)
    assert (kind, name) == (type(chosen), chosen.name)


def test_the_testing_switch_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    """DIBS_PLATFORM=posix picks the portable primitives on any system."""
    monkeypatch.setenv("DIBS_PLATFORM", "posix")
    assert Posix is type(platform.select())


def test_this_system_gets_its_own_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the switch, Linux gets linux, macOS darwin, anything else posix."""
    monkeypatch.delenv("DIBS_PLATFORM", raising=False)
    expected = "linux" if ON_LINUX else "darwin" if ON_MACOS else "posix"
    assert expected == platform.select().name


def test_a_switch_naming_nothing_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """DIBS_PLATFORM=solaris is an error naming the choices."""
    monkeypatch.setenv("DIBS_PLATFORM", "solaris")
    with pytest.raises(platform.UnsupportedPlatform) as caught:
        platform.select()
    assert "linux, darwin, posix" in (caught.value.hint or "")
    assert platform.problem() is not None


def test_windows_is_told_to_use_wsl() -> None:
    """Native Windows gets "use WSL", exit code 1."""
    problem = platform.unsupported("win32")
    assert problem is not None
    assert "use WSL" in problem.message
    assert "wsl --install" in (problem.hint or "")
    assert 1 == problem.exit_code
    assert platform.unsupported("linux") is None
    assert platform.unsupported("darwin") is None


def test_the_cli_on_windows_says_use_wsl_without_a_traceback() -> None:
    """`dibs status` on native Windows exits 1 with the message and hint, no traceback."""
    code = (
        "import sys; sys.platform = 'win32'; from dibs.faces.cli import main; "
        "raise SystemExit(main(['status']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert 1 == out.returncode
    assert out.stderr.startswith("dibs: native Windows is not supported yet: use WSL\nhint: ")
    assert "Traceback" not in out.stderr


def test_the_python_api_without_flock_says_use_wsl(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without fcntl (native Windows) taking the store's lock says "use WSL", no ImportError."""
    monkeypatch.setitem(sys.modules, "fcntl", None)
    fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with pytest.raises(platform.UnsupportedPlatform, match="use WSL"):
            Posix().lock(fd)
    finally:
        os.close(fd)


# Portable (BSDs and the fallback of the others) ---------------------------------------------


def test_posix_liveness_is_os_kill_with_an_unknown_start() -> None:
    """Posix: a live pid has an unknown start time, a reaped one is gone."""
    chosen = Posix()
    assert UNKNOWN_START == chosen.process_start(os.getpid())
    assert chosen.process_start(dead_pid()) is None


def test_posix_counts_another_users_process_as_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Posix: EPERM from kill(pid, 0) means the process exists."""

    def refuse(pid: int, signal: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(posix.os, "kill", refuse)
    assert UNKNOWN_START == Posix().process_start(1)


def test_posix_syncs_with_fsync(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Posix: both sync choices are fsync."""
    calls = Calls()
    monkeypatch.setattr(posix.os, "fsync", calls)
    chosen = Posix()
    chosen.sync_data(7, "full")
    chosen.sync_file(8, "fsync")
    assert [7, 8] == calls.fds
    assert ["fsync"] == list(chosen.sync_primitives())


def test_posix_clock_is_clock_monotonic() -> None:
    """Posix: the deciding clock is CLOCK_MONOTONIC, and it never goes back."""
    chosen = Posix()
    assert "CLOCK_MONOTONIC" == chosen.clock_name()
    first = chosen.clock_ns()
    assert first <= chosen.clock_ns()


def test_posix_boot_id_is_the_same_in_another_process() -> None:
    """Posix: two processes of one boot read one boot id (kern.boottime or the boot instant)."""
    code = "from dibs.ground.platform.posix import Posix; print(Posix().boot_id())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert Posix().boot_id() == out.stdout.strip()


def test_boot_instant_moves_only_with_the_clock_behind_it() -> None:
    """The boot instant is wall time minus the deciding clock, to the second."""
    wall_at_boot = 1_700_000_000
    assert "boot-1700000000" == posix.booted_at(
        lambda: __import__("time").time_ns() - wall_at_boot * 10**9
    )


def test_sysctl_is_absent_on_linux() -> None:
    """Without sysctlbyname (glibc, musl) the sysctl reader answers None, it does not fail."""
    if not ON_LINUX:
        pytest.skip("glibc has no sysctlbyname; other systems have it")
    assert posix.sysctl_bytes("kern.boottime") is None


@pytest.mark.parametrize(
    ("recorded", "found", "alive"),
    [(None, 5, True), (5, 5, True), (5, 6, False), (UNKNOWN_START, 6, True), (5, None, False)],
)
def test_process_alive_compares_start_times_only_when_both_are_known(
    monkeypatch: pytest.MonkeyPatch, recorded: int | None, found: int | None, alive: bool
) -> None:
    """A start time decides only when both readings know it; a gone process is dead."""
    monkeypatch.setattr(platform, "process_start", lambda _pid: found)
    assert alive is platform.process_alive(4242, recorded)


def test_posix_describes_its_primitives() -> None:
    """Posix: doctor is told fsync, CLOCK_MONOTONIC and kill(pid, 0)."""
    found = Posix().describe()
    assert ("posix", "fsync", "CLOCK_MONOTONIC") == (
        found["platform"],
        found["sync"],
        found["clock"],
    )
    assert found["liveness"].startswith("kill(pid, 0)")


# Linux ---------------------------------------------------------------------------------------


def test_linux_syncs_the_log_with_fdatasync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux: appended bytes are made durable with fdatasync, files with fsync."""
    data, full = Calls(), Calls()
    monkeypatch.setattr(linux.os, "fdatasync", data, raising=False)
    monkeypatch.setattr(posix.os, "fsync", full)
    chosen = Linux()
    chosen.sync_data(3)
    chosen.sync_file(4)
    assert ([3], [4]) == (data.fds, full.fds)
    assert ["fdatasync", "fsync"] == list(chosen.sync_primitives())


def test_linux_without_fdatasync_uses_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux: a Python without os.fdatasync syncs with fsync instead of failing."""
    full = Calls()
    monkeypatch.delattr(linux.os, "fdatasync", raising=False)
    monkeypatch.setattr(posix.os, "fsync", full)
    chosen = Linux()
    chosen.sync_data(3)
    assert [3] == full.fds
    assert ["fsync"] == list(chosen.sync_primitives())


@needs_linux
def test_linux_clock_is_clock_boottime() -> None:
    """Linux: the deciding clock counts suspended time (CLOCK_BOOTTIME)."""
    import time

    assert "CLOCK_BOOTTIME" == Linux().clock_name()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    assert Linux().clock_ns() >= before  # boottime = monotonic + time spent suspended


@needs_linux
def test_linux_describes_its_primitives() -> None:
    """Linux with /proc: doctor is told fdatasync, CLOCK_BOOTTIME, the kernel's boot id, /proc."""
    assert {
        "platform": "linux",
        "sync": "fdatasync",
        "clock": "CLOCK_BOOTTIME",
        "boot": "/proc/sys/kernel/random/boot_id",
        "liveness": "/proc/<pid>/stat start time",
    } == Linux().describe()


@needs_linux
def test_linux_boot_id_is_the_kernels() -> None:
    """Linux: the boot id is /proc/sys/kernel/random/boot_id."""
    expected = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert expected == Linux().boot_id()
    assert uuid.UUID(expected)


def test_linux_without_proc_falls_back_to_the_portable_boot_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Linux without /proc: the boot id is the boot instant from the clocks, not an error."""
    monkeypatch.setattr(linux, "_BOOT_ID", str(tmp_path / "missing"))
    chosen = Linux()
    assert chosen.computed_boot_id() == chosen.boot_id()
    assert chosen.boot_id().startswith("boot-")


@needs_linux
def test_linux_claim_path_does_not_load_ctypes() -> None:
    """Linux: reading the clock, the boot id and a process's start time loads no ctypes."""
    code = (
        "import os, sys; from dibs.ground import host; host.now(); "
        "host.process_start(os.getpid()); "
        "print('ctypes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "False" == out.stdout.strip()


@needs_linux
def test_linux_process_start_reads_proc_stat() -> None:
    """Linux: a process's start time is field 22 of /proc/<pid>/stat; a reaped one is gone."""
    stat = Path(f"/proc/{os.getpid()}/stat").read_bytes()
    expected = int(stat[stat.rfind(b")") + 2 :].split()[19])
    assert expected == Linux().process_start(os.getpid())
    assert Linux().process_start(dead_pid()) is None


def test_linux_without_proc_falls_back_to_os_kill(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux without /proc: liveness is os.kill with an unknown start time."""
    chosen = Linux()
    monkeypatch.setattr(chosen, "proc_mounted", lambda: False)
    assert UNKNOWN_START == chosen.process_start(os.getpid())
    assert chosen.process_start(dead_pid()) is None


@pytest.mark.parametrize("kind", [Linux, Posix], ids=["linux", "posix"])
def test_process_parent_names_a_child_and_its_parent(kind: type[Posix]) -> None:
    """A child's command name and parent pid (how a session finds its client); a gone pid
    gives None, on Linux from /proc and portably from ps."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert ("sleep", os.getpid()) == kind().process_parent(child.pid)
    finally:
        child.kill()
        child.wait()
    assert kind().process_parent(dead_pid()) is None


def test_stop_group_stops_a_group_only_while_its_leader_has_the_recorded_start() -> None:
    """A process group is signalled only when its leader runs with the start time recorded:
    another start, an unknown one or none sends nothing; the right one ends the whole group,
    the leader's children too."""
    import signal
    import time

    chosen = platform.select()
    group = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 60 & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert group.stdout is not None
        child = int(group.stdout.readline())
        start = chosen.process_start(group.pid)
        if start == UNKNOWN_START:
            pytest.skip("this platform cannot read start times: nothing is ever stopped")
        assert start is not None
        for wrong in (start + 1, UNKNOWN_START, None):
            assert not chosen.stop_group(group.pid, wrong, 0.1)
        assert chosen.process_start(child) is not None
        assert chosen.stop_group(group.pid, start, 5.0)
        group.wait(timeout=60)
        deadline = time.monotonic() + 60
        while chosen.process_start(child) is not None:
            assert time.monotonic() < deadline, "the leader's child still runs"
            time.sleep(0.05)
    finally:
        if group.poll() is None:
            os.killpg(group.pid, signal.SIGKILL)
            group.wait()
        if group.stdout is not None:
            group.stdout.close()


def test_posix_stop_group_sends_nothing_without_a_start_time() -> None:
    """The portable platform cannot tell a reused pid: it never stops a group."""
    group = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert UNKNOWN_START == Posix().process_start(group.pid)
        assert not Posix().stop_group(group.pid, UNKNOWN_START, 0.1)
        assert group.poll() is None
    finally:
        group.kill()
        group.wait()


@needs_linux
def test_linux_group_alive_does_not_count_zombies() -> None:
    """A group whose only member is a zombie nobody reaps (a container's pid 1 may never) is
    gone for Linux's /proc scan; the portable killpg(pgid, 0) still counts it."""
    import time

    group = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert Linux().group_alive(group.pid)
        group.kill()
        deadline = time.monotonic() + 60
        while Linux().process_start(group.pid) is not None:  # a zombie, not reaped yet
            assert time.monotonic() < deadline, "sleep did not die"
            time.sleep(0.05)
        assert not Linux().group_alive(group.pid)
        assert Posix().group_alive(group.pid)
    finally:
        group.kill()
        group.wait()
    assert not Posix().group_alive(group.pid)


def test_proc_stat_parsing_survives_odd_command_names_and_sees_zombies() -> None:
    """/proc/<pid>/stat: a name with spaces and ')' is skipped; a zombie is gone."""
    rest = " ".join(str(n) for n in range(4, 23))
    assert 22 == linux.parse_stat(f"42 (a) b (c)) S {rest} 99".encode())
    assert linux.parse_stat(f"42 (zed) Z {rest}".encode()) is None
    assert linux.parse_stat(b"42 (cut") is None


@needs_linux
def test_linux_child_of_dibs_run_asks_for_a_parent_death_signal() -> None:
    """Linux: dibs run's command asks for PR_SET_PDEATHSIG (read back with PR_GET_PDEATHSIG)."""
    setup = Linux().parent_death_setup()
    assert setup is not None
    code = (
        "import ctypes, signal; v = ctypes.c_int(); "
        "ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=setup, capture_output=True, text=True, check=True
    )
    import signal

    assert str(int(signal.SIGTERM)) == out.stdout.strip()


# macOS: pure parts everywhere, calls on macOS only -----------------------------------------


def kinfo(pid: int, stat: int, seconds: int, micros: int) -> bytes:
    """A struct kinfo_proc as 64-bit macOS lays it out (only the fields dibs reads)."""
    raw = bytearray(darwin.KINFO_PROC_SIZE)
    raw[0:8] = seconds.to_bytes(8, sys.byteorder, signed=True)
    raw[8:12] = micros.to_bytes(4, sys.byteorder, signed=True)
    raw[36] = stat
    raw[40:44] = pid.to_bytes(4, sys.byteorder, signed=True)
    return bytes(raw)


def test_darwin_reads_the_start_time_from_kinfo_proc() -> None:
    """macOS: the start time is p_starttime in microseconds; a zombie, another pid or an
    empty answer is gone."""
    assert 1_700_000_000_250_000 == darwin.parse_kinfo_proc(
        kinfo(42, 2, 1_700_000_000, 250_000), 42
    )
    assert darwin.parse_kinfo_proc(kinfo(42, 5, 1_700_000_000, 0), 42) is None
    assert darwin.parse_kinfo_proc(kinfo(43, 2, 1_700_000_000, 0), 42) is None
    assert darwin.parse_kinfo_proc(b"", 42) is None


def test_darwin_boot_session_uuid_is_parsed_from_a_c_string() -> None:
    """macOS: kern.bootsessionuuid is a NUL-terminated UUID; anything else is not one."""
    text = "5A1C3A2E-0C9B-4D2E-9F1A-3C7B2D1E0F4A"
    assert text == darwin.parse_uuid(text.encode() + b"\0\0")
    assert "" == darwin.parse_uuid(b"garbage\0")


def test_darwin_full_sync_is_f_fullfsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS: store.sync=full asks fcntl(F_FULLFSYNC); fsync asks plain fsync."""
    import fcntl

    requests: list[tuple[int, int]] = []
    plain = Calls()
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, cmd: requests.append((fd, cmd)))
    monkeypatch.setattr(darwin.os, "fsync", plain)
    chosen = Darwin()
    chosen.sync_data(5, "full")
    chosen.sync_file(6, "fsync")
    assert [(5, getattr(fcntl, "F_FULLFSYNC", darwin.F_FULLFSYNC))] == requests
    assert [6] == plain.fds
    assert ["F_FULLFSYNC", "fsync"] == list(chosen.sync_primitives())
    assert ("F_FULLFSYNC", "fsync") == (chosen.sync_name("full"), chosen.sync_name("fsync"))


def test_darwin_falls_back_to_fsync_where_f_fullfsync_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS: a file system that refuses F_FULLFSYNC gets plain fsync."""
    import fcntl

    def refuse(fd: int, cmd: int) -> None:
        raise OSError(45, "Operation not supported")

    plain = Calls()
    monkeypatch.setattr(fcntl, "fcntl", refuse)
    monkeypatch.setattr(darwin.os, "fsync", plain)
    Darwin().sync_file(9)
    assert [9] == plain.fds


def test_darwin_never_trusts_a_kinfo_proc_it_misreads(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS: when KERN_PROC_PID does not read this process as expected, liveness is os.kill
    (a live process is never declared dead by a misread layout)."""
    monkeypatch.setattr(darwin, "kinfo_proc", lambda _pid: bytes(darwin.KINFO_PROC_SIZE))
    chosen = Darwin()
    assert UNKNOWN_START == chosen.process_start(os.getpid())
    assert chosen.process_start(dead_pid()) is None
    assert chosen.liveness_name().startswith("kill(pid, 0)")


def test_darwin_reads_start_times_once_kinfo_proc_reads_this_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS: a kinfo_proc that reads this process right decides every pid's start time."""
    me = os.getpid()
    table = {me: kinfo(me, 2, 1_700_000_000, 1), 4242: kinfo(4242, 2, 1_700_000_100, 7)}
    monkeypatch.setattr(darwin, "kinfo_proc", lambda pid: table.get(pid, b""))
    chosen = Darwin()
    assert 1_700_000_100_000_007 == chosen.process_start(4242)
    assert chosen.process_start(4343) is None
    assert "sysctl KERN_PROC_PID start time" == chosen.liveness_name()


@needs_macos
def test_macos_process_start_comes_from_sysctl() -> None:
    """macOS: this process has a stable start time; a reaped process has none."""
    me = Darwin().process_start(os.getpid())
    assert me is not None
    assert me > 0
    assert me == Darwin().process_start(os.getpid())
    assert Darwin().process_start(dead_pid()) is None


@needs_macos
def test_macos_boot_id_is_the_boot_session_uuid() -> None:
    """macOS: the boot id is kern.bootsessionuuid."""
    out = subprocess.run(
        ["sysctl", "-n", "kern.bootsessionuuid"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == Darwin().boot_id()


@needs_macos
def test_macos_full_fsync_works_on_a_real_file(tmp_path: Path) -> None:
    """macOS: F_FULLFSYNC succeeds on a file in the temporary folder."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
        darwin.full_fsync(fd)
    finally:
        os.close(fd)


# The choice in dibs.toml ---------------------------------------------------------------------


def test_store_sync_in_dibs_toml_reaches_the_local_store(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """store.sync = "fsync" in dibs.toml makes the local store sync with that choice."""
    from dibs.service import Coordinator

    monkeypatch.delenv("DIBS_SYNC", raising=False)
    with Coordinator.open(repo) as dibs:
        assert "full" == getattr(dibs.store, "sync", None)
    (repo / "dibs.toml").write_text('[store]\nsync = "fsync"\n')
    with Coordinator.open(repo) as dibs:
        assert "fsync" == getattr(dibs.store, "sync", None)


def test_a_bad_store_sync_is_refused_naming_the_choices(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIBS_SYNC=sometimes is a usage error that names full and fsync."""
    from dibs.ground.errors import InvalidSetting
    from dibs.service import Coordinator

    monkeypatch.setenv("DIBS_SYNC", "sometimes")
    with pytest.raises(InvalidSetting, match="full, fsync"):
        Coordinator.open(repo)


# Peer credentials (the CLI helper) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "primitive"),
    [
        ("linux", "SO_PEERCRED" if ON_LINUX else None),
        ("darwin", "getpeereid + LOCAL_PEERPID" if ON_MACOS else None),
        ("posix", None),
    ],
)
def test_each_platform_names_its_peer_credentials_or_none(name: str, primitive: str | None) -> None:
    """Linux reads SO_PEERCRED, macOS getpeereid with LOCAL_PEERPID, the rest nothing (no
    helper there); on Linux the darwin choice finds no getpeereid in libc and says so."""
    assert primitive == platform.select(name).peer_credentials_name()


def test_without_peer_credentials_the_platform_fails_closed() -> None:
    """Where no primitive names a socket's peer, asking raises instead of answering anything."""
    left, right = __import__("socket").socketpair()
    try:
        with pytest.raises(OSError, match="no peer credentials"):
            Posix().peer_credentials(left)
        if not ON_MACOS:
            # The darwin choice imports and runs on Linux; glibc has no getpeereid.
            with pytest.raises(OSError, match="no peer credentials"):
                Darwin().peer_credentials(left)
    finally:
        left.close()
        right.close()


@needs_linux
def test_linux_peer_credentials_come_from_so_peercred() -> None:
    """Linux: a connected socket's peer is this process, by the kernel's record."""
    import socket

    left, right = socket.socketpair()
    try:
        assert (os.getpid(), os.getuid()) == Linux().peer_credentials(left)
    finally:
        left.close()
        right.close()


def test_linux_reads_pid_and_uid_from_struct_ucred() -> None:
    """struct ucred is pid, uid, gid as native ints."""
    import struct

    assert (4242, 1000) == linux.parse_ucred(struct.pack("3i", 4242, 1000, 100))


class FakeSocket:
    """What Darwin.peer_credentials asks of a socket: its fd and LOCAL_PEERPID's answer."""

    def __init__(self, pid: bytes) -> None:
        self.pid = pid
        self.asked: list[tuple[int, int, int]] = []

    def fileno(self) -> int:
        return 7

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        self.asked.append((level, option, size))
        return self.pid


def fake_getpeereid(uid: int, gid: int, result: int = 0) -> Any:
    """A real C function (a ctypes callback) with getpeereid's signature, answering *uid* and
    *gid* for fd 7."""
    import ctypes

    kind = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)
    )

    def answer(fd: int, uid_p: Any, gid_p: Any) -> int:
        assert fd == 7
        uid_p[0], gid_p[0] = uid, gid
        return result

    return kind(answer)


class FakeLibc:
    def __init__(self, call: Any) -> None:
        self.getpeereid = call


def test_darwin_peer_credentials_are_getpeereid_and_local_peerpid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS: getpeereid (its C signature set up first) gives the uid, getsockopt(SOL_LOCAL,
    LOCAL_PEERPID) the pid."""
    import ctypes

    call = fake_getpeereid(501, 20)
    monkeypatch.setattr(darwin, "c_library", lambda: FakeLibc(call))
    sock = FakeSocket((4242).to_bytes(4, sys.byteorder))
    chosen = Darwin()
    assert "getpeereid + LOCAL_PEERPID" == chosen.peer_credentials_name()
    assert (4242, 501) == chosen.peer_credentials(sock)
    assert [(0, 2, 4)] == sock.asked
    assert ctypes.c_int is call.restype
    assert [ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)] == call.argtypes[:2]


def test_darwin_peer_credentials_fail_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS: getpeereid refusing, or a LOCAL_PEERPID answer that is no pid, raises OSError
    (the helper then serves nobody), never a guess."""
    monkeypatch.setattr(darwin, "c_library", lambda: FakeLibc(fake_getpeereid(501, 20, -1)))
    with pytest.raises(OSError):
        Darwin().peer_credentials(FakeSocket((4242).to_bytes(4, sys.byteorder)))
    monkeypatch.setattr(darwin, "c_library", lambda: FakeLibc(fake_getpeereid(501, 20)))
    for raw in (
        b"",
        b"\0\0",
        (0).to_bytes(4, sys.byteorder),
        (-1).to_bytes(4, sys.byteorder, signed=True),
    ):
        with pytest.raises(OSError):
            Darwin().peer_credentials(FakeSocket(raw))


def test_darwin_without_a_c_library_has_no_peer_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No libc to load (or none with getpeereid): no primitive, and no exception on import."""
    monkeypatch.setattr(darwin, "c_library", lambda: None)
    assert Darwin().peer_credentials_name() is None
    assert darwin.getpeereid_function() is None


@needs_macos
def test_macos_peer_credentials_name_this_process() -> None:
    """macOS: both ends of a socket pair are this process, by getpeereid and LOCAL_PEERPID."""
    import socket

    left, right = socket.socketpair()
    try:
        assert (os.getpid(), os.getuid()) == Darwin().peer_credentials(left)
        assert (os.getpid(), os.getuid()) == Darwin().peer_credentials(right)
    finally:
        left.close()
        right.close()


@needs_macos
def test_macos_peer_credentials_name_another_process() -> None:
    """macOS: the peer of an accepted connection is the process that connected."""
    import shutil
    import socket
    import tempfile

    # Under /tmp: pytest's folders under $TMPDIR are too long for a socket address on macOS.
    folder = tempfile.mkdtemp(prefix="dibs-peer-", dir="/tmp")
    path = os.path.join(folder, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(1)
        code = (
            "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.recv(1)"
        )
        client = subprocess.Popen([sys.executable, "-c", code, path])
        conn, _ = listener.accept()
        try:
            assert (client.pid, os.getuid()) == Darwin().peer_credentials(conn)
        finally:
            conn.close()
            client.wait(timeout=30)
    finally:
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


@needs_macos
def test_macos_getpeereid_refuses_a_file_that_is_no_socket(tmp_path: Path) -> None:
    """macOS: getpeereid on a plain file fails (ENOTSOCK): an OSError, not an answer."""
    call = darwin.getpeereid_function()
    assert call is not None
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError):
            darwin.getpeereid(call, fd)
    finally:
        os.close(fd)
