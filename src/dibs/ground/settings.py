"""Settings: flags > environment (``DIBS_*``) > ``dibs.toml`` > defaults.

``dibs.toml`` sits at the repository root and is committed: the team's settings. Parsing TOML
costs 10 ms of imports on every CLI call, so the parsed values are cached as JSON in the store
folder, keyed by the file's inode, size and modification time; the cache is only a cache.

An unknown key or a bad value is an error that names the key and the file.
"""

from __future__ import annotations

import os

from dibs.ground import fastjson
from dibs.ground.errors import InvalidSetting

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

FILE_NAME = "dibs.toml"
_CACHE_NAME = "settings.cache.json"


def _positive(limit: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number of seconds"
        if not 0 < value <= limit:
            return f"must be more than 0 and at most {limit:g}"
        return None

    return check


def _seconds_or_off(limit: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number of seconds (0: off)"
        if not 0 <= value <= limit:
            return f"must be 0 (off) or more, and at most {limit:g}"
        return None

    return check


def _text(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return "must be non-empty text"
    return None


def _branch_pattern(value: Any) -> str | None:
    if _text(value) or "{issue}" not in value:
        return "must be text containing {issue}, e.g. agent/{issue}"
    return None


def _folder(value: Any) -> str | None:
    if _text(value):
        return "must be a folder name relative to the repository root"
    if os.path.isabs(value) or ".." in value.replace("\\", "/").split("/"):
        return "must be relative to the repository root, without '..'"
    return None


def _gates(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be a table of gate names to commands"
    for name, command in value.items():
        if name == "required":
            if not isinstance(command, list) or not all(isinstance(g, str) for g in command):
                return "required must be a list of gate names"
        elif isinstance(command, dict):
            said = _gate_table(name, command)
            if said is not None:
                return said
        elif not isinstance(command, str) or not command.strip():
            return f"gate {name!r} must be a command (text)"
    return None


def _gate_table(name: str, table: dict[str, Any]) -> str | None:
    """A gate given as ``{command = "...", retries = K}`` (a flaky gate is run again)."""
    unknown = set(table) - {"command", "retries"}
    if unknown:
        return f"gate {name!r}: unknown key {min(unknown)!r} (command, retries)"
    command = table.get("command")
    if not isinstance(command, str) or not command.strip():
        return f"gate {name!r} needs a command (text)"
    retries = table.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        return f"gate {name!r}: retries must be a whole number from 0 to 10"
    return None


def _choice(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}"

    return check


def _count(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            return f"must be a whole number from 1 to {limit}"
        return None

    return check


def _remote(value: Any) -> str | None:
    import re

    if not isinstance(value, str) or not (value == "" or re.fullmatch(r"[\w.][\w./-]*", value)):
        return "must be a git remote name such as origin, or empty for no push"
    return None


def _paths(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        return 'must be a list of paths, e.g. ["tasks.toml", ".claude/epics/auth/"]'
    if any(os.path.isabs(v) or ".." in v.split("/") for v in value):
        return "must be paths inside the repository, without '..'"
    return None


def _events(value: Any) -> str | None:
    names = ("acquire", "release", "evict", "land", "landing-failed")
    if not isinstance(value, dict):
        return "must be a table of event names to commands"
    for name, command in value.items():
        if name not in names:
            return f"has an unknown event {name!r} (events: {', '.join(names)})"
        if not isinstance(command, str) or not command.strip():
            return f"{name!r} must be a command (text)"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def store_kind(url: str) -> str:
    """What a ``store.url`` names: ``"repository"`` (empty: the repository's own local
    store), ``"folder"`` (an absolute path, ``local:`` before it or not), ``"memory"``,
    ``"postgres"`` (a ``postgresql://`` URL or a libpq ``key=value`` connection string), or
    ``""``: nothing dibs can open.

    A relative path is nothing: every worktree of a clone (every agent's current folder)
    would make a different folder of it, each a store of its own, and agents that share a
    repository would stop seeing each other's claims.
    """
    if not url:
        return "repository"
    if url.startswith(("postgres://", "postgresql://")):
        return "postgres"
    if url.startswith("memory:"):
        return "memory"
    if url.removeprefix("local:").startswith("/"):
        return "folder"
    key, equals, _ = url.strip().partition("=")
    return "postgres" if equals and key.strip().isidentifier() else ""


def _store_url(value: Any) -> str | None:
    if not isinstance(value, str) or not store_kind(value):
        return (
            "must be empty (the repository's local store), an absolute folder path, or "
            "postgresql://USER@HOST:PORT/DB; a relative path would be a different folder, a "
            "store of its own, in each worktree"
        )
    return None


def _namespace(value: Any) -> str | None:
    import re

    from dibs.ground.names import NAME

    if not isinstance(value, str) or not (value == "" or re.fullmatch(NAME, value)):
        return "must be 1-64 lower-case letters, digits, '.', '_' or '-'"
    return None


class Setting:
    """One setting: its default, its environment variable and its check."""

    __slots__ = ("check", "default", "env", "meaning")

    def __init__(
        self, default: Any, check: Callable[[Any], str | None], env: str | None, meaning: str
    ):
        self.default = default
        self.check = check
        self.env = env
        self.meaning = meaning


#: Every known setting, by dotted key (``section.name``).
SCHEMA: dict[str, Setting] = {
    "leases.ttl": Setting(
        90.0, _positive(7 * 86400), "DIBS_TTL", "seconds a lease lives without a heartbeat"
    ),
    "leases.heartbeat": Setting(
        30.0, _positive(86400), "DIBS_HEARTBEAT", "seconds between heartbeats of `dibs run`"
    ),
    "agents.stuck_after": Setting(
        1200.0,
        _seconds_or_off(30 * 86400),
        "DIBS_STUCK_AFTER",
        "seconds a live agent may go without progress (any event of its own but heartbeats, "
        "a commit, a guarded edit) before it counts as stuck; 0: never",
    ),
    "agents.on_stuck": Setting(
        "notify",
        _choice("notify", "evict"),
        "DIBS_ON_STUCK",
        "what meeting a stuck agent does: notify (a message to it and to watchers) or evict "
        "(also free its claims, reason stuck)",
    ),
    "worktrees.folder": Setting(
        ".worktrees", _folder, None, "where agent worktrees go (kept out of git)"
    ),
    "worktrees.branch": Setting(
        "agent/{issue}", _branch_pattern, None, "branch name for an issue's worktree"
    ),
    "merge.target": Setting("main", _text, "DIBS_TARGET", "the branch agents land on"),
    "merge.strategy": Setting(
        "rebase", _choice("rebase", "merge"), None, "rebase a branch onto the target, or merge it"
    ),
    "merge.batch": Setting(1, _count(64), None, "entries the queue tests and lands together"),
    "merge.parallel": Setting(
        1, _count(64), None, "entries the queue tests at once, each on those ahead of it"
    ),
    "merge.gate_timeout": Setting(
        600.0, _positive(7 * 86400), None, "seconds a gate may run before it counts as failed"
    ),
    "merge.remote": Setting(
        "", _remote, "DIBS_REMOTE", "a remote to land on with --force-with-lease (empty: local)"
    ),
    "gates": Setting({}, _gates, None, 'named gate commands, e.g. tests = "pytest -q"'),
    "tasks.sources": Setting(
        [],
        _paths,
        None,
        "task files for `dibs ready`/`next`: a folder of markdown tasks, *.jsonl, *.toml",
    ),
    "tasks.writeback": Setting(
        True,
        _boolean,
        None,
        "tell beads and CCPM when dibs hands out, lets go of or lands one of their tasks",
    ),
    "events": Setting(
        {},
        _events,
        None,
        "commands run on acquire, release, evict, land, landing-failed (JSON on stdin), e.g. "
        'land = "gh issue close $(jq -r .issue)"',
    ),
    "guard.mode": Setting(
        "block", _choice("block", "warn"), "DIBS_GUARD_MODE", "block or warn on a held file"
    ),
    "guard.auto_claim": Setting(
        False, _boolean, "DIBS_AUTO_CLAIM", "claim a free file on an agent's first edit"
    ),
    "guard.auto_claim_ttl": Setting(
        1800.0, _positive(7 * 86400), None, "seconds an auto-claimed file stays claimed"
    ),
    "store.url": Setting(
        "",
        _store_url,
        "DIBS_STORE",
        "the store: empty for local, an absolute folder path, or postgresql://...",
    ),
    "store.sync": Setting(
        "full",
        _choice("full", "fsync"),
        "DIBS_SYNC",
        "how the local store makes a claim durable: full (the drive has it: F_FULLFSYNC on "
        "macOS) or fsync (the system handed it to the drive; faster on macOS, may lose the "
        "last claims on a power cut); the same on Linux",
    ),
    "store.namespace": Setting(
        "",
        _namespace,
        "DIBS_NAMESPACE",
        "the repository's namespace in a shared PostgreSQL database (default: from its first "
        "commit)",
    ),
}


class Settings:
    """Resolved settings; read them with ``settings["leases.ttl"]``."""

    __slots__ = ("path", "values")

    def __init__(self, values: dict[str, Any], path: str | None = None):
        self.values = values
        self.path = path

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @classmethod
    def defaults(cls) -> Settings:
        """Every setting at its default."""
        return cls({key: setting.default for key, setting in SCHEMA.items()})


def _flatten(data: dict[str, Any], path: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for section, body in data.items():
        if section in SCHEMA:  # a whole-table setting such as [gates]
            flat[section] = body
            continue
        if not isinstance(body, dict):
            raise InvalidSetting(
                f"{path}: unknown key {section!r}",
                hint=f"known keys: {', '.join(SCHEMA)}",
            )
        for name, value in body.items():
            flat[f"{section}.{name}"] = value
    return flat


def validate(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check *values* (dotted keys) against `SCHEMA`; *where* names the source in errors."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        setting = SCHEMA.get(key)
        if setting is None:
            raise InvalidSetting(
                f"{where}: unknown key {key!r}", hint=f"known keys: {', '.join(SCHEMA)}"
            )
        problem = setting.check(value)
        if problem:
            raise InvalidSetting(f"{where}: {key} = {value!r} {problem}", hint=setting.meaning)
        checked[key] = float(value) if isinstance(setting.default, float) else value
    return checked


def _parse_file(path: str) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidSetting(f"{path}: not valid TOML ({exc})", hint="fix the syntax") from exc
    return validate(_flatten(data, path), path)


def _file_values(path: str, cache_dir: str | None) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}
    key = [path, st.st_ino, st.st_size, st.st_mtime_ns]
    cache = os.path.join(cache_dir, _CACHE_NAME) if cache_dir else None
    if cache is not None:
        try:
            with open(cache, encoding="utf-8") as f:
                cached = fastjson.loads(f.read())
            if cached.get("key") == key:
                return dict(cached["values"])
        except (OSError, ValueError, AttributeError):
            pass
    values = _parse_file(path)
    if cache is not None and os.path.isdir(cache_dir or ""):
        tmp = f"{cache}.{os.getpid()}.tmp"
        import json

        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"key": key, "values": values}, f)
            os.replace(tmp, cache)
        except OSError:
            pass  # a cache we cannot write only costs time
    return values


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, setting in SCHEMA.items():
        if setting.env is None or setting.env not in environ:
            continue
        raw = environ[setting.env]
        value: Any = raw
        if isinstance(setting.default, bool):
            words = {"1": True, "true": True, "yes": True, "on": True}
            words.update({"0": False, "false": False, "no": False, "off": False})
            if raw.strip().lower() not in words:
                raise InvalidSetting(
                    f"{setting.env}={raw!r} is not true or false", hint=setting.meaning
                )
            value = words[raw.strip().lower()]
        elif isinstance(setting.default, float):
            try:
                value = float(raw)
            except ValueError:
                raise InvalidSetting(
                    f"{setting.env}={raw!r} is not a number", hint=setting.meaning
                ) from None
        values.update(validate({key: value}, f"environment variable {setting.env}"))
    return values


def load(
    root: str | None,
    *,
    cache_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings for the repository at *root* (None: defaults and environment only)."""
    values = {key: setting.default for key, setting in SCHEMA.items()}
    path = os.path.join(root, FILE_NAME) if root else None
    if path is not None:
        values.update(_file_values(path, cache_dir))
    values.update(_env_values(os.environ if environ is None else environ))
    if flags:
        values.update(validate({k: v for k, v in flags.items() if v is not None}, "flags"))
    return Settings(values, path)


TEMPLATE = """\
# dibs settings for this repository (commit this file).
# Precedence: command-line flags > environment (DIBS_*) > this file > defaults.

[leases]
# Seconds a lease lives without a heartbeat (DIBS_TTL).
ttl = {ttl:g}
# Seconds between the heartbeats `dibs run` sends while its command works (DIBS_HEARTBEAT).
heartbeat = {heartbeat:g}

[worktrees]
# Where `dibs start` puts each agent's worktree; dibs keeps it out of git.
folder = "{folder}"
# The branch for an issue's worktree; {{issue}} is replaced by the issue name.
branch = "{branch}"

[merge]
# The branch agents land their work on (DIBS_TARGET).
target = "{target}"
# How `dibs land` puts a branch on the target: "rebase" (linear history) or "merge".
strategy = "rebase"
# Entries tested and landed together; on a failure the batch is split to find the culprit.
batch = 1
# Entries tested at once, each on top of the ones ahead of it (speculatively); they land in
# queue order, and when one fails those behind it are rebuilt without it and tested again.
parallel = 1
# Seconds a gate may run before it counts as failed.
gate_timeout = 600
# A remote to land on (pushed with --force-with-lease), e.g. "origin"; empty: this clone only.
remote = ""

[gates]
# Named commands a branch must pass, on the exact commit that will become the target's tip:
# tests = "pytest -q"
# lint = "ruff check"
# A flaky gate is run again up to `retries` times; a pass after a failure lands, counted flaky:
# e2e = {{ command = "npm run e2e", retries = 2 }}
# Gates every branch needs; names without a command are manual (`dibs gate pass ISSUE review`).
# Without this list every command above is required.
# required = ["tests", "lint", "review"]

[tasks]
# Where `dibs ready` and `dibs next` find tasks: CCPM epic folders, beads (.beads/, read
# through `bd` when it is on PATH, else its issues.jsonl export), or dibs's own tasks.toml.
# Default: tasks.toml, .beads/ and .claude/epics/*/ when they exist.
# sources = [".claude/epics/auth/", ".beads/", "tasks.toml"]
# Tell beads and CCPM when dibs hands out, lets go of or lands one of their tasks.
# writeback = true

[events]
# Commands run (in the repository root, the event as JSON on stdin) when dibs hands out, lets
# go of or lands a task, for any other tracker. Failures are reported and retried later; they
# never block a claim. Events: acquire, release, evict, land, landing-failed.
# acquire = "gh issue edit $(jq -r .issue) --add-assignee @me"

[guard]
# What the edit and commit guards do when a file is held by another agent: "block" or "warn".
mode = "block"
# Claim a free file for the agent that edits it first (agents that never call dibs directly
# are still kept apart), for this many seconds.
auto_claim = false
auto_claim_ttl = 1800

[store]
# Empty: the local store in .git/dibs. For agents on several machines:
# url = "postgresql://dibs@db.example/dibs" (or DIBS_STORE; the password goes in ~/.pgpass)
# The repository's namespace in that database (default: from its first commit, so every
# clone of one repository shares it): namespace = "myproject" (or DIBS_NAMESPACE)
# How a claim is made durable before it is acknowledged (DIBS_SYNC): "full" waits until the
# drive has it on stable storage (F_FULLFSYNC on macOS); "fsync" only until the system handed
# it to the drive (faster on macOS; a power cut may lose the last claims). Same on Linux.
# sync = "full"
"""


def template(target: str) -> str:
    """The commented ``dibs.toml`` that ``dibs init`` writes."""
    return TEMPLATE.format(
        ttl=SCHEMA["leases.ttl"].default,
        heartbeat=SCHEMA["leases.heartbeat"].default,
        folder=SCHEMA["worktrees.folder"].default,
        branch=SCHEMA["worktrees.branch"].default,
        target=target,
    )
