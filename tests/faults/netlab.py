"""A small network of "machines" on this host: Linux network namespaces joined by veth pairs.

Each machine is a network namespace of its own (``ip netns``) with one veth pair to this host's
root namespace, addressed from a private /24 that no interface here uses (a /30 per link:
``.4k+1`` on the root end, ``.4k+2`` in the machine). Nothing is routed between machines (the
root namespace's ``ip_forward`` is left alone): a machine reaches another only through a process
in the root namespace that relays, such as `tests.faults.proxy.FaultProxy` listening on its
link's root end. So the database machine's traffic from every other machine crosses that proxy,
where delay and loss are made, and a partition is a link taken down (``ip link set ... down``):
real packets, real TCP timeouts, no loopback shortcut.

What the kernel here offers was checked: veth pairs and network namespaces work as root; there
is no ``netem`` qdisc (``tc qdisc add ... netem`` says the kind is unknown) and no iptables or
nft, hence the proxy for delay and loss.

`Lab` removes everything it made in `close` (namespaces, links, the processes it started and
the cluster), and `sweep` removes what a killed earlier run left (named after its pid).
"""

from __future__ import annotations

import contextlib
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PREFIX = "dl"  # namespaces: dl<pid>-<name>; root link ends: dl<pid>r<k>
CLUSTER_PREFIX = "dibs-netlab-pg-"  # cluster folders in the temp dir: <prefix><pid>-<random>


def run(*args: str, timeout: float = 60) -> str:
    """Run a command; its output. Raises with its error output when it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def unavailable() -> str | None:
    """Why this machine cannot make namespaces (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or under CI=true where it is root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2) to make network namespaces"
    if pg_bin() is None:
        return "no PostgreSQL server binaries (initdb): set DIBS_TEST_PG_BIN to their folder"
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "del", probe)
    except RuntimeError as exc:
        return f"cannot make a network namespace here: {exc}"
    return None


