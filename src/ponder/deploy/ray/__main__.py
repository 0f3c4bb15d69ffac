"""``python -m ponder.deploy.ray``: the same as ``ponder deploy ray``."""

import sys

from ponder.deploy.ray.cli import main

sys.exit(main())
