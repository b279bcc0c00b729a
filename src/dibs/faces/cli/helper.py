"""The per-user helper: warm processes that run CLI calls, so a call skips Python's imports.

Importing psycopg costs ~180 ms, ten times Python's own start, and every call of the edit
guard on a PostgreSQL store paid it. The helper keeps those imports done once per host and
user: a small *server* process with dibs, psycopg and every command module imported, which
keeps one *spare* child forked and waiting on a Unix socket. A CLI call (the *client*) that
finds the socket hands its whole invocation over and waits:

1. the client connects; the spare accepts, checks the peer's user id (the kernel's peer
   credentials, `dibs.ground.platform.peer_credentials`: ``SO_PEERCRED`` on Linux,
   ``getpeereid`` and ``LOCAL_PEERPID`` on macOS; only the same user is served) and answers
   ``S<pid>``;
2. the client answers ``G`` (go) and passes its argv, environment, standard input, output and
   error, and its working directory (as file descriptors, ``SCM_RIGHTS``); only after ``G``
   does the spare act, so a client that gave up waiting runs the call itself and nothing
   runs twice;
3. the spare becomes that call: it takes the client's descriptors as 0, 1 and 2, its working
   directory and environment, and the client's process as where the caller's ancestry starts
   (`dibs.integrations.sessions` finds a host's session agent from it); it runs
   `dibs.faces.cli.main` exactly as a direct call would (it opens the store, and every
   decision happens inside the store's transaction, as always), reports ``X<exit code>`` and
   exits. The server forks the next spare as soon as one is taken.

One process per call, forked from a server that only imported modules, so no call sees
another's state: the server holds no store, connection, identity or environment of any
caller. The helper is never needed for correctness: without a socket (or with one nobody
answers) the client runs the call itself, and a direct call on a PostgreSQL store starts a
server for the next calls. The server exits after ``DIBS_HELPER_IDLE`` seconds (default 600)
without a call; ``DIBS_HELPER=off`` turns the helper off.

Fate is shared both ways: a signal to the client (Ctrl-C, SIGTERM, SIGHUP) is passed on to the
process running the call, and when the client dies (even by SIGKILL) that process kills
itself, as if the client had been killed running the call directly. When that process dies
before it reports an exit code, the client says so (exit 1): like a direct call killed
mid-way, the outcome is then unknown, and the client never runs the call a second time.

The socket lives in a folder only its user can enter (``$XDG_RUNTIME_DIR/dibs-<uid>``, on
macOS ``$TMPDIR/dibs-<uid>``, else ``/tmp/dibs-<uid>``; mode 0700, owned by the user: anything
else is not used), and is named by the Python interpreter, dibs's install and version, and the
environment variables read when Python starts, so a call is only ever run by the same code it
would run directly. A base whose socket path would not fit a socket address (``sun_path``: 108
bytes on Linux, 104 on macOS and the BSDs, whose ``$TMPDIR`` is long) is passed over for the
next, down to ``/tmp``, which always fits.

Where the platform has no peer credentials (`dibs.ground.platform.peer_credentials_name` is
None: the BSDs, any other POSIX system, ``DIBS_PLATFORM=posix``) there is no helper: every
call runs directly, and a server refuses to start.

This module is the client side (and `remember`, `start_server`); the server is
`dibs.faces.cli.helper_server`. The client imports only built-in modules (``_socket``,
``_signal``, ``_blake2``) and `dibs.ground.platform` (for the peer check): it is what every
relayed call pays on top of Python's start.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

#: Commands the helper runs: one-shot calls whose processes start no agent of their own.
#: `run`, `mcp`, `dashboard`, `land` (and the rest) run directly: they start or serve
#: processes whose ancestry must be the caller's own.
RELAYED = frozenset(
    ("guard", "claim", "release", "renew", "heartbeat", "claims", "status", "agent", "next",
     "ready", "limit", "check", "plan", "gate", "gates", "evict", "log", "metrics", "doctor")
)  # fmt: skip
#: Environment variables that change what Python or dibs does at import time: part of the
#: socket's name, so a caller is served only by a server started like itself.
_STARTUP_ENV = (
    "PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PYTHONUTF8", "PYTHONIOENCODING",
    "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "LC_ALL", "LC_CTYPE", "LANG", "DIBS_PLATFORM",
)  # fmt: skip
_NO_MATTER = frozenset(("safe_path", "dont_write_bytecode", "count", "index"))
#: Seconds a client waits for a spare to accept before running the call itself.
_ACCEPT_WAIT = 2.0
_VERSION = b"dibs-helper-1"
#: The longest path bind() and connect() take for a Unix socket, its ending NUL left out: the
#: size of ``sockaddr_un.sun_path`` is 108 bytes on Linux, 104 on macOS and the BSDs.
SUN_PATH_MAX = 107 if sys.platform.startswith("linux") else 103
#: The socket's name in its folder is this long (``helper-<16 hex digits>.sock``).
_SOCKET_NAME = len("helper-0123456789abcdef.sock")


# Where ------------------------------------------------------------------------------------


def folder() -> str:
    """This user's helper folder (it may not exist yet)."""
    return pick_folder(os.environ, os.getuid(), sys.platform, SUN_PATH_MAX)


