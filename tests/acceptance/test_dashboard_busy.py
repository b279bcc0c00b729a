"""A busy swarm seen through `dibs dashboard`: Prometheus figures (checked by promtool) and
what a person sees on the page (landings, hot spots, the feed)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.test_dashboard import CHROMIUM, Server
from tests.acceptance.test_queue import agent_with_issue, branch, settings
from tests.conftest import Cli

pytest.importorskip(
    "starlette", reason="the dashboard needs the web extra: pip install 'dibs[web]'"
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text, by name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def busy_swarm(repo: Path, cli: Cli) -> None:
    """Landed and failed entries, refusals on src/api/**, a --wait that ran out, a pool slot."""
    settings(repo, 'tests = "if [ -f broken ]; then echo boom; exit 1; fi"')
    (repo / "tasks.toml").write_text(
        '[[task]]\nid = "T-1"\ntitle = "Ship the dashboard"\npriority = 1\n'
        '[[task]]\nid = "T-2"\ntitle = "After the dashboard"\ndepends_on = ["T-1"]\n'
    )
    assert 0 == cli("pool", "init", "2").returncode
    assert 0 == cli("pool", "take", "--agent", "p1").returncode
    alice = agent_with_issue(cli, "alice", "A-1")
    bob = agent_with_issue(cli, "bob", "B-1")
    assert 0 == cli("claim", "path:src/api/**", env=alice).returncode
    for _ in range(3):
        assert 3 == cli("claim", "path:src/api/users.py", env=bob).returncode
    assert 0 == cli("claim", "lock:deploy", env=alice).returncode
    timed_out = cli("claim", "lock:deploy", "--wait", "0.3", env=bob)
    assert 3 == timed_out.returncode, timed_out.stderr
    branch(repo, "agent/A-1", {"a.txt": "a\n"})
    branch(repo, "agent/B-1", {"broken": "x\n"})
    assert 0 == cli("land", "agent/A-1", env=alice).returncode
    assert 0 != cli("land", "agent/B-1", env=bob).returncode
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cli.register("ghost", "--pid", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.fixture
def busy(repo: Path, cli: Cli) -> Iterator[Server]:
    busy_swarm(repo, cli)
    running = Server(repo)
    try:
        yield running
    finally:
        running.stop()


def test_every_labelled_family_starts_at_zero(repo: Path, cli: Cli) -> None:
    """Before anything happened each label value is there with 0, so rate() has a series."""
    from dibs.ground.version import __version__

    assert 0 == cli("init").returncode
    server = Server(repo)
    try:
        status, text = server.get("/metrics")
    finally:
        server.stop()
    assert 200 == status
    got = samples(text)
    assert 1 == got[("dibs_build_info", (("version", __version__),))]
    for outcome in ("granted", "refused"):
        assert 0 == got[("dibs_claim_calls_total", (("outcome", outcome),))]
    for reason in ("expired", "forced", "holder-dead", "rebooted", "replaced", "unregistered"):
        assert 0 == got[("dibs_evictions_total", (("reason", reason),))]
    for outcome in ("landed", "failed", "returned", "cancelled"):
        assert 0 == got[("dibs_landings_total", (("outcome", outcome),))]
    for cause in ("conflict", "lease-lost", "other"):
        assert 0 == got[("dibs_landing_failures_total", (("cause", cause),))]
    assert 0 == got[("dibs_wait_timeouts_total", ())]
    assert 0 == got[("dibs_lock_wait_seconds_count", ())]


def test_busy_metrics_count_outcomes_timeouts_and_the_taken_slot(busy: Server, cli: Cli) -> None:
    """Granted and refused calls in one family, the timed-out wait, the gate, the pool."""
    status, text = busy.get("/metrics")
    assert 200 == status
    got = samples(text)
    claims = cli.json("metrics")["claims"]
    assert claims["claim_calls"] == got[("dibs_claim_calls_total", (("outcome", "granted"),))]
    assert 4 == got[("dibs_claim_calls_total", (("outcome", "refused"),))]
    assert not any(name == "dibs_refusals_total" for name, _ in got)
    assert 1 == got[("dibs_wait_timeouts_total", ())]
    assert 1 == got[("dibs_wait_seconds_count", ())]
    assert 0.3 <= got[("dibs_wait_seconds_sum", ())]
    assert 1 == got[("dibs_lock_wait_seconds_count", ())]
    assert 1 == got[("dibs_landings_total", (("outcome", "landed"),))]
    assert 1 == got[("dibs_landing_failures_total", (("cause", "gate:tests"),))]
    assert 1 == got[("dibs_pool_slots_busy", ())]
    assert 0 < got[("dibs_pool_utilization", ())] <= 0.5


def test_a_busy_metrics_page_passes_promtool(busy: Server, tmp_path: Path) -> None:
    """`promtool check metrics` (Debian's prometheus) finds nothing wrong with /metrics."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI: .ci/run installs Debian's prometheus")
        pytest.skip("needs promtool: sudo apt-get install prometheus")
    status, text = busy.get("/metrics")
    assert 200 == status
    (tmp_path / "metrics.txt").write_text(text)
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert 0 == checked.returncode, checked.stdout + checked.stderr
    assert "" == checked.stdout.strip() + checked.stderr.strip()


def test_the_page_shows_landings_hot_spots_and_a_live_feed(
    busy: Server, cli: Cli, tmp_path: Path
) -> None:
    """Headless Chromium: the failed landing's gate and reason, src/api/** as the hot spot,
    the dead agent hidden until asked for, and a new event in the feed without a reload."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run installs Debian's chromium")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}: sudo apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    failed = {e["branch"]: e for e in cli.json("queue")}["agent/B-1"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(busy.url + "/")
            page.wait_for_selector("#landings td.failed", timeout=20_000)
            row = page.inner_text("#landings tr:has(td.failed)")
            assert "agent/B-1" in row
            assert "tests (exit 1)" in row
            assert failed["reason"] in row
            assert "landed" in page.inner_text("#landings")
            first_spot = page.inner_text("#hotspots tbody tr:first-child")
            assert first_spot.split("\t")[:2] == ["path:src/api/**", "3"]
            assert "ghost" not in page.inner_text("#agents")
            assert "1 dead agent hidden" in page.inner_text("#agents-hidden")
            page.check("#show-dead")
            assert "ghost" in page.inner_text("#agents")
            assert "641 s" not in page.inner_text("body")
            page.wait_for_selector("#tasks td:has-text('T-1')", timeout=20_000)
            assert "Ship the dashboard" in page.inner_text("#tasks")
            assert "T-2" not in page.inner_text("#tasks")
            assert "1 more not ready" in page.inner_text("#tasks-note")
            page.wait_for_selector("#contention title", state="attached", timeout=20_000)
            assert "UTC" in (page.text_content("#contention") or "")
            tips = page.eval_on_selector_all(
                "#contention title", "titles => titles.map(t => t.textContent)"
            )
            assert any("refused" in tip and "calls" in tip for tip in tips)
            tips = page.eval_on_selector_all(
                "#timeline title", "titles => titles.map(t => t.textContent)"
            )
            assert any(t.startswith("bob: q") and "failed" in t for t in tips), tips
            assert any(t.startswith("bob was refused path:src/api/users.py") for t in tips)
            assert any(t.startswith("alice held path:src/api/**") for t in tips)
            page.screenshot(path=str(tmp_path / "busy.png"), full_page=True)
            loads = page.evaluate("performance.getEntriesByType('navigation').length")
            carol = cli.register("carol")
            assert 0 == cli("claim", "issue:LIVE-1", env=carol).returncode
            page.wait_for_selector("#feed td:has-text('issue:LIVE-1')", timeout=20_000)
            page.fill("#feed-agent", "bob")
            agents = page.eval_on_selector_all(
                "#feed tbody tr td:nth-child(4)", "cells => cells.map(c => c.textContent)"
            )
            assert agents
            assert {"bob"} == set(agents)
            page.select_option("#feed-kind", "refuse")
            kinds = page.eval_on_selector_all(
                "#feed tbody tr td:nth-child(3)", "cells => cells.map(c => c.textContent)"
            )
            assert 4 == len(kinds)
            assert {"refuse"} == set(kinds)
            assert loads == page.evaluate("performance.getEntriesByType('navigation').length")
            page.screenshot(path=str(tmp_path / "busy-feed.png"), full_page=True)
            assert (tmp_path / "busy-feed.png").stat().st_size > 1000
        finally:
            browser.close()


def send_back(repo: Path, branch: str, files: list[str]) -> None:
    """A queue entry sent back without a gate run, as the queue records the end of an entry
    that did not land: its finishing event, whose entry ``state`` is ``returned``, with the
    paths it cannot merge on."""
    from dibs import Coordinator
    from dibs.core.events import new_event
    from dibs.core.leases import Decision

    value = {
        "id": "q-back",
        "number": 99,
        "branch": branch,
        "issue": "R-1",
        "agent": "bob",
        "head": "0" * 40,
        "state": "returned",
        "files": files,
        "reason": f"conflicts with the entry ahead in {', '.join(files)}",
    }

    def decide(_state: Any, ctx: Any) -> Decision:
        event = new_event(
            "land-fail", ctx.now, agent="bob", resource="issue:R-1", table="queue", key="q-back"
        )
        event["value"] = value
        return Decision([event])

    with Coordinator.open(str(repo)) as coord:
        coord.transact(decide)


@contextmanager
def chromium(url: str) -> Iterator[Any]:
    """A page of headless Chromium on *url* (a failure on CI when Chromium is missing)."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run installs Debian's chromium")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}: sudo apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_a_returned_entry_appears_live_with_its_paths(
    busy: Server, repo: Path, tmp_path: Path
) -> None:
    """Headless Chromium: an entry the queue sends back while the page is open shows, without
    a reload, as returned (not failed) with the paths it conflicts on; the failed landing
    keeps its reason."""
    with chromium(busy.url + "/") as page:
        page.wait_for_selector("#landings td.failed", timeout=20_000)
        loads = page.evaluate("performance.getEntriesByType('navigation').length")
        assert "returned" not in page.inner_text("#landings tbody")
        send_back(repo, "agent/R-1", ["src/api/users.py", "src/api/models.py"])
        page.wait_for_selector("#landings td.returned", timeout=20_000)
        row = page.inner_text("#landings tr:has(td.returned)")
        assert "agent/R-1" in row
        assert "src/api/users.py, src/api/models.py" in page.inner_text(
            "#landings tr:has(td.returned) td.paths"
        )
        assert "tests (exit 1)" in page.inner_text("#landings tr:has(td.failed)")
        assert 1 == page.locator("#landings td.failed").count()  # returned is not a failure
        tips = page.eval_on_selector_all(
            "#timeline title", "titles => titles.map(t => t.textContent)"
        )
        assert any(t.startswith("bob: q-back returned") for t in tips), tips
        assert loads == page.evaluate("performance.getEntriesByType('navigation').length")
        page.screenshot(path=str(tmp_path / "returned.png"), full_page=True)
        assert (tmp_path / "returned.png").stat().st_size > 1000


def test_the_page_marks_stuck_agents_and_their_inbox_from_the_state_it_reads(
    busy: Server, cli: Cli, tmp_path: Path
) -> None:
    """Headless Chromium on the shapes issue 19 gives the state (an agent ``status`` of
    ``stuck`` with its ``idle`` seconds, ``inbox`` depths) and the metrics (``stuck`` periods
    in the timeline), laid over the real answers: the stuck panel, the mark and the unread
    count in the agent list, the band in the timeline; and, live, the panel empties when the
    agent is no longer stuck."""
    stuck = {"on": True}

    def state(route: Any) -> None:
        data = route.fetch().json()
        if stuck["on"]:
            for agent in data["agents"]:
                if agent["name"] == "bob":
                    agent.update(status="stuck", idle=1500.0)
            data["inbox"] = {"bob": 3}
        route.fulfill(json=data)

    def metrics(route: Any) -> None:
        data = route.fetch().json()
        period = {"kind": "stuck", "what": None, "from": data["since"], "to": None}
        data["timeline"].setdefault("bob", []).append(period)
        route.fulfill(json=data)

    with chromium("about:blank") as page:
        page.route("**/api/state", state)
        page.route("**/api/metrics*", metrics)
        page.goto(busy.url + "/")
        page.wait_for_selector("#stuck td.stuck:has-text('bob')", timeout=20_000)
        loads = page.evaluate("performance.getEntriesByType('navigation').length")
        assert "25 min" in page.inner_text("#stuck tbody")
        row = page.locator("#agents tr", has_text="bob")
        assert "⚠ stuck" in row.inner_text()
        assert "no progress for 25 min" == row.locator("td.stuck").get_attribute("title")
        assert "3" == row.locator("td").nth(3).inner_text()
        assert "" == page.locator("#agents tr", has_text="alice").locator("td").nth(3).inner_text()
        page.wait_for_function(
            "[...document.querySelectorAll('#timeline title')]"
            ".some(t => t.textContent.startsWith('bob was stuck'))",
            timeout=20_000,
        )
        page.screenshot(path=str(tmp_path / "stuck.png"), full_page=True)
        stuck["on"] = False
        carol = cli.register("carol")  # the log grows: the page reads the state again
        assert 0 == cli("claim", "issue:LIVE-2", env=carol).returncode
        page.wait_for_selector("#stuck td:has-text('no agent is stuck')", timeout=20_000)
        assert "stuck" not in page.locator("#agents tr", has_text="bob").inner_text()
        assert loads == page.evaluate("performance.getEntriesByType('navigation').length")
        page.screenshot(path=str(tmp_path / "unstuck.png"), full_page=True)
        assert (tmp_path / "unstuck.png").stat().st_size > 1000
