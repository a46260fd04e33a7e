"""``python -m phi3space``: the CLI (phi3space.cli)."""

import sys

from phi3space.cli import main

sys.exit(main())
