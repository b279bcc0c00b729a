"""Versioned documents: write a shared file only if nobody changed it since you read it.

``read`` tells a document's version; ``write --if-version N`` replaces it (temp file, fsync,
rename, fsync of the folder) only if the version is still N, and bumps it; otherwise the
writer is refused with the current version and rereads. Markdown files keep the version in
their frontmatter (``version: N``); other files keep it in the store (table ``documents``).
Writers of one file are serialised by a short lease on ``lock:doc:<path>``, so exactly one
writer wins each version.
"""

from __future__ import annotations

import contextlib
import os
import re

from dibs.core.events import new_event
from dibs.core.leases import Decision, eviction_reason
from dibs.ground import platform
from dibs.ground.errors import DibsError, LeaseLost, Refused, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

TABLE = "documents"
_VERSION = re.compile(r"^version\s*:\s*(\d+)\s*$", re.MULTILINE)


class VersionConflict(Refused):
    """The document changed since that version was read."""

    code = "version-conflict"


def _path(coord: Coordinator, path: str) -> tuple[str, str]:
    """*path* resolved (symlinks followed) and relative to the work tree, or `UsageError`.

    A document is a file of this work tree: never outside it (also not through a symlink),
    never in a git dir (``.git``, the common dir, a worktree's gitfile) and never inside
    another work tree nested in this one (a linked worktree, a submodule).
    """
    if coord.repo is None:
        raise UsageError("documents live in a repository", hint="run dibs inside one")
    if not isinstance(path, str) or not path or "\0" in path:
        raise UsageError(f"{path!r} is not a file name", hint="name a file inside the work tree")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"{path!r} is not valid UTF-8: a document's name goes into the log",
            hint="rename the file to a UTF-8 name",
        ) from None
    full = os.path.realpath(os.path.join(os.getcwd(), path))
    root = os.path.realpath(coord.repo.root)
    if not full.startswith(root + os.sep):
        raise UsageError(
            f"{path} is outside the work tree {root} (symlinks are followed)",
            hint="name a file inside the work tree",
        )
    rel = os.path.relpath(full, root).replace(os.sep, "/")
    git_dirs = {os.path.realpath(d) for d in (coord.repo.git_dir, coord.repo.common_dir)}
    if ".git" in rel.split("/") or any(full == d or full.startswith(d + os.sep) for d in git_dirs):
        raise UsageError(
            f"{path} is inside a git dir: documents never change git's files or dibs' log",
            hint="name a file of the work tree, outside .git",
        )
    folder = os.path.dirname(full)
    while folder != root and folder.startswith(root + os.sep):
        if os.path.lexists(os.path.join(folder, ".git")):
            raise UsageError(
                f"{path} lies in another work tree ({os.path.relpath(folder, root)})",
                hint="write it from inside that work tree, as its agent",
            )
        folder = os.path.dirname(folder)
    return full, rel


def _markdown(path: str) -> bool:
    return path.endswith((".md", ".markdown"))


def _file_version(text: str) -> int | None:
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    if end < 0:
        return None
    match = _VERSION.search(text[4:end])
    return int(match.group(1)) if match else 0


def _with_version(text: str, version: int) -> str:
    """*text* with ``version: N`` in its frontmatter (added, or replaced)."""
    if text.startswith("---\n") and (end := text.find("\n---", 4)) >= 0:
        head = text[4:end]
        head = (
            _VERSION.sub(f"version: {version}", head)
            if _VERSION.search(head)
            else (f"version: {version}\n{head}" if head else f"version: {version}")
        )
        return f"---\n{head}{text[end:]}"
    return f"---\nversion: {version}\n---\n{text}"


def read(coord: Coordinator, path: str) -> dict[str, Any]:
    """``{"path", "version", "content"}`` (version 0: never written through dibs)."""
    full, rel = _path(coord, path)
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = None
    if text is not None and _markdown(rel):
        version = _file_version(text) or 0
    else:
        state, _ = coord.read()
        record = state.tables.get(TABLE, {}).get(rel)
        version = 0 if record is None else int(record["version"])
    return {"path": rel, "version": version, "content": text, "exists": text is not None}


def _check_content(content: object) -> bytes:
    """The bytes to write: text only (UTF-8, no NUL); `UsageError` before anything happens."""
    if not isinstance(content, str):
        raise UsageError("a document's content must be text", hint="pass a str (UTF-8 text)")
    if "\0" in content:
        raise UsageError(
            "the content holds NUL bytes: documents are text, not binary files",
            hint="write binary files with git, not dibs doc write",
        )
    try:
        return content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"the content is not valid UTF-8 text (at character {exc.start})",
            hint="documents are UTF-8 text; convert it first (iconv -t UTF-8)",
        ) from None


