"""The MCP server as a client sees it, through the SDK's own stdio client: schemas that
describe every argument, annotations, the server's version, hints phrased as MCP calls, an
agent that lives as long as its client, and check/land/finish on the agent's own worktree."""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git

mcp = pytest.importorskip("mcp", reason="pip install 'dibs[mcp]'")


@pytest.fixture
def cli(repo: Path) -> Cli:
    out = Cli(repo)
    assert 0 == out("init").returncode
    return out


def session(repo: Path, body: Callable[..., Awaitable[None]], clients: int = 1) -> None:
    """Run *body* with *clients* SDK clients, each with its own `dibs mcp` started in *repo*."""
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    params = StdioServerParameters(
        command=str(BIN / "dibs"), args=["mcp", "-C", str(repo)], env=env, cwd=str(repo)
    )

    async def main() -> None:
        if clients == 1:
            async with Client(params) as one:
                await body(one)
        else:
            async with Client(params) as one, Client(params) as two:
                await body(one, two)

    anyio.run(main)


def text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def ok(client: Any, name: str, arguments: dict[str, Any] | None = None) -> Any:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(name, arguments or {})
    assert not result.is_error, text(result)
    if result.structured_content is not None:
        content = result.structured_content
        return content.get("result", content)
    return json.loads(text(result))


def agents(cli: Cli) -> dict[str, Any]:
    return {a["name"]: a for a in cli.json("agent", "list")}


def test_mcp_tools_describe_every_argument_and_carry_annotations(repo: Path, cli: Cli) -> None:
    """Every argument has a description (with units and defaults), descriptions read as
    prose (no docstring indentation), tools say whether they read or destroy, and the
    server reports dibs's version."""
    from dibs.ground.version import __version__

    async def body(client: Any) -> None:
        assert __version__ == client.server_info.version
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"register", "unregister", "claim", "check", "land", "finish"} <= set(tools)
        for tool in tools.values():
            assert tool.description
            assert "\n    " not in tool.description, tool.name
            for name, prop in tool.input_schema.get("properties", {}).items():
                assert prop.get("description"), f"{tool.name}.{name}"
            assert tool.annotations is not None, tool.name
        claim = tools["claim"].input_schema["properties"]
        assert "seconds" in claim["ttl"]["description"]
        assert "seconds" in claim["wait"]["description"]
        assert "path:GLOB" in claim["resources"]["description"]
        name = tools["register"].input_schema["properties"]["name"]
        assert "^[a-z0-9][a-z0-9._-]{0,63}$" == name["pattern"]
        assert tools["status"].annotations.read_only_hint is True
        assert tools["check"].annotations.read_only_hint is True
        assert tools["claim"].annotations.read_only_hint is False
        assert tools["release"].annotations.destructive_hint is True
        assert tools["finish"].annotations.destructive_hint is True
        assert tools["status"].annotations.destructive_hint is False
        assert tools["renew"].annotations.idempotent_hint is True
        assert tools["next"].annotations.idempotent_hint is False

    session(repo, body)


def test_mcp_refusal_hints_name_mcp_arguments_not_cli_flags(repo: Path, cli: Cli) -> None:
    """A refused claim's hint names the `wait` argument, in the message and in its JSON."""

    async def body(one: Any, two: Any) -> None:
        await ok(one, "register", {"name": "mcp-a"})
        await ok(two, "register", {"name": "mcp-b"})
        await ok(one, "claim", {"resources": ["issue:X"]})
        refused = await two.call_tool("claim", {"resources": ["issue:X"]})
        assert refused.is_error
        said = text(refused)
        assert "dibs: issue:X is held by mcp-a" in said
        assert "`wait` argument (seconds)" in said
        assert "--wait" not in said
        assert "`wait` argument" in json.loads(said.split("\n", 2)[2])["hint"]
        assert '"exit_code": 3' in said

    session(repo, body, clients=2)


def test_mcp_agent_watches_its_client_and_leaves_when_it_disconnects(repo: Path, cli: Cli) -> None:
    """`register` records the client (the server's parent) as the process to watch; when the
    client disconnects the server unregisters the agent, so its claims are gone and a new
    client can take the name at once."""

    async def body(client: Any) -> None:
        registered = await ok(client, "register", {"name": "mcp-a"})
        assert os.getpid() == registered["pid"]
        await ok(client, "claim", {"resources": ["issue:X"]})
        assert os.getpid() == agents(cli)["mcp-a"]["pid"]

    session(repo, body)
    assert "mcp-a" not in agents(cli)
    assert [] == cli.json("claims")

    async def again(client: Any) -> None:
        await ok(client, "register", {"name": "mcp-a"})
        await ok(client, "claim", {"resources": ["issue:X"]})

    session(repo, again)


def test_mcp_next_waits_for_a_task_and_takes_it_when_it_is_let_go(repo: Path, cli: Cli) -> None:
    """`next` with `wait` blocks until the task's holder (another client) lets go of it;
    with nothing let go it gives up after its wait, as a tool error that says so."""
    import anyio

    (repo / "tasks.toml").write_text('[[task]]\nid = "A"\n')

    async def body(one: Any, two: Any) -> None:
        await ok(one, "register", {"name": "mcp-holder"})
        await ok(two, "register", {"name": "mcp-waiter"})
        assert "A" == (await ok(one, "next"))["id"]
        refused = await two.call_tool("next", {"wait": 0.3})
        assert refused.is_error
        assert "gave up after waiting" in text(refused)
        async with anyio.create_task_group() as group:
            taken: list[Any] = []

            async def wait() -> None:
                taken.append(await ok(two, "next", {"wait": 120}))

            group.start_soon(wait)
            await anyio.sleep(0.5)
            await ok(one, "release", {"resources": ["issue:A"]})
        assert "A" == taken[0]["id"]

    session(repo, body, clients=2)


