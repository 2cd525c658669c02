"""``/v1/spikes``: fit, inspect, evaluate and sample spike-train models.

Fits run in a bounded thread pool (``spikes_fit_workers`` threads, at most ``spikes_max_pending`` fits
running or waiting, more get 429), never on the event loop. Fitted models live in a bounded in-memory
store (``spikes_max_models``; the oldest is dropped).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError

from models.spikes.data import as_counts, bin_spike_times
from models.spikes.registry import evaluate, fit_and_score, model_options

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/spikes", tags=["spikes"])


# ----------------------------------------------------------------------------- schemas
class SpikeData(BaseModel):
    """Binned counts, or spike times with a bin size (exactly one of the two)."""

    counts: Any = Field(None, description="(trials, bins, neurons) or (bins, neurons) counts")
    spike_times: Any = Field(None, description="neurons x times, or trials x neurons x times")
    bin_size: float | None = Field(None, gt=0, description="bin width for spike_times (their unit)")
    duration: float | None = Field(None, gt=0, description="trial length for spike_times")


class SpikeModelCreate(SpikeData):
    kind: str = "rglm_correlated"
    options: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class SpikeModelPublic(BaseModel):
    id: str
    kind: str
    options: dict[str, Any]
    n_neurons: int
    n_params: int
    held_out_bits_per_spike: float
    n_spikes_test: float
    n_train_trials: int
    n_test_trials: int
    fit_seconds: float
    created: float
    timescales_bins: list[float] | None = Field(
        None, description="R-GLM: timescales of the eigenvalues of R, in bins (-1: not decaying)"
    )


class SpikeEvaluation(BaseModel):
    id: str
    bits_per_spike: float | None
    log_likelihood: float
    log_likelihood_baseline: float
    n_spikes: float


class SampleCreate(BaseModel):
    n_trials: int = Field(1, ge=1)
    n_bins: int = Field(1000, ge=1)
    seed: int = 0


class SamplePublic(BaseModel):
    id: str
    counts: list[list[list[float]]]
    n_spikes: float


# ----------------------------------------------------------------------------- state
class SpikeModelStore:
    """Fitted models by id, at most ``max_models`` (least recently created dropped first)."""

    def __init__(self, max_models: int):
        self.max_models = max_models
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: dict) -> str:
        with self._lock:
            self._items[record["id"]] = record
            while len(self._items) > self.max_models:
                dropped, _ = self._items.popitem(last=False)
                log.info("spike model store full: dropped %s", dropped)
        return record["id"]

    def get(self, model_id: str) -> dict:
        with self._lock:
            rec = self._items.get(model_id)
        if rec is None:
            raise HTTPException(404, detail=f"no spike model with id {model_id!r}")
        return rec

    def __len__(self) -> int:
        return len(self._items)


class SpikeWorker:
    """A bounded thread pool for fits and samples: work runs off the event loop."""

    def __init__(self, workers: int, max_pending: int):
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spikes-fit")
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    async def run(self, fn, *args):
        with self._lock:
            if self._pending >= self.max_pending:
                raise HTTPException(
                    429, detail=f"{self._pending} spike jobs already queued; retry later"
                )
            self._pending += 1
        try:
            return await asyncio.wrap_future(self.pool.submit(fn, *args))
        finally:
            with self._lock:
                self._pending -= 1

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def setup(app) -> None:
    """Create the spike store and worker on ``app.state`` (called from the lifespan)."""
    s = app.state.settings
    app.state.spike_store = SpikeModelStore(s.spikes_max_models)
    app.state.spike_worker = SpikeWorker(s.spikes_fit_workers, s.spikes_max_pending)


def teardown(app) -> None:
    app.state.spike_worker.close()


def get_store(request: Request) -> SpikeModelStore:
    return request.app.state.spike_store


def get_worker(request: Request) -> SpikeWorker:
    return request.app.state.spike_worker


Store = Annotated[SpikeModelStore, Depends(get_store)]
Worker = Annotated[SpikeWorker, Depends(get_worker)]


# ----------------------------------------------------------------------------- input parsing
def _counts_from(data: SpikeData, max_elements: int) -> np.ndarray:
    """Validated counts from JSON counts or spike times; 422 naming the problem."""
    try:
        if (data.counts is None) == (data.spike_times is None):
            raise ValueError("give exactly one of 'counts' or 'spike_times'")
        if data.counts is not None:
            return as_counts(data.counts, max_elements=max_elements)
        if data.bin_size is None:
            raise ValueError("'spike_times' needs 'bin_size'")
        if not isinstance(data.spike_times, list):
            raise ValueError("'spike_times' must be a list of neurons' spike-time lists")
        n_bins = None
        if data.duration is not None:
            n_bins = data.duration / data.bin_size
        if n_bins is not None and n_bins * len(data.spike_times) > max_elements:
            raise ValueError(f"spike_times too large: more than {max_elements} bins x neurons")
        y = bin_spike_times(data.spike_times, data.bin_size, data.duration)
        return as_counts(y, max_elements=max_elements)
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, detail=str(exc)) from None


async def _parse_create(request: Request, max_elements: int) -> tuple[SpikeModelCreate, np.ndarray]:
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise HTTPException(422, detail="multipart upload needs a 'file' field holding an .npz")
        raw = await upload.read()
        try:
            options = json.loads(form.get("options") or "{}")
        except json.JSONDecodeError as exc:
            raise HTTPException(422, detail=f"'options' is not valid JSON: {exc}") from None
        fields = {
            k: form.get(k) for k in ("kind", "test_fraction", "seed") if form.get(k) is not None
        }
        try:
            spec = SpikeModelCreate(options=options, **fields)
        except ValidationError as exc:
            raise HTTPException(422, detail=exc.errors(include_url=False)) from None
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                if "counts" not in z:
                    raise HTTPException(
                        422, detail=f"the .npz has no array 'counts' (has {list(z.keys())})"
                    )
                arr = z["counts"]
        except HTTPException:
            raise
        except Exception as exc:  # np.load raises several types on a corrupt file
            raise HTTPException(
                422, detail=f"file is not a readable .npz: {type(exc).__name__}"
            ) from None
        spec.counts = arr
        return spec, _counts_from(spec, max_elements)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPException(422, detail="body is not valid JSON") from None
    try:
        spec = SpikeModelCreate.model_validate(body)
    except ValidationError as exc:
        raise HTTPException(422, detail=exc.errors(include_url=False)) from None
    return spec, _counts_from(spec, max_elements)


def _public(rec: dict) -> SpikeModelPublic:
    return SpikeModelPublic(**{k: v for k, v in rec.items() if k in SpikeModelPublic.model_fields})


def _fit(y, spec: SpikeModelCreate) -> dict:
    model, baseline, report = fit_and_score(
        y, spec.kind, spec.options, spec.test_fraction, spec.seed
    )
    tau = None
    if hasattr(model, "timescales"):
        tau = [float(t) for t in model.timescales(bin_size=1.0)[1]]
    return {
        "id": uuid.uuid4().hex[:12],
        "kind": spec.kind,
        "options": spec.options,
        "n_neurons": int(y.shape[-1]),
        "n_params": report["n_params"],
        "held_out_bits_per_spike": report["bits_per_spike"],
        "n_spikes_test": report["n_spikes_test"],
        "n_train_trials": report["n_train_trials"],
        "n_test_trials": report["n_test_trials"],
        "fit_seconds": report["fit_seconds"],
        "created": time.time(),
        "timescales_bins": None if tau is None else [t if np.isfinite(t) else -1.0 for t in tau],
        "model": model,
        "baseline": baseline,
    }


# ----------------------------------------------------------------------------- routes
NOT_FOUND = {404: {"description": "no spike model with this id"}}
BUSY = {429: {"description": "too many spike jobs queued; retry later"}}
BAD_DATA = {422: {"description": "counts or options that cannot be used (the detail says why)"}}


@router.post("/models", response_model=SpikeModelPublic, status_code=201, responses=BAD_DATA | BUSY)
async def create_model(request: Request, store: Store, worker: Worker) -> SpikeModelPublic:
    """Fit a model (JSON body, or multipart with an .npz ``file`` holding ``counts``)."""
    settings = request.app.state.settings
    spec, y = await _parse_create(request, settings.spikes_max_elements)
    try:
        model_options(spec.kind)  # unknown kind: 422 before queueing
        rec = await worker.run(_fit, y, spec)
    except (ValueError, TypeError) as exc:  # bad kind, option names or values, data without spikes
        raise HTTPException(422, detail=str(exc)) from None
    store.add(rec)
    log.info("spike model %s (%s) fitted in %.1f s", rec["id"], spec.kind, rec["fit_seconds"])
    return _public(rec)


@router.get("/models/{model_id}", response_model=SpikeModelPublic, responses=NOT_FOUND)
def get_model(model_id: str, store: Store) -> SpikeModelPublic:
    return _public(store.get(model_id))


@router.post(
    "/models/{model_id}/evaluate",
    response_model=SpikeEvaluation,
    responses=NOT_FOUND | BAD_DATA | BUSY,
)
async def evaluate_model(
    model_id: str, data: SpikeData, request: Request, store: Store, worker: Worker
):
    """Bits/spike of new counts relative to the homogeneous Poisson of the model's training data."""
    rec = store.get(model_id)
    y = _counts_from(data, request.app.state.settings.spikes_max_elements)
    if y.shape[-1] != rec["n_neurons"]:
        raise HTTPException(
            422,
            detail=f"counts have {y.shape[-1]} neurons; model {model_id} was fitted on {rec['n_neurons']}",
        )
    res = await worker.run(evaluate, rec["model"], rec["baseline"], y)
    return SpikeEvaluation(id=model_id, **res)


@router.post(
    "/models/{model_id}/sample", response_model=SamplePublic, responses=NOT_FOUND | BAD_DATA | BUSY
)
async def sample_model(
    model_id: str, body: SampleCreate, request: Request, store: Store, worker: Worker
):
    """Free-running samples from the model."""
    rec = store.get(model_id)
    limit = request.app.state.settings.spikes_max_sample_elements
    size = body.n_trials * body.n_bins * rec["n_neurons"]
    if size > limit:
        raise HTTPException(
            422, detail=f"sample too large: {size} entries, at most {limit} allowed"
        )
    y = await worker.run(
        lambda: rec["model"].sample(n_trials=body.n_trials, n_bins=body.n_bins, seed=body.seed)
    )
    return SamplePublic(id=model_id, counts=y.tolist(), n_spikes=float(y.sum()))
