"""The checks an entry must pass to land, beyond its command gates.

Before testing (`_precheck`): the entry's fence and its manual gates. Just before the
compare-and-swap, on one read of the claims (`_last_gate`): the fence again, the claims of
others on what the entry changes, and the target's checkout. Claims are checked last, not when
queued: a claim taken while the gates ran counts, and a commit made with ``--no-verify`` (or by
a script, or by an agent without hooks) is caught here, where the work would otherwise land.
"""

from __future__ import annotations

from dibs.core.leases import eviction_reason
from dibs.integrations.queue.conflicts import _meeting
from dibs.integrations.queue.entries import GATES
from dibs.integrations.queue.target import _Base, _Failed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State


class _Checks(_Base):
    """The fence, manual gates, claims and checkout checks of a processor."""

    required: list[str]
    commands: dict[str, str]

    def _precheck(self, item: dict[str, Any]) -> None:
        self._check_fence(item)
        recorded = self.coord.read()[0].tables.get(GATES, {}).get(item["issue"], {})
        for gate in self.required:
            if gate in self.commands:
                continue
            result = recorded.get(gate)
            if result is None or result["result"] != "pass":
                said = "failed" if result else "not passed"
                raise _Failed(
                    f"gate {gate} has {said} for issue {item['issue']}",
                    gate=gate,
                    hint=f"dibs gate pass {item['issue']} {gate}, then land again",
                )
            if result["commit"] != item["head"]:
                raise _Failed(
                    f"gate {gate} passed on {result['commit'][:12]}, but the branch was "
                    f"queued at {item['head'][:12]}",
                    gate=gate,
                    hint=f"pass {gate} on the new commits, then land again",
                )

    def _last_gate(self, item: dict[str, Any], base: str, commit: str) -> None:
        """The checks made just before the compare-and-swap, on one read of the claims.

        The entry's fence, then the claims of others on what it changes, then the target's
        checkout. Claims are checked last, not when queued: a claim taken while the gates ran
        counts, and a commit made with ``--no-verify`` (or by a script, or by an agent without
        hooks) is caught here, where the work would otherwise land.
        """
        from dibs.integrations.guard import diff_changes

        checkout = "" if self.remote else self._checkout()  # with a remote it follows if it can
        uncommitted = self._uncommitted(checkout) if checkout and base != commit else set()
        state, now = self.coord.read()
        ctx = self.coord.context(now)
        self._check_fence(item, state, ctx)
        # Reading the diff costs a git run per landing: skipped when nothing could refuse it.
        if uncommitted or any(text.startswith("path:") for text in state.claims):
            files = diff_changes(self.repo.root, base, commit, lines=False)
            self._check_claims(item, state, ctx, files=files, diff=(base, commit))
            self._check_checkout(checkout, set(files), uncommitted)

    def _check_claims(
        self,
        item: dict[str, Any],
        state: State,
        ctx: Context,
        *,
        files: dict[str, list[tuple[int, int]] | None],
        diff: tuple[str, str],
    ) -> None:
        """Refuse a diff that changes a path, or lines, another agent holds exclusively.

        The author's own claims and shared claims never stand in the way (`guard.blockers`).
        *files* (what *diff*, ``(base, commit)``, changes) are whole files; the changed lines
        are read only when a line-range claim covers one of them.
        """
        from dibs.integrations.guard import blockers, diff_changes

        found = [
            block
            for path, spans in sorted(files.items())
            for block in blockers(state, ctx, path, agent=item["agent"], lines=spans)
        ]
        if any(block.lines is not None for block in found):
            changes = diff_changes(self.repo.root, *diff)
            found = [
                block
                for path, spans in sorted(changes.items())
                for block in blockers(state, ctx, path, agent=item["agent"], lines=spans)
            ]
        if not found:
            return
        said = "; ".join(block.describe() for block in found[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        holders = ", ".join(sorted({block.lease["agent"] for block in found}))
        raise _Failed(
            f"refused: the branch changes what another agent holds: {said}{more}",
            files=sorted({block.path for block in found}),
            held=[block.to_json() for block in found],
            hint=f"leave those changes out, or settle them with {holders} "
            f"(or wait until they are released), then land again",
        )

    def _check_checkout(self, checkout: str, paths: set[str], uncommitted: set[str]) -> None:
        """Refuse to land *paths* over *uncommitted* work in *checkout* (the target's)."""
        busy = sorted(_meeting(paths, uncommitted))
        if busy:
            raise _Failed(
                f"refused: {checkout} has {self.target} checked out with uncommitted changes "
                f"to {', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''}, which the "
                "landing changes",
                files=busy,
                checkout=checkout,
                hint=f"commit, stash or discard those changes in {checkout}, then land again",
            )

    def _check_fence(
        self, item: dict[str, Any], state: State | None = None, ctx: Context | None = None
    ) -> None:
        if state is None or ctx is None:
            state, now = self.coord.read()
            ctx = self.coord.context(now)
        lease = state.claims.get("issue:" + item["issue"], {}).get(item["agent"])
        if lease is None or lease["token"] != item["token"] or eviction_reason(state, lease, ctx):
            now_held = [
                f"{name} (token {other['token']})"
                for name, other in state.claims.get("issue:" + item["issue"], {}).items()
            ]
            raise _Failed(
                f"lease lost: token {item['token']} of {item['agent']} on issue:{item['issue']} "
                "is no longer current"
                + (f"; now held by {', '.join(now_held)}" if now_held else ""),
                lease_lost=True,
            )

    # Git --------------------------------------------------------------------------------
