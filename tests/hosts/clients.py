"""The real agent CLIs (Claude Code, Codex, Gemini CLI), run offline against `ModelServer`.

`make hosts` installs the versions pinned in ``tests/hosts/package.json`` into ``.hosts/``
(``DIBS_TEST_HOSTS`` names another prefix). A client that is not installed skips its tests with
a message saying how to install it; under ``CI=true`` it fails them instead.

Every run gets its own HOME (and CODEX_HOME), a PATH with this venv's ``dibs`` and node, no
``DIBS_*`` variables, and settings that keep the client off the network: the model server on
loopback is the only address it is given, and updates, telemetry and error reports are off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path(os.environ.get("DIBS_TEST_HOSTS") or ROOT / ".hosts")
PINNED: dict[str, str] = json.loads((Path(__file__).with_name("package.json")).read_text())[
    "dependencies"
]
BIN = Path(sys.executable).parent
#: Model names the clients know, so they offer their usual tools (Codex picks its tools by
#: the model's metadata: an unknown model gets no apply_patch).
MODELS = {"claude": "claude-sonnet-4-5", "codex": "gpt-5.5", "gemini": "gemini-2.5-flash"}
TIMEOUT = 300


def executable(name: str) -> Path:
    """The installed client *name* (claude, codex, gemini), or skip (fail on CI) saying how."""
    exe = PREFIX / "node_modules" / ".bin" / name
    node = shutil.which("node")
    if exe.exists() and node is not None:
        return exe
    why = "node is not on PATH" if node is None else f"{exe} is missing"
    message = (
        f"the real {name} client is not installed ({why}): run `make hosts` "
        f"(needs node >= 20 and npm; installs {', '.join(sorted(PINNED))} into {PREFIX})"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def base_env(home: Path, *, dibs: bool = True) -> dict[str, str]:
    """A clean environment for a client: its own HOME, dibs (unless not *dibs*) and node on
    PATH, no DIBS_*."""
    node = shutil.which("node")
    path = ([str(BIN)] if dibs else []) + ([str(Path(node).parent)] if node else [])
    path += ["/usr/bin", "/bin"]
    env = {
        "HOME": str(home),
        "PATH": os.pathsep.join(dict.fromkeys(path)),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "TMPDIR": os.environ.get("TMPDIR", tempfile.gettempdir()),
    }
    home.mkdir(parents=True, exist_ok=True)
    return env


def run(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a client to the end of its turn, stdin closed, output captured."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# Claude Code --------------------------------------------------------------------------------


def claude_env(home: Path, server_url: str, *, dibs: bool = True) -> dict[str, str]:
    return {
        **base_env(home, dibs=dibs),
        "ANTHROPIC_BASE_URL": server_url,
        "ANTHROPIC_API_KEY": "sk-ant-test-not-a-key",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_BUG_COMMAND": "1",
        # Wait for MCP servers before the first turn (in -p mode they connect in the
        # background, and a first tool call would find no tool).
        "MCP_CONNECTION_NONBLOCKING": "false",
        "MCP_TIMEOUT": "120000",  # ms to connect: a loaded test machine starts Python slowly
    }


def claude(
    cwd: Path,
    home: Path,
    server_url: str,
    *extra: str,
    prompt: str = "do the task",
    dibs: bool = True,
) -> subprocess.CompletedProcess[str]:
    """One ``claude -p`` turn in *cwd*: edits accepted without asking, JSON result on stdout.
    With *dibs* false, no dibs on PATH (a teammate who has not installed it)."""
    argv = [
        str(executable("claude")),
        "-p",
        prompt,
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
        "--model",
        MODELS["claude"],
        *extra,
    ]
    return run(argv, cwd, claude_env(home, server_url, dibs=dibs))


# Codex --------------------------------------------------------------------------------------


def codex_home(home: Path, server_url: str, trusted_projects: list[Path]) -> Path:
    """``$CODEX_HOME`` (``HOME/.codex``) with config.toml naming the model server.

    The projects listed are trusted (Codex loads a project's ``.codex/`` only then).
    """
    folder = home / ".codex"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f'model = "{MODELS["codex"]}"',
        'model_provider = "scripted"',
        'approval_policy = "never"',
        'sandbox_mode = "danger-full-access"',  # the test machine may lack the sandbox's kernel
        "check_for_update_on_startup = false",
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[model_providers.scripted]",
        'name = "scripted test model"',
        f'base_url = "{server_url}/v1"',
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "",
    ]
    for project in trusted_projects:
        lines += [f"[projects.{json.dumps(str(project))}]", 'trust_level = "trusted"', ""]
    (folder / "config.toml").write_text("\n".join(lines))
    return folder


#: Codex hook events whose matcher is not used (it hashes them without one).
_NO_MATCHER = {"user_prompt_submit", "stop"}


def _snake(event: str) -> str:
    return "".join("_" + ch.lower() if ch.isupper() else ch for ch in event).lstrip("_")


def codex_hook_hash(event: str, group: dict[str, Any], handler: dict[str, Any]) -> str:
    """The ``trusted_hash`` Codex 0.171 expects for one command hook (what its /hooks screen
    writes when the user trusts it): sha256 of the canonical JSON of the event's snake-case
    name, the group's matcher, and the one handler with its defaults filled in."""
    normalized: dict[str, Any] = {
        "type": "command",
        "command": handler["command"],
        "timeout": max(int(handler.get("timeout") or handler.get("timeoutSec") or 600), 1),
        "async": bool(handler.get("async", False)),
    }
    if handler.get("statusMessage") is not None:
        normalized["statusMessage"] = handler["statusMessage"]
    identity: dict[str, Any] = {"event_name": _snake(event), "hooks": [normalized]}
    if group.get("matcher") is not None and _snake(event) not in _NO_MATCHER:
        identity["matcher"] = group["matcher"]
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def trust_codex_hooks(folder: Path, hooks_json: Path) -> list[str]:
    """Trust every command hook in *hooks_json* in ``folder/config.toml`` (``[hooks.state]``),
    as a user does on Codex's /hooks screen; keys already there are left alone."""
    config = folder / "config.toml"
    text = config.read_text() if config.exists() else ""
    known = tomllib.loads(text).get("hooks", {}).get("state", {})
    hooks = json.loads(hooks_json.read_text()).get("hooks", {})
    added = []
    for event, groups in hooks.items():
        for g, group in enumerate(groups):
            for h, handler in enumerate(group.get("hooks", [])):
                if handler.get("type", "command") != "command":
                    continue
                key = f"{hooks_json}:{_snake(event)}:{g}:{h}"
                if key in known:
                    continue
                digest = codex_hook_hash(event, group, handler)
                text += f'\n[hooks.state.{json.dumps(key)}]\ntrusted_hash = "{digest}"\n'
                added.append(key)
    config.write_text(text)
    return added


def codex(
    cwd: Path, home: Path, *extra: str, prompt: str = "do the task"
) -> subprocess.CompletedProcess[str]:
    """One ``codex exec`` turn in *cwd* with ``CODEX_HOME=HOME/.codex`` (see `codex_home`)."""
    env = {**base_env(home), "CODEX_HOME": str(home / ".codex")}
    argv = [str(executable("codex")), "exec", "--skip-git-repo-check", *extra, prompt]
    return run(argv, cwd, env)


# Gemini CLI ---------------------------------------------------------------------------------


def gemini_home(home: Path, trusted_folders: list[Path]) -> Path:
    """``HOME/.gemini`` with API-key auth, no updates, no usage statistics or telemetry, and
    *trusted_folders* trusted (Gemini CLI runs a project's hooks only in a trusted folder)."""
    folder = home / ".gemini"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "security": {"auth": {"selectedType": "gemini-api-key"}},
        "general": {"disableAutoUpdate": True, "disableUpdateNag": True},
        "privacy": {"usageStatisticsEnabled": False},
        "telemetry": {"enabled": False},
    }
    path = folder / "settings.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**current, **settings}, indent=2))
    trusted = {str(p): "TRUST_FOLDER" for p in trusted_folders}
    (folder / "trustedFolders.json").write_text(json.dumps(trusted, indent=2))
    return folder


def gemini(
    cwd: Path, home: Path, server_url: str, *extra: str, prompt: str = "do the task"
) -> subprocess.CompletedProcess[str]:
    """One ``gemini -p`` turn in *cwd*, every tool call approved (``--approval-mode yolo``)."""
    env = {
        **base_env(home),
        "GOOGLE_GEMINI_BASE_URL": server_url,
        "GEMINI_API_KEY": "test-not-a-key",
        "GEMINI_CLI_NO_RELAUNCH": "true",
    }
    argv = [
        str(executable("gemini")),
        "-p",
        prompt,
        "--approval-mode",
        "yolo",
        "-m",
        MODELS["gemini"],
        "-o",
        "json",
        *extra,
    ]
    return run(argv, cwd, env)
