"""A finished search's trials reviewed: the choice at another floor, the cleanest trial of a style."""

import json

import pytest

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
    return dict(
        concept=concept,
        kind=kind,
        percentile=chosen["percentile"],
        multiplier=chosen["multiplier"] or 0.0,
        objective=chosen["objective"],
        ua=chosen["ua"],
        ira=chosen["ira"],
        cra=chosen["cra"],
        generations=sum(t["prompts"] for t in trials),
        trials=trials,
        hookpoint=chosen["hookpoint"],
        statistics="stats",
        blocks={chosen["hookpoint"]: chosen["objective"]},
        anchor=chosen["anchor"],
        strength=chosen["strength"],
        cra_own=chosen["cra_own"],
        halves=chosen["halves"],
    )


# Sunset_Gradient's finished trials in the preset's search of 2026-12-02 (README, "Every concept", item 16), and a
# trial ASHA stopped at 16 prompts that looked cleaner on its few images.
STEER = trial("→Pastel_Blur β6", 0.897, 1.0, 0.944, own=0.4375)
SCALE = trial("γ -2", 0.885, 1.0, 1.0, own=0.3125)
STOPPED = trial("→none β5", 0.95, 1.0, 1.0, own=0.9, prompts=16)
SUNSET = result("Sunset_Gradient", "style", STEER, [SCALE, STEER, STOPPED])


def test_a_stricter_floor_chooses_what_the_search_would_have_among_its_finished_trials():
    (at_search,) = review_search({"Sunset_Gradient": SUNSET}, 0.9)
    assert at_search.searched == trial_label(at_search.at_floor) == "p99.5 →Pastel_Blur β6"
    (strict,) = review_search({"Sunset_Gradient": SUNSET}, 0.95)
    assert strict.at_floor is SCALE and (strict.trials, strict.finished) == (3, 2)
    table = review_table([strict], 0.95, 0.9)
    assert "p99.5 γ -2 *" in table and "1.00 / 1.00 / 1.00 / 0.31" in table


def test_the_cleanest_style_trial_reaches_the_bar_on_enough_prompts_and_an_object_has_none():
    (review,) = review_search({"Sunset_Gradient": SUNSET}, 0.9)
    assert review.cleanest is STEER  # STOPPED keeps more objects, on 16 prompts: too few to count
    (few,) = review_search({"Sunset_Gradient": SUNSET}, 0.9, min_prompts=16)
    assert few.cleanest is STOPPED
    flat_pop = trial("γ -0.1 cond", 0.737, 0.66, 0.99, own=0.47, percentile=99.0)  # the preset's: no trial forgets it
    (none,) = review_search({"Flat_Pop": result("Flat_Pop", "style", flat_pop, [flat_pop])}, 0.9)
    assert none.cleanest is None and review_table([none], 0.9, 0.9).splitlines()[1].endswith("none")
    hearts = trial("γ -0.1 cond", 1.0, 1.0, 1.0, percentile=97.0, hookpoint="unet.mid_block.attentions.0")
    (obj,) = review_search({"Hearts": result("Hearts", "object", hearts, [hearts])}, 0.95)
    assert obj.cleanest is None and obj.searched == "p97 γ -0.1 cond"


def test_each_block_has_its_own_budget_and_a_tie_keeps_the_kinds_block():
    kinds = trial("γ -1", 0.9, 0.8, 1.0, prompts=88, hookpoint="unet.mid_block.attentions.0")
    stopped = trial("γ -5", 0.5, 0.0, 1.0, prompts=8, hookpoint="unet.mid_block.attentions.0")
    candidate = trial("γ -1", 0.9, 0.8, 1.0, prompts=40, hookpoint=DOWN)  # a block with fewer tuning prompts
    (review,) = review_search({"Rings": result("Rings", "object", kinds, [kinds, stopped, candidate])}, 0.95)
    assert review.at_floor is kinds and review.finished == 2
    better = trial("γ -2", 0.95, 0.9, 1.0, prompts=40, hookpoint=DOWN)
    (review,) = review_search({"Rings": result("Rings", "object", better, [kinds, stopped, better])}, 0.95)
    assert review.at_floor is better


def test_a_missing_or_foreign_search_folder_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="name the search folder to review: --search DIR"):
        load_summary("")
    with pytest.raises(FileNotFoundError, match="search.json does not exist: --search takes a finished search's folder"):
        load_summary(str(tmp_path))
    (tmp_path / "search.json").write_text(json.dumps({"Neon_Glow": {"concept": "Neon_Glow"}}))
    with pytest.raises(ValueError, match="is not a search summary with its trials"):
        load_summary(str(tmp_path))
    with pytest.raises(ValueError, match=r"accuracies in \[0, 1\], got 95 and 0.9"):
        review_search({"Sunset_Gradient": SUNSET}, 95)
    (tmp_path / "search.json").write_text(json.dumps({"Sunset_Gradient": SUNSET}))
    assert load_summary(str(tmp_path)) == {"Sunset_Gradient": SUNSET}
