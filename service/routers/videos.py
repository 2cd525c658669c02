"""Video motion maps: upload a video, follow its job, fetch the results."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from v1motion.service.deps import JobsDep, StateDep
from v1motion.service.disk import disk_full_reason, free_mb, make_durable
from v1motion.service.http_errors import RETRY_AFTER
from v1motion.service.jobs.decode import DecodeError, probe
from v1motion.service.jobs.layout import RESULT_NAMES, JobLayout
from v1motion.service.jobs.manager import JOB_ID, VideoJobs
from v1motion.service.jobs.schemas import JobCreate, JobPublic, JobsPublic
from v1motion.service.jobs.sniff import UnsupportedContainer, sniff_file
from v1motion.service.jobs.upload import (
    MAX_OVERHEAD,
    BodyLimits,
    UploadError,
    receive_upload,
)
from v1motion.service.webfiles import HeldFileResponse

log = logging.getLogger(__name__)

PREFIX = "/v1/videos"
# The token is checked where the app includes this router (v1motion.service.app).
router = APIRouter(prefix=PREFIX, tags=["videos"])

BINARY = {"type": "string", "format": "binary"}
OCTETS = "application/octet-stream"
MEDIA_TYPES = {
    "motion.json": "application/json",
    "motion.npz": OCTETS,
    "overlay.mp4": "video/mp4",
    "summary.png": "image/png",
}


def _job_or_404(jobs: VideoJobs, job_id: str):
    rec = jobs.get(job_id)
    if rec is None:
        gone = jobs.store.gone(job_id) if JOB_ID.match(job_id) else None
        if gone is not None:  # not the 404 of an id that never was (a typo, another server)
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(gone[0]))
            raise HTTPException(410, f"video job {job_id} was deleted on {when}: {gone[1]}")
        raise HTTPException(404, f"no video job with id {job_id!r}")
    return rec


# ----------------------------------------------------------------------------------- routes


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
UPLOAD_ERRORS = {
    200: {
        "description": "an earlier upload of the same file with this Idempotency-Key: its job",
        "model": JobPublic,  # the body a retry needs (generated clients returned None without it)
        "headers": {
            "Location": {"description": "the job's URL", "schema": {"type": "string"}},
        },
    },
    202: {
        "description": "the job, queued",
        "headers": {
            "Location": {
                "description": "the job's URL (GET it to follow the job)",
                "schema": {"type": "string"},
            }
        },
    },
    400: {"description": "more form fields than the limit, or a malformed multipart body"},
    408: {"description": "the body stopped arriving (V1MOTION_UPLOAD_IDLE_TIMEOUT_S)"},
    413: {"description": "larger than V1MOTION_VIDEO_MAX_UPLOAD_MB"},
    415: {"description": "not multipart, not a video content type, or not an accepted container"},
    422: {
        "description": "empty, no 'file' field, refused by the probe (size, codec, fps...), or an "
        "Idempotency-Key already used for another file"
    },
    503: {
        "description": "too many videos waiting, or too many uploads arriving at once",
        "headers": RETRY_AFTER,
    },
    507: {"description": "the server's disk has no room for the upload"},
}


def _refuse_if_queue_full(jobs) -> None:
    if jobs.queue_full():
        raise HTTPException(
            503,
            f"{jobs.max_queued} {'video is' if jobs.max_queued == 1 else 'videos are'} already "
            "waiting; try again later",
            {"Retry-After": str(jobs.retry_after_s())},
        )


IDEMPOTENCY_KEY = r"^[\x21-\x7e]{1,128}$"  # printable ASCII without spaces


def _idempotency_key(key: str | None) -> str | None:
    """The key as given, or a 422 that says its form in words (it quoted the regular expression)."""
    if key is not None and not re.fullmatch(IDEMPOTENCY_KEY, key):
        raise ValueError(
            "an Idempotency-Key is 1 to 128 printable ASCII characters without spaces (a UUID, say)"
        )
    return key


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=UPLOAD_BODY,
    responses=UPLOAD_ERRORS,
)
async def create_video_job(
    request: Request,
    response: Response,
    jobs: JobsDep,
    state: StateDep,
    idempotency_key: Annotated[
        str | None,
        AfterValidator(_idempotency_key),
        Header(
            json_schema_extra={"pattern": IDEMPOTENCY_KEY},
            description="a key of the client's choosing (e.g. a UUID): a POST repeated with the "
            "same key and the same file answers 200 with the first one's job instead of making "
            "another (a retry after a timeout or a dropped connection); the same key with another "
            "file is 422",
        ),
    ] = None,
) -> JobPublic:
    """Upload a video (multipart field ``file``); answers 202 with the queued job.

    The upload is kept until the job ends; its results until the job is deleted, or, where the
    service sets ``V1MOTION_VIDEO_KEEP_DAYS``, that many days after the job ended. With an
    ``Idempotency-Key`` that an earlier upload of the same file carried, the answer is 200 with
    that upload's job (while it is kept)."""
    settings = state.settings
    max_bytes = int(settings.video_max_upload_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MAX_OVERHEAD:
        raise HTTPException(
            413,
            f"the upload is larger than the limit of {max_bytes} bytes",
            {"Connection": "close"},  # its body is not read
        )
    problem = jobs.data_folder_problem()  # before the upload: a job it would lose
    if problem is not None:
        log.error("upload refused: the data folder: %s", problem)
        raise HTTPException(
            503, f"the server cannot use its data folder ({problem})", {"Retry-After": "60"}
        )
    if idempotency_key is None or jobs.store.by_key(idempotency_key) is None:
        _refuse_if_queue_full(jobs)  # before the upload: no bytes received for nothing
    free = free_mb(jobs.jobs_dir)
    if declared and declared.isdigit() and free is not None and int(declared) > free * 2**20:
        raise HTTPException(507, disk_full_reason(jobs.jobs_dir, "the upload"))
    slots = state.upload_slots
    job_id, folder = jobs.new_folder()
    path = JobLayout(folder).input
    accepted = False
    try:
        try:
            with slots.hold():
                limits = BodyLimits.from_settings(settings, max_bytes)
                upload = await receive_upload(request, path, max_bytes, limits)
            if upload.size_bytes == 0:
                raise UploadError(422, "the file is empty")
            sniff_file(path)
        except UploadError as exc:
            headers = {"Retry-After": str(slots.retry_after)} if exc.status == 503 else None
            if exc.status in (408, 413):  # the rest of the body is not read: the connection ends
                headers = {"Connection": "close"}
            raise HTTPException(exc.status, exc.detail, headers) from None
        except UnsupportedContainer as exc:
            raise HTTPException(415, str(exc)) from None
        digest = None
        if idempotency_key is not None:
            digest = await run_in_threadpool(_sha256, path)
            earlier = _same_upload(jobs, idempotency_key, digest)
            if earlier is not None:
                return _answer_earlier(earlier, request, response)
        async with state.video_probe_slots:
            try:
                info = await run_in_threadpool(probe, path, jobs.limits)
            except DecodeError as exc:
                raise HTTPException(422, f"the video was refused: {exc}") from None
        # the upload on the disk before the 202 says it is accepted (a power cut loses neither)
        await run_in_threadpool(make_durable, path, folder, folder.parent)
        create = JobCreate(
            filename=upload.filename, content_type=upload.content_type, size_bytes=upload.size_bytes
        )
        # Again, with nothing awaited before the submit: the uploads that arrived meanwhile were
        # queued (the probe: 34 jobs waiting against a limit of 32 from 4 uploads at a time).
        _refuse_if_queue_full(jobs)
        try:
            rec = jobs.submit(
                job_id, create.filename, create.content_type, create.size_bytes,
                idempotency_key, digest,
                frames_total=min(info.declared_frames or info.max_frames, info.max_frames),
            )  # fmt: skip
        except sqlite3.IntegrityError:  # the same key, uploaded at the same time: the first won
            earlier = _same_upload(jobs, idempotency_key, digest)
            if earlier is None:
                raise
            return _answer_earlier(earlier, request, response)
        accepted = True
    finally:
        if not accepted:
            shutil.rmtree(folder, ignore_errors=True)
    log.info("job %s: queued (%d bytes)", job_id, upload.size_bytes)
    await run_in_threadpool(
        jobs.expire
    )  # the store grows now: jobs past V1MOTION_VIDEO_KEEP_DAYS go
    base = _base(request)
    response.headers["Location"] = f"{base}/{job_id}"
    return JobPublic.from_record(rec, base)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _same_upload(jobs: VideoJobs, key: str, digest: str):
    """The job an earlier upload with ``key`` made, if it was of the same file (None if no job has
    the key); 422 if the key came with another file."""
    earlier = jobs.store.by_key(key)
    if earlier is not None and earlier.sha256 != digest:
        raise HTTPException(
            422,
            f"Idempotency-Key {key!r} came with another file before (job {earlier.id}); "
            "use a new key for a new file",
        )
    return earlier


def _answer_earlier(rec, request: Request, response: Response) -> JobPublic:
    log.info("job %s: the same upload again, with its Idempotency-Key", rec.id)
    response.status_code = 200
    base = _base(request)
    response.headers["Location"] = f"{base}/{rec.id}"
    return JobPublic.from_record(rec, base)


def _base(request: Request) -> str:
    """Where the jobs are, as the client reaches them: behind a proxy that strips a path prefix
    (``V1MOTION_ROOT_PATH``), with the prefix; links without it were 404s through the proxy."""
    return f"{request.scope.get('root_path', '').rstrip('/')}{PREFIX}"


MAX_OFFSET = (
    1_000_000_000  # SQLite's OFFSET is a signed 64-bit integer; no store holds this many jobs
)
# The last job of a page, as ``<created_at>_<id>``: the next page starts after it whatever was
# submitted or deleted meanwhile (a "download, then delete" loop paging by offset skipped 40 % of
# the jobs: each deletion moved the rows the next offset would have read).
CURSOR = re.compile(r"^(\d{1,12}(?:\.\d{1,20})?)_([0-9a-f]{32})$")
Status = Literal["queued", "running", "succeeded", "failed"]


def _cursor(rec) -> str:
    return f"{rec.created_at!r}_{rec.id}"


@router.get(
    "",
    response_model=JobsPublic,
    responses={
        422: {"description": "a bad status or cursor, offset with after, an unknown parameter"}
    },
)
def list_video_jobs(
    request: Request,
    jobs: JobsDep,
    limit: Annotated[int, Query(ge=1, le=500, description="jobs per page")] = 100,
    offset: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="jobs to skip (pages move as jobs come and go)")
    ] = 0,
    status: Annotated[
        list[Status] | None,
        Query(description="only jobs in these states (repeat it for several)"),
    ] = None,
    after: Annotated[
        str | None,
        Query(
            max_length=80,
            description="the cursor of the page before (its `next`): the jobs after its last one",
        ),
    ] = None,
) -> JobsPublic:
    """Jobs, newest first, a page at a time: follow each page's ``next`` until it is null."""
    position = None
    if after is not None:
        m = CURSOR.match(after)
        if not m:
            raise HTTPException(422, f"after={after!r} is not a cursor: pass a page's 'next' on")
        if offset:
            raise HTTPException(422, "give after (a cursor) or offset, not both")
        position = (float(m.group(1)), m.group(2))
    statuses = tuple(dict.fromkeys(status)) if status else None
    # One more than the page: whether a next page exists, in the same query.
    records, total = jobs.store.list(limit + 1, offset, statuses, position)
    more, records = len(records) > limit, records[:limit]
    base = _base(request)
    following = None
    if more:
        query = [("limit", str(limit)), *(("status", s) for s in statuses or ())]
        query.append(("after", _cursor(records[-1])))
        following = f"{base}?{urlencode(query)}"
    return JobsPublic(
        data=[JobPublic.from_record(r, base) for r in records], count=total, next=following
    )


