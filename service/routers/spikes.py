"""``/v1/spikes``: fit, inspect, evaluate and sample spike-train models.

Fits run in a bounded pool of worker processes (``spikes_fit_workers``, at most ``spikes_max_pending``
fits, evaluations and samples running or waiting, more get 429), never on the event loop. Fitted models live in a bounded
store (``spikes_max_models``; the oldest is dropped), listed by ``GET /models``, and written to the data
folder so that a restart keeps them (:class:`~v1motion.service.spikes_state.SpikeModelStore`).

Input is bounded before any work: the body (JSON or multipart ``.npz``) is read up to
``spikes_max_upload_mb``; each array of an ``.npz`` is sized from its header before it is decompressed;
every numeric option has a range in :class:`SpikeOptions`; and a fit's work (counts entries times history
lags, hidden units or latents; for an R-GLM its hidden units plus the lags of the GLM it fits first) is
capped by ``spikes_max_work`` (:func:`work_factor`), and the memory it needs (estimated before it runs:
it grows with the square of the neurons) by ``spikes_max_fit_mb``.
"""

from __future__ import annotations

import inspect
import io
import json
import logging
import struct
import zipfile
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from v1motion.models.spikes.base import SAMPLE_MAX_COUNT, STOP_REASONS
from v1motion.models.spikes.data import as_counts, bin_spike_times
from v1motion.models.spikes.registry import (
    GROWS_WITH_NEURONS,
    MODEL_KINDS,
    check_data,
    check_observations,
    fit_bytes,
    model_options,
)
from v1motion.models.spikes.rglm import RGLM
from v1motion.service.deps import StateDep, get_settings, get_state
from v1motion.service.http_errors import RETRY_AFTER, also_answers
from v1motion.service.jobs.upload import BodyLimits, UploadError, read_body
from v1motion.service.schemas import RequestBody
from v1motion.service.spikes_state import SpikeModelStore, SpikeWorker
from v1motion.service.spikes_work import evaluate, fit_record, sample_body

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/spikes", tags=["spikes"])


# ----------------------------------------------------------------------------- schemas
# The schema's examples (what /docs fills in): one fit, then its evaluation and samples, that run as
# they are (tests/service/test_service_openapi_statuses.py). Two neurons, three trials of 30 bins:
# the second fires in the bin after the first does, which a GLM learns (held out: +0.92 bits/spike);
# independent Poisson counts, as before, gave a first fit from /docs that the service itself called
# worse than constant rates (-1.10 bits/spike).


def _example_counts(seed: int = 3, bins: int = 30) -> list:
    rng = np.random.default_rng(seed)
    first = rng.poisson(0.6, (3, bins))
    second = np.zeros_like(first)
    second[:, 1:] = (first[:, :-1] > 0) * rng.poisson(1.5, (3, bins - 1))
    return np.stack([first, second], -1).tolist()


EXAMPLE_COUNTS = _example_counts()
SpikeKind = Literal[tuple(MODEL_KINDS)]


