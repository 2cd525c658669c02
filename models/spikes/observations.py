"""Observation models and inverse links, as small composable objects (in the manner of nemos).

An observation model turns a linear predictor ``eta`` into a distribution over observations ``y``
through an inverse link ``f``: ``mean = f(eta)``. Each model gives

- ``loss(y, eta)``: the negative log-likelihood up to terms that do not depend on ``eta`` (what the
  optimiser minimises), and ``loss_grad(y, eta)``, its derivative with respect to ``eta``;
- ``log_likelihood(y, eta)``: the full log-likelihood in nats (what bits/spike is computed from);
- ``sample(eta, rng)``.

Look-ups by name (:func:`get_link`, :func:`get_observations`) fail with a message listing the valid names.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, gammaln

# exp(ETA_MAX) is the largest rate an exponential link returns: protects against overflow when a
# recurrent model runs away; far above any rate met in 10 ms bins.
ETA_MAX = 30.0


class Link:
    """An inverse link ``f`` with its derivative; ``name`` identifies it."""

    name = "base"

    def __call__(self, eta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def deriv(self, eta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ExpLink(Link):
    """``f(eta) = exp(eta)``, with eta clipped above at ``ETA_MAX`` to avoid overflow."""

    name = "exp"

    def __call__(self, eta):
        return np.exp(np.minimum(eta, ETA_MAX))

    def deriv(self, eta):
        return np.exp(np.minimum(eta, ETA_MAX)) * (eta <= ETA_MAX)


class SoftplusLink(Link):
    """``f(eta) = log(1 + exp(eta))``: grows linearly, so high rates are reached more gently."""

    name = "softplus"

    def __call__(self, eta):
        return np.logaddexp(0.0, eta)

    def deriv(self, eta):
        return expit(eta)


class LogisticLink(Link):
    """``f(eta) = 1 / (1 + exp(-eta))``: a probability, for Bernoulli observations."""

    name = "logistic"

    def __call__(self, eta):
        return expit(eta)

    def deriv(self, eta):
        p = expit(eta)
        return p * (1.0 - p)


class IdentityLink(Link):
    """``f(eta) = eta``: for Gaussian observations."""

    name = "identity"

    def __call__(self, eta):
        return np.asarray(eta, dtype=float)

    def deriv(self, eta):
        return np.ones_like(eta, dtype=float)


LINKS: dict[str, type[Link]] = {
    c.name: c for c in (ExpLink, SoftplusLink, LogisticLink, IdentityLink)
}


def get_link(link: str | Link) -> Link:
    """Return a link object from its name (``exp``, ``softplus``, ``logistic``, ``identity``)."""
    if isinstance(link, Link):
        return link
    try:
        return LINKS[link]()
    except (KeyError, TypeError):
        raise ValueError(f"unknown link {link!r}; valid links: {sorted(LINKS)}") from None


class Observations:
    """Base class: a distribution for ``y`` given ``eta`` through the inverse link ``link``.

    Parameters
    ----------
    link : str or Link, optional
        Inverse link; default depends on the model (``default_link``).
    """

    name = "base"
    default_link = "exp"
    valid_links: tuple[str, ...] = ()
    counts = True
    """``log_likelihood`` is a probability of each count, so two models' likelihoods of the same counts
    compare (bits/spike); False for a density (Gaussian), which no count model's probability compares
    with."""

    def __init__(self, link: str | Link | None = None):
        self.link = get_link(link if link is not None else self.default_link)
        if self.link.name not in self.valid_links:
            raise ValueError(
                f"link {self.link.name!r} is not valid for {self.name} observations; "
                f"valid links: {list(self.valid_links)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(link={self.link.name!r})"

    def mean(self, eta: np.ndarray) -> np.ndarray:
        """Expected observation ``f(eta)``."""
        return self.link(eta)

    def loss(self, y: np.ndarray, eta: np.ndarray) -> float:
        """Negative log-likelihood summed over all entries, up to terms constant in ``eta``."""
        raise NotImplementedError

    def loss_grad(self, y: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Derivative of the summed :meth:`loss` with respect to each entry of ``eta``."""
        raise NotImplementedError

    def log_likelihood(self, y: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Full log-likelihood (nats) of each entry, same shape as ``y``."""
        raise NotImplementedError

    def loss_and_grad(self, y: np.ndarray, eta: np.ndarray, scale: float = 1.0, spikes=None):
        """``(scale * loss(y, eta), scale * loss_grad(y, eta))`` (what a fit evaluates at every step).

        ``spikes`` may carry what a subclass precomputes from ``y`` (see Poisson's); unused here."""
        return scale * self.loss(y, eta), scale * self.loss_grad(y, eta)

    def sample(self, eta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def check_data(self, y: np.ndarray) -> None:
        """Raise ``ValueError`` when ``y`` is outside the support of this distribution."""
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{self.name} observations must be finite")


class PoissonObservations(Observations):
    """Poisson counts with rate ``f(eta)`` per bin; link ``exp`` (default) or ``softplus``."""

    name = "poisson"
    default_link = "exp"
    valid_links = ("exp", "softplus")

    def loss(self, y, eta):
        if self.link.name == "exp":
            eta_c = np.minimum(eta, ETA_MAX)
            return float(np.sum(np.exp(eta_c) - y * eta_c))
        rate = self.link(eta)
        return float(np.sum(rate - y * np.log(rate + 1e-300)))

    def loss_grad(self, y, eta):
        if self.link.name == "exp":
            return (np.exp(np.minimum(eta, ETA_MAX)) - y) * (eta <= ETA_MAX)
        rate = self.link(eta)
        return (1.0 - y / (rate + 1e-300)) * self.link.deriv(eta)

    def loss_and_grad(self, y, eta, scale=1.0, spikes=None):
        """For the exp link in fewer passes over the data (one ``exp`` per entry instead of two): the
        loss and its gradient were a third of an R-GLM's time per iteration.

        ``spikes``: ``(flat indices, values)`` of the non-zero entries of ``y``, from :func:`nonzero`
        (a fit evaluates the same data at every step and finds them once).
        """
        if self.link.name != "exp" or np.shape(y) != np.shape(eta):
            return super().loss_and_grad(y, eta, scale)
        nz, yv = nonzero(y) if spikes is None else spikes
        return _poisson_exp_loss_grad(
            nz, yv, np.ascontiguousarray(eta, dtype=float), scale, ETA_MAX
        )

    def log_likelihood(self, y, eta):
        if self.link.name == "exp":
            eta_c = np.minimum(eta, ETA_MAX)
            return y * eta_c - np.exp(eta_c) - gammaln(y + 1.0)
        rate = self.link(eta)
        return y * np.log(rate + 1e-300) - rate - gammaln(y + 1.0)

    def sample(self, eta, rng):
        return rng.poisson(self.link(eta)).astype(float)

    def check_data(self, y):
        super().check_data(y)
        if np.any(y < 0) or np.any(y != np.round(y)):
            raise ValueError("poisson observations must be non-negative integer counts")


def nonzero(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the non-zero entries of ``y`` and their values."""
    nz = np.flatnonzero(y)
    return nz, np.asarray(y, dtype=float).ravel()[nz]


def _poisson_exp_loss_grad(nz, yv, eta, scale, eta_max):
    """``scale * sum(exp(eta') - y eta')`` with ``eta' = min(eta, eta_max)`` and its gradient in ``eta``
    (zero where ``eta > eta_max``), as :meth:`PoissonObservations.loss` and ``loss_grad``, in fewer
    passes over the data: one ``exp``, and the terms in ``y`` only at its non-zero entries (flat indices
    ``nz``, values ``yv``; 10 ms spike counts are mostly zeros)."""
    over = np.max(eta, initial=-np.inf) > eta_max
    g = np.exp(np.minimum(eta, eta_max) if over else eta)
    ev = np.minimum(eta.ravel()[nz], eta_max)
    total = float(np.sum(g)) - float(yv @ ev)
    gf = g.ravel()
    gf[nz] -= yv
    if over:
        g[eta > eta_max] = 0.0
    g *= scale
    return scale * total, g


class BernoulliObservations(Observations):
    """Binary observations with ``P(y=1) = logistic(eta)``."""

    name = "bernoulli"
    default_link = "logistic"
    valid_links = ("logistic",)

    def loss(self, y, eta):
        # -log p = log(1 + e^eta) - y eta
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    def loss_grad(self, y, eta):
        return expit(eta) - y

    def log_likelihood(self, y, eta):
        return y * eta - np.logaddexp(0.0, eta)

    def sample(self, eta, rng):
        return (rng.random(np.shape(eta)) < expit(eta)).astype(float)

    def check_data(self, y):
        super().check_data(y)
        if np.any((y != 0) & (y != 1)):
            raise ValueError("bernoulli observations must be 0 or 1 (binarise counts with y > 0)")


class GaussianObservations(Observations):
    """Gaussian observations with mean ``f(eta)`` and a variance per output (``scale``).

    The optimiser minimises half the squared error (unit variance); the variances are then set to their
    maximum-likelihood values with :meth:`estimate_scale` and enter :meth:`log_likelihood`.

    Parameters
    ----------
    link : str, default "identity"
    scale : float or array of shape (n_outputs,), default 1.0
        Variance of each output.
    """

    name = "gaussian"
    default_link = "identity"
    valid_links = ("identity", "exp", "softplus")
    counts = False

    def __init__(self, link=None, scale=1.0):
        super().__init__(link)
        self.scale = scale

    def loss(self, y, eta):
        return float(0.5 * np.sum((y - self.link(eta)) ** 2))

    def loss_grad(self, y, eta):
        return (self.link(eta) - y) * self.link.deriv(eta)

    def log_likelihood(self, y, eta):
        var = np.asarray(self.scale, dtype=float)
        return -0.5 * (np.log(2 * np.pi * var) + (y - self.link(eta)) ** 2 / var)

    def estimate_scale(self, y: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Set ``scale`` to the per-output residual variance (last axis = outputs) and return it."""
        r = (y - self.link(eta)).reshape(-1, np.shape(y)[-1])
        self.scale = np.maximum(np.mean(r**2, axis=0), 1e-8)
        return self.scale

    def sample(self, eta, rng):
        return self.link(eta) + np.sqrt(self.scale) * rng.standard_normal(np.shape(eta))


OBSERVATIONS: dict[str, type[Observations]] = {
    c.name: c for c in (PoissonObservations, BernoulliObservations, GaussianObservations)
}


def get_observations(obs: str | Observations, link: str | Link | None = None) -> Observations:
    """Return an observation model from its name (``poisson``, ``bernoulli``, ``gaussian``)."""
    if isinstance(obs, Observations):
        return obs
    try:
        cls = OBSERVATIONS[obs]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown observation model {obs!r}; valid names: {sorted(OBSERVATIONS)}"
        ) from None
    return cls(link)
