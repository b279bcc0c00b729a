"""Resources: what can be claimed, written ``kind:name``.

Kinds: ``issue:ROOSE-158``, ``path:src/auth/**``, ``path:src/app.py#L10-80``, ``worktree:3``,
``lock:github-api``, ``stream:database-layer``.

Path claims are gitignore-style globs anchored at the repository root (see `dibs.core.globs`),
with an optional line range on a single file. Two resources *overlap* when one claim could
stand in the other's way: same kind and same name for most kinds; for paths, some file could be
covered by both patterns and, when both carry line ranges of that file, the ranges overlap (a
whole-file claim covers every range in it).

Pure: no I/O. Parsing is cached, so the same text always yields the same `Resource` object.
"""

from __future__ import annotations

from dibs.core import globs
from dibs.ground.errors import InvalidResource, shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

KINDS = ("issue", "path", "worktree", "lock", "stream")
MAX_NAME = 200
MAX_PATH = 1024
#: Line numbers have at most this many digits (ASCII digits only: ``int`` would also take
#: '²'-like digits and, past 4,300 digits, fail outright).
LINE_DIGITS = 9
EXAMPLES = "issue:ROOSE-158, path:src/auth/**, path:src/app.py#L10-80, worktree:3, lock:github-api"

#: The characters that make a path a pattern (a backslash escapes the next one).
_GLOB_CHARS = "*?[\\"
_cache: dict[str, Resource] = {}


class Resource:
    """One claimable thing, parsed and normalised.

    Attributes:
        text: the canonical form (``kind:name``), used as the key everywhere.
        kind: one of `KINDS`.
        name: the normalised name (for paths: the pattern without the line range).
        lines: for a line-range path claim, the inclusive ``(first, last)`` lines; else None.
        file: for a line-range claim, the file it names (escapes resolved: the pattern
            ``src/a\\*.py`` names the file ``src/a*.py``); else None.
    """

    __slots__ = ("_glob", "file", "kind", "lines", "literal", "name", "text")

    def __init__(self, kind: str, name: str, lines: tuple[int, int] | None = None):
        self.kind = kind
        self.name = name
        self.lines = lines
        suffix = "" if lines is None else _format_lines(lines)
        self.text = f"{kind}:{name}{suffix}"
        # Most path claims name plain files or folders: they need no glob parsing, which
        # matters when a guard loads a thousand claims on every edit.
        self.literal = kind == "path" and _first_glob_char(name) < 0
        self._glob: globs.Glob | None = None
        if kind == "path" and not self.literal:
            self._glob = globs.parse_glob(name)  # validates the pattern now
        self.file: str | None = None
        if lines is not None:
            self.file = name if self.literal else "/".join(globs.literal_prefix(self.glob))

    @property
    def glob(self) -> globs.Glob:
        """The parsed pattern of a path resource."""
        if self._glob is None:
            if self.kind != "path":
                raise TypeError(f"{self.text} is not a path resource")
            self._glob = globs.parse_glob(self.name)
        return self._glob

    def __repr__(self) -> str:
        return f"Resource({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Resource) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _format_lines(lines: tuple[int, int]) -> str:
    first, last = lines
    return f"#L{first}" if first == last else f"#L{first}-{last}"


def parse_resource(text: str) -> Resource:
    """Parse and validate ``kind:name``; the same text always returns the same object.

    Raises:
        InvalidResource: with a message saying what is wrong and a hint on how to write it.
    """
    cached = _cache.get(text)
    if cached is not None:
        return cached
    resource = _parse(text)
    if len(_cache) > 100_000:
        _cache.clear()
    _cache[text] = resource
    _cache.setdefault(resource.text, resource)
    return resource


def parse_resources(texts: Iterable[str]) -> list[Resource]:
    """Parse several resources, dropping exact repeats and keeping the first order."""
    seen: dict[str, Resource] = {}
    for text in texts:
        resource = parse_resource(text)
        seen.setdefault(resource.text, resource)
    return list(seen.values())