class SpikeData(RequestBody):
    """Binned counts, or spike times with a bin size (exactly one of the two)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"counts": EXAMPLE_COUNTS}]})

    # Left untyped in the schema (the routes read and check them: as_counts, bin_spike_times), for
    # two reasons: millions of counts never pass through pydantic, and fuzzers then start from the
    # example, which fits, instead of generating arrays that a fit refuses (ragged, or no spikes held
    # out): typed, CI's schemathesis stopped reaching real models (coverage 82 -> 17 s, links 4 -> 1).
    counts: Any = Field(
        None,
        description="(trials, bins, neurons) or (bins, neurons) non-negative integer counts, "
        "rectangular, at most 100,000 spikes in a bin",
    )
    spike_times: Any = Field(
        None,
        description="non-negative spike times: neurons x times, or trials x neurons x times",
    )
    bin_size: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="bin width for spike_times (their unit); an evaluation's must be its model's",
    )
    duration: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="trial length for spike_times: a whole number of bins, every spike within it "
        "(default: to the end of the last spike's bin)",
    )


def _penalty(description: str):
    """An optional non-negative, finite penalty (a precision or an L2 weight)."""
    return Field(None, ge=0, le=1e6, allow_inf_nan=False, description=description)


class SpikeOptions(RequestBody):
    """Options of the model kinds, each with a range (a kind refuses the names it does not take)."""

    model_config = ConfigDict(extra="allow")  # unknown names: the kind lists its valid ones (422)

    n_lags: int | None = Field(None, ge=1, le=100, description="history bins (glm kinds)")
    n_basis: int | None = Field(None, ge=1, le=20, description="history basis functions (glm)")
    n_hidden: int | None = Field(None, ge=1, le=64, description="hidden units (rglm kinds)")
    n_latent: int | None = Field(None, ge=1, le=64, description="latent dimensions (lds)")
    l2: float | None = _penalty("L2 penalty")
    max_iter: int | None = Field(None, ge=1, le=10_000, description="optimiser iterations")
    n_iter: int | None = Field(None, ge=1, le=500, description="EM iterations (lds, plds)")
    init_iter: int | None = Field(
        None, ge=1, le=500, description="Gaussian LDS EM iterations that start a Poisson LDS (plds)"
    )
    method: Literal["variational", "laplace"] | None = Field(
        None, description="E-step of a Poisson LDS (plds): Gaussian variational, or Laplace"
    )
    latent_scale: Literal["stationary", "free"] | None = Field(
        None,
        description="Poisson LDS (plds): the latents' stationary covariance fixed to I (default), or "
        "free dynamics (the latents' scale not identified; the fit may not converge)",
    )
    l2_loadings: float | None = _penalty(
        "Poisson LDS: precision of a Gaussian prior on the loadings (default 10)"
    )
    l2_dynamics: float | None = _penalty(
        "Poisson LDS with latent_scale stationary: precision of a Gaussian prior on the dynamics' "
        "free parameter B, keeping ||F|| away from 1 (default 100)"
    )
    tol: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="convergence: L-BFGS stops when the largest gradient entry of the per-bin loss "
        "is at most this; EM when its gain per bin falls below it",
    )
    min_rate: float | None = Field(
        None,
        gt=0,
        le=1e3,
        allow_inf_nan=False,
        description="independent: the smallest rate, in counts per bin (a silent neuron's)",
    )
    init_timescales: (
        tuple[
            Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)],
            Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)],
        ]
        | None
    ) = Field(
        None,
        description="R-GLM with init random: the range [low, high] of the moduli of R's starting "
        "eigenvalues, each in [0, 1] (a modulus r decays with a timescale of -1/ln r bins), not "
        "timescales",
    )
    init: Literal["glm", "random"] | None = Field(
        None, description="start of an R-GLM fit (rglm kinds): from the fitted GLM, or random"
    )
    l2_state: float | None = _penalty("L2 penalty on the R-GLM's state weights")
    input_cap: float | None = Field(
        None,
        gt=0,
        le=1e6,
        allow_inf_nan=False,
        description="counts enter coupling and history as min(y, input_cap); null: raw counts",
    )
    max_drive: float | None = Field(
        None,
        ge=-50,
        le=50,
        allow_inf_nan=False,
        description="bound on each neuron's log-rate in a self-sustained state of the population "
        "(glm and rglm kinds), for free-running samples that stay in range at some cost in "
        "likelihood (4 is the measured choice); null (default): no bound, the maximum-likelihood fit",
    )
    obs: str | None = Field(
        None,
        max_length=32,
        description="observation model: poisson (default) or bernoulli (0/1 counts); gaussian, a "
        "density, cannot be scored in bits/spike and is refused",
    )
    link: str | None = Field(
        None, max_length=32, description="inverse link: exp (poisson's default), softplus, logistic"
    )
    ordering: (
        str
        | Annotated[list[Annotated[int, Field(ge=0, le=100_000)]], Field(max_length=100_000)]
        | None
    ) = Field(None, description="neuron ordering: a name or a permutation")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="the model's own seed (random starts, neuron ordering, samples); the trial "
        "split is the request's seed",
    )

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


# The options whose size multiplies a fit's work (per counts entry).
WORK_OPTIONS = ("n_lags", "n_hidden", "n_latent")


def work_factor(kind: str, given: dict) -> int:
    """How many times a fit of ``kind`` goes over each counts entry, roughly (work per entry).

    History lags, hidden units or latents (the largest given or default); for an R-GLM, its hidden units
    plus its own history lags plus, unless ``init="random"``, the lags of the GLM it fits first (10 when
    it has no filters of its own).
    """
    cls = MODEL_KINDS[kind][0]
    sig = inspect.signature(cls.__init__).parameters

    def size(k):
        if k not in sig:
            return 0
        v = given.get(k, sig[k].default)
        return 0 if v is None else int(v)

    if issubclass(cls, RGLM):
        prefit = 0 if given.get("init", sig["init"].default) == "random" else size("n_lags") or 10
        return max(1, size("n_hidden") + size("n_lags") + prefit)
    return max([1] + [size(k) for k in WORK_OPTIONS])


class SpikeModelCreate(SpikeData):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"counts": EXAMPLE_COUNTS, "kind": "glm", "options": {"n_lags": 3}}]
        }
    )

    kind: str = Field(
        "rglm_correlated",
        max_length=64,
        description=f"model kind, one of {', '.join(MODEL_KINDS)}; the ``_locked`` kinds are "
        "driven by the stimulus-locked rate (PSTH) of the training trials, for trials that repeat "
        "one stimulus (at least 2, all of one length)",
        # an enum in the schema; checked by check_work, whose 422 lists the valid kinds
        json_schema_extra={"enum": list(MODEL_KINDS)},
    )
    options: SpikeOptions = Field(default_factory=SpikeOptions)
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="the share of the trials held out for the score (at least one, at least one "
        "left to fit); with one trial, the share of its last bins",
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**32 - 1,
        description="seeds the choice of the held-out trials (held_out_trials in the answer); the "
        "model's own seed is options.seed",
    )


class FitPublic(BaseModel):
    """How the optimiser ended (L-BFGS for most kinds, EM for ``lds`` and ``plds``)."""

    converged: bool = Field(
        description="L-BFGS: the largest gradient entry of the per-bin loss is at most tol "
        "(stop_reason gtol); EM: the gain per bin fell below tol (stop_reason ftol)"
    )
    stop_reason: Literal[STOP_REASONS] = Field(
        description="gtol: gradient below tol; ftol: EM gain per bin below tol (for L-BFGS: an "
        "iteration that did not lower the loss at all, not converged); max_iter: iteration cap (not "
        "converged); max_fun: evaluation cap; line_search: no acceptable step; closed_form: no "
        "iterations needed"
    )
    grad_norm: float | None = Field(
        description="largest absolute gradient entry of the per-bin loss at the fit (null for EM)"
    )
    n_iter: int = Field(description="optimiser iterations")


class SpikeModelPublic(BaseModel):
    id: str
    kind: SpikeKind
    options: dict[str, Any] = Field(description="the options given")
    options_used: dict[str, Any] = Field(
        default_factory=dict,
        description="every option of the kind as the fit used it: its defaults, with the given ones",
    )
    bin_size: float | None = Field(
        None,
        description="the bin width the spike times were counted in (their unit); null when counts "
        "were sent",
    )
    n_neurons: int
    n_params: int = Field(description="the model's free parameters")
    held_out_bits_per_spike: float = Field(
        description="on the held-out trials: (log-likelihood - that of each neuron's constant mean "
        "rate on the training trials, a homogeneous Poisson process) / spikes held out / ln 2, in "
        "bits per spike; 0 is no better than constant rates"
    )
    n_spikes_test: float = Field(description="spikes in the held-out trials")
    n_train_trials: int
    n_test_trials: int
    held_out_trials: list[int] | None = Field(
        None,
        description="the indices of the held-out trials in the counts sent (0-based); null when "
        "one trial was sent, whose bins from held_out_from_bin on were held out",
    )
    held_out_from_bin: int | None = Field(
        None, description="one trial sent: its first held-out bin (null for several trials)"
    )
    fit_seconds: float = Field(description="the fit's wall-clock time, in seconds")
    fit: FitPublic
    warnings: list[str] = Field(
        default_factory=list,
        description="what to know before trusting or keeping this model: more parameters than "
        "training counts, held-out spikes predicted worse than by constant rates (bits/spike below "
        "0), or a model the server's disk could not take (held in memory only: a restart forgets "
        "it); empty when none",
    )
    created: float = Field(description="when the fit ended, in Unix seconds")
    timescales_bins: list[float] | None = Field(
        None, description="R-GLM: timescales of the eigenvalues of R, in bins (-1: not decaying)"
    )
    stimulus_bins: int | None = Field(
        None,
        description="``_locked`` kinds: the length of the repeated stimulus in bins; evaluate and "
        "sample take trials of this length (null for the other kinds)",
    )


class SpikeModelsPublic(BaseModel):
    data: list[SpikeModelPublic] = Field(description="newest first")
    count: int
    max_models: int = Field(
        description="how many the server keeps (V1MOTION_SPIKES_MAX_MODELS); a new fit beyond it "
        "drops the oldest"
    )


class SpikeEvaluation(BaseModel):
    id: str
    bits_per_spike: float | None = Field(
        description="(log_likelihood - log_likelihood_baseline) / n_spikes / ln 2: bits per spike "
        "gained over the baseline; null when the counts hold no spike"
    )
    log_likelihood: float = Field(description="of the counts under the model, in nats")
    log_likelihood_baseline: float = Field(
        description="of the counts under each neuron's constant mean rate on the fit's training "
        "trials (a homogeneous Poisson process), in nats"
    )
    n_spikes: float = Field(description="spikes in the counts evaluated")


class SampleCreate(RequestBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"n_trials": 2, "n_bins": 50}]})

    n_trials: int = Field(1, ge=1, le=10_000)
    n_bins: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="bins per trial; null: 1000, or the stimulus's length (``stimulus_bins``) for a "
        "``_locked`` kind, which samples only that length",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)


class SamplePublic(BaseModel):
    id: str
    counts: list[list[list[int]]] = Field(
        description="sampled counts, (trials, bins, neurons): the layout a fit takes"
    )
    n_spikes: int = Field(description="spikes in the sample")
    n_at_cap: int = Field(
        description=f"counts at the sampler's cap of {SAMPLE_MAX_COUNT} per bin: a sample that ran "
        "away (a history-only model's self-excitation; docs/spikes/README.md), not data-like"
    )


# ----------------------------------------------------------------------------- state
def get_store(state: StateDep) -> SpikeModelStore:
    return state.spike_store


def get_worker(state: StateDep) -> SpikeWorker:
    return state.spike_worker


Store = Annotated[SpikeModelStore, Depends(get_store)]
Worker = Annotated[SpikeWorker, Depends(get_worker)]


# ----------------------------------------------------------------------------- input parsing
def _counts_from(data: SpikeData, max_elements: int) -> np.ndarray:
    """Validated counts from JSON counts or spike times; 422 naming the problem."""
    try:
        if (data.counts is None) == (data.spike_times is None):
            raise ValueError("give exactly one of 'counts' or 'spike_times'")
        if data.counts is not None:
            given = [k for k in ("bin_size", "duration") if getattr(data, k) is not None]
            if given:  # it was echoed back as the model's bin size, and said nothing of the counts
                raise ValueError(f"{' and '.join(given)} go with 'spike_times', not with 'counts'")
            return as_counts(data.counts, max_elements=max_elements)
        if data.bin_size is None:
            raise ValueError("'spike_times' needs 'bin_size'")
        if not isinstance(data.spike_times, list):
            raise ValueError("'spike_times' must be a list of neurons' spike-time lists")
        y = bin_spike_times(
            data.spike_times, data.bin_size, data.duration, max_elements=max_elements
        )
        return as_counts(y, max_elements=max_elements)
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
        raise HTTPException(422, detail=str(exc) or type(exc).__name__) from None


MAX_NPZ_MEMBERS = 16
NPZ_DIRECTORY_ENTRY_BYTES = 512  # a member's directory entry: 46 bytes, its name and extra fields


def load_npz_counts(raw: bytes, max_elements: int) -> np.ndarray:
    """The ``counts`` array of an ``.npz``; its size is read from its header before it is decompressed.

    ``ValueError`` names the problem: not a zip, too many members, no ``counts``, an object array, or
    more than ``max_elements`` entries (a small compressed file may expand to gigabytes).
    """
    eocd = raw.rfind(b"PK\x05\x06", max(0, len(raw) - 65_557))
    if eocd < 0 or eocd + 22 > len(raw):
        raise ValueError("file is not a readable .npz (no zip directory)")
    n_members, dir_bytes = struct.unpack("<HI", raw[eocd + 10 : eocd + 16])
    # The member count can lie: Python's zipfile reads the whole directory whatever it says (a
    # 12 MB file of 150,000 empty members claiming 1 took 6 s to read, on the event loop).
    if (
        n_members > MAX_NPZ_MEMBERS  # 0xFFFF (zip64) included
        or dir_bytes > MAX_NPZ_MEMBERS * NPZ_DIRECTORY_ENTRY_BYTES
        or raw.rfind(b"PK\x06\x07", max(0, eocd - 20), eocd) >= 0  # a zip64 locator
    ):
        raise ValueError(
            f"the .npz's directory holds more than the {MAX_NPZ_MEMBERS} members that are read"
        )
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = zf.namelist()
            if "counts.npy" not in names:
                have = [n.removesuffix(".npy") for n in names]
                raise ValueError(f"the .npz has no array 'counts' (has {have})")
            with zf.open("counts.npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
            if dtype.hasobject:
                raise ValueError("'counts' is an object array; send numbers")
            size = int(np.prod(shape, dtype=object))
            if size > max_elements or size * dtype.itemsize > max_elements * 8:
                raise ValueError(
                    f"counts too large: {size} entries, at most {max_elements} allowed"
                )
            with zf.open("counts.npy") as f:  # the directory read once
                return np.lib.format.read_array(f, allow_pickle=False)
    except ValueError:
        raise
    except Exception as exc:  # zipfile and the npy readers raise several types
        raise ValueError(f"file is not a readable .npz: {type(exc).__name__}") from None


def _invalid(exc: ValidationError) -> HTTPException:
    return HTTPException(422, detail=exc.errors(include_url=False))


async def _parse_create(request: Request, max_elements: int) -> tuple[SpikeModelCreate, np.ndarray]:
    settings = get_settings(request)

    slots = get_state(request).upload_slots
    limits = BodyLimits.from_settings(settings, int(settings.spikes_max_upload_mb * 1024 * 1024))
    try:
        with slots.hold():
            raw = await read_body(request, limits)
    except UploadError as exc:
        headers = {"Retry-After": str(slots.retry_after)} if exc.status == 503 else None
        raise HTTPException(exc.status, exc.detail, headers) from None
    if not _is_multipart(request):
        worker = get_state(request).spike_worker
        return await _parse_off_loop(
            worker, "parse_json_counts", raw, SpikeModelCreate, max_elements
        )
    form, data = await _npz_form(request, raw, FIT_FORM_FIELDS)
    try:
        options = json.loads(form.get("options") or "{}")
    except (ValueError, RecursionError) as exc:
        raise HTTPException(422, detail=f"'options' is not valid JSON: {exc}") from None
    fields = {k: form.get(k) for k in ("kind", "test_fraction", "seed") if form.get(k) is not None}
    try:
        spec = SpikeModelCreate(options=options, **fields)
    except ValidationError as exc:
        raise _invalid(exc) from None
    worker = get_state(request).spike_worker
    return spec, await _parse_off_loop(worker, "_npz_counts", data, max_elements)


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith("multipart/form-data")


FIT_FORM_FIELDS = ("file", "kind", "options", "test_fraction", "seed")


async def _npz_form(request: Request, raw: bytes, fields: tuple[str, ...] = ("file",)):
    """The multipart body ``raw`` (already read, within its limit) as its form and the bytes of its
    ``file`` (an .npz); 422 naming the problem, a field other than ``fields`` included (a misspelt
    ``test_fraction`` was ignored, the fit run with the default)."""
    request._body = raw  # parsed from the bytes already read
    try:
        form = await request.form(max_files=1, max_fields=len(fields) + 2)
    except StarletteHTTPException as exc:  # Starlette's 400 for a form it will not read
        raise HTTPException(422, detail=f"the multipart body was refused: {exc.detail}") from None
    unknown = sorted(set(form.keys()) - set(fields))
    if unknown:
        raise HTTPException(
            422,
            detail=f"unknown form field(s) {', '.join(map(repr, unknown))}; this upload takes "
            f"{', '.join(map(repr, fields))}",
        )
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, detail="multipart upload needs a 'file' field holding an .npz")
    return form, await upload.read()


INLINE_BYTES = 256 * 1024
"""JSON bodies and .npz files up to this size are parsed on the event loop (a few ms), larger ones
in the spike worker's reader process."""


