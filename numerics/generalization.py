"""Generalisation deficit of late fusion trained on few samples.

The setting of Zhang, Latham, Saxe, "Understanding Unimodal Bias in
Multimodal Deep Linear Networks", ICML 2024, arXiv:2312.00935: two-layer
early fusion (``L_f = 1``) and late fusion (``L_f = 2``) networks learn a
noisy linear teacher from a finite training set. Modality A has
``d_A = 50`` dimensions of variance 3, modality B ``d_B = 50`` of variance 1,
the teacher is 0.1 in every coordinate and the label noise has standard
deviation 0.5. Late fusion first fits A alone, and with fewer samples than
input dimensions (70 < 100) it absorbs part of the noise into A during that
unimodal phase and ends at a different interpolating solution than early
fusion, with a larger generalisation error. With 700 samples both reach
about the same solution.

Training uses the second moments of the training set, ``X^T X / n`` and
``Y^T X / n``. Full-batch gradient descent on the squared loss depends on
the data only through them, so this is exact. They are plain arrays here and
not a :class:`~unibias.numerics.data.DataStatistics`, because with
``n <= d`` the sample covariance is singular, which ``DataStatistics``
rejects. :func:`train_two_layer` steps them with the same update as
:func:`unibias.numerics.network.train_networks` and the same initial weights
(:func:`unibias.numerics.network.init_weights`).

The generalisation error is measured against the population statistics,

    E_g(t) = 1/2 (W_tot(t) - w*) Sigma (W_tot(t) - w*)^T + noise_std^2 / 2,

at every epoch; time is ``learning_rate * epoch`` in units of ``tau``.

A run diverges at the first epoch whose training loss is not finite or exceeds
``DIVERGENCE_FACTOR`` (``10^6``) times the larger of its initial loss and its
loss at zero weights, as in :mod:`unibias.numerics.network`. Training of that
run stops there, it keeps the weights of the epoch before, and its reports
give the reason ``"training diverged at epoch E (learning rate X)"`` in place
of its generalisation errors.

NOTE: at 70 samples, late fusion has not converged after the paper's 1200
epochs. Its mean final ``E_g`` over seeds 0-3 rises from 1.11 to 1.24 by
epoch 4800, while early fusion moves from 0.77 to 0.79.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import (
    NetworkConfig,
    NetworkWeights,
    divergence_limit,
    divergence_reason,
    init_weights,
)
from unibias.theory._validate import (
    check_integer,
    check_positive,
    check_real,
    check_seeds,
)

__all__ = [
    "FUSION_LAYERS",
    "PAPER_SETTING",
    "FusionResult",
    "GeneralizationReport",
    "paper_statistics",
    "plot_generalization",
    "run_generalization",
    "sample_second_moments",
    "teacher_block_summary",
    "train_two_layer",
]

PAPER_SETTING = {
    "dim_per_modality": 50,
    "variance_a": 3.0,
    "variance_b": 1.0,
    "teacher_value": 0.1,
    "noise_std": 0.5,
    "width": 100,
    "learning_rate": 0.04,
    "epochs": 1200,
    # The default of the paper's two-layer code: every entry has standard
    # deviation 1e-9. Late fusion still learns B within the 1200 epochs (at
    # 700 samples it ends within 0.01% of early fusion's E_g).
    "init_scale": 1e-9,
}
"""Settings of the generalisation experiment, including the initialisation
(scheme ``"entry"``: every entry drawn with standard deviation ``init_scale``)."""

FUSION_LAYERS = {"early": 1, "late": 2}
"""Fusion layer ``L_f`` of each two-layer architecture."""


def paper_statistics(
    dim_per_modality: int = PAPER_SETTING["dim_per_modality"],
    variance_a: float = PAPER_SETTING["variance_a"],
    variance_b: float = PAPER_SETTING["variance_b"],
    teacher_value: float = PAPER_SETTING["teacher_value"],
    noise_std: float = PAPER_SETTING["noise_std"],
) -> DataStatistics:
    """Return the population statistics of the generalisation experiment.

    ``x_A ~ N(0, variance_a I)`` and ``x_B ~ N(0, variance_b I)``, each of
    dimension ``dim_per_modality`` and independent, and ``y = w* x + noise``
    with ``w* = teacher_value`` in every coordinate.
    """
    dim = check_integer("dim_per_modality", dim_per_modality, 1)
    variance_a = check_positive("variance_a", variance_a)
    variance_b = check_positive("variance_b", variance_b)
    teacher_value = check_real("teacher_value", teacher_value)
    noise_std = check_real("noise_std", noise_std)
    sigma = np.diag(np.r_[np.full(dim, variance_a), np.full(dim, variance_b)])
    teacher = np.full((1, 2 * dim), teacher_value)
    return DataStatistics.from_teacher(sigma, teacher, dim_a=dim, noise_std=noise_std)


def sample_second_moments(
    population: DataStatistics, samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a training set and return its ``(X^T X / n, Y^T X / n)``.

    Unlike :meth:`DataStatistics.from_samples` this accepts ``n <= d``, where
    the first matrix is singular.

    Returns
    -------
    sigma : ndarray, shape (d, d)
    sigma_yx : ndarray, shape (d_y, d)
    """
    sigma, sigma_yx, _ = _draw_training_moments(population, samples, rng)
    return sigma, sigma_yx


