import sys

from phi3space.cli import main

sys.exit(main())