def _npz_counts(data: bytes, max_elements: int) -> np.ndarray:
    """Validated counts of an uploaded .npz; 422 naming the problem."""
    try:
        counts = load_npz_counts(data, max_elements)
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    return _counts_from(SpikeData.model_construct(counts=counts), max_elements)


def parse_json_counts(raw: bytes, schema: type[SpikeData], max_elements: int):
    """The body as ``schema`` (its counts or spike times left out) and its counts; HTTPException 422
    naming the problem."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(422, detail="body is not valid JSON") from None
    except RecursionError:
        raise HTTPException(422, detail="body is nested too deeply to be read") from None
    try:
        spec = schema.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from None
    y = _counts_from(spec, max_elements)
    spec.counts = spec.spike_times = None  # the array stands for them (and need not be sent back)
    return spec, y


def _parsed_reply(parser: str, data: bytes, *args):
    """``parser(data, *args)``, the function of this module by that name, in the spike worker's
    reader process: ``(error, None)`` or ``(None, out)``."""
    try:
        return None, globals()[parser](data, *args)
    except HTTPException as exc:
        return (exc.status_code, exc.detail), None


async def _parse_off_loop(worker: SpikeWorker, parser: str, data: bytes, *args):
    """``parser(data, *args)`` (``parse_json_counts`` or ``_npz_counts``, named), in the reader
    process when ``data`` is over ``INLINE_BYTES``: parsing and converting millions of counts held
    the event loop, and with it every live stream, for tenths of a second."""
    if len(data) <= INLINE_BYTES:
        return globals()[parser](data, *args)
    error, out = await worker.read(_parsed_reply, parser, data, *args)
    if error is not None:
        raise HTTPException(*error)
    return out


def check_work(spec: SpikeModelCreate, y: np.ndarray, max_work: int, max_fit_mb: float) -> None:
    """422 when option names do not fit the kind, the counts do not (a ``_locked`` kind with one
    trial), the fit would do more than ``max_work`` or need more than ``max_fit_mb`` of memory."""
    valid = model_options(spec.kind)
    check_data(spec.kind, y)
    given = spec.options.given()
    bad = sorted(set(given) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {bad} for kind {spec.kind!r}; valid options: {valid}")
    check_observations(spec.kind, given)
    factor = work_factor(spec.kind, given)
    work = int(y.size) * factor
    if work > max_work:
        raise ValueError(
            f"fit too large: {y.size} counts entries x {factor} (history lags, hidden units or "
            f"latents; an R-GLM's hidden units plus the lags of the GLM it starts from) = {work}, "
            f"at most {max_work} allowed; send fewer trials or bins or a smaller model, or fit "
            "it offline with `v1motion spikes fit`, which has no such cap"
        )
    check_memory(spec.kind, given, y, max_fit_mb, "fit")


def check_memory(kind: str, options: dict, y: np.ndarray, max_fit_mb: float, what: str) -> None:
    """``ValueError`` when a fit of ``kind`` on counts like ``y`` (or an evaluation of ``y``, which
    takes as much for an LDS) needs more than ``max_fit_mb`` of memory (:func:`fit_bytes`)."""
    n_bins, n_neurons = int(y.shape[1]), int(y.shape[2])
    need_mb = fit_bytes(kind, n_bins, n_neurons, **options) / 1e6
    if need_mb > max_fit_mb:
        raise ValueError(
            f"{what} too large: kind {kind!r} on {n_neurons} neurons and {n_bins} bins per trial "
            f"needs about {need_mb:,.0f} MB of memory, at most {max_fit_mb:,.0f} MB allowed; send "
            f"fewer bins or neurons, or a smaller model ({GROWS_WITH_NEURONS})"
        )


def _public(rec: dict) -> SpikeModelPublic:
    return SpikeModelPublic(**{k: v for k, v in rec.items() if k in SpikeModelPublic.model_fields})


def _check_stimulus_bins(rec: dict, n_bins: int, what: str) -> None:
    """422 when a stimulus-locked model is asked about trials of another length than its stimulus."""
    want = rec.get("stimulus_bins")
    if want is not None and n_bins != want:
        raise HTTPException(
            422,
            detail=f"{what} {n_bins} bins; model {rec['id']} ({rec['kind']}) is driven by a "
            f"stimulus of {want} bins and takes trials of that length only",
        )


# ----------------------------------------------------------------------------- routes
NOT_FOUND = {404: {"description": "no spike model with this id"}}
BUSY = {
    429: {"description": "too many spike jobs queued; retry later", "headers": RETRY_AFTER},
    503: {
        "description": "the worker process died or ran out of memory during this request, or "
        "the server is shutting down (retry)"
    },
}
BAD_DATA = {422: {"description": "counts or options that cannot be used (the detail says why)"}}


def _inline_schema(model: type[BaseModel]) -> dict:
    """``model``'s JSON schema with its definitions inlined (a body the route reads itself)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


