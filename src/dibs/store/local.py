"""The local store: an append-only JSONL log under flock, with a checkpoint for fast opening.

Why one module of about a thousand lines: it is one class, `LocalStore`, whose methods share
one set of invariants (the open segment and its offset, the lock, the state replayed so far,
the checkpoint and high-water marks that bound it). Writing, catching up, checking and
repairing each move those together; split over files they would be the same class read in
pieces. Its pure parts live elsewhere already: the rules in `dibs.core`, the per-OS sync,
lock and clock in `dibs.ground.platform`.

Layout, in ``$(git rev-parse --git-common-dir)/dibs/`` (shared by every worktree of a clone)::

    lock                          flock target: never unlinked, never truncated
    log/00000000000000000001.jsonl segments, named by the seq of their first event
    checkpoint                    the state at some seq and where that seq ends (a cache)
    high-water                    how far the log is known to reach; no token exceeds it
    evidence/                     what `dibs doctor --repair` kept aside when the log was behind

Writing (under ``flock``): catch up with what others appended, repair a torn tail, read the
clock, decide, append the events with one ``write``, apply them, let go of the lock, then
``fdatasync`` (group commit: concurrent writers' syncs overlap). An operation is acknowledged
only after its fdatasync returns; nothing else is synced on that path (one
fsync per operation). The sync, the lock and the clock are this platform's (`dibs.ground.platform`:
fdatasync on Linux, F_FULLFSYNC on macOS, fsync elsewhere).

Reading (``status``, ``log``) takes no lock: it replays complete transactions only and leaves a
torn or half-written tail for the next writer to judge.

Opening does not replay history: it loads the checkpoint and replays the tail after it. A
checkpoint is rewritten (temp file, fsync, rename) once the tail outgrows it, outside the lock,
so its cost stays off the claim path and proportional to the live state, not to the history.
The checkpoint is a cache: when it is missing or does not match the log it is rebuilt.

A log that ends before a point it is known to have reached (the checkpoint's seq, or the mark in
``high-water``, written when a segment is sealed and when fencing tokens are reserved) lost
acknowledged events: a backup restored over it, a truncated disk. Opening it raises `LogBehind`
instead of quietly handing out its fencing tokens again; ``dibs doctor --repair`` accepts the
loss, keeps the evidence aside and continues tokens above the reserved ceiling.
"""

from __future__ import annotations

import _thread
import marshal
import os

from dibs.core.events import REQUIRED, SCHEMA_VERSION, decode, encode, new_event
from dibs.core.state import State, apply, seal
from dibs.ground import fastjson, host, platform
from dibs.ground.errors import CorruptLog, LogBehind, StoreIOError, StoreUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.leases import Decision
    from dibs.ground.now import Now
    from dibs.store.base import Clock, DecideFn, Finding

#: Written by `dibs store migrate` once the log is copied: the store takes no more writes.
MOVED = "MOVED"
SEGMENT_BYTES = 64 * 1024 * 1024
# The checkpoint is a cache, read on every CLI call and every guarded edit: marshal (built in)
# parses it in half the time of JSON. Its format is Python's, so the header names the format;
# a checkpoint another Python cannot read is simply ignored and the log replayed. It is no
# more trusted than the log beside it: both live in .git, which only the user can write.
_CHECKPOINT_HEADER = b"dibs checkpoint 1 marshal 4\n"
# Small, so that a fresh CLI process replays little after the checkpoint; the threshold
# grows with the checkpoint itself (see _maybe_checkpoint), so big states rewrite rarely.
CHECKPOINT_BYTES = 16 * 1024
_SEGMENT_DIGITS = 20
#: Beside the checkpoint: a point the log is known to reach (seq, segment, offset; written after
#: the log is synced there) and a ceiling no fencing token has passed. It survives what the
#: checkpoint does not (the checkpoint may be deleted), so a log cut back behind it is refused.
HIGH_WATER = "high-water"
#: Fencing tokens reserved at a time: ``high-water`` is rewritten (synced) once per this many
#: grants, always before a token above its ceiling is logged; never on every claim.
TOKEN_BLOCK = 1024
#: Where `dibs doctor --repair` keeps the checkpoint and high-water of a log found behind them.
EVIDENCE = "evidence"
_READ_CHUNK = 1 << 20


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:0{_SEGMENT_DIGITS}d}.jsonl"