def _draw_training_moments(population, samples, rng):
    # Second moments of one drawn training set, and E||y||^2 for its loss.
    if not isinstance(population, DataStatistics):
        raise TypeError(
            f"population must be a DataStatistics, got {type(population).__name__}"
        )
    samples = check_integer("samples", samples, 1)
    x_a, x_b, y = population.sample(samples, rng)
    x = np.hstack([x_a, x_b])
    y_second_moment = float(np.sum(y * y)) / samples
    return x.T @ x / samples, y.T @ x / samples, y_second_moment


def train_two_layer(
    sigma: np.ndarray,
    sigma_yx: np.ndarray,
    weights: NetworkWeights,
    learning_rate: float,
    epochs: int,
    *,
    y_second_moment: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, NetworkWeights, list[int | None]]:
    """Run full-batch gradient descent of a two-layer network on second moments.

    With residual ``R = Sigma_yx - W_tot Sigma`` (blocks ``R_A``, ``R_B``),
    each step adds ``learning_rate`` times minus the gradient:

    * early fusion, ``W_tot = W^2 [W_A^1, W_B^1]``:
      ``dW^2 = R [W_A^1, W_B^1]^T``, ``dW_A^1 = W^2^T R_A``, likewise B;
    * late fusion, ``W_A_tot = W_A^2 W_A^1``:
      ``dW_A^2 = R_A W_A^1^T``, ``dW_A^1 = W_A^2^T R_A``, likewise B.

    ``Sigma`` may be singular. Every run of the batch has its own moments.

    A run diverges at the first epoch whose training loss
    ``L = 1/2 E||y||^2 - <W_tot, Sigma_yx> + 1/2 <W_tot, W_tot Sigma>`` is not
    finite or exceeds ``DIVERGENCE_FACTOR`` times ``max(L(0), 1/2 E||y||^2)``,
    or whose weights are not finite. That run stops, keeps the weights of the
    epoch before, and its records from that epoch on are NaN.

    Parameters
    ----------
    sigma : ndarray, shape (batch, d, d)
    sigma_yx : ndarray, shape (batch, d_y, d)
    weights : NetworkWeights
        Initial weights of depth 2, from
        :func:`unibias.numerics.network.init_weights`; not modified.
    learning_rate : float
        Step ``eta``; one epoch is ``eta`` in units of ``tau``.
    epochs : int
    y_second_moment : ndarray, shape (batch,), optional
        ``E||y||^2`` of each run's training set, which fixes the loss. When
        missing, the smallest value the moments allow,
        ``tr(Sigma_yx Sigma^+ Sigma_yx^T)`` (a training set that a linear map
        fits exactly), is used. This lowers the divergence limit.

    Returns
    -------
    times : ndarray, shape (epochs + 1,)
        ``learning_rate * epoch``, in units of ``tau``.
    w_total : ndarray, shape (batch, epochs + 1, d_y, d)
        ``W_tot`` after each epoch, the initial value first; NaN from the
        epoch at which a run diverged.
    final_weights : NetworkWeights
        Weights after the last epoch; a diverged run keeps its last finite
        weights, those of the epoch before it diverged.
    diverged_epochs : list of int or None
        Epoch at which each run diverged, or ``None``.

    Raises
    ------
    ValueError
        If an input is invalid or the initial loss is not finite.
    """
    if not isinstance(weights, NetworkWeights):
        raise TypeError(f"weights must be NetworkWeights, got {type(weights).__name__}")
    if weights.depth != 2:
        raise ValueError(f"weights must have depth 2, got depth {weights.depth}")
    learning_rate = check_positive("learning_rate", learning_rate)
    epochs = check_integer("epochs", epochs, 1)
    sigma = _finite_array("sigma", sigma)
    sigma_yx = _finite_array("sigma_yx", sigma_yx)
    dim_a = weights.dim_a
    batch = weights.batch_size
    dim = sigma.shape[-1]
    if sigma.shape != (batch, dim, dim) or sigma_yx.shape[0] != batch:
        raise ValueError(
            f"sigma and sigma_yx must have a leading batch axis of {batch} runs, got "
            f"shapes {sigma.shape} and {sigma_yx.shape}"
        )
    if y_second_moment is None:
        y_second_moment = _smallest_y_second_moment(sigma, sigma_yx)
    else:
        y_second_moment = _finite_array("y_second_moment", y_second_moment)
        if y_second_moment.shape != (batch,) or np.any(y_second_moment < 0):
            raise ValueError(
                f"y_second_moment must contain {batch} non-negative values, one "
                f"per run, got {y_second_moment.tolist()}"
            )
    state = weights.replaced([array.copy() for array in weights.arrays()])
    records = np.full((batch, epochs + 1, sigma_yx.shape[1], dim), np.nan)
    active = np.ones(batch, dtype=bool)
    diverged: list[int | None] = [None] * batch
    loss_limit = None
    previous = None
    # Overflow and invalid values are expected once a run diverges. The check
    # below detects them, so numpy's warnings would only repeat it.
    with np.errstate(all="ignore"):
        for epoch in range(epochs + 1):
            w_total = state.w_total()
            w_sigma = w_total @ sigma
            loss = 0.5 * y_second_moment + np.sum(
                w_total * (0.5 * w_sigma - sigma_yx), axis=(1, 2)
            )
            if epoch == 0:
                if not np.all(np.isfinite(loss)):
                    raise ValueError(
                        "the initial training loss is not finite, because the "
                        "initial weights are too large; use a smaller init_scale"
                    )
                loss_limit = divergence_limit(loss, 0.5 * y_second_moment)
            else:
                failed = active & ~_stable_runs(loss, loss_limit, state)
                if failed.any():
                    # Put back the weights of the previous epoch and freeze them.
                    for current, old in zip(state.arrays(), previous, strict=True):
                        current[failed] = old[failed]
                    active &= ~failed
                    for index in np.flatnonzero(failed):
                        diverged[index] = epoch
                    if not active.any():
                        break
            if active.all():
                records[:, epoch] = w_total
            else:
                records[active, epoch] = w_total[active]
            if epoch == epochs:
                break
            previous = [array.copy() for array in state.arrays()]
            _step_two_layer(state, sigma_yx - w_sigma, dim_a, learning_rate)
            if not active.all():
                for current, old in zip(state.arrays(), previous, strict=True):
                    current[~active] = old[~active]
    times = learning_rate * np.arange(epochs + 1, dtype=float)
    return times, records, state, diverged


