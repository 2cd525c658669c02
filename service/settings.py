"""Settings from the environment (prefix ``V1MOTION_``), validated at start-up.

Sources are configured here and only here: clients pick a source by name and never send a path or URL.
``V1MOTION_SOURCES`` is a JSON list whose items are either objects (the fields of :class:`SourceSpec`) or
short strings ``"name=kind:target"``, for example::

    V1MOTION_SOURCES='["synthetic", "lobby=camera:0", "clip=file:videos/walk.mp4", "gate=url:rtsp://cam/s"]'
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from v1motion.service.jobs.limits import H264_MISSING, h264_available

PROJECT_ROOT = Path(__file__).resolve().parents[1]

SOURCE_KINDS = ("synthetic", "camera", "file", "url")
"""The kinds of live source, in one place: ``SourceSpec.kind``, its parsing and its description, the
``serve --source`` help and ``live.sources.source_factory`` follow it (tests/service/test_settings_sources.py)."""
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class SourceSpec(BaseModel):
    """One server-side source. ``target`` is the camera index, file path or stream URL."""

    model_config = ConfigDict(extra="forbid")  # a misspelt "lop": false must not loop silently

    name: str
    kind: Literal[SOURCE_KINDS]
    target: str = ""
    loop: bool = Field(
        True, description="file sources and recorded videos at a URL: start again at the end"
    )
    fps: float = Field(
        30.0,
        gt=0,
        le=240,
        description="synthetic sources: frames per second; files and recorded videos at a URL play "
        "at their own rate, this one only where they state none",
    )
    width: int = Field(320, ge=32, le=4096, description="synthetic sources: frame width")
    height: int = Field(240, ge=32, le=4096, description="synthetic sources: frame height")
    max_width: int = Field(
        640, ge=32, le=4096, description="wider frames are downscaled before the engine"
    )

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"source name {v!r} must be 1-32 characters of a-z, 0-9, '_' or '-', "
                "starting with a letter or digit"
            )
        return v

    @model_validator(mode="after")
    def _target_ok(self) -> SourceSpec:
        if self.kind == "camera" and not self.target.isdigit():
            raise ValueError(f"camera source {self.name!r}: target must be a device index like '0'")
        if self.kind == "synthetic" and self.target:
            # 'x=synthetic:foo' was taken, its target ignored without a word
            raise ValueError(
                f"synthetic source {self.name!r} takes no target (its size and frame rate are the "
                "object form's width, height and fps)"
            )
        if self.kind == "file":
            if not self.target:
                raise ValueError(f"file source {self.name!r}: target must be a video file path")
            path = Path(self.target).expanduser()
            if path.is_dir():
                raise ValueError(
                    f"file source {self.name!r}: {self.target!r} is a folder, not a file"
                )
            if not path.is_file():
                raise ValueError(f"file source {self.name!r}: no such file {self.target!r}")
        if self.kind == "url":
            scheme = urlsplit(self.target).scheme.lower()
            if scheme not in URL_SCHEMES:
                raise ValueError(
                    f"url source {self.name!r}: scheme {scheme!r} not supported; "
                    f"use one of {', '.join(URL_SCHEMES)}"
                )
            # (udp, tcp and srt may listen on a port of this machine: no host.) The URL itself is
            # not said: it may hold a password.
            if (
                scheme in ("rtsp", "rtsps", "rtmp", "http", "https")
                and not urlsplit(self.target).hostname
            ):
                raise ValueError(f"url source {self.name!r}: the URL names no host")
        return self

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """Parse ``"name=kind:target"``, ``"kind:target"`` or a bare ``"synthetic"``."""
        name, sep, rest = text.partition("=")
        if not sep:
            name, rest = "", text
        kind, _, target = rest.partition(":")
        kind = kind.strip().lower()
        if kind not in SOURCE_KINDS:
            raise ValueError(
                f"source {name or text.split(':')[0]!r}: unknown kind {kind!r}; valid kinds: "
                f"{', '.join(SOURCE_KINDS)}"  # never the target: a URL may hold a password
            )
        if not name:
            name = kind if kind == "synthetic" else f"{kind}{target}" if kind == "camera" else ""
        if not name:
            raise ValueError(f"a {kind} source needs a name, as in 'name={kind}:...'")
        return cls(name=name.strip(), kind=kind, target=target.strip())

    def describe(self) -> str:
        """A description safe to show clients: never the URL (it may carry credentials)."""
        if self.kind == "synthetic":
            return f"synthetic gratings and panned images, {self.width}x{self.height}"
        if self.kind == "camera":
            return f"camera {self.target} on the server"
        if self.kind == "file":
            return f"video file {Path(self.target).name}" + (" (looping)" if self.loop else "")
        if self.kind == "url":
            return f"{urlsplit(self.target).scheme} stream"
        # a new kind without its words was shown to clients as " stream"
        raise NotImplementedError(f"source kind {self.kind!r} has no description")


def config_errors(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """A settings ``ValidationError`` as lines ``V1MOTION_NAME (--flag): message``, without the values
    given: the names an operator typed, not the fields' (``--threads 0`` was
    ``engine_threads: ...``). ``flags``: field -> the command-line flag that set it.

    pydantic's own text repeats the input, and for a check across fields that is every setting,
    ``token`` included: a start-up error must not print the secret.
    """
    lines = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc) or "settings"
        if loc and loc[0] in Settings.model_fields:
            env = f"V1MOTION_{loc[0].upper()}"
            flag = (flags or {}).get(loc[0])
            where = (flag or env) + ("." + ".".join(loc[1:]) if loc[1:] else "")
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's wrapping of our own messages
        if loc:
            msg = msg.removeprefix(f"V1MOTION_{loc[0].upper()}: ")  # said once
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


LIST_EXAMPLES = {
    "sources": '\'["synthetic", "cam=camera:0"]\' (items as --source takes them, or objects)',
    "allowed_hosts": "'[\"motion.example.org\"]'",
    "allowed_origins": "'[\"https://motion.example.org\"]'",
}


def env_not_json(exc: Exception) -> str:
    """What to write instead, for pydantic-settings' error on a list variable that is not JSON
    ('error parsing value for field "sources" from source "EnvSettingsSource"')."""
    found = re.search(r'field "(\w+)"', str(exc))
    if found is None:
        return str(exc)
    field = found[1]
    example = LIST_EXAMPLES.get(field, "a JSON list")
    return f"V1MOTION_{field.upper()} must be a JSON list, e.g. {example}"


def _numba_threads() -> int:
    """Numba's thread count (NUMBA_NUM_THREADS, by default the number of cores)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


