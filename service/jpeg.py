"""Read a JPEG's dimensions from its header, before any decoding allocates pixels."""

from __future__ import annotations

# Start-of-frame markers carry the dimensions: C0-CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field


class JPEGHeaderError(ValueError):
    """The bytes are not a well-formed JPEG header."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from the first start-of-frame segment.

    Raises
    ------
    JPEGHeaderError
        If ``data`` does not start with a JPEG SOI marker or has no frame header before the scan.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise JPEGHeaderError("not a JPEG (no SOI marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise JPEGHeaderError(f"corrupt JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            raise JPEGHeaderError("corrupt JPEG: bad segment length")
        if marker in _SOF:
            if i + 9 > n:
                break
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            if width == 0 or height == 0:
                raise JPEGHeaderError("JPEG frame header has a zero dimension")
            return width, height
        i += 2 + length
    raise JPEGHeaderError("JPEG has no frame header before its image data")
