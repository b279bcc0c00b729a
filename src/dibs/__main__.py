"""``python -m dibs``: the same as the ``dibs`` command."""

import sys

from dibs.cli import main

sys.exit(main())