def pick_folder(env: Mapping[str, str], uid: int, system: str, limit: int) -> str:
    """The helper folder for user *uid* on *system*: in ``XDG_RUNTIME_DIR``, else (macOS) in
    ``TMPDIR``, a per-user private folder there, else in ``/tmp``; the first whose socket
    path fits in *limit* bytes. ``/tmp`` always fits, so a long ``TMPDIR`` means ``/tmp``,
    never a socket that cannot be bound. On Linux ``TMPDIR`` is not used (it is often the
    shared ``/tmp`` anyway, and the choice stays what it always was)."""
    names = ("XDG_RUNTIME_DIR", "TMPDIR") if system == "darwin" else ("XDG_RUNTIME_DIR",)
    for base in [env.get(name) for name in names]:
        if base:
            where = os.path.join(base, f"dibs-{uid}")
            if len(os.fsencode(where)) + 1 + _SOCKET_NAME <= limit:
                return where
    return f"/tmp/dibs-{uid}"  # noqa: S108 -- checked before use: owner, mode


def private(path: str) -> bool:
    """Whether *path* is a real folder owned by this user that nobody else may enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    is_dir = (st.st_mode & 0o170000) == 0o040000
    return is_dir and st.st_uid == os.getuid() and st.st_mode & 0o077 == 0


def key() -> str:
    """The socket's name part: this interpreter, this dibs, and Python's start-up settings."""
    from _blake2 import blake2b

    from dibs.ground.version import __version__

    parts = [sys.executable, os.path.dirname(os.path.dirname(__file__)), __version__]
    parts += [f"{name}={os.environ.get(name, '')}" for name in _STARTUP_ENV]
    # Python's own options, but for where the script's folder goes on sys.path (the server
    # always starts with -P) and whether bytecode is written: neither changes an answer.
    flags = [f for f in dir(sys.flags) if not f.startswith(("_", "n_")) and f not in _NO_MATTER]
    parts += [f"{f}={getattr(sys.flags, f)}" for f in sorted(flags)]
    text = "\0".join(parts).encode("utf-8", "surrogateescape")
    return blake2b(text, digest_size=8).hexdigest()


def socket_path() -> str:
    return os.path.join(folder(), f"helper-{key()}.sock")


def enabled(args: Sequence[str]) -> bool:
    """Whether this call may go through the helper: a relayed command, the helper not turned
    off, and a platform whose kernel names a socket's peer (no helper can be trusted without)."""
    if os.environ.get("DIBS_HELPER", "").lower() in ("off", "0", "no", "false"):
        return False
    if not args or args[0] not in RELAYED:
        return False
    from dibs.ground import platform

    return platform.peer_credentials_name() is not None


def required() -> bool:
    """``DIBS_HELPER=only``: a call no helper takes fails instead of running directly (for
    tests and for checking that a helper serves a machine's calls)."""
    return os.environ.get("DIBS_HELPER", "").lower() == "only"


# The client -------------------------------------------------------------------------------


