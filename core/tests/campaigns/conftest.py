"""The campaign tests reuse the messaging test kit (fake SMS gateway, clock, members, orders)."""

from __future__ import annotations

import sys
from pathlib import Path

_KIT = str(Path(__file__).resolve().parent.parent / "messaging")
if _KIT not in sys.path:
    sys.path.insert(0, _KIT)
