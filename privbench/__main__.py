import sys

from privbench.cli import entry

sys.exit(entry())