NPZ_FILE = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": ".npz with 'counts'"}
    },
    "additionalProperties": False,  # another field is refused (_npz_form)
}


def _create_body() -> dict:
    """The request body of ``POST /models`` for the schema (the route reads the body itself)."""
    multipart = {
        **NPZ_FILE,
        "properties": {
            **NPZ_FILE["properties"],
            "kind": {
                "type": "string",
                "enum": list(MODEL_KINDS),
                "description": f"one of {', '.join(MODEL_KINDS)}",
            },
            "options": {"type": "string", "description": "the options as a JSON object"},
            "test_fraction": {"type": "number"},
            "seed": {"type": "integer"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_schema(SpikeModelCreate)},
                "multipart/form-data": {"schema": multipart},
            },
        }
    }


TOO_LARGE = {
    408: {"description": "the body stopped arriving"},
    413: {"description": "body larger than V1MOTION_SPIKES_MAX_UPLOAD_MB"},
    415: {"description": "neither application/json nor multipart/form-data"},
    503: {"description": "too many uploads arriving at once (retry later)", "headers": RETRY_AFTER},
}


MODEL_LINKS = {
    201: {
        "links": {  # OpenAPI links: from a fitted model to what takes its id (clients, fuzzers)
            name: {
                "operationRef": f"#/paths/~1v1~1spikes~1models~1{{model_id}}{path}/{method}",
                "parameters": {"model_id": "$response.body#/id"},
            }
            for name, path, method in (
                ("GetModel", "", "get"),
                ("EvaluateModel", "~1evaluate", "post"),
                ("SampleModel", "~1sample", "post"),
                ("DeleteModel", "", "delete"),
            )
        }
    }
}