def _step_two_layer(state, residual, dim_a, learning_rate):
    # One gradient step of every run in place; see train_two_layer.
    residual_a, residual_b = residual[..., :dim_a], residual[..., dim_a:]
    if state.fusion_layer == 1:
        output = state.shared[0]
        first = np.concatenate([state.fusion_a, state.fusion_b], axis=-1)
        step_output = residual @ np.swapaxes(first, -1, -2)
        step_a = np.swapaxes(output, -1, -2) @ residual_a
        step_b = np.swapaxes(output, -1, -2) @ residual_b
        state.shared[0] += learning_rate * step_output
        state.fusion_a += learning_rate * step_a
        state.fusion_b += learning_rate * step_b
        return
    steps = []
    for branch, top, block in (
        (state.branch_a[0], state.fusion_a, residual_a),
        (state.branch_b[0], state.fusion_b, residual_b),
    ):
        steps.append(
            (
                block @ np.swapaxes(branch, -1, -2),
                np.swapaxes(top, -1, -2) @ block,
            )
        )
    (top_a, branch_a), (top_b, branch_b) = steps
    state.fusion_a += learning_rate * top_a
    state.fusion_b += learning_rate * top_b
    state.branch_a[0] += learning_rate * branch_a
    state.branch_b[0] += learning_rate * branch_b