def write(
    coord: Coordinator,
    path: str,
    content: str,
    *,
    if_version: int,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Replace the document if its version is still *if_version*; returns the new version.

    Written by a verified agent (its token) or a person with *as_operator* (``by`` is
    logged). The write is fenced: the version is recorded in the transaction that re-checks
    the writer still holds ``lock:doc:<path>`` with the fencing token it was granted, and the
    content (staged in a temp file first) is renamed in only after that.

    Raises:
        UsageError: not a text file of the work tree, or not text (nothing is recorded).
        AuthError: no agent or not its token, and not *as_operator*.
        VersionConflict: it changed meanwhile (exit 3); ``current`` names the version now.
        LeaseLost: the writer's lock lapsed before the write (exit 4); nothing was written.
    """
    from dibs.service.identity import actor

    if isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < 0:
        raise UsageError(f"--if-version {if_version!r} must be 0 or more")
    full, rel = _path(coord, path)
    if os.path.lexists(full) and not os.path.isfile(full):
        raise UsageError(f"{rel} is not a regular file", hint="documents are regular files")
    _check_content(content)
    by = actor(coord.read()[0], coord.agent, coord.token, as_operator=as_operator).by
    writer = coord.fork()
    writer.register(f"doc-{os.getpid()}-{os.urandom(3).hex()}", ttl=30, pid=os.getpid())
    lock = f"lock:doc:{rel}"
    tmp: str | None = None
    try:
        fence = writer.claim([lock], wait=60, note=f"write {rel}")[0]["token"]
        current = read(coord, path)["version"]
        if current != if_version:
            raise _conflict(rel, current, if_version)
        version = current + 1
        text = _with_version(content, version) if _markdown(rel) else content
        tmp = _stage(full, _check_content(text))

        def decide(state: State, ctx: Context) -> Decision:
            try:
                actor(state, coord.agent, coord.token, as_operator=as_operator)
            except DibsError as exc:
                return Decision(error=exc)
            refusal = write_refusal(
                state,
                ctx,
                rel,
                holder=str(writer.agent),
                fence=fence,
                version=version,
                if_version=if_version,
            )
            if refusal is not None:
                return Decision(error=refusal)
            value = {"version": version, "by": by, "fence": fence}
            return Decision([new_event("doc-write", ctx.now, table=TABLE, key=rel, value=value)])

        # The version first, then the content: a crash between the two costs a writer who
        # read the old version a refusal and a reread, never a lost update.
        coord.transact(decide)
        if _path(coord, path)[0] != full:  # a folder swapped for a symlink meanwhile
            raise UsageError(f"{path} changed under the write", hint="check the folder, retry")
        _commit(tmp, full)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        with contextlib.suppress(DibsError):
            writer.unregister()
    return {"path": rel, "version": version}


def write_refusal(
    state: State,
    ctx: Context,
    rel: str,
    *,
    holder: str,
    fence: int,
    version: int,
    if_version: int,
) -> DibsError | None:
    """Why writing *version* of document *rel* must not be recorded now, or None.

    The writer (*holder*) must still hold the document's lock with the fencing token *fence*
    it was granted (a lapsed lock: `LeaseLost`), and no other writer may have recorded this
    version or a later one meanwhile (`VersionConflict`, against *if_version*). Pure: the
    state and the time in, the verdict out."""
    lease = state.claims.get(f"lock:doc:{rel}", {}).get(holder)
    if lease is None or lease["token"] != fence or eviction_reason(state, lease, ctx):
        return LeaseLost(
            f"lease lost: the lock on {rel} (fencing token {fence}) lapsed before "
            "the write; nothing was written",
            hint=f"read it again (dibs doc read {rel}) and write with --if-version",
        )
    recorded = state.tables.get(TABLE, {}).get(rel)
    if recorded is not None and int(recorded["version"]) >= version:
        return _conflict(rel, int(recorded["version"]), if_version)
    return None


def _conflict(rel: str, current: int, if_version: int) -> VersionConflict:
    return VersionConflict(
        f"{rel} is at version {current}, not {if_version}: someone wrote it meanwhile",
        hint=f"read it again (dibs doc read {rel}), merge, and write with --if-version {current}",
        current=current,
    )


def _stage(full: str, data: bytes) -> str:
    """Write *data* to a temp file next to *full* and fsync it; returns the temp file."""
    folder = os.path.dirname(full)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{full}.dibs-{os.getpid()}-{os.urandom(3).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        platform.sync_file(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _commit(tmp: str, full: str) -> None:
    """Rename the staged *tmp* over *full* and fsync the folder."""
    os.replace(tmp, full)
    platform.sync_dir(os.path.dirname(full))
