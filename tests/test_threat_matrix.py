"""The cross-model view of the other threat models: rank correlation with L∞ robustness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.report.cross_model import threat_correlations


def test_rank_correlation_of_each_threat_with_the_linf_worst_case():
    table = pd.DataFrame({
        "worst case": [0.1, 0.3, 0.5, 0.7, 0.9, 0.2],
        "worst l1": [0.05, 0.2, 0.4, 0.6, 0.8, 0.1],    # the same order: ρ = 1
        "worst spatial": [0.9, 0.7, 0.5, 0.3, 0.1, 0.8],  # reversed: ρ = −1
        "corruptions": [0.5, 0.1, 0.9, 0.3, 0.7, np.nan],  # one model without corruptions
        "worst l2": [np.nan] * 6,                         # not run: no row
    })
    out = threat_correlations(table).set_index("threat")
    assert list(out.index) == ["worst case L1", "worst case spatial", "common corruptions (mean accuracy)"]
    assert out.loc["worst case L1", "rho"] == pytest.approx(1.0)
    assert out.loc["worst case spatial", "rho"] == pytest.approx(-1.0)
    c = out.loc["common corruptions (mean accuracy)"]
    assert c["n"] == 5 and c["rho"] == pytest.approx(0.3)  # ranks (3, 1, 5, 2, 4) against (1, 2, 3, 4, 5)
    assert c["ci_low"] < c["rho"] < c["ci_high"]
