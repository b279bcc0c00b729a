"""Shared fixtures: git repositories in temporary folders, a settable clock, the installed CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dibs.core.leases import Context
from dibs.ground import platform
from dibs.ground.now import Now

if TYPE_CHECKING:
    from dibs.core.state import AgentRecord

BIN = Path(sys.executable).parent

# The CLI helper (dibs.cli.helper): tests run calls directly unless they ask for it (or the
# whole run does: DIBS_HELPER=on), and a helper a test starts lives in a folder of this run.
os.environ.setdefault("DIBS_HELPER", "off")
os.environ.setdefault("DIBS_HELPER_IDLE", "30")
# Every commuting append on PostgreSQL is decided again on the caught-up state and must match
# (dibs.store.postgres.commuting): the contract suite, the model and every race test check it.
os.environ.setdefault("DIBS_VERIFY_COMMUTING", "1")
if "DIBS_TEST_RUNTIME_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["DIBS_TEST_RUNTIME_DIR"] = os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(
        prefix="dibs-test-run-"
    )
    atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)


class FakeClock:
    """A deciding clock that only moves when told to."""

    def __init__(self, boot: str = "boot-a", mono: int = 10**12, wall: float = 1_800_000_000.0):
        self.boot = boot
        self.mono = mono
        self.wall = wall

    def __call__(self) -> Now:
        return Now(self.boot, self.mono, self.wall)

    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * 1_000_000_000)
        self.wall += seconds

    def reboot(self) -> None:
        self.boot += "'"
        self.mono = 10**9


class FakeLiveness:
    """Liveness by name: agents listed in ``dead`` are gone, others cannot be told."""

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, agent: AgentRecord) -> bool | None:
        self.asked.append(agent["name"])
        return False if agent["name"] in self.dead else None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def liveness() -> FakeLiveness:
    return FakeLiveness()


@pytest.fixture
def ctx_at(liveness: FakeLiveness) -> Callable[[FakeClock], Context]:
    return lambda clock: Context(clock(), liveness)


def git(cwd: Path | str, *args: str) -> str:
    """Run git in *cwd* and return its output."""
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def make_repo(path: Path) -> Path:
    """A git repository with one commit on main."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@dibs.invalid")
    git(path, "config", "user.name", "dibs tests")
    (path / "README.md").write_text("# test repository\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial commit")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def store_dir(repo: Path) -> Path:
    """The local store folder of *repo*."""
    return repo / ".git" / "dibs"


class Cli:
    """The installed ``dibs`` command, run in a repository, as a user would."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None):
        self.cwd = cwd
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DIBS_") or k.startswith("DIBS_HELPER")
        }
        self.env.update(env or {})

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(self.env)
        full_env.update(env or {})
        return subprocess.run(
            [str(BIN / "dibs"), *args],
            cwd=self.cwd,
            env=full_env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            check=False,
        )

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        out = self(*args, "--json", env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def jsonl(self, *args: str, env: dict[str, str] | None = None) -> list[Any]:
        """Run a command whose --json output is JSON Lines (``dibs log``)."""
        out = self(*args, "--json", env=env)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def register(self, name: str, *extra: str) -> dict[str, str]:
        """Register *name*; return the environment that acts as it."""
        reg = self.json("agent", "register", name, *extra)
        return {"DIBS_AGENT": reg["agent"], "DIBS_TOKEN": reg["token"]}


@pytest.fixture
def cli(repo: Path) -> Cli:
    return Cli(repo)


def background(
    cli: Cli, *args: str, env: dict[str, str], session: bool = False
) -> subprocess.Popen[str]:
    """`dibs *args*` started in *cli*'s folder as the agent of *env*, output captured (with
    *session*: in a process group of its own, for `os.killpg`)."""
    return subprocess.Popen(
        [str(BIN / "dibs"), *args],
        cwd=cli.cwd,
        env={**cli.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )


def until(ready: Any, what: str, proc: subprocess.Popen[str] | None = None) -> None:
    """Wait (up to 60 s) until *ready*() is true; fail at once if *proc* ended meanwhile."""
    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, f"{what} never happened"
        assert proc is None or proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def reap(procs: list[subprocess.Popen[Any]]) -> None:
    """Kill and wait for every process (for `finally` blocks)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    """A list to put started processes in; every one is killed and reaped afterwards."""
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        reap(started)


