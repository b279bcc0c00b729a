"""One thin adapter per agent host: its hook JSON in, the guard's verdict out in its protocol.

=========  ==============================  =========================================  ==========
host       hook event (and tools)          what the call writes                       refuses by
=========  ==============================  =========================================  ==========
claude     PreToolUse: Edit, Write,        ``file_path`` / ``notebook_path``; Edit:   JSON
           NotebookEdit (MultiEdit), Bash  the lines of ``old_string`` (all of them   ``permission
                                           with ``replace_all``); Bash: best effort   Decision``
codex      PreToolUse: apply_patch, Bash   every file of the patch in                 JSON (both
                                           ``tool_input.command`` (also a heredoc     forms)
                                           through the shell), relative to ``cwd``
gemini     BeforeTool: write_file,         ``file_path`` relative to ``cwd``;         ``decision:
           replace, run_shell_command      replace: every occurrence of               deny``
                                           ``old_string``; shell in ``dir_path``
cursor     preToolUse: Write, Edit,        ``file_path``/``path``/``target_file``;    ``permission:
           Delete, Shell                   Shell: best effort                         deny``
=========  ==============================  =========================================  ==========

Claude Code, Codex and Gemini CLI all understand one reply, so refusals use it::

    {"decision": "block", "reason": R, "hookSpecificOutput": {"hookEventName": "PreToolUse",
     "permissionDecision": "deny", "permissionDecisionReason": R}}

A warning reaches the model as ``hookSpecificOutput.additionalContext`` (Cursor:
``agent_message``) on an allowed call; Gemini CLI drops it there, so it is kept for the
call's AfterTool (`DEAF_WHEN_ALLOWED`). Anything the guard cannot parse or check is refused
(`failure`), with how to get unstuck; the hooks' launcher refuses when dibs itself cannot run.
"""

from __future__ import annotations

import json
import os

from dibs.ground.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.integrations.guard import Call, Verdict

HOSTS = ("claude", "codex", "gemini", "cursor")
#: The pre-tool event each host sends (Claude Code and Codex share the name).
TOOL_EVENTS = {"PreToolUse", "BeforeTool", "preToolUse"}
#: Events whose reply may add to the model's context (``additionalContext``): where the
#: agent's inbox is pushed (Claude Code, Codex: PostToolUse, UserPromptSubmit, SessionStart;
#: Gemini CLI: AfterTool, BeforeAgent, SessionStart), besides the pre-tool events.
CONTEXT_EVENTS = {
    "PostToolUse",
    "UserPromptSubmit",
    "SessionStart",
    "AfterTool",
    "BeforeAgent",
}
#: Pre-tool events whose reply reaches the model only when it refuses, and the event of the
#: same call that speaks for them: Gemini CLI reads a BeforeTool reply's stop, decision,
#: reason and tool_input, and nothing else (its additionalContext is dropped, its
#: systemMessage shown to the person only). On an allowed call the inbox is left unread and a
#: warning kept for the call's AfterTool, whose context Gemini appends to the tool's result.
DEAF_WHEN_ALLOWED = {"BeforeTool": "AfterTool"}
UNSTUCK = (
    "to get unstuck: run `dibs doctor` in the repository and fix what it reports; or let "
    "edits through with a warning (DIBS_GUARD_MODE=warn, or `dibs hooks install --mode warn`); "
    "or remove the guard (`dibs hooks uninstall`)"
)

_SHELLS = {"Bash", "Shell", "shell", "exec_command", "run_shell_command", "local_shell"}
_CURSOR_KEYS = ("file_path", "path", "target_file", "filePath", "notebook_path")
_CURSOR_WRITERS = {"StrReplace", "Delete", "edit_file", "search_replace", "delete_file", "write"}


class Payload:
    """A hook's stdin, checked: the event, the session and (for a tool event) the call."""

    __slots__ = ("call", "cwd", "data", "event", "host", "session", "subagent")

    def __init__(self, host: str, raw: str):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UsageError(
                f"the hook input is not JSON ({exc})",
                hint=f"dibs guard {host} reads the {host} hook JSON on stdin",
            ) from exc
        if not isinstance(data, dict):
            raise UsageError("the hook input is not a JSON object")
        self.host = host
        self.data = data
        self.event = str(data.get("hook_event_name") or data.get("hookEventName") or "")
        cwd = data.get("cwd")
        if not cwd and host == "cursor":
            roots = data.get("workspace_roots")
            cwd = roots[0] if isinstance(roots, list) and roots else None
        self.cwd = str(cwd) if isinstance(cwd, str) and cwd else os.getcwd()
        session = data.get("session_id") or data.get("conversation_id")
        self.session = str(session) if session else None
        subagent = data.get("agent_id")
        self.subagent = str(subagent) if subagent and host == "claude" else None
        self.call = self._call() if self.event in TOOL_EVENTS or not self.event else None

    def _call(self) -> Call | None:
        from dibs.integrations.guard import Call

        tool = str(self.data.get("tool_name") or "")
        tool_input = self.data.get("tool_input") or {}
        if not isinstance(tool_input, dict):
            raise UsageError("tool_input in the hook input is not an object")
        writes, shell = _writes(self.host, tool, tool_input, self.cwd)
        if writes is None:
            return None
        return Call(
            self.host,
            tool,
            self.cwd,
            writes,
            session=self.session,
            subagent=self.subagent,
            shell=shell,
        )


