"""``python -m cropwatch ...``: the console script without an installed entry point."""

import sys

from cropwatch.cli import main

sys.exit(main())
