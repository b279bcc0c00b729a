"""The swarm trial: agent processes over the installed CLI take every task of a task graph,
some killed with SIGKILL at random moments (one inside `dibs land`) and replaced by agents
that steal.

    python bench/swarm.py [--agents 12] [--tasks 40] [--kills 3] [--pauses 1] [--seed S]
                          [--postgres [ADMIN_URL]]

With ``--postgres`` the repository's store is a throw-away database on that server (default
DIBS_TEST_PG's, else postgresql://postgres@127.0.0.1:5432/postgres), created for the trial and
dropped after it: the same trial, every CLI call through the PostgreSQL store (and its helper).

Each agent registers watching its own process, heartbeats from a thread, and loops: `dibs
next --start --wait 5` (replacements add `--steal`) -> write the task's file and append its
id to one of a few shared files -> commit -> `dibs land` (on a conflict: redo the commit on the new
main and land again) -> `dibs finish`. Tasks have priorities, dependency chains and
`conflicts_with` pairs. The gate (`check.py`, committed on main) checks something real: no
conflict markers, every task on main at most once in the shared files, every landed task's
dependencies landed before it.

A killed agent's process group dies with it (its `dibs land` too, processor or not); a
paused one (SIGSTOP, never resumed) goes stale, so its replacement must steal its task. The
trial then asserts, from the log and from git:

* every task landed exactly once (one ``land-done`` each), and its file is on main;
* no task was handed out (``acquire`` of ``issue:<id>``) after it landed;
* main is green at every commit (the gate, run again on each);
* no overlapping holds and only growing tokens (tests/faults/history.py);
* nothing left behind after `dibs doctor --repair` (no worktree but main, no agent branch,
  no claim, doctor healthy);
* no killed agent's unlanded work lost: what it committed is what landed for its task.

Figures: tasks per minute, land calls and retries, conflicts redone, steals, takeovers.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
ROOT = Path(__file__).resolve().parent.parent
#: The gate, committed on main as check.py: exit 1 with the reason when main would be broken.
CHECK = """\
import pathlib, re, subprocess, sys, tomllib
root = pathlib.Path(".")
tasks = {t["id"]: t for t in tomllib.loads((root / "tasks.toml").read_text())["task"]}
done = {p.name: p.read_text() for p in (root / "done").glob("T*")}
seen = []
for path in sorted((root / "shared").glob("*.txt")):
    text = path.read_text()
    if "<<<<<<<" in text or ">>>>>>>" in text:
        sys.exit(f"conflict markers in {path}")
    seen += [line for line in text.splitlines() if line]
twice = sorted({x for x in seen if seen.count(x) > 1})
if twice:
    sys.exit(f"landed twice: {twice}")
for task_id, text in done.items():
    if not re.fullmatch(task_id + r" by [a-z0-9-]+ [0-9a-f]{8}\\n", text):
        sys.exit(f"done/{task_id} is malformed: {text!r}")
    if task_id not in seen:
        sys.exit(f"done/{task_id} without its line in shared/")
    missing = [d for d in tasks[task_id].get("depends_on", []) if d not in done]
    if missing:
        sys.exit(f"{task_id} landed before its dependencies {missing}")
if set(seen) - set(done):
    sys.exit(f"shared lines without a done file: {sorted(set(seen) - set(done))}")
before = subprocess.run(
    ["git", "ls-tree", "--name-only", "HEAD^", "done/"], capture_output=True, text=True
)
if before.returncode == 0:
    dropped = {p.rsplit("/", 1)[-1] for p in before.stdout.split()} - set(done) - {".keep"}
    if dropped:
        sys.exit(f"drops landed tasks {sorted(dropped)}")
