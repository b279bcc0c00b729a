"""Which files a tool call writes, and which of their lines: the guards' parsers.

* text edits (Claude Code's Edit, Gemini's ``replace``): the lines of every occurrence the edit
  rewrites (`replaced_lines`; ``replace_all`` rewrites them all);
* patches (Codex's ``apply_patch``, also sent through the shell as a heredoc): every file a
  patch adds, updates, deletes or moves, with the lines its hunks change (`patch_writes`);
* shell commands, best effort (`shell_writes`): the obvious writes — ``>``, ``>>``, ``tee``,
  ``sed -i``, ``mv``, ``cp``, ``rm``, ``truncate`` — in each simple command. A script, an
  interpreter or a variable escapes it; the commit guard and the merge queue are the backstops.
  (Also ``dd of=``, ``git checkout -- FILES`` and ``git restore FILES``.)

A write is ``(path, lines)``: the path as the call names it (joined to the call's folder when
relative) and the changed line ranges, or None for the whole file (or when unknown).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    Spans = list[tuple[int, int]] | None
    Write = tuple[str, Spans]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def replaced_lines(path: str, olds: Iterable[tuple[object, bool]]) -> Spans:
    """The lines of *path* that replacing each ``(old text, every occurrence?)`` rewrites.

    None (the whole file) when the file cannot be read or an old text is not found in it: a
    guard that cannot tell the lines treats the call as a write of the whole file.
    """
    text = _read(path)
    if text is None:
        return None
    spans: list[tuple[int, int]] = []
    for old, every in olds:
        if not isinstance(old, str) or not old:
            return None
        at = text.find(old)
        if at < 0:
            return None
        height = old.count("\n")
        while at >= 0:
            first = text.count("\n", 0, at) + 1
            spans.append((first, first + height))
            if not every:
                break
            at = text.find(old, at + len(old))
    return spans


# Patches ----------------------------------------------------------------------------------

_BEGIN = "*** Begin Patch"
_FILE_OPS = ("*** Update File: ", "*** Add File: ", "*** Delete File: ", "*** Move to: ")


def patch_writes(patch: str, cwd: str) -> list[Write]:
    """Every file an ``apply_patch`` patch writes (all its files, moves and deletes)."""
    writes: list[Write] = []
    current: str | None = None
    hunks: list[list[str]] = []
    for raw in patch.splitlines():
        line = raw.rstrip("\r")
        op = next((p for p in _FILE_OPS if line.startswith(p)), None)
        if op is not None:
            if current is not None:
                writes.append((current, _hunk_lines(current, hunks)))
            path = os.path.join(cwd, line[len(op) :].strip())
            if op == "*** Update File: ":
                current, hunks = path, [[]]
            else:  # an added, deleted or moved-to file is written whole
                current, hunks = None, []
                writes.append((path, None))
        elif current is not None:
            if line.startswith("@@"):
                hunks.append([])
            elif line.startswith(("*** End Patch", "*** End of File")):
                continue
            elif hunks:
                hunks[-1].append(line)
    if current is not None:
        writes.append((current, _hunk_lines(current, hunks)))
    return writes


def _hunk_lines(path: str, hunks: list[list[str]]) -> Spans:
    """The lines of *path* the hunks change: each hunk's old text found in the file."""
    text = _read(path)
    if text is None:
        return None
    lines = text.split("\n")
    spans: list[tuple[int, int]] = []
    for hunk in hunks:
        old = [h[1:] for h in hunk if h[:1] in (" ", "-")]
        kept = [h for h in hunk if h[:1] in (" ", "-")]
        changed = [i for i, h in enumerate(kept) if h[:1] == "-"]
        if not old and not any(h[:1] == "+" for h in hunk):
            continue
        at = _find_block(lines, old)
        if at is None:
            return None
        if changed:
            spans.append((at + changed[0] + 1, at + changed[-1] + 1))
        else:  # a pure insertion: the line it goes after (or the first)
            spans.append((max(at + len(old), 1), max(at + len(old), 1)))
    return spans or None


def _find_block(lines: list[str], block: list[str]) -> int | None:
    if not block:
        return 0
    for start in range(len(lines) - len(block) + 1):
        if lines[start : start + len(block)] == block:
            return start
    stripped = [b.strip() for b in block]
    for start in range(len(lines) - len(block) + 1):
        if [x.strip() for x in lines[start : start + len(block)]] == stripped:
            return start
    return None