def test_mcp_unregister_releases_everything_and_frees_the_name(repo: Path, cli: Cli) -> None:
    """`unregister` releases the agent's claims and forgets it; the name is free again."""

    async def body(one: Any, two: Any) -> None:
        await ok(one, "register", {"name": "mcp-a"})
        await ok(one, "claim", {"resources": ["issue:X", "path:src/**"]})
        gone = await ok(one, "unregister")
        assert "mcp-a" == gone["agent"]
        assert "mcp-a" not in agents(cli)
        assert [] == cli.json("claims")
        await ok(two, "register", {"name": "mcp-a"})

    session(repo, body, clients=2)


def test_mcp_second_register_does_not_orphan_the_first(repo: Path, cli: Cli) -> None:
    """Registering another name unregisters the agent registered before (refused while it
    holds claims, so no claim is left to an agent nobody acts for); the same name again is
    a no-op."""

    async def body(client: Any) -> None:
        await ok(client, "register", {"name": "mcp-a"})
        await ok(client, "register", {"name": "mcp-b"})
        assert "mcp-a" not in agents(cli)
        await ok(client, "claim", {"resources": ["issue:X"]})
        refused = await client.call_tool("register", {"name": "mcp-c"})
        assert refused.is_error
        assert "mcp-b, which holds issue:X" in text(refused)
        assert '"exit_code": 3' in text(refused)
        assert "mcp-c" not in agents(cli)
        same = await ok(client, "register", {"name": "mcp-b"})
        assert "mcp-b" == same["agent"]
        assert {"issue:X": "mcp-b"} == {c["resource"]: c["agent"] for c in cli.json("claims")}

    session(repo, body)
    assert {} == agents(cli)


def test_mcp_check_land_and_finish_act_on_the_agents_own_worktree(repo: Path, cli: Cli) -> None:
    """A server started in the main checkout: after `start`, `check({})` sees the changes in
    the agent's worktree, `land({})` lands its branch, and `finish({})` removes that worktree
    and releases that task's claims but not the claims of the agent's other task."""

    async def body(client: Any) -> None:
        await ok(client, "register", {"name": "mcp-a"})
        started = await ok(client, "start", {"issue": "T-1"})
        tree = Path(started["path"])
        assert tree != repo
        await ok(client, "claim", {"resources": ["issue:T-2"]})
        (tree / "feature.py").write_text("feature = 1\n")
        checked = await ok(client, "check", {})
        assert ["feature.py"] == checked["changed"]
        git(tree, "add", "feature.py")
        git(tree, "commit", "-q", "-m", "feature")
        landed = await ok(client, "land", {})
        assert "landed" == landed["state"], landed
        assert "agent/T-1" == landed["branch"]
        finished = await ok(client, "finish", {})
        assert "T-1" == finished["issue"]
        assert not tree.exists()
        assert "issue:T-2" not in finished["released"]
        assert {"issue:T-2": "mcp-a"} == {c["resource"]: c["agent"] for c in cli.json("claims")}

    session(repo, body)
    assert "feature = 1\n" == git(repo, "show", "main:feature.py")


def test_mcp_print_config_names_an_absolute_command(repo: Path, cli: Cli) -> None:
    """`dibs mcp --print-config` names dibs by an absolute path that exists, so a client
    whose PATH lacks the venv still starts it."""
    out = cli("mcp", "--print-config")
    server = json.loads(out.stdout)["mcpServers"]["dibs"]
    assert os.path.isabs(server["command"])
    assert os.access(server["command"], os.X_OK)
    assert ["mcp", "-C", str(repo)] == server["args"][-3:]


def test_mcp_server_stopped_by_sigterm_unregisters_its_agent(
    repo: Path, cli: Cli, procs: list[Any]
) -> None:
    """A client that stops the server with SIGTERM (instead of closing its stdin) also leaves
    no agent behind: the server exits 0 after unregistering it."""
    import signal
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    server = subprocess.Popen(
        [str(BIN / "dibs"), "mcp", "-C", str(repo)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    procs.append(server)
    assert server.stdin is not None
    assert server.stdout is not None

    def call(message: dict[str, Any]) -> None:
        assert server.stdin is not None
        server.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        server.stdin.flush()

    hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t"}}
    call({"id": 1, "method": "initialize", "params": hello})
    assert '"id":1' in server.stdout.readline()
    call({"method": "notifications/initialized"})
    register = {"name": "register", "arguments": {"name": "mcp-term"}}
    call({"id": 2, "method": "tools/call", "params": register})
    assert '"isError":false' in server.stdout.readline()
    assert "mcp-term" in agents(cli)
    server.send_signal(signal.SIGTERM)
    _, err = server.communicate(timeout=60)
    assert 0 == server.returncode, err
    assert "mcp-term" not in agents(cli)
