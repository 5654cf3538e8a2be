"""Second-order statistics of two-modality regression data.

The squared loss ``1/2 E||y - W_tot x||^2`` depends on the data only through
the input covariance ``Sigma = E[x x^T]``, the input-output covariance
``Sigma_yx = E[y x^T]`` and ``E||y||^2``. :class:`DataStatistics` holds these
three, with the input ``x = (x_A, x_B)`` ordered A first, and is what every
integrator and simulator in :mod:`unibias.numerics` consumes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from unibias.theory._validate import (
    check_integer,
    check_open_interval,
    check_positive,
    check_real,
)

MIN_SIGMA_RATIO, MAX_SIGMA_RATIO = 1e-6, 1e6
"""Range of ``sigma_A / sigma_B`` for the toy data; beyond it ``Sigma`` is singular
to float64 precision."""


def check_sigma_ratio(name: str, value) -> float:
    """Return ``value`` as a float after checking it is a valid ``sigma_A/sigma_B``.

    The toy data set accepts ratios in ``[MIN_SIGMA_RATIO, MAX_SIGMA_RATIO]``;
    ``name`` is the argument or option named in the error.
    """
    ratio = check_positive(name, value)
    if not MIN_SIGMA_RATIO <= ratio <= MAX_SIGMA_RATIO:
        raise ValueError(
            f"{name} must lie in [{MIN_SIGMA_RATIO:g}, {MAX_SIGMA_RATIO:g}], "
            f"got {ratio:g}"
        )
    return ratio


MAX_MAGNITUDE = 1e100
"""Largest magnitude of a statistic or sample entry. Products of a few such
numbers, as in a deep network's loss, stay within float64."""

SYMMETRY_TOLERANCE = 1e-8
"""Largest ``|Sigma - Sigma^T|`` entry, over ``max |Sigma|``, accepted as symmetric."""


