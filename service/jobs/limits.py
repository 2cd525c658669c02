"""The limits a video must respect before and while it is decoded."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field

# FourCC codes (as OpenCV's FFmpeg backend reports them) of the video codecs we agree to decode.
DEFAULT_CODECS = (
    "h264",
    "avc1",
    "hevc",
    "hev1",
    "hvc1",
    "mp4v",
    "fmp4",
    "xvid",
    "divx",
    "dx50",
    "mp42",
    "mp43",
    "mjpg",
    "cvid",
    "vp80",
    "vp90",
    "vp08",
    "vp09",
    "av01",
    "ffv1",
)

CODEC_NAMES = {
    **dict.fromkeys(("apcn", "apch", "apcs", "apco", "ap4h", "ap4x"), "Apple ProRes"),
    **dict.fromkeys(("dvsd", "dv25", "dv50", "dvhd", "dvh5", "dvh6", "dvpp"), "DV"),
    **dict.fromkeys(("mpg2", "mp2v", "mx3p", "mx5p", "xdv7", "xd5c"), "MPEG-2"),
    **dict.fromkeys(("mpg1", "mp1v"), "MPEG-1"),
    **dict.fromkeys(("wmv1", "wmv2", "wmv3", "wvc1"), "Windows Media Video"),
    **dict.fromkeys(("h263", "s263", "u263"), "H.263"),
    **dict.fromkeys(("dnxh", "avdn", "avdh"), "Avid DNxHD"),
    "cfhd": "GoPro CineForm",
}
"""Names of codecs a file may hold but that are not decoded (their FourCCs), for the refusal."""

H264_MISSING = "h264 overlays need PyAV: pip install 'v1motion[h264]'"


def h264_available() -> bool:
    """Whether PyAV, which writes the H.264 overlay, is installed (the h264 extra; the container
    image leaves it out)."""
    return importlib.util.find_spec("av") is not None


def overlay_codec(asked: str) -> str:
    """The codec ``asked`` (``Limits.overlay_codec``) stands for: ``auto`` is h264 where PyAV is
    installed, else mp4v."""
    if asked == "auto":
        return "h264" if h264_available() else "mp4v"
    return asked


@dataclass(frozen=True)
class Limits:
    """Caps applied to one video job.

    Parameters
    ----------
    max_width, max_height : int
        Largest accepted frame size in pixels (the declared size; checked before any frame is decoded).
    min_side : int
        Smallest accepted width and height (the motion engine needs a few patches per side).
    max_frames : int
        Decoding stops after this many frames, whatever the container declares.
    max_seconds : float
        Decoding stops after this much video time: at the first frame whose own time lies past
        it, and after ``max_seconds`` times the declared frame rate in frames (the bound on the
        frames a job keeps).
    min_fps, max_fps : float
        Accepted range of the declared frame rate.
    codecs : tuple of str
        Allowed codec FourCCs, lower case.
    memory_mb : int
        Address-space cap of the decoder process (``RLIMIT_AS``).
    deadline_s : float
        Wall-clock limit of one job's decoding; the decoder is killed when it passes.
    probe_timeout_s : float
        Wall-clock limit of opening and probing the file.
    max_side : int
        Frames larger than this on their longer side are shrunk before the motion engine sees them.
    overlay_codec : str
        ``"h264"`` (browsers play it; needs PyAV), ``"mp4v"`` (faster to encode; desktop players
        only) or ``"auto"``: h264 where PyAV is installed, else mp4v.
    overlay : bool
        Draw and encode ``overlay.mp4`` (at 640x480 drawing costs about what decoding does and
        encoding half that; both run beside the engine, on threads).
    """

    max_width: int = 3840
    max_height: int = 2160
    min_side: int = 64
    max_frames: int = 18_000
    max_seconds: float = 600.0
    min_fps: float = 0.1
    max_fps: float = 1000.0
    codecs: tuple[str, ...] = field(default=DEFAULT_CODECS)
    memory_mb: int = 2048
    deadline_s: float = 1800.0
    probe_timeout_s: float = 20.0
    max_side: int = 640
    overlay: bool = True
    overlay_codec: str = "auto"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["codecs"] = list(self.codecs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Limits:
        d = dict(d)
        d["codecs"] = tuple(d.get("codecs", DEFAULT_CODECS))
        return cls(**d)
