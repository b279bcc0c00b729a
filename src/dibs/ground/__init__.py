"""The ground floor: what every layer stands on and which imports nothing of dibs above it.

errors (the exceptions and their exit codes), settings (``dibs.toml`` and ``DIBS_*``), the
version, this machine (`host`: clocks, boot id, process liveness) over the per-platform
primitives (`platform`), running git and finding the repository (`git`), backoff, and numbers
for people (`humanize`).
"""