class Settings(BaseSettings):
    # No setting takes inf or NaN: MAX_BODY_MB=inf started a server whose every answer was a 500,
    # VIDEO_DEADLINE_S=inf one whose every upload was refused as a broken video.
    model_config = SettingsConfigDict(env_prefix="V1MOTION_", extra="ignore", allow_inf_nan=False)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    root_path: str = Field("", description="path prefix when served behind a reverse proxy")
    forwarded_allow_ips: str | None = Field(
        None,
        description="addresses of the reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(comma-separated IPs or networks, '*' for any); unset: uvicorn's FORWARDED_ALLOW_IPS, "
        "else 127.0.0.1,::1",
    )
    data_dir: Path = Field(PROJECT_ROOT / "var", description="job store and results")
    web_dir: Path = Field(PROJECT_ROOT / "web", description="static dashboard files")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"

    @field_validator("host", "data_dir", "web_dir", mode="before")
    @classmethod
    def _not_empty(cls, v):
        # `-e V1MOTION_DATA_DIR=$DATA` with DATA unset: the job store went into the folder the
        # service was started from, and an empty host listened on every interface
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty: give a value, or leave the variable unset for the default")
        return v

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies_are_addresses(cls, v: str | None) -> str | None:
        # uvicorn keeps an entry it cannot parse as a literal host name, which a proxy's address
        # never matches: a typo (10.0.0.300, /33) silently believed no proxy at all
        if v is None:
            return v
        for item in (x.strip() for x in v.split(",")):
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (comma-separated, or '*')"
                ) from None
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, v):
        return v.strip().lower() if isinstance(v, str) else v

    engine: Literal["default", "random"] = Field(
        "default", description="'default': shipped trained weights; 'random': untrained, for tests"
    )
    engine_threads: int = Field(
        default_factory=lambda: min(2, _numba_threads()),
        ge=1,
        le=64,
        description="threads of the live engine (the ss-RNN kernel over patch rows, the coarse "
        "read beside the fine one; the same results); frames under 150,000 pixels run on one. At "
        "most NUMBA_NUM_THREADS, the number of cores by default; default 2 where there are 2 cores",
    )
    engine_place_threads: bool = Field(
        True,
        description="while the live engine steps a frame on several threads, run each on a CPU of "
        "its own; left to the scheduler, a stream's threads were woken onto one core after each "
        "pause between frames (640x480 latency p95 16.6-16.9 ms against 11.6-14.6 placed, a "
        "2-core machine). Where other busy programs share the server's few cores (a browser on the "
        "same 2 cores: p95 16.6-16.8 against 19.6-20.7 placed), false lets the scheduler move them",
    )
    blas_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="threads per BLAS call in this process (the engine's matrix products); the "
        "engine's are small, and a pool of waiting BLAS threads made each step 5-7x slower on a busy "
        "2-core machine and took CPU from the viewers' event loop",
    )
    gc_freeze: bool = Field(
        True,
        description="once the engine is ready, move every object alive (modules, the engine) "
        "into the garbage collector's permanent generation: a full collection of the server's "
        "heap holds every thread for 100-200 ms (one in each 20 s of a live stream on a busy "
        "2-core machine); after the freeze it walks only the objects made since",
    )
    live_busy_poll_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="the worker of a server-side source polls for the next frame without sleeping "
        "from this long before it is due (the source's pace, measured); 0: it sleeps until the "
        "frame comes. On a 2-core virtual machine, with the engine's threads placed (the "
        "default), 15 took a 640x480 stream's latency p95 from 13.7-14.6 to 12.1 ms for 0.4 of a "
        "core more (docs/bench/service_latency.md)",
    )
    sources: list[SourceSpec] = Field(default_factory=lambda: [SourceSpec.parse("synthetic")])

    token: SecretStr | None = Field(
        None, description="required when bound to anything but localhost"
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="extra Origins (websockets; POST, PUT, PATCH, DELETE without a token) allowed "
        "besides the page's own host",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="extra Host names accepted besides localhost names and 'host' (checked when no "
        "token is required, or when this list is set)",
    )

    grace_period_s: float = Field(
        5.0, ge=0, description="stop a stream this long after its last viewer"
    )
    stall_timeout_s: float = Field(5.0, gt=0, description="no frame for this long: reconnect")
    open_timeout_s: float = Field(5.0, gt=0, description="OpenCV FFmpeg open timeout")
    read_timeout_s: float = Field(5.0, gt=0, description="OpenCV FFmpeg read timeout")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    send_timeout_s: float = Field(10.0, gt=0, description="a viewer that stops reading is dropped")
    ws_ping_interval_s: float = Field(20.0, gt=0)
    ws_ping_timeout_s: float = Field(20.0, gt=0)
    ws_compression: bool = Field(
        False,
        description="accept permessage-deflate: each message is then compressed once per viewer, "
        "which costs the server far more CPU than the engine with dozens of viewers; previews are "
        "JPEG and gain nothing",
    )
    shutdown_timeout_s: int = Field(5, ge=1, description="graceful shutdown with open websockets")
    keep_alive_s: float = Field(
        30.0,
        gt=0,
        description="an idle HTTP connection is closed after this long; longer than clients keep "
        "theirs for reuse (httpx 5 s, aiohttp 15 s), so none reuses one the server is closing",
    )

    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request whose headers have not all arrived this long after its first byte "
        "gets 408 and its connection is closed (a new connection that sends nothing is closed after "
        "keep_alive_s)",
    )
    write_timeout_s: float = Field(
        60.0,
        gt=0,
        description="an answer whose client reads none of it for this long (a download it stopped "
        "reading) has its connection cut; websockets have their own send timeout",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="open connections, websockets included; more are answered 503 and closed (lowered "
        "at start to what the open-file limit allows)",
    )

    preview_width: int = Field(320, ge=32, le=1280, description="width of binary preview frames")
    preview_quality: int = Field(70, ge=10, le=100)
    camera_max_width: int = Field(640, ge=32, le=1920)
    camera_max_height: int = Field(480, ge=32, le=1080)
    camera_max_clients: int = Field(8, ge=1, le=256, description="browser cameras at once")
    camera_max_bytes: int = Field(
        512 * 1024, ge=1024, description="largest JPEG accepted from a browser camera"
    )

    # Video jobs (service/routers/videos.py, service/jobs/)
    video_engine: Literal["default", "random"] | None = Field(
        None, description="motion engine of the video workers; unset: the same as 'engine'"
    )
    video_workers: int = Field(1, ge=1, le=64, description="video jobs run at the same time")
    video_worker_idle_s: float = Field(
        600.0,
        ge=0,
        description="a video worker process (its engine and decoder, about 330 MB) stops after this "
        "long without a job, and the next job starts one (a few seconds); 0: workers stay",
    )
    video_engine_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="threads of each video job's engine: with 2, each frame's motion is read "
        "and a later frame whitened while the following frames are encoded on the other (the "
        "same results, 1.8x the frames/s of one at 640x480 on 2 cores). Unset: the cores shared among the video "
        "workers, at most 2 (2 with one worker on 2 cores, 1 with two); keep workers x threads <= "
        "cores. Ray tasks (ray_address) run theirs on one, as Ray schedules one CPU per task",
    )
    video_max_queued: int = Field(32, ge=1, description="uploads are refused while this many wait")
    video_max_upload_mb: float = Field(512.0, gt=0, description="largest accepted upload")
    video_max_frames: int = Field(18_000, ge=1, description="frames decoded per video at most")
    video_max_seconds: float = Field(600.0, gt=0, description="video time decoded at most")
    video_max_side: int = Field(
        640, ge=64, le=3840, description="frames are shrunk to this longer side before the engine"
    )
    video_overlay: bool = Field(True, description="draw overlay.mp4 for each video job")
    video_overlay_codec: Literal["auto", "h264", "mp4v"] = Field(
        "auto",
        description="overlay.mp4's codec: h264 plays in browsers (needs the h264 extra, PyAV); mp4v "
        "(desktop players only) encodes faster; auto: h264 where PyAV is installed, else mp4v",
    )
    video_memory_mb: int = Field(
        2048, ge=256, le=1_048_576, description="address-space cap of a decoder process"
    )
    video_deadline_s: float = Field(
        1800.0, gt=0, le=7 * 86400, description="wall-clock limit of one decode"
    )
    video_max_attempts: int = Field(2, ge=1, description="starts of a job across restarts")
    video_keep_days: float = Field(
        0.0,
        ge=0,
        description="finished jobs and their results are deleted this many days after they end, "
        "checked at start and at each upload; 0 keeps them until a client deletes them",
    )
    ray_address: str | None = Field(
        None, description="run video jobs as Ray tasks on this cluster ('auto', 'ray://host:10001')"
    )

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        # `-e V1MOTION_TOKEN=$TOKEN` with TOKEN unset: a service no token can ever pass, started
        if v is not None and not v.get_secret_value().strip():
            raise ValueError(
                "is empty: set V1MOTION_TOKEN (or --token) to a secret, or leave it unset on "
                "localhost"
            )
        # A space, a line break or a non-ASCII letter cannot travel in an Authorization header:
        # a service no client could pass. (The value itself is never said.)
        if v is not None and not all("!" <= c <= "~" for c in v.get_secret_value()):
            raise ValueError(
                "holds a space, a control character or a non-ASCII letter, which an HTTP header "
                "cannot carry: use letters, digits and punctuation, e.g. from "
                "'python -c \"import secrets; print(secrets.token_urlsafe(32))\"'"
            )
        return v

    @field_validator("video_overlay_codec")
    @classmethod
    def _h264_needs_pyav(cls, v: str) -> str:
        if v == "h264" and not h264_available():
            raise ValueError(f"{H264_MISSING} (or use auto or mp4v)")
        return v

    @field_validator("engine_threads", "video_engine_threads")
    @classmethod
    def _threads_within_numba(cls, v: int | None) -> int | None:
        if v is not None and v > _numba_threads():
            raise ValueError(
                f"{v} threads asked, but Numba has {_numba_threads()} "
                "(NUMBA_NUM_THREADS, by default the number of cores)"
            )
        return v

    @field_validator("sources", mode="before")
    @classmethod
    def _parse_sources(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        return [SourceSpec.parse(x) if isinstance(x, str) else x for x in v]

    @field_validator("root_path")
    @classmethod
    def _root_path_ok(cls, v: str) -> str:
        v = v.rstrip("/")
        if v and not v.startswith("/"):
            raise ValueError(f"root_path {v!r} must start with '/'")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names: {', '.join(dupes)}")
        if not self.sources:
            raise ValueError("configure at least one source (the default is 'synthetic')")
        if self.requires_token and self.token is None:
            raise ValueError(
                f"host {self.host!r} is not localhost: set V1MOTION_TOKEN (or --token) so that "
                "only clients with the token can use the service"
            )
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        if self.video_engine_threads is None:
            self.video_engine_threads = max(1, min(2, _numba_threads() // self.video_workers))
        return self

    @property
    def requires_token(self) -> bool:
        """True when bound to a non-loopback address, or whenever a token is configured."""
        if self.token is not None:
            return True
        if self.host in LOCAL_HOSTS:
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return True

    lm_weights: Path = Field(
        PROJECT_ROOT / "models" / "weights" / "lm_ptb_rglm.npz",
        description="language-model weights (.npz written by `v1motion lm train`)",
    )
    lm_max_chars: int = Field(20_000, ge=1, description="longest text /v1/language accepts")
    lm_max_k: int = Field(100, ge=1, description="largest k /v1/language/next accepts")

    @field_validator("lm_weights")
    @classmethod
    def _weights_exist(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"V1MOTION_LM_WEIGHTS: no language-model weights at {v}")
        from v1motion.models.language.rglm import open_weights

        try:
            open_weights(v).close()  # its zip directory only: the arrays are read at start
        except ValueError as exc:
            raise ValueError(f"V1MOTION_LM_WEIGHTS: {exc}") from None
        return v

    # spike-model endpoints (/v1/spikes)
    spikes_max_models: int = Field(
        32, ge=1, description="fitted models kept; the oldest is dropped"
    )
    spikes_max_elements: int = Field(
        3_000_000, ge=1, description="largest counts array accepted (trials x bins x neurons)"
    )
    spikes_max_sample_elements: int = Field(2_000_000, ge=1, description="largest sample returned")
    batch_niceness: int = Field(
        10,
        ge=0,
        le=19,
        description="added to the (Unix) niceness of the video job and spike worker processes, so "
        "that on shared cores the live streams' engines come first (0: the same priority)",
    )
    spikes_fit_workers: int = Field(
        1, ge=1, le=16, description="worker processes running fits, samples and evaluations"
    )
    spikes_max_pending: int = Field(
        4,
        ge=1,
        description="spike jobs (fits, evaluations, samples, reading large bodies) running or "
        "waiting; more get 429 with Retry-After",
    )
    spikes_max_upload_mb: float = Field(
        16.0, gt=0, description="largest /v1/spikes/models body (JSON or multipart .npz), as sent"
    )
    spikes_max_work: int = Field(
        30_000_000,
        ge=1,
        description="largest fit: counts entries x history lags (or hidden units, latents; an R-GLM: "
        "hidden units + the lags of the GLM it is started from)",
    )
    spikes_max_fit_mb: float = Field(
        1000.0,
        gt=0,
        description="most memory a fit may need, estimated before it runs: it grows with the square "
        "of the neurons (a GLM's couplings, an LDS's covariance of the counts in each bin)",
    )

    max_body_mb: float = Field(
        16.0,
        gt=0,
        description="largest request body of the JSON routes (uploads have their own limits)",
    )

    # every upload (video files, spike bodies)
    upload_max_concurrent: int = Field(
        4, ge=1, description="uploads received at the same time; more get 503 with Retry-After"
    )
    upload_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request body (an upload or JSON) of which nothing arrives for this long is "
        "dropped (408)",
    )
    upload_timeout_s: float = Field(
        900.0,
        gt=0,
        description="a request body (an upload or JSON) still arriving after this long is dropped (408)",
    )


NOT_SETTINGS = {
    "V1MOTION_SHARED_DATA": "the research data folder of tests, benchmarks and training",
    "V1MOTION_TARGET": "the compose file's image target",
    "V1MOTION_PUBLISH": "the compose file's host port",
    "V1MOTION_CONTAINER_URL": "CI's container checks",
    "V1MOTION_CONTAINER_TOKEN": "CI's container checks",
    "V1MOTION_CONTAINER_READY_TIMEOUT_S": "CI's container checks",
    "V1MOTION_CONTAINER_JOB_TIMEOUT_S": "CI's container checks",
    "V1MOTION_SCREENSHOTS": "the browser tests' screenshots",
    "V1MOTION_TEST_GATE": "a test's gate file",
}
"""``V1MOTION_`` variables that other parts of the project read: no setting, and not mistyped."""


def unknown_variables(environ) -> list[str]:
    """What to tell an operator of each ``V1MOTION_`` variable that is no setting (a typo such as
    ``V1MOTION_DATA_DIRR`` is ignored without a word by the settings, and the service then ran on
    the default data folder, with none of its jobs): its name and the closest setting."""
    import difflib

    settings = sorted(f"V1MOTION_{name.upper()}" for name in Settings.model_fields)
    said = []
    for name in sorted(environ):
        upper = name.upper()  # the settings read their variables whatever their case
        if not upper.startswith("V1MOTION_") or upper in settings or upper in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(upper, settings, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        said.append(
            f"{name} is not a setting and is ignored{hint}; the settings are in README.md "
            "('Settings') and docs/security.md ('Limits')"
        )
    return said
