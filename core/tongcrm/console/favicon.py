"""``/favicon.ico``: the icon a browser asks for on every first visit (it got a 404 problem before).

The icon is drawn here, not kept as a binary file: a ring in white on the console's accent blue (the ``通`` of
tongcrm is "through"), written as a PNG inside an ICO container, which every browser and Windows since Vista read.
"""

from __future__ import annotations

import struct
import zlib
from functools import cache

from litestar import Response, get

#: The icon's edge in pixels (browsers scale it to 16 and up).
SIZE = 32
_ACCENT = (0x0B, 0x5C, 0xAD)  # --accent of console.css
_WHITE = (0xFF, 0xFF, 0xFF)
#: Browsers ask again at most daily; the icon only changes with a release.
CACHE_SECONDS = 86_400


def _pixel(x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """RGBA of pixel (x, y): a rounded square of the accent colour holding a white ring, transparent outside."""
    edge, corner = size - 1, size // 6
    cx = min(max(x, corner), edge - corner)
    cy = min(max(y, corner), edge - corner)
    if (x - cx) ** 2 + (y - cy) ** 2 > corner**2:
        return (0, 0, 0, 0)  # outside the rounded corner
    centre = edge / 2
    distance2 = (x - centre) ** 2 + (y - centre) ** 2
    inner, outer = size * 0.2, size * 0.34
    rgb = _WHITE if inner**2 <= distance2 <= outer**2 else _ACCENT
    return (*rgb, 0xFF)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(size: int = SIZE) -> bytes:
    """The icon as a PNG: 8-bit RGBA, no filter on any row."""
    rows = b"".join(
        b"\x00" + bytes(channel for x in range(size) for channel in _pixel(x, y, size)) for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


@cache
def favicon_ico(size: int = SIZE) -> bytes:
    """An ICO file of one image, the :func:`png` of ``size`` pixels (at most 256)."""
    image = png(size)
    edge = 0 if size == 256 else size  # 0 means 256 in an ICO directory entry
    directory = struct.pack("<HHH", 0, 1, 1)  # reserved, type 1 (icon), one image
    entry = struct.pack("<BBBBHHII", edge, edge, 0, 0, 1, 32, len(image), len(directory) + 16)
    return directory + entry + image


@get(
    "/favicon.ico",
    include_in_schema=False,
    media_type="image/x-icon",
    cache_control=None,
)
async def favicon() -> Response[bytes]:
    """The icon, open to anyone (a browser asks before anyone signs in)."""
    return Response(
        favicon_ico(),
        media_type="image/x-icon",
        headers={"Cache-Control": f"public, max-age={CACHE_SECONDS}"},
    )
