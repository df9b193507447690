"""Draw the site's raster images from the date badge of templates/web/favicon.svg, with no image library.

Writes templates/web/favicon.ico (16, 32 and 48 px PNGs in one ICO, for browsers and tools that
ask for /favicon.ico) and templates/web/og-image.png (1200x630, the Open Graph image of the
day pages: the badge on the site's paper colour). The shapes are rounded rectangles and bars,
each pixel's coverage computed from its distance to the edge (anti-aliased), written as PNG
with zlib. The files are committed; run this again only to change the design:

    .venv/bin/python tools/make_images.py
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

WEB = Path(__file__).resolve().parents[1] / "templates" / "web"
NAVY = (0x1F, 0x3A, 0x5F)
WHITE = (0xFF, 0xFF, 0xFF)
PAPER = (0xF3, 0xEF, 0xE6)
GOLD = (0x7A, 0x5C, 0x2E)

Shape = Callable[[float, float], float]  # signed distance in badge units (the SVG's 64x64 box); < 0 inside


def box(x0: float, y0: float, x1: float, y1: float, radius: float = 0.0) -> Shape:
    """A rectangle with rounded corners, as the SVG's <rect rx>."""
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 - radius, (y1 - y0) / 2 - radius

    def distance(x: float, y: float) -> float:
        dx, dy = abs(x - cx) - hw, abs(y - cy) - hh
        outside = (max(dx, 0.0) ** 2 + max(dy, 0.0) ** 2) ** 0.5
        return outside + min(max(dx, dy), 0.0) - radius

    return distance


def ring(shape: Shape, width: float) -> Shape:
    """The outline of a shape, ``width`` wide and centred on its edge (an SVG stroke)."""
    return lambda x, y: abs(shape(x, y)) - width / 2


def inside(shape: Shape, clip: Shape) -> Shape:
    return lambda x, y: max(shape(x, y), clip(x, y))


# The badge of favicon.svg: a white page with a navy frame and header band, and a navy "H" (drawn as bars).
PAGE = box(4, 8, 60, 60, 8)
BADGE: list[tuple[Shape, tuple[int, int, int]]] = [
    (PAGE, WHITE),
    (inside(box(4, 8, 60, 24), PAGE), NAVY),
    (ring(PAGE, 4), NAVY),
    (box(21, 32, 27, 52), NAVY),
    (box(37, 32, 43, 52), NAVY),
    (box(21, 39.5, 43, 44.5), NAVY),
]


def draw(width: int, height: int, scale: float, left: float, top: float, background: tuple[int, int, int] | None):
    """Rows of RGBA pixels: the badge at ``scale`` pixels per badge unit, its box's corner at (left, top)."""
    rows = []
    for py in range(height):
        row = bytearray()
        for px in range(width):
            x, y = (px + 0.5 - left) / scale, (py + 0.5 - top) / scale
            colour, alpha = background or (0, 0, 0), 1.0 if background else 0.0
            for shape, fill in BADGE:
                cover = min(max(0.5 - shape(x, y) * scale, 0.0), 1.0)
                if cover:
                    total = cover + alpha * (1 - cover)
                    colour = tuple(
                        round((f * cover + c * alpha * (1 - cover)) / total) for f, c in zip(fill, colour, strict=True)
                    )
                    alpha = total
            row += bytes(colour) + bytes([round(alpha * 255)])
        rows.append(bytes(row))
    return rows


def png(rows: list[bytes], width: int, height: int, opaque: bool) -> bytes:
    """Encode RGBA rows as a PNG (RGB when opaque), one filter byte per row."""
    if opaque:
        rows = [bytes(b for i, b in enumerate(row) if i % 4 != 3) for row in rows]
    raw = b"".join(b"\0" + row for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2 if opaque else 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def icon(size: int) -> bytes:
    return png(draw(size, size, size / 64, 0, 0, None), size, size, opaque=False)


def ico(images: dict[int, bytes]) -> bytes:
    """An ICO file holding PNG images (supported by every browser since 2007)."""
    out = struct.pack("<HHH", 0, 1, len(images))
    offset = 6 + 16 * len(images)
    for size, data in images.items():
        out += struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(data), offset)
        offset += len(data)
    return out + b"".join(images.values())


def og_image(width: int = 1200, height: int = 630) -> bytes:
    scale = 6.5  # a 416 px badge, centred
    rows = draw(width, height, scale, (width - 64 * scale) / 2, (height - 64 * scale) / 2 - 8 * scale / 2, PAPER)
    band = bytes(GOLD) + b"\xff"
    rows = [band * width if y < 12 or y >= height - 12 else row for y, row in enumerate(rows)]
    return png(rows, width, height, opaque=True)


def main() -> None:
    (WEB / "favicon.ico").write_bytes(ico({size: icon(size) for size in (16, 32, 48)}))
    (WEB / "og-image.png").write_bytes(og_image())
    for name in ("favicon.ico", "og-image.png"):
        print(f"wrote {WEB / name} ({(WEB / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
