"""``python -m dibs``: the same as the ``dibs`` command."""

import sys

from dibs.faces.cli import main

sys.exit(main())
