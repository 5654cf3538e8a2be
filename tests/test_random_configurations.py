"""Random valid configurations: every timing is a number or a reason.

CI checks 1,000 configurations. ``UNIBIAS_RANDOM_CONFIGURATIONS=10000 python -m
pytest tests/test_random_configurations.py`` runs the full check of 10,000
(about 8 minutes on 2 cores, most of it in stiff deep configurations that are
timed one by one).
"""

import os
import warnings

import numpy as np
import pytest

from unibias.numerics.grid import time_reduced_flow_batch, toy_statistics_vectors

CONFIGURATIONS = int(os.environ.get("UNIBIAS_RANDOM_CONFIGURATIONS", "1000"))
MAX_DEPTH = 5


@pytest.mark.slow
def test_random_configurations_have_no_nan():
    rng = np.random.default_rng(20241204)
    depth = rng.integers(1, MAX_DEPTH + 1, CONFIGURATIONS)
    fusion_layer = np.array([rng.integers(1, d + 1) for d in depth])
    rho = rng.uniform(-0.95, 0.95, CONFIGURATIONS)
    sigma_ratio = np.exp(rng.uniform(np.log(0.3), np.log(3.0), CONFIGURATIONS))
    init_scale = np.exp(rng.uniform(np.log(0.02), np.log(0.2), CONFIGURATIONS))
    statistics = toy_statistics_vectors(rho, sigma_ratio)

    checked = 0
    with warnings.catch_warnings():
        # Numerical warnings (overflow, invalid values) fail the test; the
        # grid's own notice that it times stiff members one by one does not.
        warnings.simplefilter("error", RuntimeWarning)
        warnings.filterwarnings("ignore", message=".* members are stiff")
        for architecture in sorted(set(zip(depth, fusion_layer, strict=True))):
            members = (depth == architecture[0]) & (fusion_layer == architecture[1])
            timing = time_reduced_flow_batch(
                statistics[:, members], int(architecture[0]), int(architecture[1]),
                init_scale[members],
            )
            defined = timing.ratio_defined
            assert np.all(np.isfinite(timing.time_ratio[defined]))
            assert np.all(timing.time_ratio[defined] > 0)
            assert all(reason for reason in timing.reason[~defined])
            checked += int(members.sum())
    assert checked == CONFIGURATIONS
