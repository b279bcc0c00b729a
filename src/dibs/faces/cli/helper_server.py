"""The CLI helper's server: warm imports, one spare per call (see `dibs.faces.cli.helper`).

    python -m dibs.faces.cli.helper_server

runs a server for this user and this installation until it is idle for ``DIBS_HELPER_IDLE``
seconds (default 600); a direct call on a PostgreSQL store starts one. It exits at once (1)
where the platform cannot name a socket's peer (`dibs.ground.platform.peer_credentials_name`).
Kept apart from the client, which every CLI call imports, so that a call does not load what
only the server runs.
"""

from __future__ import annotations

import os
import sys

from dibs.faces.cli.helper import (
    _VERSION,
    _record_path,
    folder,
    private,
    remember,
    socket_path,
)
from dibs.ground import platform

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_IDLE = 600.0

# Opening the next call's store ahead ------------------------------------------------------

#: What decides where a PostgreSQL connection goes and how it logs in, besides the URL: a
#: store opened ahead is used only by a call whose values of these are the spare's own.
_PG_ENV = (
    "HOME", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD", "PGPASSFILE",
    "PGSERVICE", "PGSERVICEFILE", "PGSSLMODE", "PGOPTIONS", "PGAPPNAME", "PGCONNECT_TIMEOUT",
    "PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT", "PGTARGETSESSIONATTRS",
)  # fmt: skip


def _preopen() -> tuple[Any, dict[str, str | None]] | None:
    """Open the store the last call used and load its state: ``(store, the PostgreSQL
    environment it connected with)``, or None (no record, or it failed: the call opens its
    own and meets the same failure there)."""
    try:
        with open(_record_path(), encoding="utf-8") as f:
            common, url, setting, namespace = f.read().split("\0")
        from dibs.service.opening import open_store

        store = open_store(url, None, namespace=namespace)
        store.read()
        from dibs.ground.heap import settle_heap

        settle_heap()  # a warm process keeps this state: its collector need not walk it again
    except Exception:  # noqa: BLE001 -- a store opened ahead is an optimisation only
        return None
    from dibs.service import opening

    opening.preopened[(common, url, setting)] = store
    return store, {name: os.environ.get(name) for name in _PG_ENV}


def _keep_preopened(opened: tuple[Any, dict[str, str | None]] | None) -> None:
    """In the call's environment: keep the store opened ahead only when it connected as this
    call would, and its connection is still open (not closed by the server meanwhile)."""
    if opened is None:
        return
    import select

    from dibs.service import opening

    store, env = opened
    conn = getattr(store, "_conn", None)
    fine = env == {name: os.environ.get(name) for name in _PG_ENV}
    if fine and conn is not None and not conn.closed:
        # An idle connection has nothing to read: something readable is its end.
        fine = not select.select([conn.fileno()], [], [], 0)[0]
    if not fine:
        opening.preopened.clear()
        store.close()


# The server -------------------------------------------------------------------------------


#: ``(path, mtime)`` of every dibs module the server imported: a spare whose code changed on
#: disk (an upgrade, an edit of an editable install) runs no call and stops the server.
_loaded: list[tuple[str, int]] = []


def _code_files() -> list[tuple[str, int]]:
    found = []
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and (module.__name__ == "dibs" or module.__name__.startswith("dibs.")):
            try:
                found.append((path, os.stat(path).st_mtime_ns))
            except OSError:
                found.append((path, -1))
    return sorted(found)


def _code_changed() -> bool:
    for path, mtime in _loaded:
        try:
            if os.stat(path).st_mtime_ns != mtime:
                return True
        except OSError:
            return True
    return False


def _warm_up() -> None:
    """Import everything a call may need, once, before any fork."""
    import contextlib
    import importlib

    from dibs.faces.cli import COMMANDS

    for module in {m for m, _ in COMMANDS.values()} | {"dibs.faces.cli.output", "dibs.service"}:
        importlib.import_module(module)
    for module in (
        "argparse", "json", "tomllib", "dibs.ground.settings", "dibs.ground.git.discover",
        "dibs.service.identity", "dibs.integrations.guard", "dibs.faces.hooks",
        "dibs.integrations.sessions", "dibs.store.local", "dibs.core.leases",
        "dibs.store.postgres",
    ):  # fmt: skip
        with contextlib.suppress(ImportError):  # psycopg missing: calls fail as directly
            importlib.import_module(module)


def serve() -> int:
    """Run a helper server until it is idle for ``DIBS_HELPER_IDLE`` seconds."""
    import contextlib
    import socket

    if platform.peer_credentials_name() is None:
        return 1  # no way to tell who connects: nobody may be served (see `helper`)
    where = folder()
    with contextlib.suppress(FileExistsError):
        os.mkdir(where, 0o700)
    if not private(where):
        return 1
    path = socket_path()
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if not platform.try_lock(lock):
        return 0  # another server runs
    _server_only.append(lock)
    _warm_up()
    _loaded[:] = _code_files()
    idle = float(os.environ.get("DIBS_HELPER_IDLE") or _IDLE)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        listener.bind(path)
    except OSError:
        return 1  # calls run directly, as without a helper
    os.chmod(path, 0o600)
    listener.listen(64)
    try:
        _serve(listener, idle)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return 0