def _stable_runs(loss, loss_limit, state) -> np.ndarray:
    # Runs whose loss is finite and within its limit and whose weights are finite.
    stable = np.isfinite(loss) & (loss <= loss_limit)
    for array in state.arrays():
        stable &= np.all(np.isfinite(array), axis=(1, 2))
    return stable


def _smallest_y_second_moment(sigma, sigma_yx) -> np.ndarray:
    # The training loss is non-negative at every W_tot, so E||y||^2 is at least
    # tr(Sigma_yx Sigma^+ Sigma_yx^T), the fit of the least-squares map.
    fitted = sigma_yx @ np.linalg.pinv(sigma, hermitian=True)
    return np.sum(fitted * sigma_yx, axis=(1, 2))


def _finite_array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array, got {value!r}") from error
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values")
    return array


def teacher_block_summary(block: np.ndarray, teacher_block: np.ndarray) -> dict:
    """Summarise one modality's block of ``W_tot`` against the teacher's.

    Returns
    -------
    dict
        ``norm``: Frobenius norm ``||W_m||``; ``teacher_projection``:
        ``<W_m, w*_m> / ||w*_m||^2``, which is 1 at the teacher and 0 when
        the block is orthogonal to it.
    """
    block = _finite_array("block", block)
    teacher_block = _finite_array("teacher_block", teacher_block)
    if block.shape != teacher_block.shape:
        raise ValueError(
            f"block must have the shape of teacher_block, {teacher_block.shape}, got "
            f"{block.shape}"
        )
    scale = float(np.sum(teacher_block**2))
    projection = float(np.sum(block * teacher_block) / scale) if scale > 0 else 0.0
    return {"norm": float(np.linalg.norm(block)), "teacher_projection": projection}