"""
#: Phases an agent can be struck in ("done": it is leaving).
BUSY = ("next", "work", "land", "redo", "finish")
DONE_LINE = re.compile(r"[A-Z0-9-]+ by [a-z0-9-]+ [0-9a-f]{8}\n")


def git(cwd: Path | str, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env=None if env is None else {**os.environ, **env},
    )
    return out.stdout


def dibs(
    cwd: Path | str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dibs"), *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


# The task graph --------------------------------------------------------------------------


def task_graph(rng: random.Random, count: int, shared: int) -> list[dict[str, Any]]:
    """*count* tasks: priorities 0-3, chains of dependencies, some conflicting pairs, each
    appending to one of *shared* files (so concurrent landings conflict)."""
    tasks: list[dict[str, Any]] = []
    for n in range(count):
        task: dict[str, Any] = {
            "id": f"T{n + 1:02d}",
            "priority": rng.randint(0, 3),
            "shared": f"s{rng.randrange(shared)}.txt",
        }
        if n and rng.random() < 0.35:
            task["depends_on"] = sorted({tasks[rng.randrange(n)]["id"]})
        if n > 1 and rng.random() < 0.15:
            other = tasks[rng.randrange(n)]["id"]
            if other not in task.get("depends_on", []):
                task["conflicts_with"] = [other]
        tasks.append(task)
    return tasks


def tasks_toml(tasks: list[dict[str, Any]]) -> str:
    out = []
    for task in tasks:
        out.append(f'[[task]]\nid = "{task["id"]}"\npriority = {task["priority"]}\n')
        out.append(f'shared = "{task["shared"]}"\n')
        out += [
            f"{k} = {json.dumps(task[k])}\n" for k in ("depends_on", "conflicts_with") if k in task
        ]
    return "".join(out)


def make_repo(
    root: Path,
    tasks: list[dict[str, Any]],
    shared: int,
    gate_seconds: float = 0.0,
    store: str | None = None,
) -> Path:
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "swarm@dibs.invalid")
    git(repo, "config", "user.name", "swarm")
    (repo / "check.py").write_text(CHECK)
    (repo / "tasks.toml").write_text(tasks_toml(tasks))
    (repo / "shared").mkdir()
    for n in range(shared):
        (repo / "shared" / f"s{n}.txt").write_text("")
    (repo / "done").mkdir()
    (repo / "done" / ".keep").write_text("")
    (repo / "dibs.toml").write_text(
        '[leases]\nttl = 30\n[merge]\ntarget = "main"\n'
        f'[gates]\ntests = "{sys.executable} check.py"\n'
        # A slower gate keeps agents inside `dibs land` longer: a short trial on a fast
        # machine would otherwise finish before its kill inside `dibs land` finds a target.
        + (f'pace = "sleep {gate_seconds:g}"\n' if gate_seconds > 0 else "")
        # On main, so that every worktree (and `dibs init`) finds the shared store.
        + (f"[store]\nurl = {json.dumps(store)}\n" if store else "")
    )
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "the task graph, its gate and the shared files")
    out = dibs(repo, "init")
    if out.returncode != 0:
        raise SystemExit(f"dibs init failed: {out.stderr}")
    return repo


# One agent -------------------------------------------------------------------------------


class Agent:
    """One agent process: next, work, land (redo on conflict), finish, until all is done."""

    def __init__(
        self, repo: Path, name: str, journal: Path, *, ttl: float, lease: float, steal: bool
    ):
        self.repo, self.name, self.journal, self.ttl, self.steal = repo, name, journal, ttl, steal
        self.lease = lease
        self.env: dict[str, str] = {}
        self.out = open(journal / f"{name}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        self.rng = random.Random(os.urandom(8))
        spec = {t["id"]: t for t in _read_tasks(repo)}
        self.spec = spec

    def note(self, **fields: Any) -> None:
        self.out.write(json.dumps({"t": time.time(), "agent": self.name, **fields}) + "\n")
        self.out.flush()

    def phase(self, text: str) -> None:
        (self.journal / f"{self.name}.phase").write_text(text)

    def run(self) -> None:
        reg = dibs(
            self.repo, "agent", "register", self.name, "--pid", str(os.getpid()),
            "--ttl", str(self.ttl), "--json",
        )  # fmt: skip
        if reg.returncode != 0:
            raise SystemExit(f"register failed: {reg.stderr}")
        token = json.loads(reg.stdout)["token"]
        self.env = {"DIBS_AGENT": self.name, "DIBS_TOKEN": token}
        threading.Thread(target=self._heartbeat, daemon=True).start()
        while True:
            self.phase("next")
            # Waiting in the one call (as an agent between tasks should) instead of calling
            # again and again: idle agents polling kept the two cores busy.
            args = ["next", "--start", "--json", "--ttl", str(self.lease), "--wait", "5"]
            got = dibs(self.repo, *args, *(["--steal"] if self.steal else []), env=self.env)
            if got.returncode == 1 and "nothing is ready" in got.stderr:
                if self._all_done():
                    break
                continue
            if got.returncode != 0:
                self.note(ev="next-failed", code=got.returncode, err=got.stderr[-400:])
                time.sleep(self.rng.uniform(0.1, 0.4))
                continue
            task = json.loads(got.stdout)
            started = task["started"]
            self.note(
                ev="take",
                task=task["id"],
                stolen=task.get("stolen"),
                adopted=started.get("adopted"),
            )
            try:
                self._do(task["id"], Path(started["path"]))
            except (subprocess.CalledProcessError, OSError) as exc:
                self.note(ev="task-error", task=task["id"], err=str(exc)[-400:])
        self.phase("done")
        dibs(self.repo, "agent", "unregister", env=self.env)
        self.note(ev="exit")

    def _heartbeat(self) -> None:
        while True:
            time.sleep(self.ttl / 4)
            dibs(self.repo, "heartbeat", env=self.env)

    def _all_done(self) -> bool:
        out = dibs(self.repo, "ready", "--all", "--json")
        rows = json.loads(out.stdout)["tasks"] if out.returncode == 0 else []
        return bool(rows) and all(r["why"] == ["done"] for r in rows)

    def _do(self, task_id: str, path: Path) -> None:
        self.phase("work")
        content = self._work(task_id, path)
        self.note(ev="commit", task=task_id, content=content)
        for attempt in range(1, 30):
            self.phase("land")
            out = dibs(path, "land", "--json", env=self.env)
            entry = json.loads(out.stdout) if out.stdout.startswith("{") else {}
            self.note(
                ev="land", task=task_id, attempt=attempt, code=out.returncode,
                state=entry.get("state"), reason=entry.get("reason") or out.stderr[-300:],
            )  # fmt: skip
            if out.returncode == 0:
                break
            if out.returncode == 4:  # lost the task: let the worktree go to the next taker
                rows = json.loads(dibs(self.repo, "worktrees", "--json").stdout)
                if any(r["issue"] == task_id and r["agent"] == self.name for r in rows):
                    dibs(self.repo, "finish", task_id, "--keep-worktree", env=self.env)
                return
            if entry.get("files"):
                self.phase("redo")
                self._redo(task_id, path)
            time.sleep(self.rng.uniform(0.0, 0.2))
        else:
            raise OSError(f"{task_id} did not land in 30 tries")
        self.phase("finish")
        out = dibs(self.repo, "finish", task_id, env=self.env)
        self.note(ev="finish", task=task_id, code=out.returncode, err=out.stderr[-300:])

    def _work(self, task_id: str, path: Path) -> str:
        """The task's file and its shared line, committed (kept when adopted)."""
        done = path / "done" / task_id
        committed = subprocess.run(
            ["git", "cat-file", "-e", f"HEAD:done/{task_id}"], cwd=path, check=False
        )
        if committed.returncode == 0:  # the work is in HEAD: drop what a killed checkout left
            git(path, "reset", "-q", "--hard", "HEAD")
        if not done.exists() or not DONE_LINE.fullmatch(done.read_text()):
            done.write_text(f"{task_id} by {self.name} {os.urandom(4).hex()}\n")
        shared = path / "shared" / self.spec[task_id]["shared"]
        lines = shared.read_text().splitlines()
        if task_id not in lines:
            shared.write_text("".join(f"{line}\n" for line in [*lines, task_id]))
        git(path, "add", f"done/{task_id}", f"shared/{shared.name}")
        staged = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=path, check=False)
        if staged.returncode:
            git(path, "commit", "-q", "-m", f"task {task_id}")
        return done.read_text()

    def _redo(self, task_id: str, path: Path) -> None:
        """The same work as one commit on the new main, built aside (git plumbing), so that
        the branch always points at a commit holding the work, whenever the kill comes."""
        shared = f"shared/{self.spec[task_id]['shared']}"
        base = git(path, "rev-parse", "main").strip()  # once: main moves meanwhile
        lines = git(path, "show", f"{base}:{shared}").splitlines()
        text = "".join(f"{line}\n" for line in [*lines, task_id])
        index = {"GIT_INDEX_FILE": str(self.journal / f"{self.name}.index")}  # not in the tree
        git(path, "read-tree", base, env=index)
        blob = subprocess.run(
            ["git", "hash-object", "-w", "--stdin"], cwd=path, input=text, text=True,
            capture_output=True, check=True,
        ).stdout.strip()  # fmt: skip
        done = git(path, "rev-parse", f"HEAD:done/{task_id}").strip()
        git(path, "update-index", "--add", "--cacheinfo", f"100644,{blob},{shared}", env=index)
        git(
            path, "update-index", "--add", "--cacheinfo", f"100644,{done},done/{task_id}", env=index
        )
        tree = git(path, "write-tree", env=index).strip()
        os.unlink(index["GIT_INDEX_FILE"])
        commit = git(path, "commit-tree", tree, "-p", base, "-m", f"task {task_id}").strip()
        git(path, "reset", "-q", "--hard", commit)