def _as_finite_array(name: str, value, ndim: int) -> np.ndarray:
    try:
        array = np.array(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array, got {value!r}") from error
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values")
    largest = float(np.max(np.abs(array), initial=0.0))
    if largest > MAX_MAGNITUDE:
        raise ValueError(
            f"{name} entries must have magnitude at most {MAX_MAGNITUDE:g}, got "
            f"{largest:g}; rescale the data"
        )
    return array


def _as_sample_rows(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a numeric array with one row per sample, got {value!r}"
        ) from error
    if array.ndim == 1:
        array = array[:, None]
    return _as_finite_array(name, array, 2)


def _check_covariance(sigma: np.ndarray, dim: int) -> None:
    if sigma.shape != (dim, dim):
        raise ValueError(f"sigma must have shape ({dim}, {dim}), got {sigma.shape}")
    scale = max(float(np.max(np.abs(sigma))), np.finfo(float).tiny)
    asymmetry = float(np.max(np.abs(sigma - sigma.T))) / scale
    if asymmetry > SYMMETRY_TOLERANCE:
        raise ValueError(
            f"sigma must be symmetric, got a relative asymmetry of {asymmetry:.3g}"
        )
    smallest = float(np.linalg.eigvalsh(sigma)[0])
    if smallest <= 0:
        raise ValueError(
            f"sigma must be positive definite, got smallest eigenvalue {smallest:.6g}"
        )


@dataclass(frozen=True, eq=False)
class DataStatistics:
    """Covariances of a two-modality regression problem.

    Parameters
    ----------
    sigma : array_like, shape (d_A + d_B, d_A + d_B)
        Input covariance ``Sigma = E[x x^T]``, modality A first. Must be
        symmetric and positive definite.
    sigma_yx : array_like, shape (d_y, d_A + d_B)
        Input-output covariance ``Sigma_yx = E[y x^T]``. A 1-D array is read
        as one output row.
    dim_a : int
        Dimension ``d_A`` of modality A; modality B has the rest.
    y_second_moment : float, optional
        ``E||y||^2``. Needed only for absolute loss values. When missing,
        the noise-free value ``tr(Sigma_yx Sigma^-1 Sigma_xy)`` is used, so
        the loss at ``M_*`` is zero.
    teacher : array_like, shape (d_y, d_A + d_B), optional
        Teacher ``w*`` with ``y = w* x + noise``, when the data came from one.
    noise_std : float
        Standard deviation of the label noise around the teacher.

    Examples
    --------
    >>> stats = DataStatistics.toy(rho=0.0, sigma_ratio=2.0)
    >>> stats.sigma_ya, stats.sigma_yb
    (array([[4.]]), array([[1.]]))
    """

    sigma: np.ndarray
    sigma_yx: np.ndarray
    dim_a: int
    y_second_moment: float | None = None
    teacher: np.ndarray | None = None
    noise_std: float = 0.0
    description: dict = field(default_factory=dict)

    def __post_init__(self):
        sigma = _as_finite_array("sigma", self.sigma, 2)
        sigma_yx = _as_finite_array("sigma_yx", np.atleast_2d(self.sigma_yx), 2)
        dim = sigma.shape[0]
        dim_a = check_integer("dim_a", self.dim_a, 1, max(dim - 1, 1))
        if dim < 2 or dim_a >= dim:
            raise ValueError(
                f"sigma must cover both modalities: dim_a={dim_a} leaves no "
                f"dimension for B in a covariance of size {dim}"
            )
        _check_covariance(sigma, dim)
        if sigma_yx.shape[1] != dim:
            raise ValueError(
                f"sigma_yx must have {dim} columns to match sigma, got shape "
                f"{sigma_yx.shape}"
            )
        sigma = 0.5 * (sigma + sigma.T)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "sigma_yx", sigma_yx)
        object.__setattr__(self, "dim_a", dim_a)
        if self.y_second_moment is not None:
            moment = check_real("y_second_moment", self.y_second_moment)
            explained = float(np.trace(sigma_yx @ np.linalg.solve(sigma, sigma_yx.T)))
            if moment < explained * (1 - 1e-9) - 1e-12:
                raise ValueError(
                    f"y_second_moment must be at least Sigma_yx Sigma^-1 Sigma_xy = "
                    f"{explained:.6g} for the data to exist, got {moment}"
                )
            object.__setattr__(self, "y_second_moment", moment)
        if self.teacher is not None:
            teacher = _as_finite_array("teacher", np.atleast_2d(self.teacher), 2)
            if teacher.shape != sigma_yx.shape:
                raise ValueError(
                    f"teacher must have shape {sigma_yx.shape}, got {teacher.shape}"
                )
            object.__setattr__(self, "teacher", teacher)
        noise_std = check_real("noise_std", self.noise_std)
        if noise_std < 0:
            raise ValueError(f"noise_std must be non-negative, got {noise_std}")
        object.__setattr__(self, "noise_std", noise_std)
        if not isinstance(self.description, Mapping):
            raise TypeError(
                f"description must be a dict, got {type(self.description).__name__}"
            )
        object.__setattr__(self, "description", dict(self.description))

    # ------------------------------------------------------------------
    # Constructors

    @classmethod
    def toy(
        cls,
        rho: float = 0.0,
        sigma_ratio: float = 2.0,
        teacher: tuple[float, float] = (1.0, 1.0),
    ) -> DataStatistics:
        """Build the scalar toy data set: ``sigma_B = 1``, ``sigma_A = sigma_ratio``.

        ``x_A`` and ``x_B`` are zero-mean Gaussians with correlation ``rho``
        and ``y = w_A x_A + w_B x_B`` without noise, so with the default
        teacher ``(1, 1)``, ``Sigma_yA = sigma_A^2 + rho sigma_A`` and
        ``Sigma_yB = 1 + rho sigma_A``.
        """
        rho = check_open_interval("rho", rho, -1.0, 1.0)
        sigma_a = check_sigma_ratio("sigma_ratio", sigma_ratio)
        try:
            teacher = np.array(teacher, dtype=float)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"teacher must be two numbers (w_A, w_B), got {teacher!r}"
            ) from error
        if teacher.size != 2:
            raise ValueError(f"teacher must have 2 entries, got {teacher.size}")
        if teacher.shape not in ((2,), (1, 2)):
            raise ValueError(
                f"teacher must have shape (2,) or (1, 2), got shape {teacher.shape}"
            )
        teacher = teacher.reshape(1, 2)
        sigma = np.array([[sigma_a**2, rho * sigma_a], [rho * sigma_a, 1.0]])
        stats = cls.from_teacher(sigma, teacher, dim_a=1)
        stats.description.update(
            {
                "kind": "toy",
                "rho": rho,
                "sigma_ratio": sigma_a,
                "teacher": teacher.ravel().tolist(),
            }
        )
        return stats

    @classmethod
    def from_matrices(
        cls, sigma, sigma_yx, dim_a: int, y_second_moment: float | None = None
    ) -> DataStatistics:
        """Build statistics from an explicit ``Sigma`` and ``Sigma_yx``."""
        stats = cls(sigma, sigma_yx, dim_a, y_second_moment=y_second_moment)
        stats.description["kind"] = "matrices"
        return stats

    @classmethod
    def from_teacher(
        cls, sigma, teacher, dim_a: int, noise_std: float = 0.0
    ) -> DataStatistics:
        """Build statistics for ``y = w* x + noise`` with ``x ~ N(0, Sigma)``.

        Then ``Sigma_yx = w* Sigma`` and
        ``E||y||^2 = tr(w* Sigma w*^T) + d_y noise_std^2``.
        """
        sigma = _as_finite_array("sigma", sigma, 2)
        teacher = _as_finite_array("teacher", np.atleast_2d(teacher), 2)
        if teacher.shape[1] != sigma.shape[0]:
            raise ValueError(
                f"teacher must have {sigma.shape[0]} entries per output to match "
                f"sigma, got shape {teacher.shape}"
            )
        noise_std = check_real("noise_std", noise_std)
        moment = float(np.trace(teacher @ sigma @ teacher.T))
        moment += teacher.shape[0] * noise_std**2
        stats = cls(
            sigma,
            teacher @ sigma,
            dim_a,
            y_second_moment=moment,
            teacher=teacher,
            noise_std=noise_std,
        )
        stats.description.setdefault("kind", "teacher")
        return stats

    @classmethod
    def from_samples(cls, x_a, x_b, y) -> DataStatistics:
        """Estimate the statistics from samples, one row per sample.

        Uses the uncentred second moments ``X^T X / n``, the only data
        that full-batch gradient descent on the squared loss depends on.
        """
        x_a = _as_sample_rows("x_a", x_a)
        x_b = _as_sample_rows("x_b", x_b)
        y = _as_sample_rows("y", y)
        if not len(x_a) == len(x_b) == len(y):
            raise ValueError(
                "x_a, x_b and y must have the same number of samples, got "
                f"{len(x_a)}, {len(x_b)} and {len(y)}"
            )
        count = len(y)
        x = np.hstack([x_a, x_b])
        if count <= x.shape[1]:
            raise ValueError(
                f"samples must outnumber input dimensions ({x.shape[1]}) for the "
                f"covariance to be positive definite, got {count}"
            )
        stats = cls(
            x.T @ x / count,
            y.T @ x / count,
            x_a.shape[1],
            y_second_moment=float(np.sum(y * y) / count),
        )
        stats.description.update({"kind": "samples", "samples": count})
        return stats

    # ------------------------------------------------------------------
    # Blocks

    @property
    def dim(self) -> int:
        """Input dimension ``d_A + d_B``."""
        return self.sigma.shape[0]

    @property
    def dim_b(self) -> int:
        """Dimension ``d_B`` of modality B."""
        return self.dim - self.dim_a

    @property
    def dim_y(self) -> int:
        """Output dimension ``d_y``."""
        return self.sigma_yx.shape[0]

    @property
    def is_scalar(self) -> bool:
        """Whether both modalities and the output are one-dimensional."""
        return self.dim_a == 1 and self.dim_b == 1 and self.dim_y == 1

    @property
    def sigma_a(self) -> np.ndarray:
        """Block ``Sigma_A``, shape (d_A, d_A)."""
        return self.sigma[: self.dim_a, : self.dim_a]

    @property
    def sigma_b(self) -> np.ndarray:
        """Block ``Sigma_B``, shape (d_B, d_B)."""
        return self.sigma[self.dim_a :, self.dim_a :]

    @property
    def sigma_ab(self) -> np.ndarray:
        """Block ``Sigma_AB``, shape (d_A, d_B)."""
        return self.sigma[: self.dim_a, self.dim_a :]

    @property
    def sigma_ya(self) -> np.ndarray:
        """Block ``Sigma_yA``, shape (d_y, d_A)."""
        return self.sigma_yx[:, : self.dim_a]

    @property
    def sigma_yb(self) -> np.ndarray:
        """Block ``Sigma_yB``, shape (d_y, d_B)."""
        return self.sigma_yx[:, self.dim_a :]

    @property
    def total_y_second_moment(self) -> float:
        """``E||y||^2``, or its noise-free value ``Sigma_yx Sigma^-1 Sigma_xy``."""
        if self.y_second_moment is not None:
            return self.y_second_moment
        return float(np.trace(self.sigma_yx @ self.optimum.T))

    # ------------------------------------------------------------------
    # Fixed points of the end-to-end map

    @property
    def optimum(self) -> np.ndarray:
        """End-to-end map at ``M_*``: ``W_tot = Sigma_yx Sigma^-1``, shape (d_y, d)."""
        return np.linalg.solve(self.sigma, self.sigma_yx.T).T

    @property
    def unimodal_a(self) -> np.ndarray:
        """``W_A_tot`` at ``M_A``: ``Sigma_yA Sigma_A^-1``, shape (d_y, d_A)."""
        return np.linalg.solve(self.sigma_a, self.sigma_ya.T).T

    @property
    def unimodal_b(self) -> np.ndarray:
        """``W_B_tot`` at ``M_B``: ``Sigma_yB Sigma_B^-1``, shape (d_y, d_B)."""
        return np.linalg.solve(self.sigma_b, self.sigma_yb.T).T

    @property
    def unimodal_residual_b(self) -> np.ndarray:
        """Residual of B at ``M_A``: ``Sigma_yB - Sigma_yA Sigma_A^-1 Sigma_AB``."""
        return self.sigma_yb - self.unimodal_a @ self.sigma_ab

    @property
    def unimodal_residual_a(self) -> np.ndarray:
        """Residual of A at ``M_B``: ``Sigma_yA - Sigma_yB Sigma_B^-1 Sigma_BA``."""
        return self.sigma_ya - self.unimodal_b @ self.sigma_ab.T

    @property
    def leading_modality(self) -> str:
        """``"A"`` when ``||Sigma_yA|| >= ||Sigma_yB||`` (Frobenius), else ``"B"``."""
        norm_a = np.linalg.norm(self.sigma_ya)
        norm_b = np.linalg.norm(self.sigma_yb)
        return "A" if norm_a >= norm_b else "B"

    def _end_to_end_map(self, w_total) -> np.ndarray:
        try:
            w_total = np.asarray(w_total, dtype=float)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"w_total must be a numeric array, got {w_total!r}"
            ) from error
        expected = (self.dim_y, self.dim)
        if w_total.shape[-2:] != expected:
            raise ValueError(
                f"w_total must have shape (..., {expected[0]}, {expected[1]}) to "
                f"match the statistics, got shape {w_total.shape}"
            )
        return w_total

    def loss(self, w_total: np.ndarray) -> np.ndarray:
        """Loss ``1/2 (E||y||^2 - 2 tr(W Sigma_xy) + tr(W Sigma W^T))``.

        ``w_total`` has shape (..., d_y, d); the result has shape (...).
        """
        w_total = self._end_to_end_map(w_total)
        cross = np.einsum("...ij,ij->...", w_total, self.sigma_yx)
        quadratic = np.einsum("...ij,jk,...ik->...", w_total, self.sigma, w_total)
        return 0.5 * (self.total_y_second_moment - 2.0 * cross + quadratic)

    def generalization_error(self, w_total: np.ndarray) -> np.ndarray:
        """``E_g = 1/2 (W - w*) Sigma (W - w*)^T + d_y noise_std^2 / 2``.

        Requires a teacher. ``w_total`` has shape (..., d_y, d).
        """
        if self.teacher is None:
            raise ValueError(
                "generalization_error needs a teacher; build the statistics with "
                "DataStatistics.toy or DataStatistics.from_teacher"
            )
        delta = self._end_to_end_map(w_total) - self.teacher
        quadratic = np.einsum("...ij,jk,...ik->...", delta, self.sigma, delta)
        return 0.5 * quadratic + 0.5 * self.dim_y * self.noise_std**2

    # ------------------------------------------------------------------
    # Transformations

    def swapped(self) -> DataStatistics:
        """Return the same data with the modalities' labels A and B exchanged."""
        order = np.r_[self.dim_a : self.dim, 0 : self.dim_a]
        teacher = None if self.teacher is None else self.teacher[:, order]
        swapped = DataStatistics(
            self.sigma[np.ix_(order, order)],
            self.sigma_yx[:, order],
            self.dim_b,
            y_second_moment=self.y_second_moment,
            teacher=teacher,
            noise_std=self.noise_std,
        )
        swapped.description.update(self.description)
        swapped.description["swapped"] = not self.description.get("swapped", False)
        return swapped

    def sample(self, count: int, rng: np.random.Generator):
        """Draw ``count`` Gaussian samples ``(x_a, x_b, y)`` with these statistics.

        With a teacher, ``x ~ N(0, Sigma)`` and ``y = w* x + noise``. Without
        one, ``(x, y)`` is drawn jointly Gaussian with ``E y^2 =
        y_second_moment`` (scalar output only), or, without
        ``y_second_moment``, ``y = Sigma_yx Sigma^-1 x`` without noise.

        Returns
        -------
        x_a : ndarray, shape (count, d_A)
        x_b : ndarray, shape (count, d_B)
        y : ndarray, shape (count, d_y)
        """
        count = check_integer("samples", count, 1)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng)}")
        if self.teacher is not None:
            x = rng.multivariate_normal(
                np.zeros(self.dim), self.sigma, size=count, method="cholesky"
            )
            y = x @ self.teacher.T
            if self.noise_std > 0:
                y = y + self.noise_std * rng.standard_normal(y.shape)
        else:
            x, y = self._sample_joint(count, rng)
        return x[:, : self.dim_a], x[:, self.dim_a :], y

    def _sample_joint(self, count: int, rng: np.random.Generator):
        if self.y_second_moment is None:
            # Without E||y||^2 the statistics describe noise-free data:
            # y = W_* x with W_* = Sigma_yx Sigma^-1.
            x = rng.multivariate_normal(
                np.zeros(self.dim), self.sigma, size=count, method="cholesky"
            )
            return x, x @ self.optimum.T
        if self.dim_y != 1:
            raise ValueError(
                "sampling statistics with y_second_moment but without a teacher "
                f"needs a scalar output, got d_y={self.dim_y}; give a teacher instead"
            )
        joint = np.block(
            [
                [self.sigma, self.sigma_yx.T],
                [self.sigma_yx, np.array([[self.y_second_moment]])],
            ]
        )
        # A zero-noise target makes the joint covariance singular, so "eigh"
        # is used instead of a Cholesky factor.
        sample = rng.multivariate_normal(
            np.zeros(self.dim + 1), joint, size=count, method="eigh"
        )
        return sample[:, : self.dim], sample[:, self.dim :]

    def to_dict(self) -> dict:
        """Return a JSON-serialisable record of the statistics."""
        record = {
            "sigma": self.sigma.tolist(),
            "sigma_yx": self.sigma_yx.tolist(),
            "dim_a": self.dim_a,
            "y_second_moment": self.y_second_moment,
        }
        if self.teacher is not None:
            record["teacher"] = self.teacher.tolist()
            record["noise_std"] = self.noise_std
        record.update({"description": dict(self.description)})
        return record