@dataclass
class FusionResult:
    """Generalisation error of one architecture over the seeds.

    A diverged run (see :func:`train_two_layer`) reports NaN for each
    per-run quantity and ``None`` in :meth:`summary`, and the means cover
    the other runs.

    Attributes
    ----------
    fusion_layer : int
        ``L_f``: 1 for early fusion, 2 for late fusion.
    times : ndarray, shape (epochs + 1,)
        In units of ``tau``.
    generalization_error : ndarray, shape (seeds, epochs + 1)
        ``E_g(t)`` of each run against the population statistics; NaN from
        the epoch at which a run diverged.
    final_w_total : ndarray, shape (seeds, d_y, d)
        ``W_tot`` at the end of training. A diverged run keeps its last
        finite value, from the epoch before it diverged.
    teacher : ndarray, shape (d_y, d)
    dim_a : int
    diverged_epochs : list of int or None
        Epoch at which each run diverged, or ``None``; empty means no run
        diverged.
    learning_rate : float or None
        Learning rate of training, quoted in the divergence reasons.
    """

    fusion_layer: int
    times: np.ndarray
    generalization_error: np.ndarray
    final_w_total: np.ndarray
    teacher: np.ndarray
    dim_a: int
    diverged_epochs: list[int | None] = field(default_factory=list)
    learning_rate: float | None = None

    @property
    def converged(self) -> np.ndarray:
        """Whether each run trained without diverging, shape (seeds,)."""
        runs = len(self.generalization_error)
        epochs = self.diverged_epochs or [None] * runs
        return np.array([epoch is None for epoch in epochs], dtype=bool)

    @property
    def divergence_reasons(self) -> list[str | None]:
        """``"training diverged at epoch E (learning rate X)"`` of each run, or None."""
        runs = len(self.generalization_error)
        return [
            None if epoch is None else _divergence_reason(epoch, self.learning_rate)
            for epoch in (self.diverged_epochs or [None] * runs)
        ]

    @property
    def min_generalization_error(self) -> np.ndarray:
        """Lowest ``E_g`` of each run over training (early stopping), shape (seeds,)."""
        lowest = self.generalization_error[self.converged].min(axis=1)
        return self._per_run(lowest)

    @property
    def min_generalization_error_time(self) -> np.ndarray:
        """Time of the lowest ``E_g`` of each run, in units of ``tau``."""
        errors = self.generalization_error[self.converged]
        return self._per_run(self.times[errors.argmin(axis=1)])

    @property
    def final_generalization_error(self) -> np.ndarray:
        """``E_g`` of each run after the last epoch, shape (seeds,)."""
        return self._per_run(self.generalization_error[self.converged, -1])

    def _per_run(self, converged_values: np.ndarray) -> np.ndarray:
        # Spread the values of the converged runs over all runs, NaN elsewhere.
        values = np.full(len(self.generalization_error), np.nan)
        values[self.converged] = converged_values
        return values

    def block_summaries(self, modality: str) -> list[dict | None]:
        """Return :func:`teacher_block_summary` of each run's final block.

        A diverged run gives ``None``.
        """
        if modality not in ("A", "B"):
            raise ValueError(f"modality must be 'A' or 'B', got {modality!r}")
        columns = slice(0, self.dim_a) if modality == "A" else slice(self.dim_a, None)
        return [
            teacher_block_summary(w[:, columns], self.teacher[:, columns])
            if converged
            else None
            for w, converged in zip(self.final_w_total, self.converged, strict=True)
        ]

    def summary(self) -> dict:
        """Return the means over the converged seeds and the values of each seed.

        Keys: ``fusion_layer``, ``min_generalization_error``,
        ``min_generalization_error_time``, ``final_generalization_error``,
        ``w_a_final`` and ``w_b_final`` (each a dict of ``norm`` and
        ``teacher_projection``, see :func:`teacher_block_summary`),
        ``diverged_epochs``, ``reason`` and ``per_seed`` with the same
        quantities as lists. A mean is ``None`` when every run diverged, and
        a diverged seed's values are ``None``. ``reason`` is ``None`` when no
        run diverged, the run's divergence reason for one run, and otherwise
        ``"K of N runs diverged, the first: <reason>"``.
        """
        blocks = {name: self.block_summaries(name) for name in ("A", "B")}

        def mean(values):
            values = values[~np.isnan(values)]
            return float(np.mean(values)) if values.size else None

        def mean_block(entries):
            entries = [entry for entry in entries if entry is not None]
            if not entries:
                return None
            return {
                key: float(np.mean([entry[key] for entry in entries]))
                for key in entries[0]
            }

        def per_seed(values):
            return [None if math.isnan(value) else value for value in values.tolist()]

        return {
            "fusion_layer": self.fusion_layer,
            "min_generalization_error": mean(self.min_generalization_error),
            "min_generalization_error_time": mean(self.min_generalization_error_time),
            "final_generalization_error": mean(self.final_generalization_error),
            "w_a_final": mean_block(blocks["A"]),
            "w_b_final": mean_block(blocks["B"]),
            "diverged_epochs": list(
                self.diverged_epochs or [None] * len(self.generalization_error)
            ),
            "reason": self._summary_reason(),
            "per_seed": {
                "min_generalization_error": per_seed(self.min_generalization_error),
                "final_generalization_error": per_seed(
                    self.final_generalization_error
                ),
                "w_a_final": blocks["A"],
                "w_b_final": blocks["B"],
                "reason": self.divergence_reasons,
            },
        }

    def _summary_reason(self) -> str | None:
        reasons = [reason for reason in self.divergence_reasons if reason is not None]
        if not reasons:
            return None
        runs = len(self.generalization_error)
        if runs == 1:
            return reasons[0]
        return f"{len(reasons)} of {runs} runs diverged, the first: {reasons[0]}"


