"""``dibs mcp``: the MCP server (`server`) and its tools with their schemas (`tools`)."""