def _recv_line(sock: Any) -> bytes | None:
    """One ``\\n``-ended message from *sock*, or None at end of stream."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            return None
        data += chunk
    return data[:-1]


def _request(argv: Sequence[str]) -> bytes:
    """The call as bytes: argv and the environment, NUL-separated, exactly as given."""
    parts = [_VERSION, str(len(argv)).encode()]
    parts += [os.fsencode(a) for a in argv]
    parts += [k + b"=" + v for k, v in os.environb.items()]
    return b"\0".join(parts)


def relay(argv: Sequence[str]) -> int | None:
    """Run the call *argv* in the helper: its exit code, or None when no helper took it (then
    the caller runs it directly; nothing was done)."""
    import _socket

    from dibs.ground import platform

    if not private(folder()):
        return None  # no helper ever ran here for this user: skip naming the socket
    path = socket_path()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
            if platform.peer_credentials(sock)[1] != os.getuid():
                return None
            sock.settimeout(_ACCEPT_WAIT)
            started = _recv_line(sock)
        except OSError:
            return None
        if started is None or not started.startswith(b"S"):
            return None
        worker = int(started[1:])
        return _hand_over(sock, worker, argv)
    finally:
        sock.close()


def _hand_over(sock: Any, worker: int, argv: Sequence[str]) -> int | None:
    """Pass the call to *worker*, then wait for its exit code, passing signals on."""
    import _socket
    import struct

    try:
        cwd = os.open(".", os.O_RDONLY | os.O_CLOEXEC)  # a folder: fchdir takes it
    except OSError:
        return None  # no working directory to hand over: run directly (and fail there)
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
        body = _request(argv)
        fds = struct.pack("4i", 0, 1, 2, cwd)
        sock.settimeout(None)
        head = b"G%d\n" % len(body)
        sock.sendmsg([head], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError:
        return None  # not handed over: the worker never got a "go"
    finally:
        os.close(cwd)
    # From here the worker may act: the call is its, and we never run it a second time.
    _forward_signals(worker)
    try:
        sock.sendall(body)
        done = _recv_line(sock)
    except OSError:
        done = None
    if done is None or not done.startswith(b"X"):
        sys.stderr.write(
            "dibs: the helper process running this call stopped before it finished; whether "
            "the call took effect is unknown\n"
            "hint: check with `dibs status` (or `dibs claims`) before trying again; "
            "DIBS_HELPER=off runs calls without the helper\n"
        )
        return 1
    return int(done[1:])


def _forward_signals(worker: int) -> None:
    """Pass Ctrl-C, SIGTERM and SIGHUP on to the process running the call."""
    import _signal  # type: ignore[import-not-found,unused-ignore]

    def forward(signum: int, _frame: object) -> None:
        from dibs.ground import platform  # only when a signal comes: the client stays light

        platform.send_signal(worker, signum)  # gone meanwhile: its exit code is on the way

    for signum in (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP):
        _signal.signal(signum, forward)


def start_server() -> None:
    """Start a helper server in the background for the next calls (a new session, no
    terminal, output to /dev/null); a server already running makes it exit at once."""
    import subprocess

    # The caller's interpreter options (-E, -I, -X utf8, ...), so that the server's socket
    # has the caller's name; -P keeps the current folder off sys.path.
    options = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.posix_spawn(
            sys.executable,
            [sys.executable, *options, "-P", "-m", "dibs.faces.cli.helper_server"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, null, 0),
                (os.POSIX_SPAWN_DUP2, null, 1),
                (os.POSIX_SPAWN_DUP2, null, 2),
            ],
            setsid=True,
        )
    except (OSError, NotImplementedError):  # no POSIX_SPAWN_SETSID (macOS before 10.15)
        pass  # the helper is an optimisation: this call is done anyway
    finally:
        os.close(null)


# Opening the next call's store ahead ------------------------------------------------------


def _record_path() -> str:
    return os.path.join(folder(), f"helper-{key()}.store")


def remember() -> None:
    """Note the PostgreSQL store this call opened (repository, settings, namespace), so the
    helper's next spare opens it ahead; written only when it changed."""
    from dibs.service.opening import last_opened

    if not last_opened or not private(folder()):
        return
    common, url, setting, store = last_opened[-1]
    text = "\0".join((common, url, setting, str(getattr(store, "namespace", ""))))
    path = _record_path()
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass  # the next call opens its store itself
