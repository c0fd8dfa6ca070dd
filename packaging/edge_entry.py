"""Entry point PyInstaller freezes into ``bin/edge`` (same as the ``edge`` console script)."""

import sys

from nebula_edge.cli.edge import main

if __name__ == "__main__":
    sys.exit(main())