JOB_NOT_FOUND = {
    404: {"description": "no video job with this id"},
    410: {
        "description": "the job was deleted (by a client, or V1MOTION_VIDEO_KEEP_DAYS after it ended)"
    },
}


@router.get("/{job_id}", response_model=JobPublic, responses=JOB_NOT_FOUND)
def get_video_job(job_id: str, request: Request, jobs: JobsDep) -> JobPublic:
    """Status and progress (frames done of total)."""
    return JobPublic.from_record(_job_or_404(jobs, job_id), _base(request))


# The file's own type (a file download; motion.json is JSON), not FastAPI's default of JSON for all.
# A binary type comes first, JSON last: generated clients read a response as its first type, and
# with JSON first they parsed every download (npz, mp4, png) as JSON and failed.
RESULT_CONTENT = {
    media: {"schema": BINARY}
    for media in dict.fromkeys([OCTETS, *MEDIA_TYPES.values()])
    if media != "application/json"
} | {"application/json": {"schema": {"type": "object"}}}
# A Range request (a player seeking in overlay.mp4, a resumed download) is answered by
# FileResponse: 206 with the bytes asked for, several ranges as multipart/byteranges.
PARTIAL_CONTENT = {
    "description": "the byte range(s) a Range header asked for (RFC 9110 §14)",
    "headers": {
        "Content-Range": {
            "description": "bytes <first>-<last>/<size> of the one range sent (several ranges: "
            "in each part of the multipart/byteranges body)",
            "schema": {"type": "string"},
        }
    },
    # bytes of the file, whatever its type (a part of motion.json is not a JSON object)
    "content": {media: {"schema": BINARY} for media in [*RESULT_CONTENT, "multipart/byteranges"]},
}

