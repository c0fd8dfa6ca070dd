"""Go-style flags on argparse: ``-port 8080``, ``--port 8080``, ``-port=8080`` and
``-mdns=false`` all work, as the product description's binaries took them."""

from __future__ import annotations

import argparse
from typing import Any


def parse_bool(v: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {v!r}")


class GoFlags(argparse.ArgumentParser):
    """An ArgumentParser whose long options take one dash or two, never abbreviated."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(allow_abbrev=False, **kw)

    def flag(self, name: str, **kw: Any) -> None:
        self.add_argument(f"-{name}", f"--{name}", **kw)

    def bool_flag(self, name: str, default: bool, help: str) -> None:
        self.add_argument(f"-{name}", f"--{name}", type=parse_bool, nargs="?", const=True,
                          default=default, metavar="true|false", help=help)