def _either(*answers: dict) -> dict:
    """The responses of ``answers`` together; a status that several give says each one's reason."""
    merged: dict = {}
    for answer in answers:
        for code, response in answer.items():
            also_answers(merged, code, response)
    return merged


@router.post(
    "/models",
    response_model=SpikeModelPublic,
    status_code=201,
    responses=_either(MODEL_LINKS, BAD_DATA, BUSY, TOO_LARGE),
    openapi_extra=_create_body(),
)
async def fit_spike_model(request: Request, store: Store, worker: Worker) -> SpikeModelPublic:
    """Fit a model (JSON body, or multipart with an .npz ``file`` holding ``counts``)."""
    settings = get_settings(request)
    spec, y = await _parse_create(request, settings.spikes_max_elements)
    try:
        check_work(
            spec, y, settings.spikes_max_work, settings.spikes_max_fit_mb
        )  # kind, option names and size: before queueing
        rec = await worker.run(
            fit_record, y, spec.kind, spec.options.given(), spec.test_fraction, spec.seed
        )
    except (ValueError, TypeError) as exc:  # bad kind, option names or values, data without spikes
        raise HTTPException(422, detail=str(exc)) from None
    except ArithmeticError as exc:  # the optimiser diverged (FloatingPointError) or overflowed
        raise HTTPException(
            422, detail=f"the fit failed on these data and options: {exc}"
        ) from None
    rec["bin_size"] = getattr(spec, "bin_size", None)
    await run_in_threadpool(store.add, rec)  # it waits for the disk
    log.info("spike model %s (%s) fitted in %.1f s", rec["id"], spec.kind, rec["fit_seconds"])
    return _public(rec)


