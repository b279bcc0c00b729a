"""Faces: how people, agents and hosts reach dibs.

`cli` (the ``dibs`` command), `mcp` (the MCP server over stdio), `web` (the dashboard and its
HTTP API, ``/metrics``), `hooks` (each agent host's hook protocol in, the guard's verdict out)
and `demo`. A face parses, makes one service call and renders; it never opens a store itself.
The Python API is the package's front door, `dibs`.
"""
