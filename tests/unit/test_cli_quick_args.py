"""`dibs claim | renew | release | heartbeat` read by hand: the namespace argparse would give,
or argparse itself for anything but the plain form."""

from __future__ import annotations

import pytest

from dibs.faces.cli import build_parser
from dibs.faces.cli.claims import quick_args

READ_BY_HAND = [
    ["claim", "issue:X"],
    ["claim", "issue:X", "path:src/**", "--json"],
    ["claim", "issue:X", "--shared", "--ttl", "30", "--note", "why not", "-v"],
    ["claim", "issue:X", "--ttl", "1e3", "--ttl", "5", "--agent", "a1", "--token", "t"],
    ["claim", "", "-C", "elsewhere", "--verbose"],
    ["renew", "issue:X", "--ttl", "inf", "--json"],
    ["release", "issue:X", "issue:Y"],
    ["release", "--all", "--json"],
    ["release", "issue:X", "--all"],
    ["release"],
    ["heartbeat", "--agent", "a1", "--json"],
    ["heartbeat"],
]

LEFT_TO_ARGPARSE = [
    ["claim"],
    ["claim", "--json", "issue:X"],
    ["claim", "issue:X", "--wait"],
    ["claim", "issue:X", "--wait", "5"],
    ["claim", "issue:X", "--ttl=5"],
    ["claim", "issue:X", "--ttl", "soon"],
    ["claim", "issue:X", "--ttl", "-5"],
    ["claim", "issue:X", "--note", "--json"],
    ["claim", "issue:X", "--note"],
    ["claim", "issue:X", "--sha"],
    ["claim", "issue:X", "--help"],
    ["claim", "issue:X", "--", "issue:Y"],
    ["claim", "issue:X", "--json", "issue:Y"],
    ["claim", "-5"],
    ["release", "--all", "issue:X"],
    ["renew", "issue:X", "--shared"],
    ["heartbeat", "issue:X"],
    ["claims"],
]


@pytest.mark.parametrize("argv", READ_BY_HAND, ids=" ".join)
def test_the_plain_form_gives_what_argparse_gives(argv: list[str]) -> None:
    name, args = argv[0], argv[1:]
    quick = quick_args(name, args)
    assert quick is not None
    assert vars(quick) == vars(build_parser(name).parse_args(args))


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert quick_args(argv[0], argv[1:]) is None