def _read_tasks(repo: Path) -> list[dict[str, Any]]:
    import tomllib

    return list(tomllib.loads((repo / "tasks.toml").read_text())["task"])


# The trial -------------------------------------------------------------------------------


class Trial:
    """Run the swarm in *workdir* and check what it did; `run` returns the figures."""

    def __init__(
        self,
        workdir: Path,
        *,
        agents: int,
        tasks: int,
        kills: int,
        seed: int,
        pauses: int = 0,
        shared: int = 3,
        ttl: float = 20.0,
        lease: float = 60.0,
        timeout: float = 900.0,
        gate_seconds: float = 0.0,
        store: str | None = None,
    ):
        self.rng = random.Random(seed)
        self.seed, self.agents, self.ttl, self.lease, self.timeout = (
            seed, agents, ttl, lease, timeout,
        )  # fmt: skip
        # The first blow comes inside `dibs land`; the others at random points.
        rest = ["kill"] * max(0, kills - 1) + ["pause"] * pauses
        self.rng.shuffle(rest)
        self.blows = (["kill-in-land"] if kills else []) + rest
        self.tasks = task_graph(self.rng, tasks, shared)
        self.repo = make_repo(workdir, self.tasks, shared, gate_seconds, store)
        self.journal = workdir / "journal"
        self.journal.mkdir()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[dict[str, Any]] = []
        self.spawned = 0

    def spawn(self, *, steal: bool) -> None:
        self.spawned += 1
        name = f"{'r' if steal else 'a'}{self.spawned:02d}"
        cmd = [sys.executable, __file__, "agent", str(self.repo), name, str(self.journal)]
        cmd += ["--ttl", str(self.ttl), "--lease", str(self.lease)]
        cmd += ["--steal"] if steal else []
        with open(self.journal / f"{name}.err", "wb") as err:
            self.procs[name] = subprocess.Popen(
                cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )

    def phase(self, name: str) -> str:
        try:
            return (self.journal / f"{name}.phase").read_text()
        except FileNotFoundError:
            return ""

    def strike(self, name: str, blow: str) -> None:
        """SIGKILL (or, for a pause, SIGSTOP: stale, never resumed) the agent's process
        group, its `dibs` children with it; a replacement that steals takes its place."""
        proc = self.procs[name]
        phase = self.phase(name)
        try:
            os.killpg(proc.pid, signal.SIGSTOP if blow == "pause" else signal.SIGKILL)
        except ProcessLookupError:
            return
        if blow != "pause":
            proc.wait()
        self.killed.append({"agent": name, "phase": phase, "blow": blow, "at": time.time()})
        self.spawn(steal=True)

    def run(self) -> dict[str, Any]:
        def stop(signum: int, _frame: Any) -> None:
            raise SystemExit(128 + signum)  # so that `finally` kills the agents

        signal.signal(signal.SIGTERM, stop)
        started = time.monotonic()
        for _ in range(self.agents):
            self.spawn(steal=False)
        blows = list(self.blows)
        # The kill inside `dibs land` is aimed at once (at the first agent seen landing): a
        # small swarm can finish before a later aim finds anyone there.
        first_in_land = blows[:1] == ["kill-in-land"]
        next_blow = time.monotonic() + (0.0 if first_in_land else self.rng.uniform(1.0, 4.0))
        want = ""
        paused = {k["agent"] for k in self.killed}
        try:
            while any(p.poll() is None for n, p in self.procs.items() if n not in paused):
                if time.monotonic() - started > self.timeout:
                    raise AssertionError(f"the swarm did not finish in {self.timeout:g} s")
                live = [n for n, p in self.procs.items() if p.poll() is None and n not in paused]
                if blows and time.monotonic() >= next_blow:
                    # A random phase first (agents spend most of their time landing), any
                    # busy agent when none has been in it for 3 s.
                    late = time.monotonic() - next_blow > 3.0
                    phases = ("land",) if blows[0] == "kill-in-land" else (want,)
                    targets = [n for n in live if self.phase(n) in phases] or (
                        [n for n in live if self.phase(n) in BUSY] if late and want else []
                    )
                    if targets:
                        time.sleep(self.rng.uniform(0.0, 0.3))
                        victim = self.rng.choice(targets)
                        if blows[0] == "kill-in-land" and self.phase(victim) != "land":
                            continue  # it left `dibs land` meanwhile: aim again
                        self.strike(victim, blows.pop(0))
                        paused = {k["agent"] for k in self.killed if k["blow"] == "pause"}
                        next_blow = time.monotonic() + self.rng.uniform(1.0, 4.0)
                        want = self.rng.choice(BUSY)
                time.sleep(0.02)
        finally:
            for proc in self.procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        seconds = time.monotonic() - started
        problems = self.check()
        figures = self.figures(seconds)
        figures["problems"] = problems
        return figures

    # Checking --------------------------------------------------------------------------

    def notes(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.journal.glob("*.jsonl")):
            lines = path.read_text().splitlines()
            out += [json.loads(line) for line in lines if line.endswith("}")]  # a kill cuts one
        return out

    def events(self) -> list[dict[str, Any]]:
        out = dibs(self.repo, "log", "--since", "0", "--json")
        return [json.loads(line) for line in out.stdout.splitlines()]

    def check(self) -> list[str]:
        """Everything the trial asserts; each problem as a sentence (empty: it held)."""
        problems: list[str] = []
        events = self.events()
        ids = [t["id"] for t in self.tasks]
        landed = collections.Counter(e["value"]["issue"] for e in events if e["op"] == "land-done")
        problems += [f"{i} landed {landed[i]} times" for i in ids if landed[i] != 1]
        first: dict[str, int] = {}
        for e in events:
            if e["op"] == "land-done":
                first.setdefault(e["value"]["issue"], e["seq"])
        for e in events:
            issue = e.get("resource", "").removeprefix("issue:")
            if e["op"] == "acquire" and issue in first and e["seq"] > first[issue]:
                problems.append(f"{issue} handed to {e['agent']} (seq {e['seq']}) after it landed")
        problems += self._main_green()
        sys.path.insert(0, str(ROOT))
        from tests.faults.history import check as check_history

        verdict = check_history(events)
        problems += verdict.overlapping_holders + verdict.token_order
        problems += self._nothing_left()
        problems += self._work_kept()
        return problems

    def _main_green(self) -> list[str]:
        problems = []
        on_main = git(self.repo, "ls-tree", "--name-only", "main", "done/").split()
        missing = sorted({f"done/{t['id']}" for t in self.tasks} - set(on_main))
        if missing:
            problems.append(f"not on main: {missing}")
        commits = git(self.repo, "rev-list", "--reverse", "main").split()
        before: set[str] = set()
        for commit in commits:  # what landed stays landed
            now = set(git(self.repo, "ls-tree", "--name-only", commit, "done/").split())
            if before - now:
                problems.append(f"{commit[:12]} drops {sorted(before - now)}")
            before = now
        with tempfile.TemporaryDirectory() as scratch:
            for commit in commits[1:]:
                tree = Path(scratch, commit)
                tree.mkdir()
                archive = subprocess.run(
                    ["git", "archive", commit], cwd=self.repo, capture_output=True, check=True
                ).stdout
                subprocess.run(["tar", "-x"], cwd=tree, input=archive, check=True)
                gate = subprocess.run(
                    [sys.executable, "check.py"],
                    cwd=tree,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if gate.returncode != 0:
                    problems.append(f"main is red at {commit[:12]}: {gate.stderr.strip()}")
        return problems

    def _nothing_left(self) -> list[str]:
        problems = []
        repair = dibs(self.repo, "doctor", "--repair")
        if repair.returncode != 0:
            problems.append(f"doctor --repair exited {repair.returncode}: {repair.stdout}")
        after = dibs(self.repo, "doctor")
        if after.returncode != 0:
            problems.append(f"doctor after --repair exited {after.returncode}: {after.stdout}")
        worktrees = git(self.repo, "worktree", "list", "--porcelain").count("worktree ")
        if worktrees != 1:
            problems.append(f"{worktrees - 1} worktrees left: {git(self.repo, 'worktree', 'list')}")
        branches = git(self.repo, "branch", "--list", "agent/*").split()
        if branches:
            problems.append(f"branches left: {branches}")
        claims = json.loads(dibs(self.repo, "claims", "--json").stdout)
        if claims:
            problems.append(f"claims left: {[c['resource'] for c in claims]}")
        return problems

    def _work_kept(self) -> list[str]:
        """What a killed agent committed for a task is what main has for it."""
        killed = {k["agent"] for k in self.killed}
        problems = []
        for note in self.notes():
            if note["agent"] in killed and note.get("ev") == "commit":
                path = f"done/{note['task']}"
                shown = subprocess.run(
                    ["git", "show", f"main:{path}"], cwd=self.repo, capture_output=True,
                    text=True, check=False,
                )  # fmt: skip
                have = shown.stdout if shown.returncode == 0 else None
                if have != note["content"]:
                    problems.append(
                        f"{note['agent']}'s work on {note['task']} was lost: main has {have!r}, "
                        f"it committed {note['content']!r}"
                    )
        return problems

    def figures(self, seconds: float) -> dict[str, Any]:
        notes = self.notes()
        events = self.events()
        lands = [n for n in notes if n.get("ev") == "land"]
        return {
            "agents": self.agents,
            "tasks": len(self.tasks),
            "seed": self.seed,
            "seconds": round(seconds, 1),
            "tasks_per_minute": round(len(self.tasks) * 60 / seconds, 1),
            "land_calls": len(lands),
            "land_retries": len(lands) - sum(1 for n in lands if n["code"] == 0),
            "conflicts_redone": sum(1 for n in notes if n.get("ev") == "land" and n["code"] == 3),
            "kills": [f"{k['blow']} {k['agent']} in {k['phase'] or 'start'}" for k in self.killed],
            "steals": sum(
                1 for e in events if e["op"] == "force-evict" and "stolen" in e.get("reason", "")
            ),
            "takeovers": sum(1 for e in events if e["op"] == "worktree-adopt"),
            "replacements": len(self.killed),
        }


@contextlib.contextmanager
def database(admin: str | None) -> Iterator[str | None]:
    """A database of its own on the server at *admin* for the trial, dropped after it (None:
    the local store)."""
    if admin is None:
        yield None
        return
    import psycopg  # only a trial on PostgreSQL needs it
    from psycopg import conninfo, sql

    name = f"dibs_swarm_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield conninfo.make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode")
    agent = sub.add_parser("agent", help="(internal) one agent process")
    agent.add_argument("repo")
    agent.add_argument("name")
    agent.add_argument("journal")
    agent.add_argument("--ttl", type=float, default=20.0)
    agent.add_argument("--lease", type=float, default=60.0)
    agent.add_argument("--steal", action="store_true")
    parser.add_argument("--agents", type=int, default=12)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--pauses", type=int, default=1, help="agents SIGSTOPped (stale)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("DIBS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        metavar="ADMIN_URL",
        help="use a throw-away database on this server as the store (may create databases)",
    )
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (to look after)")
    parser.add_argument("--timeout", type=float, default=900.0, metavar="S")
    parser.add_argument(
        "--gate-seconds", type=float, default=0.0, metavar="S", help="a gate that sleeps S s"
    )
    args = parser.parse_args(argv)
    if args.mode == "agent":
        Agent(
            Path(args.repo), args.name, Path(args.journal),
            ttl=args.ttl, lease=args.lease, steal=args.steal,
        ).run()  # fmt: skip
        return 0
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    size = {"agents": args.agents, "tasks": args.tasks, "kills": args.kills, "pauses": args.pauses}
    with (
        tempfile.TemporaryDirectory(prefix="dibs-swarm-") as scratch,
        database(args.postgres) as store,
    ):
        workdir = Path(args.keep or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        figures = Trial(
            workdir,
            seed=seed,
            timeout=args.timeout,
            gate_seconds=args.gate_seconds,
            store=store,
            **size,
        ).run()
        figures["store"] = "postgresql" if store else "local"
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            if key != "problems":
                print(f"{key:>18}: {value}")
        for problem in figures["problems"]:
            print(f"PROBLEM: {problem}")
        print("held" if not figures["problems"] else f"{len(figures['problems'])} problems")
    return 0 if not figures["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())