def embedded_patch(command: str) -> str | None:
    """The ``apply_patch`` patch inside a shell command (a heredoc), if there is one."""
    at = command.find(_BEGIN)
    return command[at:] if at >= 0 else None


# Shell ------------------------------------------------------------------------------------

_REDIRECTS = (">", ">>", ">|", "&>", "&>>")
_SEPARATORS = (";", "&&", "||", "|", "&", "(", ")", "\n")
_QUIET = ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty")


def shell_writes(command: str, cwd: str) -> list[Write]:
    """The files a shell command obviously writes (best effort; see the module docstring)."""
    patch = embedded_patch(command)
    if patch is not None:
        return patch_writes(patch, cwd)
    import shlex

    text = _drop_heredocs(command)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:
        return []  # unbalanced quotes: the shell itself will refuse it
    targets: list[str] = []
    words: list[str] = []
    redirect = False
    for token in [*tokens, ";"]:
        if redirect:
            redirect = False
            if not token.startswith("&") and token not in _QUIET:
                targets.append(token)
            continue
        if token in _REDIRECTS or (token.endswith(">") and token.strip(">&|") == ""):
            redirect = True
        elif token in _SEPARATORS or set(token) <= set(";&|()"):
            targets += _command_targets(words)
            words = []
        else:
            words.append(token)
    return [(os.path.join(cwd, os.path.expanduser(t)), None) for t in dict.fromkeys(targets)]


def _drop_heredocs(command: str) -> str:
    """The command without heredoc bodies (their text is data, not redirections)."""
    import re

    out: list[str] = []
    ending: list[str] = []
    for line in command.split("\n"):
        if ending:
            if line.strip() == ending[0]:
                ending.pop(0)
            continue
        out.append(line)
        ending += [m.group(2) for m in re.finditer(r"<<-?\s*(['\"]?)([A-Za-z_][\w-]*)\1", line)]
    return "\n".join(out)


def _options_and_operands(words: list[str], with_value: str = "") -> tuple[list[str], list[str]]:
    """Split *words* into options and operands; *with_value*: short options taking a word."""
    options: list[str] = []
    operands: list[str] = []
    ended = taking = False
    for word in words:
        if taking:
            options[-1] += "=" + word
            taking = False
        elif not ended and word == "--":
            ended = True
        elif not ended and word.startswith("-") and word != "-":
            options.append(word)
            taking = len(word) == 2 and word[1] in with_value
        else:
            operands.append(word)
    return options, operands


def _in_place(options: list[str]) -> bool:
    return any(
        o.startswith("--in-place") or (not o.startswith("--") and "i" in o[1:].split(".")[0])
        for o in options
    )


def _command_targets(words: list[str]) -> list[str]:
    """The files one simple command writes (``mv a b``: both; ``cp a b``: b; ``rm a``: a)."""
    while words and "=" in words[0] and not words[0].startswith("="):
        words = words[1:]  # VAR=value prefixes
    while words and words[0] in ("sudo", "env", "command", "nohup", "time", "exec"):
        words = words[1:]
    if not words:
        return []
    name = os.path.basename(words[0])
    if name in ("tee", "rm", "unlink", "shred"):
        return _options_and_operands(words[1:])[1]
    if name == "truncate":
        return _options_and_operands(words[1:], "sr")[1]
    if name in ("mv", "cp", "install", "ln"):
        options, operands = _options_and_operands(words[1:], "tS")
        target = next(
            (o.split("=", 1)[1] for o in options if o.startswith(("-t=", "--target-directory="))),
            None,
        )
        if target is None:
            if len(operands) < 2:
                return []
            target = operands.pop()
        sources = operands if name == "mv" else []
        return [*sources, target, *(os.path.join(target, os.path.basename(s)) for s in operands)]
    if name == "dd":
        return [w[3:] for w in words[1:] if w.startswith("of=")]
    if name == "git" and len(words) > 2 and words[1] in ("checkout", "restore"):
        rest = words[2:]
        return (
            rest[rest.index("--") + 1 :]
            if "--" in rest
            else (_options_and_operands(rest, "s")[1] if words[1] == "restore" else [])
        )
    if name in ("sed", "perl"):
        options, operands = _options_and_operands(words[1:], "ef" if name == "sed" else "eE")
        if not _in_place(options):
            return []
        scripted = any(o.startswith(("-e", "-f", "-E", "--expression", "--file")) for o in options)
        return operands if scripted else operands[1:]  # else the first operand is the script
    return []
