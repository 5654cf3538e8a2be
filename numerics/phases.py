"""Phase times ``t_A`` and ``t_B`` measured on a trajectory of ``W_tot``.

Definitions, shared by every method so that they compare like with like:

* The leading modality ``l`` (the one with the larger ``||Sigma_yl||``) is
  learned when its block of ``W_tot`` reaches half of its unimodal value
  ``Sigma_yl Sigma_l^-1`` (for early fusion, ``L_f = 1``, half of its value at
  ``M_*``, because early fusion has no unimodal plateau).
* The trailing modality is learned when its block reaches half of its value
  at ``M_*``.
* For matrix-valued blocks, "reaches half" means that the projection of the
  block on its target, divided by the target's squared Frobenius norm, reaches
  ``1/2``.

``t_a`` and ``t_b`` always refer to modalities A and B; ``time_ratio`` is the
trailing time over the leading time, so it is at least 1 whenever both are
reached in order. Time is in units of ``tau`` (learning rate times epochs for
gradient descent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from unibias.numerics.data import DataStatistics
from unibias.theory._validate import MAX_DEPTH, check_integer

THRESHOLD_FRACTION = 0.5
"""Fraction of its target at which a modality counts as learned."""

NO_TARGET_TOLERANCE = 1e-10
"""Target norm, over ``||Sigma_yx Sigma^-1||``, below which nothing is left to learn."""


@dataclass(frozen=True)
class PhaseTiming:
    """Phase times of one run, in units of ``tau``.

    Attributes
    ----------
    t_a, t_b : float or None
        First times at which modality A and B reach their thresholds, or
        ``None`` when not reached.
    time_ratio : float or None
        Trailing over leading time, or ``None`` unless both were reached.
    leading_modality : str
        ``"A"`` or ``"B"``.
    reason : str or None
        Why a threshold was not reached, when one was not.
    """

    t_a: float | None
    t_b: float | None
    time_ratio: float | None
    leading_modality: str
    reason: str | None = None

    def to_dict(self) -> dict:
        """Return the fields ``t_a``, ``t_b``, ``time_ratio`` and ``reason``."""
        record = asdict(self)
        record.pop("leading_modality")
        return record

    @classmethod
    def from_times(
        cls,
        t_a: float | None,
        t_b: float | None,
        leading_modality: str,
        reason: str | None = None,
    ) -> PhaseTiming:
        """Build a timing, computing the ratio when both times are known."""
        _check_modality("leading_modality", leading_modality)
        leading, trailing = (t_a, t_b) if leading_modality == "A" else (t_b, t_a)
        ratio = None
        if leading is not None and trailing is not None and leading > 0:
            ratio = float(trailing / leading)
        if reason is None and (t_a is None or t_b is None):
            missing = "A" if t_a is None else "B"
            reason = f"modality {missing} did not reach its threshold"
        if reason is None and ratio is None:
            reason = (
                f"the leading modality {leading_modality} starts at or above its "
                "threshold (t = 0), so the time ratio is undefined"
            )
        return cls(
            None if t_a is None else float(t_a),
            None if t_b is None else float(t_b),
            ratio,
            leading_modality,
            reason,
        )


@dataclass(frozen=True)
class PhaseTargets:
    """Targets whose half marks the learning of each modality.

    Attributes
    ----------
    target_a, target_b : ndarray, shapes (d_y, d_A) and (d_y, d_B)
    leading_modality : str
    missing_reason : str or None
        Set when a target is zero, so that the threshold is meaningless.
    """

    target_a: np.ndarray
    target_b: np.ndarray
    leading_modality: str
    missing_reason: str | None = None
    missing: tuple[bool, bool] = (False, False)

    def progress(
        self, w_a: np.ndarray, w_b: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the fractions of the targets reached by ``w_a`` and ``w_b``.

        ``w_a`` has shape (..., d_y, d_A) or, for scalar blocks, any shape;
        the results drop the two trailing matrix axes.
        """
        return _fraction(w_a, self.target_a), _fraction(w_b, self.target_b)


def _fraction(block: np.ndarray, target: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=float)
    norm = float(np.sum(target * target))
    matrix_block = block.ndim >= target.ndim and (
        block.shape[block.ndim - target.ndim :] == target.shape
    )
    if matrix_block:
        axes = tuple(range(block.ndim - target.ndim, block.ndim))
        projection = np.tensordot(block, target, axes=(axes, tuple(range(target.ndim))))
    elif target.size == 1:
        projection = block * float(target.ravel()[0])
    else:
        raise ValueError(
            f"a block of shape {block.shape} does not match a target of shape "
            f"{target.shape}"
        )
    if norm == 0:
        # A zero target is never reached; phase_targets records why.
        return np.zeros_like(projection)
    return projection / norm


def _check_modality(name: str, value) -> None:
    if value not in ("A", "B"):
        raise ValueError(f"{name} must be 'A' or 'B', got {value!r}")


def _check_statistics(stats) -> None:
    if not isinstance(stats, DataStatistics):
        raise TypeError(f"stats must be a DataStatistics, got {type(stats).__name__}")