def _divergence_reason(epoch: int, learning_rate: float | None) -> str:
    if learning_rate is None:
        return f"training diverged at epoch {epoch} (learning rate unknown)"
    return divergence_reason(epoch, learning_rate)


@dataclass
class GeneralizationReport:
    """Early and late fusion trained on the same training sets.

    Attributes
    ----------
    early, late : FusionResult
    samples : int
        Training-set size.
    seeds : list of int
    unimodal_generalization_error : float
        ``E_g`` at the population unimodal solution ``M_A``
        (``W_A = Sigma_yA Sigma_A^-1``, ``W_B = 0``): where the unimodal
        phase would sit with infinitely many samples.
    noise_floor : float
        ``E_g`` at the teacher, ``d_y noise_std^2 / 2``.
    settings : dict
        Every setting used.
    """

    early: FusionResult
    late: FusionResult
    samples: int
    seeds: list[int]
    unimodal_generalization_error: float
    noise_floor: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """Return a JSON-compatible record with keys ``early`` and ``late``."""
        return {
            "early": self.early.summary(),
            "late": self.late.summary(),
            "samples": self.samples,
            "seeds": list(self.seeds),
            "unimodal_generalization_error": self.unimodal_generalization_error,
            "noise_floor": self.noise_floor,
            "settings": dict(self.settings),
        }


def run_generalization(
    samples: int,
    seeds: Sequence[int] = (0,),
    *,
    width: int = PAPER_SETTING["width"],
    learning_rate: float = PAPER_SETTING["learning_rate"],
    epochs: int = PAPER_SETTING["epochs"],
    init_scale: float = PAPER_SETTING["init_scale"],
    population: DataStatistics | None = None,
) -> GeneralizationReport:
    """Train early and late fusion on the same training sets and measure ``E_g``.

    For each seed, ``np.random.SeedSequence(seed).spawn(3)`` gives three
    independent generators: the first draws the training set, the second
    the early-fusion weights and the third the late-fusion weights. Both
    architectures therefore see the same data. Weights use the ``"entry"``
    scheme (every entry has standard deviation ``init_scale``).

    Parameters
    ----------
    samples : int
        Training-set size; 70 is over-parametrised in the paper's setting
        (fewer samples than the 100 input dimensions), 700 is not.
    seeds : sequence of int
    width, learning_rate, epochs, init_scale
        Network settings; time is ``learning_rate * epoch`` in units of ``tau``.
    population : DataStatistics, optional
        Population statistics with a teacher; default :func:`paper_statistics`.

    Returns
    -------
    GeneralizationReport
    """
    samples = check_integer("samples", samples, 1)
    seeds = check_seeds(seeds)
    # Checked before the training sets are drawn. NetworkConfig checks them
    # again.
    check_integer("width", width, 1)
    check_positive("learning_rate", learning_rate)
    check_integer("epochs", epochs, 1)
    check_positive("init_scale", init_scale)
    population = paper_statistics() if population is None else population
    if not isinstance(population, DataStatistics) or population.teacher is None:
        raise TypeError(
            "population must be a DataStatistics with a teacher, built with "
            "DataStatistics.from_teacher"
        )
    dims = (population.dim_a, population.dim_b, population.dim_y)

    moments, generators = [], {name: [] for name in FUSION_LAYERS}
    for seed in seeds:
        data_seed, early_seed, late_seed = np.random.SeedSequence(seed).spawn(3)
        moments.append(
            _draw_training_moments(
                population, samples, np.random.default_rng(data_seed)
            )
        )
        generators["early"].append(np.random.default_rng(early_seed))
        generators["late"].append(np.random.default_rng(late_seed))
    sigma = np.stack([m[0] for m in moments])
    sigma_yx = np.stack([m[1] for m in moments])
    y_second_moment = np.array([m[2] for m in moments])

    results = {}
    for name, fusion_layer in FUSION_LAYERS.items():
        config = NetworkConfig(
            depth=2,
            fusion_layer=fusion_layer,
            width=width,
            init_scale=init_scale,
            learning_rate=learning_rate,
            epochs=epochs,
            samples=samples,
            init_scheme="entry",
        )
        weights = init_weights(config, dims, generators[name])
        times, w_total, final_weights, diverged = train_two_layer(
            sigma,
            sigma_yx,
            weights,
            config.learning_rate,
            config.epochs,
            y_second_moment=y_second_moment,
        )
        results[name] = FusionResult(
            fusion_layer=fusion_layer,
            times=times,
            generalization_error=population.generalization_error(w_total),
            final_w_total=final_weights.w_total(),
            teacher=population.teacher,
            dim_a=population.dim_a,
            diverged_epochs=diverged,
            learning_rate=config.learning_rate,
        )

    unimodal = np.concatenate(
        [population.unimodal_a, np.zeros((population.dim_y, population.dim_b))],
        axis=1,
    )
    settings = {
        "width": width,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "init_scale": init_scale,
        "init_scheme": "entry",
        "dim_a": population.dim_a,
        "dim_b": population.dim_b,
        "noise_std": population.noise_std,
    }
    return GeneralizationReport(
        early=results["early"],
        late=results["late"],
        samples=samples,
        seeds=seeds,
        unimodal_generalization_error=float(population.generalization_error(unimodal)),
        noise_floor=float(0.5 * population.dim_y * population.noise_std**2),
        settings=settings,
    )


