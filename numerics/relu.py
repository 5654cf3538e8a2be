"""Two-layer ReLU networks with early or late fusion, trained on samples.

The ReLU extension of Zhang, Latham, Saxe, "Understanding Unimodal Bias in
Multimodal Deep Linear Networks", ICML 2024, arXiv:2312.00935:

* late fusion (``L_f = 2``): ``f(x) = W_A^2 ReLU(W_A^1 x_A) + W_B^2 ReLU(W_B^1
  x_B)``, each branch of width ``N``;
* early fusion (``L_f = 1``): ``f(x) = W^2 ReLU(W^1 [x_A, x_B])``, width ``N``.

There are no biases. Training is full-batch gradient descent on
``loss = 1/(2n) sum_i (y_i - f(x_i))^2`` over the ``n`` samples, because a
ReLU network's loss does not reduce to covariances. Time is
``learning_rate * epoch`` in units of ``tau``. Every entry of every weight is
drawn with standard deviation ``init_scale``.

As for the linear networks of :mod:`unibias.numerics.network`, a run diverges
when its loss or weights become non-finite or its loss exceeds
``DIVERGENCE_FACTOR`` (``10^6``) times the larger of its initial loss and the
loss at zero weights. Such a run stops there, and its phase times are
reported as not reached, with the reason
``"training diverged at epoch E (learning rate X)"``.

Two experiments:

* :func:`time_relu_toy`, the toy data set with a linear target. A branch is
  read as the linear map ``W^2 W^1``. For symmetric inputs a ReLU unit is
  active on only half of the data, and at convergence the units active on
  ``x > 0`` and those active on ``x < 0`` each carry the whole slope, so
  ``W^2 W^1`` ends at :data:`RELU_PRODUCT_FACTOR` (2) times the linear value.
  The phase thresholds therefore sit at twice their linear values. This module divides
  the ReLU product by 2 and applies the linear thresholds of
  :mod:`unibias.numerics.phases` to it, so a modality counts as learned when
  ``W^2 W^1`` reaches the full linear target (the unimodal value
  ``Sigma_yA / Sigma_A`` for the leading modality, the ``M_*`` value for the
  other). With symmetric inputs, half the product also equals the projection
  ``E[f_A(x_A) x_A] / Sigma_A`` of the branch's output on the linear
  direction. The same samples train a linear network for comparison.
* :func:`time_relu_xor`, an XOR-like modality ``y_A = x_A1 x_A2`` beside a
  linear one ``y_B = x_B``. A modality counts as learned when the projection
  of the network output on its target component,
  ``<f, y_m> / <y_m, y_m>`` over the training samples, reaches 1/2. The two
  components are independent, so this reading applies to early and late
  fusion alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.numerics.network import divergence_limit, divergence_reason
from unibias.numerics.phases import (
    THRESHOLD_FRACTION,
    PhaseTiming,
    first_crossing,
    measure_phase_times,
    phase_targets,
)
from unibias.theory._validate import (
    check_integer,
    check_open_interval,
    check_positive,
    check_real,
    check_seeds,
)

__all__ = [
    "ACTIVATIONS",
    "RELU_PRODUCT_FACTOR",
    "ReluRun",
    "ToyTiming",
    "XorTiming",
    "linear_late_fusion_ratio",
    "time_relu_toy",
    "time_relu_xor",
    "train_relu_network",
    "xor_data",
]

RELU_PRODUCT_FACTOR = 2.0
"""Ratio of a converged ReLU branch's ``W^2 W^1`` to the linear branch's value,
for inputs whose distribution is symmetric under ``x -> -x``."""


def _relu(pre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The mask is float so that it enters matrix products through BLAS.
    active = (pre > 0).astype(float)
    return pre * active, active


def _identity(pre: np.ndarray) -> tuple[np.ndarray, None]:
    return pre, None


ACTIVATIONS: dict[str, Callable] = {"relu": _relu, "linear": _identity}
"""Hidden-layer activation by name; each returns the activation and its
derivative mask (``None`` for the identity)."""


@dataclass
class ReluRun:
    """Recorded trajectory of one two-layer network trained on samples.

    Attributes
    ----------
    times : ndarray, shape (records,)
        Record times in units of ``tau``.
    product_a, product_b : ndarray, shapes (records, d_A) and (records, d_B)
        ``W^2 W^1`` restricted to each modality's input columns. For late
        fusion this is ``W_A^2 W_A^1``; for early fusion the columns of
        ``W^2 W^1``.
    output : ndarray or None, shape (records, n)
        Network output on the training inputs, when ``record_output`` was set.
    progress_a, progress_b : ndarray or None, shape (records,)
        Values of the ``progress`` callable, when one was given.
    fusion_layer : int
    activation : str
    first_layers, second_layers : list of ndarray
        Weights at the end of training, one entry per branch (two for late
        fusion, one for early fusion): ``W^1`` of shape (N, d) and ``W^2`` of
        shape (N,). A diverged run keeps the weights of the epoch before
        ``diverged_epoch``.
    diverged_epoch : int or None
        Epoch at which training diverged and stopped, or ``None``. The
        records end at the last recorded epoch before it.
    """

    times: np.ndarray
    product_a: np.ndarray
    product_b: np.ndarray
    output: np.ndarray | None
    progress_a: np.ndarray | None
    progress_b: np.ndarray | None
    fusion_layer: int
    activation: str
    first_layers: list[np.ndarray]
    second_layers: list[np.ndarray]
    diverged_epoch: int | None = None


def _as_inputs(name: str, value, count: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (n, d) array, got shape {array.shape}")
    if count is not None and len(array) != count:
        raise ValueError(f"{name} must have {count} samples, got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must contain only finite values")
    return array


def train_relu_network(
    x_a,
    x_b,
    y,
    rng: np.random.Generator,
    *,
    fusion_layer: int = 2,
    activation: str = "relu",
    width: int = 100,
    init_scale: float = 1e-4,
    learning_rate: float = 0.04,
    epochs: int = 2000,
    record_every: int = 5,
    progress: Callable | None = None,
    record_output: bool = False,
    continue_factor: float = 1.5,
) -> ReluRun:
    """Train a two-layer network by full-batch gradient descent on samples.

    With residual ``r_i = (y_i - f(x_i)) / n``, hidden pre-activations
    ``z = X W^1^T`` and activity ``h = act(z)``, each step adds
    ``learning_rate`` times ``dW^2 = h^T r`` and
    ``dW^1 = ((r W^2) * act'(z))^T X`` on each branch. Row ``k`` of the
    latter is computed as ``W^2_k (act'(z)^T (r * X))_k``, which avoids the
    ``n x N`` outer product.

    Parameters
    ----------
    x_a, x_b : array_like, shapes (n, d_A) and (n, d_B)
        Inputs of the two modalities (1-D arrays are single columns).
    y : array_like, shape (n,)
        Scalar targets.
    rng : numpy.random.Generator
        Draws, in order, the first layer of A and of B (late fusion) or the
        whole first layer (early fusion), then the output layer.
    fusion_layer : int
        1 (early fusion) or 2 (late fusion).
    activation : str
        ``"relu"`` or ``"linear"``.
    width : int
        Hidden units per branch (late) or in total (early).
    init_scale : float
        Standard deviation of every initial weight entry.
    learning_rate : float
        One epoch advances time by this many units of ``tau``.
    epochs : int
        Maximum number of steps.
    record_every : int
        Record every this many epochs, and at the last one.
    progress : callable, optional
        ``progress(product_a, product_b, output) -> (progress_a, progress_b)``
        evaluated at each record. Once both have reached
        ``THRESHOLD_FRACTION`` (1/2) at epoch ``E``, training continues to
        epoch ``ceil(continue_factor * E)`` (at most ``epochs``) and stops,
        so that a run that blows up right after its crossing is reported as
        diverged rather than as learned.
    record_output : bool
        Keep the output on every training input at each record
        (``records x n`` floats).
    continue_factor : float
        Margin, at least 1, of training after both thresholds are reached,
        as for the linear networks of :func:`unibias.numerics.network.train_networks`.

    Returns
    -------
    ReluRun
        Training stops early at the first epoch whose loss or weights are
        non-finite or whose loss exceeds ``DIVERGENCE_FACTOR`` times the
        larger of the initial loss and ``1/(2n) sum_i y_i^2`` (the loss at
        zero weights). That epoch is ``diverged_epoch``.

    Raises
    ------
    ValueError
        For invalid arguments, when ``learning_rate * epochs`` overflows, or
        when the initial output is not finite (``init_scale`` too large).
    """
    x_a = _as_inputs("x_a", x_a)
    count = len(x_a)
    x_b = _as_inputs("x_b", x_b, count)
    y = _as_inputs("y", y, count)
    if y.shape[1] != 1:
        raise ValueError(f"y must be a scalar target per sample, got shape {y.shape}")
    y = y[:, 0]
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng)}")
    fusion_layer = check_integer("fusion_layer", fusion_layer, 1, 2)
    if activation not in ACTIVATIONS:
        valid = ", ".join(repr(name) for name in ACTIVATIONS)
        raise ValueError(f"activation must be one of {valid}, got {activation!r}")
    width = check_integer("width", width, 1)
    init_scale = check_positive("init_scale", init_scale)
    learning_rate = check_positive("learning_rate", learning_rate)
    epochs = check_integer("epochs", epochs, 1)
    record_every = check_integer("record_every", record_every, 1)
    continue_factor = check_real("continue_factor", continue_factor)
    if continue_factor < 1:
        raise ValueError(f"continue_factor must be at least 1, got {continue_factor}")
    if not math.isfinite(learning_rate * epochs):
        raise ValueError(
            f"learning_rate * epochs, the training time in tau, must be finite, "
            f"got learning_rate = {learning_rate:g} and epochs = {epochs}"
        )
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None, got {progress!r}")

    act = ACTIVATIONS[activation]
    dim_a = x_a.shape[1]
    inputs = [x_a, x_b] if fusion_layer == 2 else [np.hstack([x_a, x_b])]
    first = [init_scale * rng.standard_normal((width, x.shape[1])) for x in inputs]
    second = list(init_scale * rng.standard_normal((len(inputs), width)))

    records = {"times": [], "a": [], "b": [], "output": [], "pa": [], "pb": []}

    def record(epoch, output):
        products = [w2 @ w1 for w1, w2 in zip(first, second, strict=True)]
        if fusion_layer == 2:
            product_a, product_b = products
        else:
            product_a, product_b = products[0][:dim_a], products[0][dim_a:]
        records["times"].append(learning_rate * epoch)
        records["a"].append(product_a)
        records["b"].append(product_b)
        if record_output:
            records["output"].append(output.copy())
        if progress is None:
            return False
        fraction_a, fraction_b = progress(product_a, product_b, output)
        records["pa"].append(float(fraction_a))
        records["pb"].append(float(fraction_b))
        return min(fraction_a, fraction_b) >= THRESHOLD_FRACTION

    zero_weight_loss = 0.5 * float(np.mean(y * y))
    last_epoch = epochs
    loss_limit = math.inf
    diverged_epoch = None
    previous = (first, second)
    # Overflow and invalid values are expected in a diverging run. The check
    # below detects them, so numpy's warnings would only repeat it.
    with np.errstate(all="ignore"):
        for epoch in range(epochs + 1):
            # A contiguous W^1^T was up to 10x faster than the transposed view
            # for inputs of 2 or 3 columns (OpenBLAS 0.3.31, 2-core x86-64).
            pre = [
                x @ np.ascontiguousarray(w1.T)
                for x, w1 in zip(inputs, first, strict=True)
            ]
            hidden = [act(z) for z in pre]
            output = sum(h @ w2 for (h, _), w2 in zip(hidden, second, strict=True))
            loss = 0.5 * float(np.mean((y - output) ** 2))
            if epoch == 0:
                if not math.isfinite(loss):
                    raise ValueError(
                        f"the initial network output is not finite at init_scale = "
                        f"{init_scale:g} and width = {width}. Use a smaller "
                        "init_scale"
                    )
                loss_limit = float(divergence_limit(loss, zero_weight_loss))
            elif not _is_stable(loss, loss_limit, first, second):
                diverged_epoch = epoch
                first, second = previous
                break
            if epoch % record_every == 0 or epoch == last_epoch:
                learned = record(epoch, output)
                if learned and last_epoch == epochs:
                    last_epoch = min(epochs, math.ceil(continue_factor * epoch))
                if epoch == last_epoch:
                    break
            residual = (y - output) / count
            # Each update below makes new arrays, so `previous` keeps the
            # weights of this epoch.
            previous = (list(first), list(second))
            for k, x in enumerate(inputs):
                h, mask = hidden[k]
                weighted = residual[:, None] * x
                # Sum over the samples where each unit is active (all, if linear).
                if mask is None:
                    correlation = np.broadcast_to(
                        weighted.sum(axis=0), first[k].shape
                    )
                else:
                    correlation = mask.T @ weighted
                step_first = second[k][:, None] * correlation
                second[k] = second[k] + learning_rate * (h.T @ residual)
                first[k] = first[k] + learning_rate * step_first

    def stacked(key):
        return np.array(records[key]) if records[key] else None

    return ReluRun(
        times=np.array(records["times"]),
        product_a=np.array(records["a"]),
        product_b=np.array(records["b"]),
        output=stacked("output"),
        progress_a=stacked("pa"),
        progress_b=stacked("pb"),
        fusion_layer=fusion_layer,
        activation=activation,
        first_layers=first,
        second_layers=second,
        diverged_epoch=diverged_epoch,
    )


def _is_stable(loss: float, loss_limit: float, first, second) -> bool:
    if not (math.isfinite(loss) and loss <= loss_limit):
        return False
    return all(np.all(np.isfinite(weights)) for weights in (*first, *second))




# ----------------------------------------------------------------------
# Toy data with a linear target


def linear_late_fusion_ratio(statistics: DataStatistics) -> float:
    """Return the small-initialisation time ratio of two-layer linear late fusion.

    ``t_B / t_A = 1 + (||Sigma_yA|| - ||Sigma_yB||) /
    ||Sigma_yB - Sigma_yA Sigma_A^-1 Sigma_AB||`` with A leading (labels
    swapped when B leads). Toy data: ``1 + (sigma_A^2 - 1) / (1 - rho^2)``.
    """
    stats = statistics if statistics.leading_modality == "A" else statistics.swapped()
    leading = np.linalg.norm(stats.sigma_ya)
    trailing = np.linalg.norm(stats.sigma_yb)
    residual = np.linalg.norm(stats.unimodal_residual_b)
    return float(1.0 + (leading - trailing) / residual)


@dataclass(frozen=True)
class ToyTiming:
    """Phase times of ReLU and linear networks on the toy data set.

    Attributes
    ----------
    relu, linear : PhaseTiming
        Medians over the seeds, in units of ``tau``. The ReLU product is
        divided by :data:`RELU_PRODUCT_FACTOR` before the linear thresholds
        are applied. A diverged run reports neither time, with the reason
        ``"training diverged at epoch E (learning rate X)"``.
    theory_ratio : float or None
        Small-initialisation ratio of linear late fusion,
        ``1 + (sigma_A^2 - 1) / (1 - rho^2)`` on toy data; ``None`` for early
        fusion, which has no unimodal phase (ratio close to 1).
    fusion_layer : int
    settings : dict
    """

    relu: PhaseTiming
    linear: PhaseTiming
    theory_ratio: float | None
    fusion_layer: int
    settings: dict

    def to_dict(self) -> dict:
        """Return a JSON-compatible record."""
        return {
            "relu": self.relu.to_dict(),
            "linear": self.linear.to_dict(),
            "theory_ratio": self.theory_ratio,
            "fusion_layer": self.fusion_layer,
            "settings": dict(self.settings),
        }


def _median_timing(timings: list[PhaseTiming]) -> PhaseTiming:
    if len(timings) == 1:
        return timings[0]

    def median(values):
        values = [value for value in values if value is not None]
        return float(np.median(values)) if values else None

    missed = [t.reason for t in timings if t.time_ratio is None]
    reason = None
    if missed:
        reason = (
            f"{len(missed)} of {len(timings)} runs missed a threshold ({missed[0]})"
        )
    return PhaseTiming(
        median(t.t_a for t in timings),
        median(t.t_b for t in timings),
        median(t.time_ratio for t in timings),
        timings[0].leading_modality,
        reason,
    )


def time_relu_toy(
    rho: float = 0.0,
    sigma_ratio: float = 2.0,
    *,
    fusion_layer: int = 2,
    samples: int = 2048,
    width: int = 100,
    init_scale: float = 1e-4,
    learning_rate: float = 0.04,
    epochs: int = 4000,
    seeds: Sequence[int] = (0,),
) -> ToyTiming:
    """Time ReLU and linear two-layer networks on the same toy samples.

    For each seed, ``np.random.default_rng(seed)`` draws ``samples`` toy
    points (``sigma_B = 1``, teacher ``(1, 1)``, no noise), then the ReLU
    network's weights, then the linear network's weights. The thresholds come
    from the sample's own statistics (:meth:`DataStatistics.from_samples`).
    Each network trains until 1.5 times the epoch at which both thresholds
    are crossed, until it diverges (see :func:`train_relu_network`), or for
    ``epochs`` epochs, whichever comes first.

    Parameters
    ----------
    rho : float
        Correlation of the modalities, in (-1, 1).
    sigma_ratio : float
        ``sigma_A / sigma_B``, positive.
    fusion_layer : int
        1 (early) or 2 (late fusion).
    samples, width, init_scale, learning_rate, epochs
        See :func:`train_relu_network`; time is ``learning_rate * epoch``
        in units of ``tau``.
    seeds : sequence of int

    Returns
    -------
    ToyTiming
    """
    rho = check_open_interval("rho", rho, -1.0, 1.0)
    sigma_ratio = check_positive("sigma_ratio", sigma_ratio)
    fusion_layer = check_integer("fusion_layer", fusion_layer, 1, 2)
    samples = check_integer("samples", samples, 3)
    seeds = check_seeds(seeds)
    population = DataStatistics.toy(rho=rho, sigma_ratio=sigma_ratio)
    settings = {
        "rho": rho,
        "sigma_ratio": sigma_ratio,
        "samples": samples,
        "width": width,
        "init_scale": init_scale,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "seeds": seeds,
        "relu_product_factor": RELU_PRODUCT_FACTOR,
    }

    timings = {"relu": [], "linear": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x_a, x_b, y = population.sample(samples, rng)
        training = DataStatistics.from_samples(x_a, x_b, y)
        targets = phase_targets(training, fusion_layer)
        for activation in ("relu", "linear"):
            factor = RELU_PRODUCT_FACTOR if activation == "relu" else 1.0

            def progress(product_a, product_b, output, factor=factor, targets=targets):
                # Blocks of shape (d_y, d_m) = (1, d_m), as phase targets use.
                return targets.progress(
                    product_a[None, :] / factor, product_b[None, :] / factor
                )

            run = train_relu_network(
                x_a,
                x_b,
                y,
                rng,
                fusion_layer=fusion_layer,
                activation=activation,
                width=width,
                init_scale=init_scale,
                learning_rate=learning_rate,
                epochs=epochs,
                record_every=1,
                progress=progress,
            )
            if run.diverged_epoch is None:
                timing = measure_phase_times(
                    run.times,
                    run.product_a[:, None, :] / factor,
                    run.product_b[:, None, :] / factor,
                    training,
                    fusion_layer,
                )
            else:
                reason = divergence_reason(run.diverged_epoch, learning_rate)
                timing = PhaseTiming(
                    None, None, None, targets.leading_modality, reason
                )
            timings[activation].append(timing)
    theory = linear_late_fusion_ratio(population) if fusion_layer == 2 else None
    return ToyTiming(
        relu=_median_timing(timings["relu"]),
        linear=_median_timing(timings["linear"]),
        theory_ratio=theory,
        fusion_layer=fusion_layer,
        settings=settings,
    )


# ----------------------------------------------------------------------
# XOR-like modality beside a linear one


def xor_data(samples: int, rng: np.random.Generator, linear_weight: float = 1.0):
    """Draw an XOR-like modality A and a linear modality B.

    ``x_A ~ N(0, I_2)``, ``x_B ~ N(0, 1)``, independent, and
    ``y = y_A + y_B`` with ``y_A = x_A1 x_A2`` (positive in the first and
    third quadrants, negative in the others, with zero correlation with
    ``x_A``) and ``y_B = linear_weight x_B``. Both components have variance
    1 when ``linear_weight = 1``.

    Returns
    -------
    x_a : ndarray, shape (samples, 2)
    x_b : ndarray, shape (samples, 1)
    y, y_a, y_b : ndarray, shape (samples,)
    """
    samples = check_integer("samples", samples, 1)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng)}")
    linear_weight = check_positive("linear_weight", linear_weight)
    x_a = rng.standard_normal((samples, 2))
    x_b = rng.standard_normal((samples, 1))
    y_a = x_a[:, 0] * x_a[:, 1]
    y_b = linear_weight * x_b[:, 0]
    return x_a, x_b, y_a + y_b, y_a, y_b


@dataclass(frozen=True)
class XorTiming:
    """Times at which a ReLU network learns the XOR and the linear modality.

    Attributes
    ----------
    fusion_layer : int
    t_a, t_b : float or None
        Median first times, in units of ``tau``, at which the output's
        projection on ``y_A`` (XOR) and on ``y_B`` (linear) reaches 1/2;
        ``None`` when not reached by every seed.
    learned_first : str or None
        ``"A"``, ``"B"``, or ``None`` when a time is missing.
    final_progress_a, final_progress_b : float
        Median projections at the end of training. A diverged run
        contributes its last record before the divergence.
    settings : dict
    reason : str or None
        Why a time is missing, for example
        ``"training diverged at epoch E (learning rate X)"``, or ``None`` when
        every seed reached both thresholds.
    """

    fusion_layer: int
    t_a: float | None
    t_b: float | None
    learned_first: str | None
    final_progress_a: float
    final_progress_b: float
    settings: dict
    reason: str | None = None

    def to_dict(self) -> dict:
        """Return a JSON-compatible record."""
        return {
            "fusion_layer": self.fusion_layer,
            "t_a": self.t_a,
            "t_b": self.t_b,
            "learned_first": self.learned_first,
            "final_progress_a": self.final_progress_a,
            "final_progress_b": self.final_progress_b,
            "settings": dict(self.settings),
            "reason": self.reason,
        }


def time_relu_xor(
    fusion_layer: int = 2,
    *,
    samples: int = 2048,
    width: int = 100,
    init_scale: float = 1e-4,
    learning_rate: float = 0.04,
    epochs: int = 4000,
    seeds: Sequence[int] = (0,),
) -> XorTiming:
    """Time a ReLU network on :func:`xor_data` and report the order of learning.

    For each seed, ``np.random.default_rng(seed)`` draws the samples, then
    the weights. Training runs until 1.5 times the epoch at which both
    projections reach 1/2, until it diverges (see
    :func:`train_relu_network`), or for ``epochs`` epochs, whichever comes
    first. A diverged seed reports neither time.

    At the defaults (seed 0) this measured ``t_A = 24.7``, ``t_B = 15.0`` for
    early fusion and ``t_A = 39.8``, ``t_B = 15.3`` for late fusion: both
    learn the linear modality first, and late fusion delays the XOR modality
    longer.

    Returns
    -------
    XorTiming
    """
    fusion_layer = check_integer("fusion_layer", fusion_layer, 1, 2)
    seeds = check_seeds(seeds)
    times_a, times_b, finals_a, finals_b, reasons = [], [], [], [], []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x_a, x_b, y, y_a, y_b = xor_data(samples, rng)

        def progress(product_a, product_b, output, y_a=y_a, y_b=y_b):
            return output @ y_a / (y_a @ y_a), output @ y_b / (y_b @ y_b)

        run = train_relu_network(
            x_a,
            x_b,
            y,
            rng,
            fusion_layer=fusion_layer,
            activation="relu",
            width=width,
            init_scale=init_scale,
            learning_rate=learning_rate,
            epochs=epochs,
            record_every=1,
            progress=progress,
        )
        if run.diverged_epoch is None:
            time_a = first_crossing(run.times, run.progress_a)
            time_b = first_crossing(run.times, run.progress_b)
            reason = _xor_missing_reason(time_a, time_b, float(run.times[-1]))
        else:
            time_a = time_b = None
            reason = divergence_reason(run.diverged_epoch, learning_rate)
        times_a.append(time_a)
        times_b.append(time_b)
        reasons.append(reason)
        finals_a.append(run.progress_a[-1])
        finals_b.append(run.progress_b[-1])

    def median(values):
        if any(value is None for value in values):
            return None
        return float(np.median(values))

    t_a, t_b = median(times_a), median(times_b)
    learned_first = None
    if t_a is not None and t_b is not None:
        learned_first = "A" if t_a < t_b else "B"
    missed = [reason for reason in reasons if reason is not None]
    reason = reasons[0] if len(reasons) == 1 else None
    if len(reasons) > 1 and missed:
        reason = (
            f"{len(missed)} of {len(reasons)} runs missed a threshold ({missed[0]})"
        )
    settings = {
        "samples": samples,
        "width": width,
        "init_scale": init_scale,
        "learning_rate": learning_rate,
        "epochs": epochs,
        "seeds": seeds,
        "target_a": "x_A1 * x_A2",
        "target_b": "x_B",
    }
    return XorTiming(
        fusion_layer=fusion_layer,
        t_a=t_a,
        t_b=t_b,
        learned_first=learned_first,
        final_progress_a=float(np.median(finals_a)),
        final_progress_b=float(np.median(finals_b)),
        settings=settings,
        reason=reason,
    )


def _xor_missing_reason(t_a, t_b, horizon: float) -> str | None:
    missing = [name for name, time in (("A", t_a), ("B", t_b)) if time is None]
    if not missing:
        return None
    return (
        f"the projection on y_{missing[0]} did not reach 1/2 by "
        f"t = {horizon:.6g} tau"
    )
