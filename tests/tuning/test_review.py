"""A finished search's trials reviewed: the choice at another floor, the cleanest trial of a style."""

import json

import pytest

from saeuron.tuning.choice import ConceptResult, choose, choose_block
from saeuron.tuning.review import load_summary, review_search, review_table, trial_label

STYLE, DOWN = "unet.up_blocks.1.attentions.2", "unet.down_blocks.1.attentions.1"


def trial(edit, objective, ua, ira, cra=1.0, own=None, prompts=120, percentile=99.5, hookpoint=STYLE):
    steered = edit.startswith("→")
    return dict(
        percentile=percentile,
        edit=edit,
        multiplier=None if steered else float(edit.split()[1]),
        anchor=edit.split()[0][1:] if steered else "",
        strength=float(edit.split()[1][1:]) if steered else 0.0,
        halves="cond" if edit.endswith("cond") else "both",
        objective=objective,
        objective_soft=objective,
        ua=ua,
        ira=ira,
        cra=cra,
        cra_own=own,
        prompts=prompts,
        hookpoint=hookpoint,
    )


def result(concept, kind, chosen, trials):
    """One concept of search.json as the search writes it: its ConceptResult as a dict."""
    return ConceptResult(
        concept, kind, chosen["percentile"], chosen["multiplier"] or 0.0, chosen["objective"], chosen["ua"],
        chosen["ira"], chosen["cra"], sum(t["prompts"] for t in trials), trials, chosen["hookpoint"], "stats",
        {chosen["hookpoint"]: chosen["objective"]}, chosen["anchor"], chosen["strength"], chosen["cra_own"],
        chosen["halves"], chosen.get("drift"),
    )._asdict()  # fmt: skip


# Sunset_Gradient's finished trials in the preset's search of 2026-12-02 (README, "Every concept", item 16), and a
# trial ASHA stopped at 16 prompts that looked cleaner on its few images.
STEER = trial("→Pastel_Blur β6", 0.897, 1.0, 0.944, own=0.4375)
SCALE = trial("γ -2", 0.885, 1.0, 1.0, own=0.3125)
STOPPED = trial("→none β5", 0.95, 1.0, 1.0, own=0.9, prompts=16)
SUNSET = result("Sunset_Gradient", "style", STEER, [SCALE, STEER, STOPPED])


def test_a_stricter_floor_chooses_what_the_search_would_have_among_its_finished_trials():
    (at_search,) = review_search({"Sunset_Gradient": SUNSET}, 0.9)
    assert trial_label(at_search.searched) == trial_label(at_search.at_floor) == "p99.5 →Pastel_Blur β6"
    (strict,) = review_search({"Sunset_Gradient": SUNSET}, 0.95)
    assert strict.at_floor is SCALE and (strict.trials, strict.finished) == (3, 2)
    table = review_table([strict], 0.95, 0.9)
    assert "p99.5 γ -2 *" in table and "1.00 / 1.00 / 1.00 / 0.31" in table and "2/3" in table
    broken = result("Sunset_Gradient", "style", STEER, [STEER, trial("γ -5", 0.8, 1.0, 0.6, prompts=120)])
    (under,) = review_search({"Sunset_Gradient": broken}, 0.95)  # no trial keeps IRA at 0.95: still a choice
    assert not under.kept_floor and under.at_floor is STEER
    assert "p99.5 →Pastel_Blur β6 (under floor)" in review_table([under], 0.95, 0.9)


def test_a_drift_ceiling_chooses_within_it_and_a_search_without_drift_is_refused():
    # The two Sunset_Gradient candidates with the drift of their kept images (evaluated: 0.067 and 0.018).
    steer, scale = dict(STEER, drift=0.067), dict(SCALE, drift=0.018)
    measured = result("Sunset_Gradient", "style", steer, [scale, steer])
    (review,) = review_search({"Sunset_Gradient": measured}, 0.9, max_drift=0.025)
    assert review.at_floor is scale and review.kept_floor
    table = review_table([review], 0.9, 0.9, max_drift=0.025)
    assert "choice at floor 0.9, drift ≤ 0.025" in table and "p99.5 γ -2 *" in table and "drift 0.018" in table
    (loose,) = review_search({"Sunset_Gradient": measured}, 0.9, max_drift=0.1)
    assert loose.at_floor is steer
    with pytest.raises(ValueError, match="--max_drift needs the trials' drift"):
        review_search({"Sunset_Gradient": SUNSET}, 0.9, max_drift=0.025)
    with pytest.raises(ValueError, match=r"max_drift is a mean pixel change in \[0, 1\)"):
        review_search({"Sunset_Gradient": measured}, 0.9, max_drift=2.5)