def plot_generalization(report: GeneralizationReport, ax=None):
    """Draw ``E_g(t)`` of early and late fusion, one line per seed.

    Dotted horizontal lines mark the unimodal solution's ``E_g`` and the
    noise floor. The curve of a diverged run ends at the last epoch before
    the divergence, marked with a cross and a legend entry. Builds a new
    :class:`matplotlib.figure.Figure` when ``ax`` is missing.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.0, 4.0), layout="constrained")
        ax = figure.add_subplot()
    else:
        figure = ax.figure
    styles = {
        "early": ("tab:green", "early fusion"),
        "late": ("tab:purple", "late fusion"),
    }
    for name in ("early", "late"):
        result = getattr(report, name)
        color, label = styles[name]
        alpha = 1.0 if len(result.generalization_error) == 1 else 0.6
        labelled = diverged_labelled = False
        for curve, epoch in zip(
            result.generalization_error,
            result.diverged_epochs or [None] * len(result.generalization_error),
            strict=True,
        ):
            if epoch is None:
                ax.plot(
                    result.times,
                    curve,
                    color=color,
                    linewidth=1.2,
                    alpha=alpha,
                    label=None if labelled else label,
                )
                labelled = True
                continue
            # The records from the divergence epoch on are NaN and left out.
            ax.plot(
                result.times[:epoch],
                curve[:epoch],
                color=color,
                linewidth=1.2,
                linestyle="--",
                marker="x",
                markevery=[epoch - 1],
                alpha=alpha,
                label=None
                if diverged_labelled
                else f"{label}, diverged (ends at the last finite epoch)",
            )
            diverged_labelled = True
    ax.axhline(
        report.unimodal_generalization_error,
        color="gray",
        linestyle=":",
        label="population unimodal solution $M_A$",
    )
    ax.axhline(report.noise_floor, color="black", linestyle=":", label="noise floor")
    ax.set_xlabel(r"time $t$ ($\tau$ = learning rate $\times$ epochs)")
    ax.set_ylabel(r"generalisation error $E_g$")
    ax.set_title(f"{report.samples} training samples")
    ax.legend(fontsize=8)
    return figure
