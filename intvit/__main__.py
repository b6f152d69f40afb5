"""``python -m intvit``: the same command line as the ``intvit`` script."""

import sys

from intvit.cli import main

sys.exit(main())
