"""Entry point PyInstaller freezes into ``bin/nebctl`` (same as the ``nebctl`` console script)."""

import sys

from nebula_edge.cli.nebctl import main

if __name__ == "__main__":
    sys.exit(main())