# PostgreSQL ---------------------------------------------------------------------------------
#
# Tests of the PostgreSQL store talk to a real server: DIBS_TEST_PG names an admin URL (a user
# that may create databases), by default the one on this project's machines. Each test gets
# its own database, created from a template that already holds dibs's schema (cheap: a file
# copy). Without a server the tests skip and say how to enable them; on CI they fail.

PG_ADMIN = os.environ.get("DIBS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_PG_PREFIX = f"dibs_t{os.getpid()}_"


def pg_url(dbname: str, password: str | None = None) -> str:
    """The admin server as a ``postgresql://`` URL to another database."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(PG_ADMIN)
    user = quote(str(params.get("user", "postgres")), safe="")
    if password is not None:
        user += ":" + quote(password, safe="")
    where = f"{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"
    return f"postgresql://{user}@{where}/{quote(dbname, safe='')}"


def pg_admin() -> Any:
    """An autocommit connection to the admin database."""
    import psycopg

    return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)


def ddl(conn: Any, statement: str, *names: str) -> None:
    """Run *statement* with database names quoted as identifiers in its ``{}`` slots."""
    from psycopg import sql

    conn.execute(sql.SQL(statement).format(*(sql.Identifier(n) for n in names)))


def _drop_stale_databases(conn: Any) -> None:
    """Drop test databases left by earlier runs whose process is gone (a killed pytest)."""
    rows = conn.execute(
        "SELECT datname FROM pg_database WHERE datname ~ '^dibs_t[0-9]+_'"
    ).fetchall()
    for (name,) in rows:
        pid = int(name[len("dibs_t") :].split("_", 1)[0])
        if platform.process_start(pid) is None:  # not /proc: it is missing on macOS
            ddl(conn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A template database with dibs's schema; skips (fails on CI) without a server."""
    try:
        import psycopg

        conn = pg_admin()
    except ImportError:
        pytest.fail("psycopg is not installed: `make test` installs it (the dev extra)")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1].strip()
        message = (
            f"no PostgreSQL server at {PG_ADMIN} ({reason}); set "
            "DIBS_TEST_PG=postgresql://USER@HOST:PORT/DB (a user that may create databases) "
            "to run the PostgreSQL store's tests"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from dibs.store.postgres import PostgresStore

    name = _PG_PREFIX + "template"
    with conn:
        _drop_stale_databases(conn)
        ddl(conn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)
        ddl(conn, "CREATE DATABASE {}", name)
        store = PostgresStore(pg_url(name), namespace="template")
        store.create()
        store.close()
        try:
            yield name
        finally:
            ddl(conn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


_pg_count = [0]


@contextlib.contextmanager
def fresh_database(template: str | None) -> Iterator[str]:
    """A database of this run (dropped afterwards, or by the next run if this one dies), made
    from *template* (dibs's schema) or empty; its URL."""
    _pg_count[0] += 1
    name = f"{_PG_PREFIX}{_pg_count[0]}"
    with pg_admin() as conn:
        if template is None:
            ddl(conn, "CREATE DATABASE {}", name)
        else:
            ddl(conn, "CREATE DATABASE {} TEMPLATE {}", name, template)
    try:
        yield pg_url(name)
    finally:
        with pg_admin() as conn:
            ddl(conn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


@pytest.fixture
def pg_database(pg_template: str) -> Iterator[str]:
    """A fresh database for this test (dibs's schema, no namespace); its URL."""
    with fresh_database(pg_template) as url:
        yield url


@pytest.fixture
def pg_empty_database(pg_template: str) -> Iterator[str]:
    """A fresh database without dibs's schema; its URL."""
    with fresh_database(None) as url:
        yield url