def _writes(
    host: str, tool: str, tool_input: dict[str, Any], cwd: str
) -> tuple[list[tuple[str, list[tuple[int, int]] | None]] | None, bool]:
    """The files *tool* writes (None: not a writing tool), and whether read from a shell."""
    from dibs.integrations.guard import EDIT_TOOLS, edits

    if tool == "apply_patch" or (tool in _SHELLS and host == "codex"):
        command = tool_input.get("command") or tool_input.get("patch") or tool_input.get("input")
        if isinstance(command, list):
            command = " ".join(str(c) for c in command)
        if not isinstance(command, str):
            return None, False
        folder = tool_input.get("workdir") or cwd
        folder = os.path.join(cwd, folder) if isinstance(folder, str) else cwd
        if tool == "apply_patch":
            return edits.patch_writes(command, folder), False
        return edits.shell_writes(command, folder), True
    if tool in _SHELLS:
        command = tool_input.get("command")
        if not isinstance(command, str):
            return None, False
        folder = tool_input.get("dir_path") or tool_input.get("cwd") or cwd
        folder = os.path.join(cwd, folder) if isinstance(folder, str) else cwd
        return edits.shell_writes(command, folder), True
    if host == "gemini":
        if tool not in ("write_file", "replace"):
            return None, False
        return _one(tool_input, ("file_path", "absolute_path"), cwd, tool), False
    if host == "cursor" and tool not in EDIT_TOOLS:
        if tool not in _CURSOR_WRITERS:
            return None, False  # reads, searches, MCP tools
        return _one(tool_input, _CURSOR_KEYS, cwd, tool), False
    key = EDIT_TOOLS.get(tool)
    if key is None:
        return None, False
    return _one(tool_input, (key,), cwd, tool), False


def _one(
    tool_input: dict[str, Any], keys: tuple[str, ...], cwd: str, tool: str
) -> list[tuple[str, list[tuple[int, int]] | None]] | None:
    from dibs.integrations.guard import edit_lines
    from dibs.integrations.guard.edits import replaced_lines

    raw = next((tool_input[k] for k in keys if isinstance(tool_input.get(k), str)), None)
    if raw is None:
        return None
    path = os.path.join(cwd, os.path.expanduser(raw))
    if tool in ("Edit", "MultiEdit", "StrReplace"):
        lines = edit_lines(path, "MultiEdit" if tool == "MultiEdit" else "Edit", tool_input)
    elif tool == "replace":  # Gemini: every occurrence (expected_replacements of them)
        lines = replaced_lines(path, [(tool_input.get("old_string"), True)])
    else:
        lines = None
    return [(path, lines)]


# Replies ----------------------------------------------------------------------------------


def reply(host: str, event: str, verdict: Verdict) -> tuple[int, str]:
    """``(exit code, stdout)`` telling *host* the *verdict* on a tool call."""
    if host == "cursor":
        if not verdict.allow:
            return 0, json.dumps(
                {
                    "permission": "deny",
                    "agent_message": verdict.message,
                    "user_message": verdict.message,
                }
            )
        out: dict[str, Any] = {"permission": "allow"}
        if verdict.message:
            out["agent_message"] = verdict.message
        return 0, json.dumps(out)
    name = event or ("BeforeTool" if host == "gemini" else "PreToolUse")
    if not verdict.allow:
        reason = verdict.message
        return 0, json.dumps(
            {
                "decision": "block" if host != "gemini" else "deny",
                "reason": reason,
                "hookSpecificOutput": {
                    "hookEventName": name,
                    "permissionDecision": "deny",
                    "permissionDecisionReason": reason,
                },
            }
        )
    if verdict.message:
        return 0, json.dumps(
            {
                "systemMessage": verdict.message,
                "hookSpecificOutput": {"hookEventName": name, "additionalContext": verdict.message},
            }
        )
    return 0, "{}"  # an empty JSON answer: go ahead (Gemini parses stdout; Codex wants one)


def failure(host: str, event: str, problem: str, *, mode: str = "block") -> tuple[int, str]:
    """The reply when the guard could not check a call: refuse (warn mode: say so, allow)."""
    from dibs.integrations.guard import Verdict

    message = f"dibs: the edit guard could not check this call ({problem}); {UNSTUCK}"
    if mode == "warn":
        return reply(host, event, Verdict(True, message.replace("dibs:", "dibs warn:", 1)))
    return reply(host, event, Verdict(False, message))