def _make_dir(path: str) -> None:
    """Create *path* (and parents) durably: a new directory entry is synced in its parent."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    _make_dir(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    platform.sync_dir(parent)


_REQUIRED = frozenset(REQUIRED)


class _Batch:
    """Complete transactions found in a run of log bytes."""

    __slots__ = ("consumed", "events", "leftover")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.consumed = 0  # bytes up to the end of the last complete transaction
        self.leftover = 0  # bytes after it: a torn line or an incomplete transaction


class LocalStore:
    """The default store: see the module docstring for the layout and the protocol.

    Args:
        root: the store folder (usually ``<git common dir>/dibs``); created on first write.
        clock: the deciding clock (default: `dibs.ground.host.now`).
        segment_bytes: roll over to a new segment once the current one reaches this size.
        checkpoint_bytes: rewrite the checkpoint once the tail after it reaches this size
            (or the size of the checkpoint itself, whichever is larger).
        write_chunk: a test seam: write each batch in pieces of this many bytes, one system
            call each, so that a process killed mid-write really leaves a torn tail (a single
            small ``write`` is never cut short by SIGKILL).
        sync: ``store.sync``: "full" (the drive has the data on stable storage) or "fsync"
            (the system handed it to the drive); they differ on macOS (`dibs.ground.platform`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        segment_bytes: int = SEGMENT_BYTES,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        write_chunk: int | None = None,
        sync: str = "full",
    ):
        self.root = os.fspath(root)
        self.url = f"local:{self.root}"
        self.clock: Clock = clock if clock is not None else host.now
        self.segment_bytes = segment_bytes
        self.checkpoint_bytes = checkpoint_bytes
        self.write_chunk = write_chunk
        self.sync = sync
        self.log_dir = os.path.join(self.root, "log")
        self.index_path = os.path.join(self.root, "checkpoint")
        #: Torn tails this process repaired (each a sentence for people).
        self.repairs: list[str] = []
        self._tlock = _thread.allocate_lock()
        self._lock_fd = -1
        self._state: State | None = None
        self._segment = ""  # file name of the segment we are positioned in
        self._offset = 0  # end of the last applied transaction in that segment
        self._read_fd = -1
        self._append_fd = -1
        self._checkpoint_at = (0, 0)  # (seq, size in bytes) of the last checkpoint we know
        self._since_checkpoint = 0  # log bytes applied after that checkpoint
        self._mark = (0, "", 0)  # (seq, segment, offset): where a known seq ends, for events()
        self._sealed = False  # the current segment takes no more writes
        self._index_seen = (0, 0)  # (inode, mtime) of the checkpoint when we last saw it
        self._events_end = (0, "", 0)  # (seq, segment, offset) where events() last stopped
        self._ceiling = 0  # no token above this is logged before high-water says so

    # Opening ----------------------------------------------------------------------------

    def create(self) -> None:
        """Create the store folder and its lock file (durably); safe to call again."""
        if self._lock_fd >= 0:
            return
        try:
            _make_dir(self.log_dir)
            # Never unlink or truncate the lock file: waiters would split across two inodes
            # and both win.
            self._lock_fd = os.open(
                os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise StoreUnavailable(
                f"cannot create the store in {self.root}: {exc.strerror}",
                hint="check that the repository is writable by you",
            ) from exc

    def _segments(self) -> list[str]:
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(".jsonl") and n[:-6].isdigit())

    def _open_segment(self, name: str, offset: int) -> None:
        self._close_fds()
        self._segment = name
        self._offset = offset
        self._sealed = False
        self._read_fd = os.open(os.path.join(self.log_dir, name), os.O_RDONLY | os.O_CLOEXEC)

    def _close_fds(self) -> None:
        for fd in (self._read_fd, self._append_fd):
            if fd >= 0:
                os.close(fd)
        self._read_fd = self._append_fd = -1

    def _load(self) -> State:
        """Position at the checkpoint when it matches the log, else at the start of the log."""
        self._state = state = State()
        self._segment = ""
        self._offset = 0
        self._since_checkpoint = 0
        self._close_fds()
        segments = self._segments()
        high = self._read_high_water()
        self._ceiling = high["token"] if high is not None else 0
        parsed = self._parse_checkpoint()
        if parsed is not None and self._checkpoint_matches(parsed[1], parsed[2], parsed[0].seq):
            state, segment, offset, size = parsed
            if high is not None and high["seq"] > state.seq and not self._reaches(high):
                self._refuse_if_behind(None, high)
            self._state = state
            self._checkpoint_at = (state.seq, size)
            self._open_segment(segment, offset)
            self._mark = (state.seq, segment, offset)
            return state
        self._refuse_if_behind(parsed, high)
        if not segments:
            return state
        first = segments[0]
        if int(first[:-6]) != 1:
            raise CorruptLog(
                f"the log in {self.log_dir} starts at seq {int(first[:-6])}, not 1, and there is "
                "no checkpoint to start from",
                hint="restore the missing segments from a backup",
            )
        self._open_segment(first, 0)
        return state

    def _read_checkpoint(self, segments: list[str]) -> tuple[State, str, int, int] | None:
        """The checkpoint when it matches the log, else None."""
        parsed = self._parse_checkpoint()
        if parsed is None or parsed[1] not in segments:
            return None
        return parsed if self._checkpoint_matches(parsed[1], parsed[2], parsed[0].seq) else None

    def _parse_checkpoint(self) -> tuple[State, str, int, int] | None:
        """The checkpoint's state, segment, offset and size; None when missing or unreadable."""
        try:
            with open(self.index_path, "rb") as f:
                st = os.fstat(f.fileno())
                self._index_seen = (st.st_ino, st.st_mtime_ns)
                raw = f.read()
            if not raw.startswith(_CHECKPOINT_HEADER):
                return None
            data = marshal.loads(raw[len(_CHECKPOINT_HEADER) :])  # noqa: S302 -- see _CHECKPOINT_HEADER
            segment = data["segment"]
            offset = int(data["offset"])
            state = State.from_json(data["state"])
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return None
        return state, segment, offset, len(raw)

    def _checkpoint_matches(self, segment: str, offset: int, seq: int) -> bool:
        """Whether the log really has event *seq* ending at *offset* of *segment*."""
        path = os.path.join(self.log_dir, segment)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset == 0:
                    return int(segment[:-6]) == seq + 1
                if size < offset:
                    return False
                window = min(offset, 65536)
                f.seek(offset - window)
                chunk = f.read(window)
        except OSError:
            return False
        if not chunk.endswith(b"\n"):
            return False
        start = chunk.rfind(b"\n", 0, len(chunk) - 1) + 1
        if start == 0 and window < offset:
            return False  # a line longer than the window: let the replay decide
        try:
            return decode(chunk[start:])["seq"] == seq
        except CorruptLog:
            return False

    # How far the log reached -------------------------------------------------------------

    def _read_high_water(self) -> dict[str, Any] | None:
        """The ``high-water`` file: ``seq``, ``segment``, ``offset``, ``token``; None if absent."""
        try:
            with open(os.path.join(self.root, HIGH_WATER), "rb") as f:
                data = fastjson.loads(f.read())
            return {
                "seq": int(data["seq"]),
                "segment": str(data["segment"]),
                "offset": int(data["offset"]),
                "token": int(data["token"]),
            }
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _write_high_water(self, seq: int, segment: str, offset: int, token: int) -> None:
        """Replace ``high-water`` durably: the log must already be synced up to *offset*."""
        mark = {"seq": seq, "segment": segment, "offset": offset, "token": token}
        data = fastjson.dumps(mark).encode() + b"\n"
        platform.replace_file(
            os.path.join(self.root, HIGH_WATER), data, self.sync, sync_folder=True
        )
        self._ceiling = token

    def _reaches(self, high: dict[str, Any]) -> bool:
        """Cheaply: whether the log is at least as long as the *high* mark says it was."""
        try:
            size = os.path.getsize(os.path.join(self.log_dir, high["segment"]))
            return size >= int(high["offset"])
        except (OSError, ValueError):
            return False

    def _behind(
        self, parsed: tuple[State, str, int, int] | None, high: dict[str, Any] | None, end: int
    ) -> tuple[int, str] | None:
        """(seq reached, what says so) when the log, ending at seq *end*, ends before it."""
        marks = []
        if parsed is not None:
            marks.append((parsed[0].seq, "the checkpoint"))
        if high is not None:
            marks.append((high["seq"], HIGH_WATER))
        reached = max(marks, default=(0, ""))
        return reached if reached[0] > end else None

    def _log_end(self) -> int:
        """The seq of the last complete line of the log (0: empty)."""
        last = self.tail(1)
        return last[0]["seq"] if last else 0

    def _refuse_if_behind(
        self, parsed: tuple[State, str, int, int] | None, high: dict[str, Any] | None
    ) -> None:
        known = max(parsed[0].seq if parsed is not None else 0, high["seq"] if high else 0)
        if known == 0 or (parsed is None and high is not None and self._reaches(high)):
            return  # nothing to reach, or plainly reached: spare the read of the log's end
        end = self._log_end()
        behind = self._behind(parsed, high, end)
        if behind is None:
            return
        reached, source = behind
        self._state = None  # stay unopened: every later call is refused the same way
        raise LogBehind(
            f"the log in {self.log_dir} ends at seq {end}, but {source} shows it reached seq "
            f"{reached}: events {end + 1}-{reached} are missing (a backup restored over the "
            "log, or a truncated disk); dibs will not hand out their fencing tokens again",
            hint="put the missing log back if you have it (a newer backup of that folder); "
            "else accept the loss with `dibs doctor --repair`, which keeps the checkpoint "
            f"aside in {os.path.join(self.root, EVIDENCE)} and continues fencing tokens above "
            "every token ever granted",
            ends=end,
            reached=reached,
        )

    def _reserve_tokens(self, state: State, events: list[Event]) -> None:
        """Raise the ceiling in ``high-water`` before a token above it is logged (under the lock).

        The ceiling is what lets a repair continue above every token ever granted, even those
        a lost end of the log recorded, without a second fsync on every claim.
        """
        top = max(event.get("token", 0) for event in events)
        high = self._read_high_water()
        if high is not None and high["token"] >= top:
            self._ceiling = high["token"]  # another process reserved them already
            return
        if self._offset:
            # The mark says the log reaches this far: it must be on disk before the mark is.
            self._sync(self._read_fd)
        self._write_high_water(state.seq, self._segment, self._offset, top + TOKEN_BLOCK)

    # Catching up ------------------------------------------------------------------------

    def _scan(self, data: bytes, state: State, where: str) -> _Batch:
        """Complete transactions in *data*, checked for order; damage raises `CorruptLog`.

        Every writer replays every other writer's events, so this is the hot loop under
        contention: the whole run is parsed with one ``json.loads`` (JSON text never holds a
        raw newline, so lines joined by commas are an array). Anything unexpected falls back
        to the line-by-line scan, which names the damaged line.
        """
        last = data.rfind(b"\n")
        if last < 0:
            batch = _Batch()
            batch.leftover = len(data)
            return batch
        try:
            events = fastjson.loads(b"[" + data[:last].replace(b"\n", b",") + b"]")
        except ValueError:
            return self._scan_lines(data, state, where)
        expected = state.seq + 1
        for offset, event in enumerate(events):
            if (
                type(event) is not dict
                or event.get("schema_version") != SCHEMA_VERSION
                or event.get("seq") != expected + offset
                or not event.keys() >= _REQUIRED
            ):
                return self._scan_lines(data, state, where)
        if len(events) != data.count(b"\n", 0, last + 1):
            return self._scan_lines(data, state, where)
        batch = _Batch()
        batch.events = events
        batch.consumed = last + 1
        tail = events[-1].get("txn") if events else None
        if tail is not None and events[-1]["seq"] != tail[0] + tail[1] - 1:
            # The run ends inside a transaction: keep its first lines for later.
            keep = events[-1]["seq"] - tail[0] + 1
            del batch.events[-keep:]
            cut = last
            for _ in range(keep):
                cut = data.rfind(b"\n", 0, cut)
            batch.consumed = cut + 1
        batch.leftover = len(data) - batch.consumed
        return batch

    def _scan_lines(self, data: bytes, state: State, where: str) -> _Batch:
        """`_scan` one line at a time, to say exactly which line is damaged."""
        batch = _Batch()
        pending: list[Event] = []
        pending_end = 0
        expected = state.seq + 1
        pos = 0
        end = len(data)
        while pos < end:
            newline = data.find(b"\n", pos)
            if newline < 0:
                break  # a torn last line: no newline yet
            line = data[pos:newline]
            # A line with its newline was written whole: damage there is not a tear.
            try:
                event = decode(line, where=where)
            except CorruptLog as exc:
                exc.details["offset"] = pos
                raise
            if event["seq"] != expected:
                raise CorruptLog(
                    f"{where}: event seq {event['seq']} where {expected} was expected",
                    hint="the log has a gap or a repeat; run `dibs doctor`",
                    offset=pos,
                )
            expected += 1
            pos = newline + 1
            txn = event.get("txn")
            pending.append(event)
            pending_end = pos
            if txn is None or event["seq"] == txn[0] + txn[1] - 1:
                batch.events.extend(pending)
                batch.consumed = pending_end
                pending = []
        batch.leftover = end - batch.consumed
        return batch

    def _catch_up(self, *, locked: bool) -> State:
        """Apply what others appended since we last looked; under the lock, mend a torn tail."""
        state = self._state if self._state is not None else self._load()
        while True:
            if not self._segment:
                segments = self._segments()
                if not segments:
                    return state
                self._open_segment(segments[0], 0)
            st = os.fstat(self._read_fd)
            size = st.st_size
            if size < self._offset:
                # The log shrank under us (a failed append was rolled back): start afresh.
                state = self._load()
                continue
            if size > self._offset:
                data = os.pread(self._read_fd, size - self._offset, self._offset)
                where = os.path.join(self.log_dir, self._segment)
                try:
                    batch = self._scan(data, state, where)
                except CorruptLog as exc:
                    exc.message = self._with_line_number(exc, where)
                    raise
                for event in batch.events:
                    apply(state, event)
                self._offset += batch.consumed
                self._since_checkpoint += batch.consumed
                self._mark = (state.seq, self._segment, self._offset)
                if batch.leftover:
                    if locked:
                        self._truncate_torn_tail(batch.leftover)
                    return state
            # A full segment is sealed (write bits cleared, synced) before the next one is
            # created, so a rollover shows in the fstat we made anyway; a segment past the
            # size limit is checked too, in case a file system dropped the mode change.
            self._sealed = not st.st_mode & 0o222
            if not self._sealed and size < self.segment_bytes:
                return state
            following = _segment_name(state.seq + 1)
            if following == self._segment or not os.path.exists(
                os.path.join(self.log_dir, following)
            ):
                return state
            self._open_segment(following, 0)

    def _with_line_number(self, exc: CorruptLog, where: str) -> str:
        offset = self._offset + int(exc.details.get("offset", 0))
        try:
            with open(where, "rb") as f:
                line = f.read(offset).count(b"\n") + 1
        except OSError:
            return exc.message
        exc.details["file"] = where
        exc.details["line"] = line
        return exc.message.replace(where + ":", f"{where} line {line}:", 1)

    def _truncate_torn_tail(self, leftover: int) -> None:
        path = os.path.join(self.log_dir, self._segment)
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, self._offset)
            platform.sync_file(fd, self.sync)
        finally:
            os.close(fd)
        self.repairs.append(
            f"removed a torn tail of {leftover} bytes from {path} (an interrupted write that "
            "was never acknowledged)"
        )

    # Writing ----------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Append *data* under the lock; on failure cut the log back and raise."""
        if self._append_fd < 0:
            self._append_fd = os.open(
                os.path.join(self.log_dir, self._segment),
                os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC,
            )
        written = 0
        step = self.write_chunk or len(data)
        try:
            while written < len(data):
                written += os.write(self._append_fd, data[written : written + step])
        except OSError as exc:
            self._roll_back()
            raise StoreIOError(
                f"could not write the log {self._segment}: {exc.strerror}; nothing was done",
                hint="free disk space or fix the disk, then retry; `dibs doctor` checks the log",
            ) from exc

    def _roll_back(self) -> None:
        """After a failed write, cut the log back to where it was (we still hold the lock)."""
        try:
            os.ftruncate(self._append_fd, self._offset)
            platform.sync_file(self._append_fd, self.sync)
        except OSError:
            # Cannot even cut it back: forget our position; the next writer repairs the tail.
            pass
        self._state = None
        self._close_fds()

    def _sync(self, fd: int) -> None:
        """Make what we appended durable; raise if the disk refused."""
        try:
            platform.sync_data(fd, self.sync)
        except OSError as exc:
            # Others may have appended after us, so the bytes cannot be cut back: the
            # operation is not acknowledged, and the log decides whether it happened.
            self._state = None
            self._close_fds()
            raise StoreIOError(
                f"could not sync the log {self._segment}: {exc.strerror}; the operation was "
                "not acknowledged (it may or may not be recorded)",
                hint="fix the disk; then `dibs doctor` checks the log and `dibs status` shows "
                "what is held",
            ) from exc

    def _roll_over_if_full(self, state: State) -> None:
        if self._segment and self._offset < self.segment_bytes and not self._sealed:
            return
        if self._segment and not self._sealed:
            # Seal durably first: readers only look for a next segment past a seal.
            fd = os.open(os.path.join(self.log_dir, self._segment), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o444)
                platform.sync_file(fd, self.sync)
            finally:
                os.close(fd)
            high = self._read_high_water()
            token = max(self._ceiling, high["token"] if high is not None else 0)
            self._write_high_water(state.seq, self._segment, self._offset, token)
        name = _segment_name(state.seq + 1)
        path = os.path.join(self.log_dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.close(fd)
        platform.sync_dir(self.log_dir)
        self._open_segment(name, 0)

    def transact(
        self,
        decide: DecideFn,
        *,
        footprint: Sequence[str] | None = None,  # noqa: ARG002 -- decided on a current state
    ) -> Decision:
        """Decide and append atomically (see `dibs.store.base.Store.transact`)."""
        with self._tlock:
            self.create()
            sync_fd = -1
            # Absorb what others appended before taking the lock, so the lock is held only
            # for the few events that arrive meanwhile: with many writers on few cores, a
            # holder parsing everyone's events is descheduled while it holds the lock.
            self._catch_up(locked=False)
            platform.lock(self._lock_fd)
            try:
                state = self._catch_up(locked=True)
                self._refuse_if_moved()
                decision = decide(state, self.clock())
                if decision.events:
                    data = b"".join(encode(e) for e in seal(decision.events, state.seq))
                    try:
                        self._roll_over_if_full(state)
                    except OSError as exc:
                        raise StoreIOError(
                            f"could not start a new log segment: {exc.strerror}",
                            hint="free disk space, then retry",
                        ) from exc
                    if state.last_token + len(decision.events) > self._ceiling:
                        try:
                            self._reserve_tokens(state, decision.events)
                        except OSError as exc:
                            raise StoreIOError(
                                f"could not reserve fencing tokens in {HIGH_WATER}: "
                                f"{exc.strerror}; nothing was done",
                                hint="free disk space, then retry",
                            ) from exc
                    self._write(data)
                    self._offset += len(data)
                    self._since_checkpoint += len(data)
                    sync_fd = self._append_fd
            finally:
                platform.unlock(self._lock_fd)
            if sync_fd >= 0:
                # Only this process reads its copy of the state: apply outside the lock.
                for event in decision.events:
                    apply(state, event)
                self._mark = (state.seq, self._segment, self._offset)
                # Group commit: sync after letting go of the lock, so that concurrent
                # writers' syncs overlap instead of queueing. Safe because the log is one
                # append-only file: anyone's fdatasync also persists every byte before
                # theirs, so whoever acts on our event before we sync makes it durable
                # with their own sync. We acknowledge only after our own sync returns.
                self._sync(sync_fd)
            self._maybe_checkpoint()
            return decision

    def lock(self) -> None:
        """Take the writers' lock: every writer waits until `unlock` (`dibs store migrate`)."""
        self.create()
        platform.lock(self._lock_fd)

    def unlock(self) -> None:
        """Let writers go on after `lock`."""
        platform.unlock(self._lock_fd)

    def _refuse_if_moved(self) -> None:
        """After `dibs store migrate` this store is a read-only backup: writing here would split
        the agents between two stores."""
        try:
            with open(os.path.join(self.root, MOVED), encoding="utf-8") as f:
                target = fastjson.loads(f.read()).get("to", "another store")
        except FileNotFoundError:
            return
        except (OSError, ValueError, AttributeError):
            target = "another store"
        raise StoreUnavailable(
            f"this local store ({self.root}) was moved to {target} by `dibs store migrate`; it "
            "is kept as a read-only backup",
            hint="use the new store (store.url in dibs.toml, or DIBS_STORE); restart agents that "
            "were started before the move",
        )

    def _maybe_checkpoint(self) -> None:
        if self._since_checkpoint < max(self.checkpoint_bytes, self._checkpoint_at[1]):
            return
        try:
            st = os.stat(self.index_path)
            seen = (st.st_ino, st.st_mtime_ns)
        except OSError:
            seen = (0, 0)
        if seen not in (self._index_seen, (0, 0)):
            # Another process wrote a checkpoint since we last looked: every writer reads
            # the whole log, so without this they would all checkpoint at the same moments.
            self._index_seen = seen
            self._since_checkpoint = 0
            return
        try:
            self.write_checkpoint()
        except OSError:
            # The checkpoint is a cache: failing to write one costs speed, never data.
            self._since_checkpoint = 0

    def write_checkpoint(self) -> None:
        """Write the current state as the checkpoint (temp file, fsync, atomic rename)."""
        state = self._state
        if state is None or not self._segment:
            return
        payload = {"segment": self._segment, "offset": self._offset, "state": state.to_checkpoint()}
        data = _CHECKPOINT_HEADER + marshal.dumps(payload, 4)
        # A log found shorter than its checkpoint is refused: never let the checkpoint reach
        # past what is on disk (others' events may still await their writers' sync).
        platform.sync_data(self._read_fd, self.sync)
        platform.replace_file(self.index_path, data, self.sync)
        self._checkpoint_at = (state.seq, len(data))
        self._since_checkpoint = 0
        st = os.stat(self.index_path)
        self._index_seen = (st.st_ino, st.st_mtime_ns)

    # Reading ----------------------------------------------------------------------------

    def read(self) -> tuple[State, Now]:
        """Catch up without the lock and return the state (do not change it) and the time."""
        with self._tlock:
            try:
                state = self._catch_up(locked=False)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot read the store in {self.root}: {exc.strerror}",
                    hint="check the permissions of the repository's .git folder",
                ) from exc
            return state, self.clock()

    @property
    def seq(self) -> int:
        """The last seq this process has seen."""
        return self._state.seq if self._state is not None else 0

    def events(self, since: int = 0) -> Iterator[Event]:
        """Events after *since*, oldest first (complete transactions only).

        Starts from the nearest known position (where this process last caught up, or
        where the previous call ended) instead of rescanning a segment from its start, so
        polling for new events (``dibs log --follow``) costs only the new bytes.
        """
        segments = self._segments()
        start, offset, expected = 0, 0, State()
        known = [p for p in (self._mark, self._events_end) if p[1] in segments and p[0] <= since]
        if known:
            seq, segment, offset = max(known)
            start, expected.seq = segments.index(segment), seq
        else:
            for index, name in enumerate(segments):
                if int(name[:-6]) <= since + 1:
                    start = index
            if segments:
                expected.seq = int(segments[start][:-6]) - 1
        for name in segments[start:]:
            if int(name[:-6]) != expected.seq + 1 and offset == 0:
                return  # an incomplete transaction ends the previous segment: stop there
            yield from self._segment_events(name, offset, expected, since)
            offset = 0

    def _segment_events(
        self, name: str, offset: int, expected: State, since: int
    ) -> Iterator[Event]:
        """The complete transactions of segment *name* from byte *offset*, after *since*.

        A transaction longer than one read is scanned again only once the buffer has doubled,
        so reading it costs linear time, not quadratic.
        """
        path = os.path.join(self.log_dir, name)
        with open(path, "rb") as f:
            f.seek(offset)
            rest = b""
            scanned = 0  # bytes of `rest` already scanned in vain (inside one transaction)
            while True:
                chunk = f.read(_READ_CHUNK)
                if chunk and len(rest) + len(chunk) < 2 * scanned:
                    rest += chunk
                    continue
                if not chunk and (not rest or len(rest) == scanned):
                    return
                data = rest + chunk
                batch = self._scan(data, expected, path)
                for event in batch.events:
                    expected.seq = event["seq"]
                    if event["seq"] > since:
                        yield event
                offset += batch.consumed
                rest = data[batch.consumed :]
                scanned = len(rest) if batch.consumed == 0 else 0
                self._events_end = (expected.seq, name, offset)
                if not chunk:
                    return

    def tail(self, count: int) -> list[Event]:
        """The last *count* events, read backwards from the end of the log."""
        if count <= 0:
            return []
        found: list[Event] = []
        for name in reversed(self._segments()):
            path = os.path.join(self.log_dir, name)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                window = 0
                lines: list[bytes] = []
                while True:
                    window = min(size, max(window * 2, 65536))
                    f.seek(size - window)
                    data = f.read(window)
                    if not data.endswith(b"\n"):
                        data = data[: data.rfind(b"\n") + 1]
                    lines = data.split(b"\n")[:-1]
                    if window < size:
                        lines = lines[1:]  # the first may be cut
                    if len(lines) >= count - len(found) or window >= size:
                        break
            lines = [line for line in lines if line.strip()][-(count - len(found)) :]
            found = [decode(line, where=path) for line in lines] + found
            if len(found) >= count:
                break
        return found[-count:]

    # Checking ---------------------------------------------------------------------------

    def check(self, *, repair: bool = False) -> list[Finding]:
        """Verify every line, repair a torn tail, and compare the checkpoint with a replay."""
        findings: list[Finding] = []
        with self._tlock:
            self.create()
            platform.lock(self._lock_fd)
            try:
                try:
                    rebuilt, torn = self._replay_all()
                except CorruptLog as exc:
                    return [
                        {
                            "kind": "corrupt-log",
                            "message": exc.message,
                            "repair": "restore that segment from a backup, or fix the line "
                            "by hand: dropping it would lose a record",
                            "repaired": False,
                            "repairable": False,
                        }
                    ]
                if torn:
                    segment, offset, leftover = torn
                    findings.append(
                        {
                            "kind": "torn-tail",
                            "message": f"{leftover} bytes of an interrupted write at the end of "
                            f"{segment} (never acknowledged)",
                            "repair": "truncate the log to its last complete transaction",
                            "repaired": repair,
                        }
                    )
                    if repair:
                        fd = os.open(segment, os.O_WRONLY | os.O_CLOEXEC)
                        try:
                            os.ftruncate(fd, offset)
                            platform.sync_file(fd, self.sync)
                        finally:
                            os.close(fd)
                behind = self._check_behind(rebuilt, repair=repair)
                if behind is not None:
                    findings.append(behind)
                else:
                    findings.extend(self._check_checkpoint(rebuilt, repair=repair))
            finally:
                platform.unlock(self._lock_fd)
        return findings

    def _replay_all(self) -> tuple[State, tuple[str, int, int] | None]:
        """Replay every segment from seq 1; return the state and any torn tail found."""
        state = State()
        segments = self._segments()
        torn: tuple[str, int, int] | None = None
        for index, name in enumerate(segments):
            path = os.path.join(self.log_dir, name)
            if int(name[:-6]) != state.seq + 1:
                raise CorruptLog(
                    f"segment {path} starts at seq {int(name[:-6])} but the log before it ends "
                    f"at {state.seq}",
                    hint="a segment is missing; restore it from a backup",
                )
            with open(path, "rb") as f:
                data = f.read()
            try:
                batch = self._scan(data, state, path)
            except CorruptLog as exc:
                line = data[: int(exc.details.get("offset", 0))].count(b"\n") + 1
                exc.message = exc.message.replace(path + ":", f"{path} line {line}:", 1)
                exc.details.update(file=path, line=line)
                raise
            for event in batch.events:
                apply(state, event)
            if batch.leftover:
                if index != len(segments) - 1:
                    raise CorruptLog(
                        f"{path}: {batch.leftover} bytes of an incomplete write in the middle "
                        "of the log",
                        hint="restore the log from a backup",
                    )
                torn = (path, batch.consumed, batch.leftover)
        return state, torn

    def _check_checkpoint(self, rebuilt: State, *, repair: bool) -> list[Finding]:
        findings: list[Finding] = []
        segments = self._segments()
        checkpoint = self._read_checkpoint(segments) if segments else None
        if checkpoint is None and os.path.exists(self.index_path):
            findings.append(
                {
                    "kind": "checkpoint-invalid",
                    "message": "the checkpoint does not match the log",
                    "repair": "rewrite the checkpoint from a full replay of the log",
                    "repaired": repair,
                }
            )
        elif checkpoint is None and self._log_bytes() >= self.checkpoint_bytes:
            findings.append(
                {
                    "kind": "no-checkpoint",
                    "message": "there is no checkpoint: opening replays the whole log",
                    "repair": "write a checkpoint from a replay of the log",
                    "repaired": repair,
                }
            )
        elif checkpoint is not None:
            state, segment, offset, size = checkpoint
            self._state = state
            self._checkpoint_at = (state.seq, size)
            self._open_segment(segment, offset)
            self._catch_up(locked=False)
            # With the derived indexes: openers trust the checkpoint's, and an index that lost
            # a path claim lets them grant an overlapping one.
            if state.to_checkpoint() != rebuilt.to_checkpoint():
                findings.append(
                    {
                        "kind": "checkpoint-differs",
                        "message": "the checkpoint plus the log after it differs from a full "
                        "replay of the log",
                        "repair": "rewrite the checkpoint from a full replay of the log",
                        "repaired": repair,
                    }
                )
        if repair and (findings or checkpoint is None):
            self._load_replayed(rebuilt)
            self.write_checkpoint()
        else:
            self._state = None  # reload on next use: we moved our position around
        return findings

    def _check_behind(self, rebuilt: State, *, repair: bool) -> Finding | None:
        """A finding when the log ends before the checkpoint or high-water; repair accepts it.

        The repair (under the lock) keeps the evidence: the checkpoint and high-water are
        hard-linked into ``evidence/`` before anything replaces them. Then it logs a
        ``log-repair`` event whose token is the reserved ceiling (or, with no high-water,
        a block above every token the checkpoint and the log know), so no token is granted
        twice, and writes a new checkpoint and high-water at the log's new end.
        """
        parsed = self._parse_checkpoint()
        high = self._read_high_water()
        behind = self._behind(parsed, high, rebuilt.seq)
        if behind is None:
            return None
        reached, source = behind
        known = max(rebuilt.last_token, parsed[0].last_token if parsed is not None else 0)
        floor = max(known, high["token"] if high is not None else known + TOKEN_BLOCK)
        finding: Finding = {
            "kind": "log-behind",
            "message": f"the log ends at seq {rebuilt.seq} but {source} shows it reached seq "
            f"{reached}: events {rebuilt.seq + 1}-{reached} are missing (a restored backup or "
            "a truncated disk); the store refuses to open",
            "repair": f"keep the checkpoint and {HIGH_WATER} in {self.root}/{EVIDENCE}/, accept "
            f"the log as it is, and continue fencing tokens above {floor} (put the missing "
            "log back instead, if a backup has it)",
            "repaired": repair,
        }
        if repair:
            evidence = self._keep_evidence(rebuilt.seq, reached)
            self._load_replayed(rebuilt)
            event = new_event(
                "log-repair",
                self.clock(),
                token=floor,
                details={"ended": rebuilt.seq, "reached": reached, "evidence": evidence},
            )
            data = b"".join(encode(e) for e in seal([event], rebuilt.seq))
            self._roll_over_if_full(rebuilt)
            self._write(data)
            self._offset += len(data)
            self._sync(self._append_fd)
            apply(rebuilt, event)
            self._write_high_water(rebuilt.seq, self._segment, self._offset, floor)
            self.write_checkpoint()
            finding["message"] += f"; kept the evidence in {evidence}"
        return finding

    def _keep_evidence(self, ended: int, reached: int) -> str:
        """Hard-link the checkpoint and high-water into a new ``evidence/`` folder; its path."""
        stamp = self.clock().iso().replace(":", "").replace("-", "")
        folder = os.path.join(self.root, EVIDENCE, f"{stamp}-log-ended-{ended}-reached-{reached}")
        _make_dir(folder)
        for name in ("checkpoint", HIGH_WATER):
            source, kept = os.path.join(self.root, name), os.path.join(folder, name)
            try:
                os.link(source, kept)
            except FileNotFoundError:
                continue
            except OSError:
                import shutil  # a file system without hard links: a copy keeps the same bytes

                shutil.copy2(source, kept)
        platform.sync_dir(folder)
        return folder

    def _log_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.log_dir, n)) for n in self._segments())

    def _load_replayed(self, state: State) -> None:
        segments = self._segments()
        self._state = state
        if segments:
            last = segments[-1]
            self._open_segment(last, os.path.getsize(os.path.join(self.log_dir, last)))
            self._sealed = not os.fstat(self._read_fd).st_mode & 0o222

    def close(self) -> None:
        """Close the files this store holds open."""
        with self._tlock:
            self._close_fds()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