ResultName = Annotated[
    str,
    PathParam(
        description="which result file: " + ", ".join(RESULT_NAMES),
        json_schema_extra={"enum": list(RESULT_NAMES)},
    ),
]


@router.get(
    "/{job_id}/{name}",
    response_class=FileResponse,
    responses={
        200: {"description": "the file, as an attachment", "content": RESULT_CONTENT},
        206: PARTIAL_CONTENT,
        404: {"description": "no such job, or no result by that name"},
        410: JOB_NOT_FOUND[410],
        304: {"description": "If-None-Match named the file's ETag: the copy the client has is it"},
        409: {"description": "the job has not succeeded, so it has no results yet"},
        416: {
            "description": "no byte of the Range asked for is in the file (a Range that does not "
            "parse is ignored, and the whole file sent)",
            "headers": {
                "Content-Range": {"description": "bytes */<size>", "schema": {"type": "string"}}
            },
        },
    },
)
def get_video_result(job_id: str, name: ResultName, jobs: JobsDep, request: Request) -> Response:
    """One result file: ``motion.json``, ``motion.npz``, ``overlay.mp4`` or ``summary.png``."""
    if name not in RESULT_NAMES:
        raise HTTPException(404, f"no result named {name!r}; results: {', '.join(RESULT_NAMES)}")
    rec = _job_or_404(jobs, job_id)
    if rec.status == "failed":
        raise HTTPException(409, f"the job failed, so it has no results: {rec.error}")
    if rec.status != "succeeded":
        raise HTTPException(409, f"the job is {rec.status}; results appear when it has succeeded")
    path: Path = jobs.result_path(job_id, name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        if not path.parent.exists():  # deleted meanwhile
            raise HTTPException(410, f"job {job_id} was deleted") from None
        # drawn nowhere else: overlays were off where it ran (V1MOTION_VIDEO_OVERLAY=false, here
        # or on the older version that ran it, which kept no 'overlay' field)
        why = " (overlays were off when it ran)" if name == "overlay.mp4" else ""
        raise HTTPException(404, f"{name} is not among the results of job {job_id}{why}") from None
    answer = HeldFileResponse(
        os.fdopen(fd, "rb"), path, media_type=MEDIA_TYPES[name], filename=f"{job_id}-{name}"
    )
    etag = answer.headers["etag"]  # a job's results never change once it has succeeded
    asked = {
        t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")
    }
    if etag in asked or "*" in asked:
        answer.held.close()
        return Response(status_code=304, headers={"ETag": etag})
    return answer


@router.delete("/{job_id}", status_code=204, responses=JOB_NOT_FOUND)
async def delete_video_job(job_id: str, jobs: JobsDep) -> Response:
    """Delete a job, its upload and its results (a running job is stopped first)."""
    _job_or_404(jobs, job_id)
    await run_in_threadpool(jobs.delete, job_id)
    return Response(status_code=204)
