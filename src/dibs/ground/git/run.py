"""The one way dibs runs git: argument lists, never a shell string, errors that say what failed.

``subprocess`` costs 15 ms to import on these machines: only code that needs git imports this
module, never the claim path.
"""

from __future__ import annotations

import os
import subprocess

from dibs.ground.errors import DibsError


class GitError(DibsError):
    """A git command failed."""

    code = "git"


def git(
    cwd: str,
    *args: str,
    check: bool = True,
    input: str | None = None,  # noqa: A002
    env: dict[str, str] | None = None,
) -> str:
    """Run ``git *args`` in *cwd* and return its standard output.

    *env* adds variables to the environment (for example a committer identity).

    Raises:
        GitError: git is missing, or (with *check*) exited non-zero; the message names the
            command and quotes git's own message.
    """
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            input=input,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
    except FileNotFoundError as exc:
        raise GitError("git is not installed", hint="install git and try again") from exc
    if check and done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise GitError(
            f"`git {' '.join(args)}` failed in {cwd}: {said[-1] if said else done.returncode}",
            hint="see git's message above",
        )
    return done.stdout