def pg_bin() -> str | None:
    """The PostgreSQL server binaries' folder (DIBS_TEST_PG_BIN, else the newest installed)."""
    override = os.environ.get("DIBS_TEST_PG_BIN")
    if override:
        return override
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep() -> None:
    """Remove clusters, namespaces and links left by lab runs whose process is gone."""
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), CLUSTER_PREFIX + "*")):
        owner = os.path.basename(folder)[len(CLUSTER_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                postmaster = Path(folder, "data", "postmaster.pid").read_text().split()[0]
                os.kill(int(postmaster), signal.SIGQUIT)  # the server's immediate shutdown
            shutil.rmtree(folder, ignore_errors=True)
    for line in run("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not _pid_alive(int(owner)):
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", name)
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        owner = name[len(PREFIX) :].split("r", 1)[0]
        if name.startswith(PREFIX) and owner.isdigit() and not _pid_alive(int(owner)):
            with contextlib.suppress(RuntimeError):
                run("ip", "link", "del", name)


def free_subnet() -> str:
    """A private /24 (``10.X.Y``) that no address or route on this host overlaps."""
    used = run("ip", "-o", "-4", "addr") + run("ip", "-4", "route")
    rng = random.Random()
    for _ in range(200):
        prefix = f"10.{rng.randrange(64, 250)}.{rng.randrange(256)}"
        if not re.search(rf"(^|\s){re.escape(prefix)}\.", used, re.MULTILINE):
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet found for the lab")


class Machine:
    """One namespace and its link: ``address`` inside, ``gateway`` on the root end."""

    def __init__(self, lab: Lab, name: str, index: int):
        self.name = name
        self.netns = f"{PREFIX}{lab.tag}-{name}"
        self.root_end = f"{PREFIX}{lab.tag}r{index}"
        inner = f"{PREFIX}{lab.tag}i{index}"
        self.gateway = f"{lab.subnet}.{4 * index + 1}"
        self.address = f"{lab.subnet}.{4 * index + 2}"
        run("ip", "netns", "add", self.netns)
        lab.namespaces.append(self.netns)
        run("ip", "link", "add", self.root_end, "type", "veth", "peer", "name", inner)
        lab.links.append(self.root_end)
        run("ip", "link", "set", inner, "netns", self.netns)
        run("ip", "addr", "add", f"{self.gateway}/30", "dev", self.root_end)
        run("ip", "link", "set", self.root_end, "up")
        self.ip("addr", "add", f"{self.address}/30", "dev", inner)
        self.ip("link", "set", inner, "up")
        self.ip("link", "set", "lo", "up")
        self._wait_reachable()

    def ip(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.netns, "ip", *args)

    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it on this machine."""
        return ["ip", "netns", "exec", self.netns]

    def link(self, up: bool) -> None:
        """Cut this machine off (down) or join it again (up): its veth pair's root end."""
        run("ip", "link", "set", self.root_end, "up" if up else "down")
        if up:
            self._wait_reachable()

    def _wait_reachable(self) -> None:
        """Until the link carries packets (a veth end comes up a moment after `up`)."""
        deadline = time.monotonic() + 10
        while "NO-CARRIER" in run("ip", "link", "show", self.root_end) or "tentative" in run(
            "ip", "addr", "show", self.root_end
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"link {self.root_end} did not come up")
            time.sleep(0.05)


class Cluster:
    """A throw-away PostgreSQL cluster on *machine*, listening on its address (trust auth for
    the lab's subnet), run as the postgres user when we are root (the server refuses root)."""

    def __init__(self, machine: Machine, subnet: str):
        bindir = pg_bin()
        assert bindir is not None  # unavailable() said so first
        self.bindir = bindir
        self.machine = machine
        self.root = tempfile.mkdtemp(prefix=f"{CLUSTER_PREFIX}{os.getpid()}-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        self.port = 5432  # its own namespace: no other server listens there
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self._tool("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        with open(os.path.join(self.data, "pg_hba.conf"), "a", encoding="utf-8") as f:
            f.write(f"host all all {subnet}.0/24 trust\n")
        # A partitioned client's old session lingers on the server (the relay in between
        # still holds it open) while the client reconnects: room for many, and idle ones end.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={machine.address}"
            " -c fsync=off -c max_connections=400 -c idle_session_timeout=20s"
        )
        self._tool("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")
        self.running = True

    def _tool(self, tool: str, *args: str) -> None:
        command = [*self.machine.exec_prefix(), *self.as_postgres, f"{self.bindir}/{tool}", *args]
        run(*command, timeout=120)

    def url(self, dbname: str = "postgres", host: str | None = None, port: int = 0) -> str:
        return f"postgresql://postgres@{host or self.machine.address}:{port or self.port}/{dbname}"

    def remove(self) -> None:
        if self.running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._tool("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)


class Lab:
    """Machines on one private subnet; `close` undoes everything, whatever state it is in."""

    def __init__(self) -> None:
        self.tag = str(os.getpid())
        self.subnet = free_subnet()
        self.namespaces: list[str] = []
        self.links: list[str] = []
        self.machines: dict[str, Machine] = {}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.cluster: Cluster | None = None
        self.proxies: list[object] = []

    def machine(self, name: str) -> Machine:
        made = Machine(self, name, len(self.machines) + 1)
        self.machines[name] = made
        return made

    def start_cluster(self, machine: Machine) -> Cluster:
        self.cluster = Cluster(machine, self.subnet)
        return self.cluster

    def spawn(
        self, machine: Machine, argv: list[str], env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        """Start *argv* on *machine* (its own process group, so `close` can end it all)."""
        proc = subprocess.Popen(
            [*machine.exec_prefix(), *argv],
            env=env,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.close()  # type: ignore[attr-defined]
        if self.cluster is not None:
            self.cluster.remove()
        for netns in self.namespaces:
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", netns)
        for link in self.links:
            if (
                subprocess.run(
                    ["ip", "link", "show", link], capture_output=True, check=False
                ).returncode
                == 0
            ):
                with contextlib.suppress(RuntimeError):
                    run("ip", "link", "del", link)
