"""``dibs init`` and ``dibs store migrate``: set up dibs in a repository, move its store."""

from __future__ import annotations

import json
import os

from dibs.ground import platform
from dibs.ground import settings as config
from dibs.ground.errors import UsageError
from dibs.ground.git.discover import Repo, find_repo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.store.base import Store


def current_branch(repo: Repo) -> str | None:
    """The branch checked out in *repo*'s work tree (None when HEAD is detached)."""
    try:
        with open(os.path.join(repo.git_dir, "HEAD"), encoding="utf-8") as f:
            head = f.read().strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head[len(prefix) :] if head.startswith(prefix) else None


def _exclude(repo: Repo, pattern: str) -> bool:
    """Add *pattern* to ``info/exclude`` of the common dir unless there; True if added."""
    info = os.path.join(repo.common_dir, "info")
    path = os.path.join(info, "exclude")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    if pattern in lines or pattern.rstrip("/") in lines:
        return False
    os.makedirs(info, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        if lines and lines[-1] != "":
            f.write("\n")
        f.write(f"# dibs: agent worktrees\n{pattern}\n")
    return True


def _store_url_in(path: str) -> str:
    """``store.url`` as written in the dibs.toml at *path* ("" when unset or no file)."""
    if not os.path.exists(path):
        return ""
    values = config.load(os.path.dirname(path), environ={}).values
    return str(values["store.url"])


def record_store_url(path: str, url: str) -> bool:
    """Write ``url`` as ``store.url`` in the dibs.toml at *path*; True when the file changed.

    The password, if any, is left out: dibs.toml is committed (use ~/.pgpass or PGPASSWORD).

    Raises:
        UsageError: the file already names another store (nothing is changed).
    """
    from dibs.store.postgres import without_password

    url = without_password(url)
    current = _store_url_in(path)
    if current == url:
        return False
    if current:
        raise UsageError(
            f"{path} already names the store {current!r}",
            hint="edit store.url there yourself if the team is moving to another store",
        )
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    line = "url = " + json.dumps(url)  # a JSON string is a valid TOML basic string
    if "[store]" in lines:
        # At the end of the [store] section, after its comments.
        end = lines.index("[store]") + 1
        while end < len(lines) and not lines[end].startswith("["):
            end += 1
        while lines[end - 1] == "":
            end -= 1
        lines.insert(end, line)
    else:
        lines += ["", "[store]", line]
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return True


def _shared_store(url: str, repo: Repo) -> Store:
    """Open and set up (schema, namespace) the PostgreSQL store at *url* for *repo*."""
    from dibs.service.opening import is_postgres_url, open_store

    if not is_postgres_url(url):
        raise UsageError(
            f"--store takes a PostgreSQL URL, not {url!r}",
            hint="write it as postgresql://USER@HOST:PORT/DATABASE; without --store, dibs "
            "uses the local store in .git/dibs",
        )
    settings = config.load(repo.root, cache_dir=repo.store_dir)
    store = open_store(url, repo, namespace=settings["store.namespace"])
    try:
        store.create()
    except BaseException:
        store.close()
        raise
    return store


def _union_merge(repo: Repo, glob: str) -> str | None:
    """Give *glob* git's union merge in ``.gitattributes``; the line added, or None if there."""
    if not glob.strip() or any(c.isspace() for c in glob) or glob.startswith("#"):
        raise UsageError(f"{glob!r} is not a file pattern", hint="e.g. --union-merge '*.jsonl'")
    path = os.path.join(repo.root, ".gitattributes")
    line = f"{glob} merge=union"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if line in text.splitlines():
        return None
    with open(path, "a", encoding="utf-8") as f:
        if text and not text.endswith("\n"):
            f.write("\n")
        f.write(
            f"# dibs: append-only logs merge by union (both sides' new lines are kept)\n{line}\n"
        )
    return line


def init(
    where: str | os.PathLike[str] | None = None,
    *,
    store: str | None = None,
    union_merge: str | None = None,
) -> dict[str, Any]:
    """Set up dibs in the repository at *where*; safe to run again.

    Creates the store, writes a commented ``dibs.toml`` when there is none, and keeps the
    worktree folder out of git through ``info/exclude``.

    Args:
        store: a ``postgresql://`` URL: create dibs's tables there (or migrate them), create
            the repository's namespace, and record the URL (without password) as ``store.url``
            in dibs.toml. Checked before anything is written.
        union_merge: a file pattern (``*.jsonl``) to give git's union merge in
            ``.gitattributes``: append-only logs then merge without conflicts.

    Returns:
        What was done: ``{"root", "store", "settings", "created_settings", "excluded"}``.
    """
    from dibs.service import Coordinator

    repo = find_repo(os.fspath(where) if where is not None else None)
    settings_path = os.path.join(repo.root, config.FILE_NAME)
    shared = None
    if union_merge is not None and (not union_merge.strip() or " " in union_merge):
        raise UsageError(f"{union_merge!r} is not a file pattern", hint="e.g. '*.jsonl'")
    if store is not None:
        current = _store_url_in(settings_path)
        if current and current not in (store, _strip(store)):
            raise UsageError(
                f"{settings_path} already names the store {current!r}",
                hint="edit store.url there yourself if the team is moving to another store",
            )
        shared = _shared_store(store, repo)
    created = False
    if not os.path.exists(settings_path):
        target = current_branch(repo) or "main"
        with open(settings_path, "x", encoding="utf-8") as f:
            f.write(config.template(target))
        created = True
    recorded = record_store_url(settings_path, store) if store is not None else False
    with Coordinator.open(repo.root, store=shared) as coord:
        folder = coord.settings["worktrees.folder"].rstrip("/") + "/"
        excluded = _exclude(repo, "/" + folder)
        url = coord.create()
    union = _union_merge(repo, union_merge) if union_merge is not None else None
    return {
        "union_merge": union,
        "root": repo.root,
        "store": url,
        "settings": settings_path,
        "created_settings": created,
        "recorded_store": recorded,
        "password_left_out": store is not None and _strip(store) != store,
        "excluded": "/" + folder if excluded else None,
    }


def _strip(url: str) -> str:
    from dibs.store.postgres import without_password

    return without_password(url)


def migrate_store(where: str | os.PathLike[str] | None = None, *, to: str) -> dict[str, Any]:
    """Copy the repository's local store (full log, live state) into PostgreSQL at *to*.

    The copy is one transaction into an empty namespace, made while holding the local store's
    lock, and verified event by event and state against state. The namespace continues the
    local clock, so live leases keep their remaining time. The local store is then marked as
    moved (a read-only backup) and dibs.toml names the new store.

    Returns:
        ``{"from", "to", "events", "agents", "claims", "backup", "recorded_store"}``.
    """
    from dibs.core.events import encode
    from dibs.ground import host
    from dibs.service.opening import is_postgres_url, open_store
    from dibs.store.local import MOVED, LocalStore
    from dibs.store.postgres import PostgresStore

    repo = find_repo(os.fspath(where) if where is not None else None)
    settings = config.load(repo.root, cache_dir=repo.store_dir)
    if is_postgres_url(settings["store.url"]):
        raise UsageError(
            f"this repository already uses {settings['store.url']!r}",
            hint="migrate copies a local store; unset DIBS_STORE if it points at the target",
        )
    local = open_store(settings["store.url"], repo, sync=settings["store.sync"])
    if not isinstance(local, LocalStore):
        raise UsageError("only a local store can be migrated")
    target = _shared_store(to, repo)
    if not isinstance(target, PostgresStore):  # pragma: no cover - _shared_store checks the URL
        raise UsageError("the target of a migration must be a PostgreSQL store")
    settings_path = os.path.join(repo.root, config.FILE_NAME)
    try:
        local.create()
        problems = [f for f in local.check() if f["kind"] != "no-checkpoint"]
        if problems:
            raise UsageError(
                f"the local store has problems: {problems[0]['message']}",
                hint="run `dibs doctor --repair` first, then migrate",
            )
        local.lock()
        try:
            state, _ = local.read()
            lines = [encode(e) for e in local.events()]
            # Continue the local clock: mono on the server = its clock minus this offset.
            before = host.monotonic_ns()
            server = target.server_clock_ns()
            after = host.monotonic_ns()
            offset = server - (before + after) // 2
            target.import_log(lines, state, boot=host.boot_id(), mono_offset=offset)
            copied, copy_state = _verify_copy(target, lines, state)
            with open(os.path.join(local.root, MOVED), "w", encoding="utf-8") as f:
                json.dump({"to": target.url, "seq": state.seq}, f)
                f.flush()
                platform.sync_file(f.fileno())
        finally:
            local.unlock()
        if not os.path.exists(settings_path):
            with open(settings_path, "x", encoding="utf-8") as f:
                f.write(config.template(current_branch(repo) or "main"))
        recorded = record_store_url(settings_path, to)
        return {
            "from": local.url,
            "to": target.url,
            "events": copied,
            "agents": len(copy_state.agents),
            "claims": sum(len(h) for h in copy_state.claims.values()),
            "backup": local.root,
            "recorded_store": recorded,
        }
    finally:
        local.close()
        target.close()


def _verify_copy(target: Store, lines: list[bytes], state: Any) -> tuple[int, Any]:
    """Read the copy back: every event byte for byte, and the state it replays to."""
    from dibs.core.events import encode
    from dibs.ground.errors import StoreIOError

    copied = [encode(e) for e in target.events()]
    copy_state, _ = target.read()
    if copied != lines or copy_state.to_json() != state.to_json():
        raise StoreIOError(
            f"the copy in {target.url} differs from the local store; the local store is "
            "unchanged and still in use",
            hint="report this; the new namespace can be dropped and the migration run again",
        )
    return len(copied), copy_state