def _parse(text: str) -> Resource:
    if not isinstance(text, str):
        raise InvalidResource(f"a resource must be text, not {type(text).__name__}")
    if not text:
        raise InvalidResource("empty resource", hint=f"write kind:name, e.g. {EXAMPLES}")
    _refuse_control_characters(text, text)
    kind, sep, name = text.partition(":")
    if not sep:
        raise InvalidResource(
            f"{text!r} has no kind",
            hint=f"write kind:name, e.g. path:{text} or issue:{text} (kinds: {', '.join(KINDS)})",
        )
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise InvalidResource(
            f"unknown kind {kind!r} in {text!r}",
            hint=f"use one of {', '.join(KINDS)}, e.g. {EXAMPLES}",
        )
    if kind == "path":
        return _parse_path(text, name)
    if not name:
        raise InvalidResource(f"{text!r} has an empty name", hint=f"e.g. {kind}:something")
    if len(name) > MAX_NAME:
        raise InvalidResource(
            f"{kind} name is {len(name)} characters long; the limit is {MAX_NAME}",
            hint="use a shorter name",
        )
    if any(ch.isspace() for ch in name):
        raise InvalidResource(
            f"{text!r} contains white space", hint="use - or _ instead of spaces in names"
        )
    return Resource(kind, name)


