"""Versioned documents: write a shared file only if nobody changed it since you read it.

``read`` tells a document's version; ``write --if-version N`` replaces it (temp file, fsync,
rename, fsync of the folder) only if the version is still N, and bumps it; otherwise the
writer is refused with the current version and rereads. Markdown files keep the version in
their frontmatter (``version: N``); other files keep it in the store (table ``documents``).
Writers of one file are serialised by a short lease on ``lock:doc:<path>``, so exactly one
writer wins each version.
"""

from __future__ import annotations

import os
import re

from dibs import platform
from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.errors import Refused, UsageError

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


def _path(dibs: Coordinator, path: str) -> tuple[str, str]:
    if dibs.repo is None:
        raise UsageError("documents live in a repository", hint="run dibs inside one")
    full = os.path.realpath(os.path.join(os.getcwd(), path))
    root = os.path.realpath(dibs.repo.root)
    if not full.startswith(root + os.sep):
        raise UsageError(f"{path} is outside the repository", hint="name a file inside it")
    return full, os.path.relpath(full, root).replace(os.sep, "/")


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


def read(dibs: Coordinator, path: str) -> dict[str, Any]:
    """``{"path", "version", "content"}`` (version 0: never written through dibs)."""
    full, rel = _path(dibs, path)
    try:
        with open(full, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = None
    if text is not None and _markdown(rel):
        version = _file_version(text) or 0
    else:
        state, _ = dibs.store.read()
        record = state.tables.get(TABLE, {}).get(rel)
        version = 0 if record is None else int(record["version"])
    return {"path": rel, "version": version, "content": text, "exists": text is not None}


def write(dibs: Coordinator, path: str, content: str, *, if_version: int) -> dict[str, Any]:
    """Replace the document if its version is still *if_version*; returns the new version.

    Raises:
        VersionConflict: it changed meanwhile (exit 3); ``current`` names the version now.
    """
    if isinstance(if_version, bool) or not isinstance(if_version, int) or if_version < 0:
        raise UsageError(f"--if-version {if_version!r} must be 0 or more")
    full, rel = _path(dibs, path)
    from dibs.service import Coordinator as Service

    writer = Service(dibs.store, settings=dibs.settings, repo=dibs.repo, liveness=dibs.liveness)
    writer.register(f"doc-{os.getpid()}-{os.urandom(3).hex()}", ttl=30, pid=os.getpid())
    try:
        writer.claim([f"lock:doc:{rel}"], wait=60, note=f"write {rel}")
        current = read(dibs, path)["version"]
        if current != if_version:
            raise VersionConflict(
                f"{rel} is at version {current}, not {if_version}: someone wrote it meanwhile",
                hint=f"read it again (dibs doc read {rel}), merge, and write with --if-version "
                f"{current}",
                current=current,
            )
        version = current + 1
        text = _with_version(content, version) if _markdown(rel) else content
        writer.renew([f"lock:doc:{rel}"])  # still ours (LeaseLost if paused past its ttl)

        def decide(_state: State, ctx: Context) -> Decision:
            value = {"version": version, "by": dibs.agent or os.environ.get("USER") or "unknown"}
            event = new_event("doc-write", ctx.now, table=TABLE, key=rel, value=value)
            return Decision([event])

        # The version first, then the content: a crash between the two costs a writer who
        # read the old version a refusal and a reread, never a lost update.
        dibs.transact(decide)
        _replace(full, text)
    finally:
        writer.unregister()
    return {"path": rel, "version": version}


def _replace(full: str, text: str) -> None:
    """Write *full* atomically: a temp file, fsync, rename over, fsync the folder."""
    folder = os.path.dirname(full)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{full}.dibs-{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        platform.sync_file(fd)
    finally:
        os.close(fd)
    os.replace(tmp, full)
    platform.sync_dir(folder)
