"""The search's objective: the reference's (UA + IRA) / 2, or one that also keeps the other axis (CRA)."""

import pytest

from saeuron.config import build_config
from saeuron.tuning.config import SearchConfig, grid_of, objective_of


def test_the_reference_objective_ignores_cra_and_the_other_does_not():
    # Polka_Dots's choice in the all-concept study: UA 1.00 and IRA 0.94 on the tuning prompts, its unstyled objects
    # at 0.50 (README, "Every concept").
    assert objective_of("ua_ira", 1.0, 0.94, 0.5) == pytest.approx(0.97)
    assert objective_of("ua_ira_cra", 1.0, 0.94, 0.5) == pytest.approx(0.8133333)
    # A milder point that keeps them (UA 0.875) wins under the second objective only.
    strong, mild = (1.0, 0.94, 0.5), (0.875, 1.0, 1.0)
    assert objective_of("ua_ira", *strong) > objective_of("ua_ira", *mild) == pytest.approx(0.9375)
    assert objective_of("ua_ira_cra", *strong) < objective_of("ua_ira_cra", *mild) == pytest.approx(0.9583333)


def test_an_unknown_objective_or_contrast_is_refused_before_the_search_starts():
    with pytest.raises(ValueError, match=r"objective must be one of \('ua_ira', 'ua_ira_cra'\)"):
        grid_of(build_config(SearchConfig, objective="ua"))
    with pytest.raises(ValueError, match="contrast must be one of"):
        grid_of(build_config(SearchConfig, contrast="median"))
    assert grid_of(build_config(SearchConfig, objective="ua_ira_cra", contrast="max"), "style")[0] == [97.0, 98.0, 99.0, 99.5]
