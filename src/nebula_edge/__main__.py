"""``python -m nebula_edge`` runs the agent, like ``edge``."""

import sys

from nebula_edge.cli.edge import main

sys.exit(main())