def phase_targets(stats: DataStatistics, fusion_layer: int) -> PhaseTargets:
    """Return the thresholds' targets for data ``stats`` and fusion layer ``L_f``."""
    _check_statistics(stats)
    fusion_layer = check_integer("fusion_layer", fusion_layer, 1, MAX_DEPTH)
    leading = stats.leading_modality
    optimum = stats.optimum
    final_a, final_b = optimum[:, : stats.dim_a], optimum[:, stats.dim_a :]
    if fusion_layer == 1:
        target_a, target_b = final_a, final_b
    elif leading == "A":
        target_a, target_b = stats.unimodal_a, final_b
    else:
        target_a, target_b = final_a, stats.unimodal_b
    scale = max(float(np.linalg.norm(optimum)), np.finfo(float).tiny)
    reason, missing, targets = None, [], []
    for name, target in (("A", target_a), ("B", target_b)):
        empty = bool(np.linalg.norm(target) <= NO_TARGET_TOLERANCE * scale)
        missing.append(empty)
        targets.append(np.zeros_like(target) if empty else target)
        if empty:
            reason = (
                f"modality {name} has nothing to learn: its target W_{name}_tot is "
                "zero, so no threshold is defined"
            )
    return PhaseTargets(targets[0], targets[1], leading, reason, tuple(missing))


def first_crossing(times: np.ndarray, progress: np.ndarray) -> float | None:
    """Return the first time ``progress`` reaches the threshold, or ``None``.

    Interpolates linearly between the two samples around the crossing.
    ``times`` and ``progress`` have shape (n,) with ``n >= 1``, and
    ``times`` must be finite.
    """
    times = _as_vector("times", times)
    progress = _as_vector("progress", progress)
    if progress.shape != times.shape:
        raise ValueError(
            f"progress must have the shape of times, {times.shape}, got "
            f"{progress.shape}"
        )
    if not np.all(np.isfinite(times)):
        raise ValueError("times must contain only finite values")
    above = np.flatnonzero(progress >= THRESHOLD_FRACTION)
    if above.size == 0:
        return None
    index = int(above[0])
    if index == 0:
        return float(times[0])
    before, after = progress[index - 1], progress[index]
    weight = (THRESHOLD_FRACTION - before) / (after - before)
    return float(times[index - 1] + weight * (times[index] - times[index - 1]))


def _as_vector(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a numeric array, got {value!r}") from error
    if array.ndim != 1 or array.size == 0:
        raise ValueError(
            f"{name} must be a non-empty one-dimensional array, got shape "
            f"{array.shape}"
        )
    return array


def measure_phase_times(
    times: np.ndarray,
    w_a: np.ndarray,
    w_b: np.ndarray,
    stats: DataStatistics,
    fusion_layer: int,
    end_reason: str | None = None,
) -> PhaseTiming:
    """Measure ``t_a`` and ``t_b`` on a sampled trajectory.

    Parameters
    ----------
    times : ndarray, shape (n,)
        Sample times in units of ``tau``.
    w_a, w_b : ndarray, shapes (n, d_y, d_A) and (n, d_y, d_B), or (n,)
        ``W_A_tot`` and ``W_B_tot`` at those times.
    stats : DataStatistics
        Statistics the run was trained on; they fix the thresholds.
    fusion_layer : int
        ``L_f``; early fusion (1) uses the final values for both thresholds.
    end_reason : str, optional
        Why the trajectory stopped (for example divergence), reported when a
        threshold was not reached.
    """
    times = _as_vector("times", times)
    targets = phase_targets(stats, fusion_layer)
    progress_a, progress_b = targets.progress(w_a, w_b)
    for name, block, progress in (("w_a", w_a, progress_a), ("w_b", w_b, progress_b)):
        if np.shape(progress) != times.shape:
            raise ValueError(
                f"{name} must have one block per time, shape ({times.size}, d_y, "
                f"d_m) or ({times.size},), got shape {np.shape(block)}"
            )
    t_a = first_crossing(times, progress_a)
    t_b = first_crossing(times, progress_b)
    reason = targets.missing_reason
    if reason is None and (t_a is None or t_b is None):
        missing = "A" if t_a is None else "B"
        horizon = float(np.asarray(times)[-1])
        reason = end_reason or (
            f"modality {missing} did not reach half of its target by "
            f"t = {horizon:.6g} tau"
        )
    return PhaseTiming.from_times(t_a, t_b, targets.leading_modality, reason)


def misattribution(stats: DataStatistics) -> np.ndarray:
    """Return the excess weight the leading modality carries in the unimodal phase.

    For A leading this is ``Sigma_yA Sigma_A^-1 - W_A_tot(M_*)``: the part of
    B that correlates with A and is credited to A until B is learned. For the
    toy data set it equals ``rho sigma_B / sigma_A``.
    """
    _check_statistics(stats)
    optimum = stats.optimum
    if stats.leading_modality == "A":
        return stats.unimodal_a - optimum[:, : stats.dim_a]
    return stats.unimodal_b - optimum[:, stats.dim_a :]