@router.get("/models", response_model=SpikeModelsPublic)
def list_spike_models(store: Store) -> SpikeModelsPublic:
    """The fitted models the server holds (kept across restarts in its data folder), newest first."""
    data = [_public(rec) for rec in store.records()]
    return SpikeModelsPublic(data=data, count=len(data), max_models=store.max_models)


@router.get("/models/{model_id}", response_model=SpikeModelPublic, responses=NOT_FOUND)
def get_spike_model(model_id: str, store: Store) -> SpikeModelPublic:
    return _public(store.get(model_id))


@router.delete("/models/{model_id}", status_code=204, responses=NOT_FOUND)
def delete_spike_model(model_id: str, store: Store) -> Response:
    """Forget a fitted model (it frees its place in the store; an evaluation or sample already
    running on it finishes)."""
    store.remove(model_id)
    return Response(status_code=204)


@router.post(
    "/models/{model_id}/evaluate",
    response_model=SpikeEvaluation,
    responses=NOT_FOUND | BAD_DATA | BUSY,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_schema(SpikeData)},
                "multipart/form-data": {"schema": NPZ_FILE},
            },
        }
    },
)
async def evaluate_spike_model(model_id: str, request: Request, store: Store, worker: Worker):
    """Bits/spike of new counts relative to the homogeneous Poisson of the model's training data
    (JSON body, or multipart with an .npz ``file`` holding ``counts``, as for a fit)."""
    raw = await request.body()  # within V1MOTION_MAX_BODY_MB (security.BodyLimit)
    limit = get_settings(request).spikes_max_elements
    if _is_multipart(request):  # a bad body is a 422 before a 404
        y = await _parse_off_loop(worker, "_npz_counts", (await _npz_form(request, raw))[1], limit)
    else:
        data, y = await _parse_off_loop(worker, "parse_json_counts", raw, SpikeData, limit)
        fitted = store.get(model_id).get("bin_size")
        if fitted is not None and data.bin_size is not None and data.bin_size != fitted:
            raise HTTPException(
                422,
                detail=f"model {model_id} was fitted on bins of {fitted:g}; these spike times ask "
                f"for bins of {data.bin_size:g} (its rates are per bin: give bin_size {fitted:g})",
            )
    rec = store.get(model_id)
    if y.shape[-1] != rec["n_neurons"]:
        raise HTTPException(
            422,
            detail=f"counts have {y.shape[-1]} neurons; model {model_id} was fitted on {rec['n_neurons']}",
        )
    _check_stimulus_bins(rec, y.shape[1], "counts have")
    try:
        check_memory(
            rec["kind"], rec["options"], y, get_settings(request).spikes_max_fit_mb, "evaluation"
        )
    except ValueError as exc:
        raise HTTPException(422, detail=str(exc)) from None
    res = await worker.run(evaluate, rec["model"], rec["baseline"], y)
    return SpikeEvaluation(id=model_id, **res)


@router.post(
    "/models/{model_id}/sample", response_model=SamplePublic, responses=NOT_FOUND | BAD_DATA | BUSY
)
async def sample_spike_model(
    model_id: str, body: SampleCreate, request: Request, store: Store, worker: Worker
):
    """Free-running samples from the model."""
    rec = store.get(model_id)
    n_bins = body.n_bins or rec["stimulus_bins"] or 1000
    _check_stimulus_bins(rec, n_bins, "n_bins asks for")
    limit = get_settings(request).spikes_max_sample_elements
    size = body.n_trials * n_bins * rec["n_neurons"]
    if size > limit:
        raise HTTPException(
            422, detail=f"sample too large: {size} entries, at most {limit} allowed"
        )
    body_json = await worker.run(
        sample_body, rec["model"], model_id, body.n_trials, n_bins, body.seed
    )
    return Response(content=body_json, media_type="application/json")
