"""Spike-train models: observation objects, independent / correlated / spike-history GLMs, the recurrent
GLM (R-GLM), a Gaussian LDS and a Poisson LDS, with held-out bits/spike evaluation (see docs/architecture.md)."""

from v1motion.models.spikes.glm import (
    CorrelatedGLM,
    IndependentPoisson,
    PSTHPoisson,
    SpikeHistoryGLM,
)
from v1motion.models.spikes.lds import GaussianLDS
from v1motion.models.spikes.observations import (
    BernoulliObservations,
    GaussianObservations,
    PoissonObservations,
    get_link,
    get_observations,
)
from v1motion.models.spikes.plds import PoissonLDS
from v1motion.models.spikes.registry import MODEL_KINDS, fit_and_score, make_model
from v1motion.models.spikes.rglm import RGLM

__all__ = [
    "BernoulliObservations",
    "CorrelatedGLM",
    "GaussianLDS",
    "GaussianObservations",
    "IndependentPoisson",
    "MODEL_KINDS",
    "PSTHPoisson",
    "PoissonLDS",
    "PoissonObservations",
    "RGLM",
    "SpikeHistoryGLM",
    "fit_and_score",
    "get_link",
    "get_observations",
    "make_model",
]