def _serve(listener: Any, idle: float) -> None:
    """Keep one spare forked; fork the next when one is taken; stop after *idle* seconds."""
    import select

    taken_r, taken_w = os.pipe()
    life_r, life_w = os.pipe()
    _server_only.extend((taken_r, life_w))
    spare = _fork_spare(listener, taken_w, life_r)
    while True:
        ready, _, _ = select.select([taken_r], [], [], idle)
        _reap()
        if not ready:
            break
        if b"q" in os.read(taken_r, 64):
            break  # the code changed on disk: the next call starts a new server
        spare = _fork_spare(listener, taken_w, life_r)
    # Idle: the socket goes first (new calls then run directly), then the spare with it.
    os.unlink(listener.getsockname())
    os.close(life_w)
    platform.send_signal(spare, 15)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


#: The server's own descriptors (its lock, its ends of the pipes): a child closes them, so
#: a call still running when the server is gone neither holds the lock nor hides its end.
_server_only: list[int] = []


def _fork_spare(listener: Any, taken_w: int, life_r: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd in _server_only:
            os.close(fd)
        code = _spare(listener, taken_w, life_r)
    except BaseException:  # noqa: BLE001 -- a spare's failure goes to the server's log
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _spare(listener: Any, taken_w: int, life_r: int) -> int:
    """Open the last call's store ahead, wait for one call and run it; exit when the server
    is gone before a call came."""
    import contextlib
    import select

    opened = _preopen()
    while True:
        ready, _, _ = select.select([listener, life_r], [], [])
        if life_r in ready:
            return 0  # the server stopped (or died): nobody will fork a next spare
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        break
    listener.close()
    os.close(life_r)
    stale = _code_changed()
    with contextlib.suppress(OSError):  # the server died: this call still runs
        os.write(taken_w, b"q" if stale else b"t")
    os.close(taken_w)
    if stale:
        return 0  # closed without a word: the client runs the call itself
    return _take(conn, opened)


def _take(conn: Any, opened: tuple[Any, dict[str, str | None]] | None) -> int:
    """Serve one client: only the same user, only after its "go"."""
    import _socket
    import array

    try:
        pid, uid = platform.peer_credentials(conn)
    except OSError:
        return 0  # the kernel did not say who it is: served as a stranger would be
    if uid != os.getuid():
        return 0
    conn.sendall(b"S%d\n" % os.getpid())
    fds = array.array("i")
    data, ancillary, _, _ = conn.recvmsg(64, _socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, raw in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
    head, newline, body = data.partition(b"\n")
    if not head.startswith(b"G") or not newline or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        return 0  # the client gave up (or is not a dibs client): nothing was done
    size = int(head[1:])
    while len(body) < size:
        chunk = conn.recv(min(1 << 20, size - len(body)))
        if not chunk:
            return 0
        body += chunk
    argv, env = _decode(body)
    _become(conn, pid, list(fds), env)
    _keep_preopened(opened)
    code = _run(argv)
    remember()
    conn.sendall(b"X%d\n" % code)
    return 0


def _decode(body: bytes) -> tuple[list[str], dict[bytes, bytes]]:
    parts = body.split(b"\0")
    if parts[0] != _VERSION:
        raise SystemExit(1)
    count = int(parts[1])
    argv = [os.fsdecode(a) for a in parts[2 : 2 + count]]
    env = {}
    for item in parts[2 + count :]:
        name, _, value = item.partition(b"=")
        env[name] = value
    return argv, env


def _become(conn: Any, client: int, fds: list[int], env: dict[bytes, bytes]) -> None:
    """Take the client's standard streams, directory, environment and place in the process
    tree; die with the client."""
    import contextlib
    import io
    import threading

    from dibs.integrations import sessions

    for target, fd in zip((0, 1, 2), fds[:3], strict=True):
        os.dup2(fd, target)
        os.close(fd)
    os.fchdir(fds[3])
    os.close(fds[3])
    os.environb.clear()
    os.environb.update(env)
    sessions.called_by(client)

    def stream(fd: int, mode: str, like: Any) -> Any:
        return io.TextIOWrapper(
            open(fd, mode + "b", closefd=False),
            encoding=like.encoding,
            errors=like.errors,
            line_buffering=mode == "w" and (fd == 2 or os.isatty(fd)),
            write_through=fd == 2,
        )

    sys.stdin = stream(0, "r", sys.__stdin__)
    sys.stdout = stream(1, "w", sys.__stdout__)
    sys.stderr = stream(2, "w", sys.__stderr__)

    def watch() -> None:
        # The client sends nothing after the call: any end of its socket means it is gone.
        with contextlib.suppress(OSError):
            conn.recv(1)
        platform.send_signal(os.getpid(), 9)

    threading.Thread(target=watch, daemon=True).start()


def _run(argv: list[str]) -> int:
    import contextlib

    from dibs.faces.cli import main

    try:
        code: Any = main(argv[1:])
    except SystemExit as exc:
        code = exc.code
    except KeyboardInterrupt:
        sys.stderr.write("dibs: interrupted\n")
        code = 130
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


if __name__ == "__main__":
    sys.exit(serve())
