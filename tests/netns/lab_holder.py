"""Not a test module of its own (no ``test_`` prefix): ``test_cleanup.py`` runs it in a
pytest of its own, then kills that pytest, to see what a killed test run leaves behind.

It starts a 2-host lab, writes the lab's state to ``$NEBULA_LAB_HOLD`` and waits to be
killed (at most 120 s, then it ends by itself and closes the lab as usual).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .lab import Lab


def test_hold_a_lab_until_killed() -> None:
    ready = Path(os.environ["NEBULA_LAB_HOLD"])
    with Lab(2) as lab:
        tmp = ready.with_suffix(".tmp")
        tmp.write_text(json.dumps(lab.state()))
        tmp.replace(ready)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # waiting for the signal, bounded in time
            time.sleep(0.1)
