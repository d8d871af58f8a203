"""The campaign tests reuse the messaging test kit (fake SMS gateway, clock, members, orders)."""

from __future__ import annotations

import sys
from pathlib import Path

for _kit in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "messaging"):
    if str(_kit) not in sys.path:
        sys.path.insert(0, str(_kit))
