"""Shipments as stored on an order (``orders.shipments``, a JSON list) and read back for care messages.

The stored form is plain JSON so that it travels in the ingest upsert with no extra statement: one object per
parcel with ``tracking_number``, ``carrier_name``, ``carrier_code``, ``shipped_at`` (ISO 8601, UTC) and
``line_ids``. Tracking numbers lead to a consignee at the carrier, so nothing here logs them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from tongcrm.plugin.types import Shipment

__all__ = ["decode", "encode", "latest"]


def encode(shipments: Iterable[Shipment]) -> list[dict[str, Any]]:
    """The JSON form of a channel's shipments, in the channel's order."""
    return [
        {
            "tracking_number": s.tracking_number,
            "carrier_name": s.carrier_name,
            "carrier_code": s.carrier_code,
            "shipped_at": s.shipped_at.astimezone(UTC).isoformat() if s.shipped_at else None,
            "line_ids": list(s.line_ids),
        }
        for s in shipments
    ]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def decode(stored: Sequence[object] | None) -> list[Shipment]:
    """Shipments back from the stored JSON; an entry that is not a valid shipment is skipped (the column is
    written only by :func:`encode`, so that would be a hand edit)."""
    out: list[Shipment] = []
    for entry in stored or ():
        if not isinstance(entry, Mapping):
            continue
        shipped_raw = _text(entry.get("shipped_at"))
        try:
            shipped = datetime.fromisoformat(shipped_raw) if shipped_raw else None
            out.append(
                Shipment(
                    tracking_number=str(entry.get("tracking_number") or ""),
                    carrier_name=_text(entry.get("carrier_name")),
                    carrier_code=_text(entry.get("carrier_code")),
                    shipped_at=shipped,
                    line_ids=tuple(str(x) for x in entry.get("line_ids") or ()),
                )
            )
        except (TypeError, ValueError):
            continue
    return out


def latest(stored: Sequence[object] | None) -> Shipment | None:
    """The most recent parcel: the latest ``shipped_at``; among parcels without one, the last listed."""
    shipments = decode(stored)
    if not shipments:
        return None
    floor = datetime.min.replace(tzinfo=UTC)
    return max(enumerate(shipments), key=lambda pair: (pair[1].shipped_at or floor, pair[0]))[1]
