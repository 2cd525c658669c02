"""Identify an upload's container from its first bytes; only listed formats pass.

The extension and the declared content type are the client's word; the magic bytes are the file's.
Anything that is not one of the containers below is refused before a decoder ever sees it: HLS playlists,
ffconcat scripts, images, text, archives, empty files.
"""

from __future__ import annotations

from pathlib import Path

ALLOWED_CONTAINERS = ("mp4", "avi", "matroska")
HEAD_BYTES = 64

# ISO base media "ftyp"/QuickTime top-level boxes that may open a .mp4/.mov file.
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"}


class UnsupportedContainer(ValueError):
    """The upload is not one of the allowed video containers."""


def _describe_unknown(head: bytes) -> str:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"#EXTM3U"):
        return "an HLS playlist (.m3u8)"
    if text.startswith(b"ffconcat"):
        return "an ffconcat script"
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "a GIF image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    if head.startswith(b"BM"):
        return "a BMP image"
    return "an unrecognised format"


def sniff_container(head: bytes) -> str:
    """Return the container name of a file from its first bytes.

    Parameters
    ----------
    head : bytes
        The first bytes of the file (at least 12 are needed; :data:`HEAD_BYTES` are enough).

    Returns
    -------
    str
        One of :data:`ALLOWED_CONTAINERS`.

    Raises
    ------
    UnsupportedContainer
        With a message that names what the file looks like and the accepted formats.
    """
    if len(head) == 0:
        raise UnsupportedContainer("the file is empty")
    if len(head) >= 12 and head[4:8] in _ISO_BOXES:
        if head[4:8] != b"ftyp" or head[8:12] not in (b"heic", b"heix", b"avif", b"mif1", b"msf1"):
            return "mp4"
        return _refuse("a HEIF/AVIF image")
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    return _refuse(_describe_unknown(head))


def _refuse(what: str) -> str:
    raise UnsupportedContainer(
        f"the file is {what}, not an accepted video; "
        "accepted containers: MP4/MOV, AVI, Matroska/WebM"
    )


def sniff_file(path: Path) -> str:
    """:func:`sniff_container` on the first bytes of ``path``."""
    with open(path, "rb") as f:
        return sniff_container(f.read(HEAD_BYTES))
