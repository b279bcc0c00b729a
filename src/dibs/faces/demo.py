"""``dibs demo``: agents racing for issues on a throw-away repository.

Several real processes register as agents (each watching its own pid), race to claim the same
issues, work on the ones they win and release them. One is killed with SIGKILL while it holds
an issue: the next agent to meet that claim finds the holder dead and evicts it at once,
without waiting for the ttl, and the issue still gets done exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ISSUE_PREFIX = "DEMO-"


def _git(cwd: str, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repo(parent: str) -> str:
    """A fresh git repository with one commit, inside *parent*."""
    repo = os.path.join(parent, "repo")
    os.makedirs(repo)
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "demo@dibs.invalid")
    _git(repo, "config", "user.name", "dibs demo")
    with open(os.path.join(repo, "README.md"), "w", encoding="utf-8") as f:
        f.write("# a throw-away repository for the dibs demo\n")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-q", "-m", "initial commit")
    return repo


def agent_main(repo: str, name: str, issues: int, work: float, hold_forever: bool) -> None:
    """One demo agent: claim free issues, do each once, release, until all are done.

    With *hold_forever*, the agent stops after its first claim (and waits to be killed).
    """
    from dibs.ground.errors import Conflict
    from dibs.service import Coordinator

    done_dir = os.path.join(repo, ".git", "demo-done")
    say = _printer(name)
    refused: set[str] = set()
    with Coordinator.open(repo) as coord:
        coord.register(name, pid=os.getpid(), ttl=30)
        say(f"registered (watching pid {os.getpid()})")
        while True:
            names = [f"issue:{ISSUE_PREFIX}{n}" for n in range(1, issues + 1)]
            remaining = [i for i in names if not os.path.exists(os.path.join(done_dir, i))]
            if not remaining:
                break
            progressed = False
            for issue in remaining:
                try:
                    [claim] = coord.claim([issue], note="demo work")
                except Conflict as exc:
                    if issue not in refused:
                        refused.add(issue)
                        say(f"refused {issue}: held by {exc.details['holders'][0]['agent']}")
                    continue
                marker = os.path.join(done_dir, issue)
                if os.path.exists(marker):  # finished by another between our look and our claim
                    coord.release([issue])
                    continue
                say(f"claimed {issue} (fencing token {claim['token']})")
                if hold_forever:
                    say(f"working on {issue} ... (about to be killed)")
                    time.sleep(3600)
                time.sleep(work)
                with open(marker, "x", encoding="utf-8") as f:
                    f.write(name)
                coord.release([issue])
                say(f"finished and released {issue}")
                progressed = True
            if not progressed:
                time.sleep(0.2)
        coord.unregister()
    say("all issues done: unregistered")


def worktree_agent_main(repo: str, name: str, issue: str, hold_forever: bool) -> None:
    """Act two: start an issue in its own worktree, commit, land on main, finish."""
    from dibs.integrations import queue, worktrees
    from dibs.service import Coordinator

    say = _printer(name)
    with Coordinator.open(repo) as coord:
        coord.register(name, pid=os.getpid(), ttl=30)
        started = worktrees.start(coord, issue, agent=name)
        path = started["path"]
        say(f"dibs start {issue}: {os.path.relpath(path, repo)} on {started['branch']}")
        with open(os.path.join(path, f"{issue}.txt"), "w", encoding="utf-8") as f:
            f.write(f"{issue}, done by {name}\n")
        _git(path, "add", f"{issue}.txt")
        _git(path, "commit", "-q", "-m", f"{issue}: the work")
        say("committed in its worktree")
        if hold_forever:
            say("... (about to be killed)")
            time.sleep(3600)
        time.sleep(1.0)  # the work takes a moment: long enough to show in `dibs status`
        landed = queue.land(coord, started["branch"])
        say(f"dibs land: {landed['state']} on main at {landed['commit'][:12]}")
        done = worktrees.finish(coord, issue)
        say(f"dibs finish: released {len(done['released'])} claims, worktree removed")
        coord.unregister()


def _printer(name: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        sys.stdout.write(f"  [{name:>8}] {text}\n")
        sys.stdout.flush()

    return say


def _spawn(repo: str, name: str, issues: int, work: float, hold: bool) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from dibs.faces.demo import agent_main; "
        f"agent_main({repo!r}, {name!r}, {issues}, {work}, {hold})"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def _dibs(repo: str, *args: str) -> str:
    """Run the dibs CLI in *repo*, as a user would."""
    out = subprocess.run(
        [sys.executable, "-m", "dibs", *args, "-C", repo],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout


def run(
    *, agents: int = 4, issues: int = 8, work: float = 0.4, keep: bool = False
) -> dict[str, Any]:
    """Run the demo; print the story and return what the log says happened."""
    from dibs.integrations.setup import init
    from dibs.service import Coordinator

    parent = tempfile.mkdtemp(prefix="dibs-demo-")
    repo = make_repo(parent)
    os.makedirs(os.path.join(repo, ".git", "demo-done"))
    init(repo)
    print(f"A throw-away repository: {repo}")
    print(f"{agents} agents race for {issues} issues; agent-3 will be killed with SIGKILL.\n")

    victim = _spawn(repo, "agent-3", issues, work, hold=True)
    time.sleep(0.8)  # let the victim win an issue first
    procs = [victim] + [
        _spawn(repo, f"agent-{n}", issues, work, hold=False) for n in range(1, agents + 1) if n != 3
    ]
    time.sleep(work)
    print("\n$ dibs status")
    print(_indent(_dibs(repo, "status")))
    print(f"$ kill -9 {victim.pid}   # agent-3 dies holding its issue\n")
    victim.kill()
    victim.wait()
    for proc in procs[1:]:
        proc.wait()

    print("\n$ dibs status")
    print(_indent(_dibs(repo, "status")))
    with Coordinator.open(repo) as coord:
        events = coord.log()
    acquired = [e for e in events if e["op"] == "acquire"]
    evictions = [e for e in events if e["op"] == "auto-evict"]
    done_dir = os.path.join(repo, ".git", "demo-done")
    done = {}
    for name in os.listdir(done_dir):
        with open(os.path.join(done_dir, name), encoding="utf-8") as f:
            done[name] = f.read()
    tokens = [e["token"] for e in acquired]
    print("What the log says:")
    print(
        f"  {len(events)} events; {len(acquired)} claims granted with fencing tokens "
        f"{tokens[0]}..{tokens[-1]}, none repeated"
    )
    for e in evictions:
        print(f"  {e['resource']} evicted from {e['agent']}: {e['reason']} (no wait for its ttl)")
    print(f"  {len(done)} of {issues} issues done, each by exactly one agent:")
    for issue in sorted(done, key=lambda s: int(s.rsplit("-", 1)[1])):
        print(f"    {issue:<16} {done[issue]}")
    print("\n$ dibs doctor")
    print(_indent(_dibs(repo, "doctor")))
    landed = _act_two(repo)
    if not keep:
        import shutil

        shutil.rmtree(parent, ignore_errors=True)
    else:
        print(f"kept {repo}")
    return {
        "events": len(events),
        "done": done,
        "evictions": [
            {"resource": e["resource"], "agent": e["agent"], "reason": e["reason"]}
            for e in evictions
        ],
        "tokens": tokens,
        "landed": landed,
    }


def _act_two(repo: str) -> list[str]:
    """Three agents, each in its own worktree; one is killed mid-work, two land and finish."""
    print("Act two: three agents each `dibs start` an issue in a worktree of its own;")
    print("wt-2 is killed mid-work, the others land on main and `dibs finish`.\n")
    code = (
        "from dibs.faces.demo import worktree_agent_main; worktree_agent_main({!r}, {!r}, {!r}, {})"
    )
    victim = subprocess.Popen(
        [sys.executable, "-c", code.format(repo, "wt-2", "WT-2", True)],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in victim.stdout or ():  # wait until it has started and committed
        sys.stdout.write(line)
        if "about to be killed" in line:
            break
    others = [
        subprocess.Popen([sys.executable, "-c", code.format(repo, f"wt-{n}", f"WT-{n}", False)])
        for n in (1, 3)
    ]
    time.sleep(0.5)
    print("\n$ dibs status")
    print(_indent(_dibs(repo, "status")))
    print(f"$ kill -9 {victim.pid}   # wt-2 dies in its worktree\n")
    victim.kill()
    victim.communicate()
    for proc in others:
        proc.wait()
    print("\n$ dibs worktrees   # wt-2's work is still there, its agent dead")
    print(_indent(_dibs(repo, "worktrees")))
    print("$ dibs doctor --repair")
    print(_indent(_dibs(repo, "doctor", "--repair")))
    print("$ git log --oneline main")
    log = subprocess.run(
        ["git", "log", "--oneline", "main"], cwd=repo, capture_output=True, text=True, check=False
    )
    print(_indent(log.stdout))
    return [line.split(" ", 1)[1] for line in log.stdout.splitlines()]


def _indent(text: str) -> str:
    return "".join("  " + line + "\n" for line in text.splitlines())


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run()))
