"""`dibs dashboard` served for real: the API, Prometheus text, the live stream, the token,
and the page in a real browser."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli

pytest.importorskip(
    "starlette", reason="the dashboard needs the web extra: pip install 'dibs[web]'"
)
CHROMIUM = "/usr/bin/chromium"


class Server:
    def __init__(self, repo: Path, *args: str):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
        self.proc = subprocess.Popen(
            [str(BIN / "dibs"), "dashboard", "--port", "0", *args],
            cwd=repo,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "dibs dashboard on http://" in line, line + self.proc.stderr.read()
        self.url = line.split(" on ", 1)[1].strip().rstrip("/")

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers=headers or {})  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert 200 == status, body
        return json.loads(body)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def server(repo: Path, cli: Cli) -> Iterator[Server]:
    assert 0 == cli("init").returncode
    running = Server(repo)
    try:
        yield running
    finally:
        running.stop()


def busy_log(cli: Cli) -> None:
    a1, a2 = cli.register("a1"), cli.register("a2")
    assert 0 == cli("claim", "issue:1", "path:src/**", env=a1).returncode
    assert 3 == cli("claim", "issue:1", env=a2).returncode
    assert 3 == cli("claim", "path:src/x.py", env=a2).returncode
    assert 0 == cli("release", "issue:1", env=a1).returncode
    assert 0 == cli("claim", "issue:1", env=a2).returncode
    assert 0 == cli("evict", "path:src/**", "--reason", "test").returncode


def test_state_events_and_metrics_agree_with_the_cli(server: Server, cli: Cli) -> None:
    busy_log(cli)
    state = server.json("/api/state")
    assert state["summary"] == cli.json("status")["summary"]
    assert ["issue:1"] == [c["resource"] for c in state["claims"]]
    events = server.json("/api/events?since=3")
    assert [4, 5] == [e["seq"] for e in events[:2]]
    assert events == cli.jsonl("log", "--since", "3")
    assert 400 == server.get("/api/events?since=x")[0]
    from prometheus_client.parser import text_string_to_metric_families

    status, text = server.get("/metrics")
    assert 200 == status
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    figures = cli.json("metrics")
    claims = figures["claims"]
    assert claims["acquisitions"] == samples[("dibs_acquisitions_total", ())]
    refused = samples[("dibs_claim_calls_total", (("outcome", "refused"),))]
    assert claims["refusals"] == refused == 2
    assert claims["claim_calls"] == samples[("dibs_claim_calls_total", (("outcome", "granted"),))]
    assert 1 == samples[("dibs_evictions_total", (("reason", "forced"),))]
    assert claims["hold_seconds"]["count"] == samples[("dibs_hold_seconds_count", ())]
    assert 1 == samples[("dibs_claims_live", ())]
    assert 2 == samples[("dibs_agents", (("status", "live"),))]
    assert server.json("/api/metrics")["claims"] == claims


def test_api_state_is_the_status_and_follows_the_log_it_keeps_encoded(
    server: Server, cli: Cli
) -> None:
    """/api/state is what `dibs status --json` says (each claim's seconds left aside, they
    run down between the two looks), with worktrees; the claims it keeps encoded per log seq
    follow the log: a release, a new claim with a note, a renewal with a new ttl."""
    busy_log(cli)
    status, state = cli.json("status"), server.json("/api/state")

    def steady(view: dict[str, Any]) -> dict[str, Any]:
        claims = [{k: v for k, v in c.items() if k != "expires_in"} for c in view["claims"]]
        agents = [{k: v for k, v in a.items() if k != "seen_ago"} for a in view["agents"]]
        return {**view, "claims": claims, "agents": agents}

    assert steady(status) == steady({k: state[k] for k in status})
    assert [] == state["worktrees"]
    assert all(0 < c["expires_in"] <= c["ttl"] for c in state["claims"])
    a1 = cli.register("a3")
    assert 0 == cli("claim", "lock:deploy", "--note", "shipping", "--ttl", "60", env=a1).returncode
    claims = server.json("/api/state")["claims"]  # encoded now, with its first ttl
    assert [60.0] == [c["ttl"] for c in claims if c["resource"] == "lock:deploy"]
    assert 0 == cli("renew", "lock:deploy", "--ttl", "900", env=a1).returncode
    assert 0 == cli("claim", "issue:2", env=a1).returncode
    assert 0 == cli("release", "issue:2", env=a1).returncode
    state = server.json("/api/state")
    assert ["issue:1", "lock:deploy"] == [c["resource"] for c in state["claims"]]
    deploy = state["claims"][1]
    assert ("shipping", 900.0) == (deploy["note"], deploy["ttl"])
    assert 60 < deploy["expires_in"] <= 900
    assert steady(cli.json("status"))["claims"] == steady(state)["claims"]


def test_the_stream_announces_new_events(server: Server, cli: Cli) -> None:
    with urllib.request.urlopen(server.url + "/api/stream", timeout=30) as stream:  # noqa: S310
        seqs = []

        def next_seq() -> int:
            while True:
                line = stream.readline().decode()
                if line.startswith("data: "):
                    return int(json.loads(line[6:])["seq"])

        seqs.append(next_seq())
        env = cli.register("streamer")
        assert 0 == cli("claim", "issue:S", env=env).returncode
        while seqs[-1] < 2:
            seqs.append(next_seq())
    assert seqs[0] == 0
    assert seqs[-1] >= 2


def test_a_token_is_required_and_a_refusal_leaks_nothing(repo: Path, cli: Cli) -> None:
    assert 0 == cli("init").returncode
    busy_log(cli)
    refused = cli("dashboard", "--host", "0.0.0.0", "--port", "0")  # noqa: S104
    assert 2 == refused.returncode
    assert "without a token" in refused.stderr
    guarded = Server(repo, "--token", "s3cret")
    try:
        for path in ("/", "/api/state", "/api/events", "/metrics", "/api/stream"):
            status, body = guarded.get(path)
            assert (401, "unauthorized\n") == (status, body), path
            assert 401 == guarded.get(path, {"Authorization": "Bearer wrong"})[0]
        status, body = guarded.get("/api/state", {"Authorization": "Bearer s3cret"})
        assert 200 == status
        assert "issue:1" in body
        assert 200 == guarded.get("/metrics?token=s3cret")[0]
    finally:
        guarded.stop()


def test_the_page_shows_a_new_claim_without_a_reload(
    server: Server, cli: Cli, tmp_path: Path
) -> None:
    """Headless Chromium loads the page; a claim made from the CLI appears by itself."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI: .ci/run installs Debian's chromium")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}: sudo apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    env = cli.register("viewer")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("#summary:has-text('1 agents live')", timeout=20_000)
            loads = page.evaluate("performance.getEntriesByType('navigation').length")
            assert 0 == cli("claim", "issue:BROWSER-1", "--note", "seen live", env=env).returncode
            page.wait_for_selector("#claims td:has-text('issue:BROWSER-1')", timeout=20_000)
            assert "seen live" in page.inner_text("#claims")
            assert loads == page.evaluate("performance.getEntriesByType('navigation').length")
            assert "expired" not in page.inner_text("#claims")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 1000
        finally:
            browser.close()


def test_status_summary_counts_the_queue_and_the_pool(repo: Path, cli: Cli) -> None:
    assert 0 == cli("init").returncode
    from tests.conftest import git

    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "settings")
    assert 0 == cli("pool", "init", "2").returncode
    assert 0 == cli("pool", "take", "--agent", "p1").returncode
    env = cli.register("lander")
    assert 0 == cli("claim", "issue:Q-1", env=env).returncode
    git(repo, "branch", "agent/Q-1")
    assert 0 == cli("land", "agent/Q-1", "--queue-only", env=env).returncode
    status = cli.json("status")
    assert status["summary"].endswith("; queue 1; pool 1/2")
    text = cli("status").stdout
    assert "pool:" in text
    assert "queue:" in text
    assert "agent/Q-1" in text