def test_the_cleanest_style_trial_reaches_the_bar_on_enough_prompts_and_an_object_has_none():
    (review,) = review_search({"Sunset_Gradient": SUNSET}, 0.9)
    assert review.cleanest is STEER  # STOPPED keeps more objects, on 16 prompts: too few to count
    (few,) = review_search({"Sunset_Gradient": SUNSET}, 0.9, min_prompts=16)
    assert few.cleanest is STOPPED
    breaking = trial("→none β10", 0.9, 1.0, 0.85, own=0.95)  # keeps the objects, not the other styles
    (review,) = review_search({"Sunset_Gradient": result("Sunset_Gradient", "style", STEER, [SCALE, STEER, breaking])}, 0.9)
    assert review.cleanest is STEER
    flat_pop = trial("γ -0.1 cond", 0.737, 0.66, 0.99, own=0.47, percentile=99.0)  # the preset's: no trial forgets it
    (none,) = review_search({"Flat_Pop": result("Flat_Pop", "style", flat_pop, [flat_pop])}, 0.9)
    assert none.cleanest is None and review_table([none], 0.9, 0.9).splitlines()[1].endswith("none")
    unscored = trial("γ -1", 0.9, 1.0, 1.0, percentile=99.0)  # a search before the own-style CRA was kept
    (old,) = review_search({"Flat_Pop": result("Flat_Pop", "style", unscored, [unscored])}, 0.9)
    assert old.cleanest is None and review_table([old], 0.9, 0.9).splitlines()[1].endswith(
        "n/a (no own-style CRA in these trials)"
    )
    hearts = trial("γ -0.1 cond", 1.0, 1.0, 1.0, percentile=97.0, hookpoint="unet.mid_block.attentions.0")
    (obj,) = review_search({"Hearts": result("Hearts", "object", hearts, [hearts])}, 0.95)
    assert obj.cleanest is None and trial_label(obj.searched) == "p97 γ -0.1 cond"


MID = "unet.mid_block.attentions.0"


def test_the_block_is_chosen_as_the_search_does_a_floor_first_then_the_objective_the_kinds_block_on_ties():
    kinds = trial("γ -1", 0.9, 0.8, 1.0, prompts=88, hookpoint=MID)
    stopped = trial("γ -5", 0.5, 0.0, 1.0, prompts=8, hookpoint=MID)
    tie = trial("γ -1", 0.9, 0.8, 1.0, prompts=88, hookpoint=DOWN)
    (review,) = review_search({"Rings": result("Rings", "object", kinds, [kinds, stopped, tie])}, 0.95)
    assert review.at_floor is kinds and (review.finished, review.blocks) == (2, 2)
    # The kind's block scores more but loses IRA; the candidate keeps the floor with less.
    breaking = trial("γ -5", 0.97, 1.0, 0.94, prompts=88, hookpoint=MID)
    keeping = trial("γ -2", 0.92, 0.84, 1.0, prompts=88, hookpoint=DOWN)
    (review,) = review_search({"Rings": result("Rings", "object", breaking, [breaking, keeping])}, 0.95)
    assert review.at_floor is keeping
    assert f"p99.5 γ -2 @{DOWN} *" in review_table([review], 0.95, 0.9)  # two blocks: the label names the block


def test_the_review_at_the_searchs_floor_returns_what_choose_block_chose():
    mid = [trial("γ -1", 0.93, 0.9, 0.96, hookpoint=MID), trial("γ -5", 0.99, 1.0, 0.9, hookpoint=MID)]
    down = [trial("γ -2", 0.95, 0.92, 0.98, hookpoint=DOWN), trial("→Circles β5", 0.96, 0.95, 0.93, hookpoint=DOWN)]
    for floor in (0.0, 0.95):
        per_block = [ConceptResult(**result("Rings", "object", choose(ts, 120, floor), ts)) for ts in (mid, down)]
        searched = choose_block(per_block, floor)
        (review,) = review_search({"Rings": searched._asdict()}, floor)
        assert trial_label(review.at_floor, True) == trial_label(review.searched, True)
        assert review.at_floor["hookpoint"] == (DOWN if floor else MID)


def test_a_missing_or_foreign_search_folder_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="name the search folder to review: --search DIR"):
        load_summary("")
    with pytest.raises(FileNotFoundError, match="search.json does not exist: --search takes a finished search's folder"):
        load_summary(str(tmp_path))
    (tmp_path / "search.json").write_text('{"Neon_Glow": ')
    with pytest.raises(ValueError, match="is not JSON .* was it written by a search that was killed"):
        load_summary(str(tmp_path))
    (tmp_path / "search.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a search summary with its trials"):
        load_summary(str(tmp_path))
    (tmp_path / "search.json").write_text(json.dumps({"Neon_Glow": {"concept": "Neon_Glow"}}))
    with pytest.raises(ValueError, match="is not a search summary with its trials"):
        load_summary(str(tmp_path))
    with pytest.raises(ValueError, match=r"accuracies in \[0, 1\], got 95 and 0.9"):
        review_search({"Sunset_Gradient": SUNSET}, 95)
    (tmp_path / "search.json").write_text(json.dumps({"Sunset_Gradient": SUNSET}))
    assert load_summary(str(tmp_path)) == {"Sunset_Gradient": SUNSET}