def _refuse_control_characters(text: str, whole: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidResource(
            f"{shown(whole)} holds bytes that are not UTF-8 text",
            hint="resource names are UTF-8 text (check the terminal's or the caller's encoding)",
        ) from None
    for ch in text:
        if ord(ch) < 32 or ord(ch) == 127:
            raise InvalidResource(
                f"{whole!r} contains a control character ({ord(ch):#04x})",
                hint="resource names are printable text",
            )


def _parse_path(text: str, raw: str) -> Resource:
    pattern, lines = _split_line_range(text, raw)
    if not pattern:
        raise InvalidResource(
            f"{text!r} has an empty path", hint="to claim the whole repository write path:**"
        )
    if len(pattern) > MAX_PATH:
        raise InvalidResource(
            f"path is {len(pattern)} characters long; the limit is {MAX_PATH}",
            hint="claim a shorter pattern, e.g. a parent directory",
        )
    if pattern.startswith(("/", "~")) or (len(pattern) > 1 and pattern[1] == ":"):
        raise InvalidResource(
            f"{text!r} is an absolute path",
            hint="write paths relative to the repository root, e.g. path:src/app.py",
        )
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise InvalidResource(
            f"{text!r} contains '..'",
            hint="paths must stay inside the repository; write them from the repository root",
        )
    if not segments:
        raise InvalidResource(
            f"{text!r} has an empty path", hint="to claim the whole repository write path:**"
        )
    if segments[0] == ".git":
        raise InvalidResource(
            f"{text!r} is inside .git", hint="claim files of the work tree, not git's own"
        )
    name = "/".join(segments)
    if lines is not None and not globs.is_literal(name):
        raise InvalidResource(
            f"{text!r} puts a line range on a pattern",
            hint="a line range needs one file, e.g. path:src/app.py#L10-80",
        )
    return Resource("path", name, lines)


def _first_glob_char(name: str) -> int:
    """Where the first of ``*?[\\`` is in *name*, or -1: four C-level searches (a guard indexes
    every claim), and no regular expression (``re`` costs a CLI call milliseconds to import)."""
    found = [i for i in map(name.find, _GLOB_CHARS) if i >= 0]
    return min(found) if found else -1


def _is_line_number(text: str) -> bool:
    """``[0-9]{1,LINE_DIGITS}``: ASCII digits only (``isdigit`` alone takes '²')."""
    return 0 < len(text) <= LINE_DIGITS and text.isascii() and text.isdigit()


def _split_line_range(text: str, raw: str) -> tuple[str, tuple[int, int] | None]:
    head, sep, tail = raw.rpartition("#")
    if not sep or not tail.startswith("L"):
        return raw, None
    spec = tail[1:]
    first_text, dash, last_text = spec.partition("-")
    if not _is_line_number(first_text) or (dash and not _is_line_number(last_text)):
        raise InvalidResource(
            f"{shown(text, 80)} has a malformed line range {shown('#' + tail)}",
            hint="write #L10 for one line or #L10-80 for lines 10 to 80, in digits 0-9, "
            f"at most {LINE_DIGITS} of them",
        )
    first = int(first_text)
    last = int(last_text) if dash else first
    if first < 1 or last < first:
        raise InvalidResource(
            f"{text!r} has an empty line range (L{first}-{last})",
            hint="lines count from 1 and the range is first-last with first <= last",
        )
    return head, (first, last)


def overlaps(a: Resource, b: Resource) -> bool:
    """Whether claims on *a* and *b* could stand in each other's way (modes aside)."""
    if a.kind != b.kind:
        return False
    if a.kind != "path":
        return a.name == b.name
    if a.file is not None and a.lines is not None and b.file is not None and b.lines is not None:
        return a.file == b.file and a.lines[0] <= b.lines[1] and b.lines[0] <= a.lines[1]
    if a.file is not None:
        return covers_file(b, a.file)
    if b.file is not None:
        return covers_file(a, b.file)
    if a.literal and b.literal:
        return _beneath(a.name, b.name) or _beneath(b.name, a.name)
    return globs.intersects(a.glob, b.glob)


def _beneath(path: str, folder: str) -> bool:
    """Whether *path* is *folder* or inside it (containment for a literal claim)."""
    return path == folder or path.startswith(folder + "/")


def covers_file(resource: Resource, path: str, lines: tuple[int, int] | None = None) -> bool:
    """Whether a claim on *resource* covers file *path* (and, if given, some of *lines*)."""
    if resource.kind != "path":
        return False
    if resource.lines is None or resource.file is None:
        if resource.literal:
            return _beneath(path, resource.name)
        return globs.covers(resource.glob, path)
    if resource.file != path:
        return False
    if lines is None:
        return True
    return resource.lines[0] <= lines[1] and lines[0] <= resource.lines[1]


def prefix_key(text: str) -> str:
    """The leading plain segments of a path resource's pattern, from its text alone.

    ``path:src/pkg/*.py`` gives ``src/pkg``; ``path:**/x`` gives ``""``. Every file a claim
    covers lies under this prefix, so indexing claims by it finds the ones that may cover a
    file (or overlap another claim) without parsing any glob. Segments with a backslash stop
    the prefix: escapes are left to the glob engine.
    """
    name = text[5:]
    head, sep, tail = name.rpartition("#")
    if sep and tail.startswith("L") and tail[1:].replace("-", "").isdigit():
        name = head
    found = _first_glob_char(name)
    if found < 0:
        return name
    cut = name.rfind("/", 0, found)
    return name[:cut] if cut >= 0 else ""


def scope(text: str | None) -> str | None:
    """What a claim on the resource *text* can stand in the way of, as a text a database
    compares without parsing globs: the text itself for most kinds (they overlap only when
    equal); for a path, ``path:`` and `prefix_key` (two paths can overlap only when one's
    folder is the other's or lies beneath it, or one is the root ``path:``).

    Never claims less than `overlaps`: when two resources overlap, their scopes are equal,
    or both are paths and one is ``path:`` or lies beneath the other.
    """
    if text is None:
        return None
    if text.startswith("path:"):
        return "path:" + prefix_key(text)
    return text


def scopes_may_overlap(a: str, b: str) -> bool:
    """Whether resources of scopes *a* and *b* may overlap (``dibs.scope_clashes`` in SQL)."""
    if a == b:
        return True
    if not (a.startswith("path:") and b.startswith("path:")):
        return False
    return a == "path:" or b == "path:" or a.startswith(b + "/") or b.startswith(a + "/")
