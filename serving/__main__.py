"""``python -m serving``: the same as ``freshet serve``."""

import sys

from serving.cli import entry

sys.exit(entry())
