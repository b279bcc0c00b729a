"""Which store a URL names, and the namespace of a repository in a shared database."""

from __future__ import annotations

import os

from dibs.ground.errors import DibsError, NotFound, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dibs.ground.git.discover import Repo
    from dibs.store.base import Store


#: Stores opened before the call that uses them was known (the CLI helper's spare process,
#: `dibs.faces.cli.helper`), by ``(git common dir, store.url, store.namespace)``:
#: `Coordinator.open` takes one whose repository and settings are the call's. Only its
#: connection and loaded state are early: every decision still happens inside the store's
#: transaction.
preopened: dict[tuple[str, str, str], Store] = {}
#: The PostgreSQL store `Coordinator.open` opened last, with what named it: the helper opens
#: the next call's store ahead from it.
last_opened: list[tuple[str, str, str, Store]] = []


def is_postgres_url(url: str) -> bool:
    """Whether *url* names a PostgreSQL store (a URL or a libpq connection string)."""
    from dibs.ground.settings import store_kind

    return store_kind(url) == "postgres"


def default_namespace(repo: Repo | None) -> str:
    """The namespace of *repo* in a shared database: ``git-`` and its first commit's id."""
    from dibs.ground.git.discover import root_commit

    root = root_commit(repo) if repo is not None else None
    if root is None:
        raise UsageError(
            "cannot name this repository's namespace in the shared store: "
            + ("it has no commit yet" if repo is not None else "there is no repository"),
            hint="commit something first, or set store.namespace in dibs.toml (or DIBS_NAMESPACE)",
        )
    return f"git-{root[:12]}"


def open_store(url: str, repo: Repo | None, *, namespace: str = "", sync: str = "full") -> Store:
    """The store named by *url*: empty for the repository's local store, a folder path, or
    ``postgresql://...`` (in *namespace*, by default the repository's `default_namespace`).
    A local store syncs its log as *sync* says (``store.sync``).
    """
    from dibs.ground.settings import store_kind

    kind = store_kind(url)
    if kind == "postgres":
        try:
            from dibs.store.postgres import PostgresStore
        except ImportError as exc:
            raise DibsError(
                "the PostgreSQL store needs psycopg, which is not installed",
                hint="pip install 'dibs[postgres]', or unset DIBS_STORE (and store.url) to use "
                "the local store",
            ) from exc
        return PostgresStore(url, namespace=namespace or default_namespace(repo))
    if kind == "memory":
        from dibs.store.memory import MemoryStore

        return MemoryStore()
    if not kind:
        raise UsageError(
            f"the store {url!r} is not an absolute folder path or a PostgreSQL URL",
            hint="set store.url (or DIBS_STORE) to an absolute path, or to "
            "postgresql://USER@HOST:PORT/DB; a relative path would name a different "
            "store in each worktree",
        )
    from dibs.store.local import LocalStore

    if kind == "folder":
        return LocalStore(os.path.abspath(url.removeprefix("local:")), sync=sync)
    if repo is None:
        raise NotFound("no repository and no store given", hint="run inside a git repository")
    return LocalStore(repo.store_dir, sync=sync)
