"""The (p, γ) search: tuning prompts, the choice rule, Ray Tune end to end with MLflow, retry and resume."""

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest
from helpers import STEPS, KillWhen, driver_env, job_command, kill_driver, start_driver, wait_until

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.tuning_prompts import proportional_merge, tuning_prompt_rows
from saeuron.config import build_config, config_to_yaml
from saeuron.evaluation.evaluate import EvaluateConfig, evaluate
from saeuron.tuning.choice import choose
from saeuron.tuning.review import load_summary, review_search, trial_label
from saeuron.tuning.search import SearchConfig, search


def test_tuning_prompts_never_touch_the_evaluation_prompts_or_seeds():
    minicanvas = get_benchmark("minicanvas")
    evaluation = minicanvas.evaluation_prompt_rows()
    for concept, kind in (("Neon_Glow", "style"), ("Stars", "object")):
        rows = tuning_prompt_rows(minicanvas, concept, kind)
        assert rows == tuning_prompt_rows(minicanvas, concept, kind)  # deterministic
        assert not {r.prompt for r in rows} & {r.prompt for r in evaluation}
        assert not {r.seed for r in rows} & {r.seed for r in evaluation} and 42 not in {r.seed for r in rows}
        assert len(rows) == 88 and len({(r.style, r.object) for r in rows}) == 88
        # Every prefix of a chunk's length already holds the forgotten concept and others.
        key = "style" if kind == "style" else "object"
        first = rows[:11]
        assert any(r.__getattribute__(key) == concept for r in first) and any(r.__getattribute__(key) != concept for r in first)
        if kind == "style":
            assert any(r.style is None for r in first)  # the unstyled images of its CRA
    with pytest.raises(ValueError, match="unknown style 'Van_Gogh'"):
        tuning_prompt_rows(minicanvas, "Van_Gogh", "style")


def test_more_tuning_prompts_where_ua_and_cra_are_read():
    minicanvas = get_benchmark("minicanvas")
    rows = tuning_prompt_rows(minicanvas, "Neon_Glow", "style", forget_per_cell=4, other_axis_per_cell=2)
    own, unstyled = [r for r in rows if r.style == "Neon_Glow"], [r for r in rows if r.style is None]
    assert (len(rows), len(own), len(unstyled)) == (72 + 32 + 16, 32, 16)
    assert len({r.prompt for r in own}) == 32 and len({r.seed for r in rows}) == len(rows)
    assert sum(r.style == "Neon_Glow" for r in rows[:32]) == 13  # 40 % of every prefix until they run out
    assert not {r.prompt for r in rows} & {r.prompt for r in minicanvas.evaluation_prompt_rows()}
    stars = tuning_prompt_rows(minicanvas, "Stars", "object", forget_per_cell=3, other_axis_per_cell=5)
    assert (len(stars), sum(r.object == "Stars" for r in stars)) == (77 + 33, 33)  # an object has no other axis
    with pytest.raises(ValueError, match=r"at least 1 \(0 for the forgotten"):
        tuning_prompt_rows(minicanvas, "Stars", "object", forget_per_cell=-1)


def test_proportional_merge_keeps_every_prefix_balanced():
    merged = proportional_merge([["a"] * 2, ["b"] * 8, ["c"] * 2])
    assert len(merged) == 12
    for n in range(1, 13):
        assert abs(merged[:n].count("b") - 8 * n / 12) <= 1


def test_choice_needs_the_full_budget_and_prefers_the_smaller_edit():
    trials = [
        dict(percentile=99.0, multiplier=-1.0, objective=0.90, prompts=88),
        dict(percentile=98.0, multiplier=-5.0, objective=0.95, prompts=22),  # stopped early: not eligible
        dict(percentile=98.0, multiplier=-1.0, objective=0.90, prompts=88),
        dict(percentile=99.0, multiplier=-5.0, objective=0.90, prompts=88),
    ]
    assert choose(trials, 88) == trials[0]
    with pytest.raises(RuntimeError, match="no trial scored every tuning prompt"):
        choose(trials[1:2], 88)


def small_search(style_statistics, study, **overrides):
    cfg = build_config(
        SearchConfig,
        concepts=["Neon_Glow"],
        style_statistics=str(style_statistics),
        percentiles=[98.0, 99.0],
        multipliers=[-1.0, -5.0],
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        max_prompts=22,
        chunk=11,
        grace_prompts=11,
        reduction_factor=2,
        study_dir=str(study),
    )
    return replace(cfg, **overrides)


@pytest.mark.slow
def test_search_picks_a_recipe_logs_trials_in_mlflow_and_evaluate_takes_it_by_run_id(style_statistics, ray_cluster, tmp_path):
    study = tmp_path / "study"
    cfg = small_search(style_statistics, study, scheduler="asha", register_as="test-recipes")
    result = search(cfg)
    (neon,) = result.concepts
    # Measured here: γ −1 forgets Neon_Glow on 7 of its 8 tuning images and keeps the rest (objective 0.94 at
    # p 98 and 99 alike; the graded objective breaks the tie); γ −5 damages other styles and is stopped early.
    assert neon.multiplier == -1.0 and neon.objective >= 0.9
    complete = [t for t in neon.trials if t["prompts"] == 22]
    best = max(t["objective"] for t in complete)
    chosen = next(t for t in complete if (t["percentile"], t["multiplier"]) == (neon.percentile, neon.multiplier))
    assert chosen["objective"] == best
    assert chosen["objective_soft"] == max(t["objective_soft"] for t in complete if t["objective"] == best)
    assert len(neon.trials) == 4 and neon.generations < 4 * 22  # ASHA stopped at least one trial early
    # Every trial measured how far its kept styles' images moved from the original model's (the same prompts and
    # seeds, generated once per worker): γ −5, which damages other styles, moved them more than γ −1.
    assert all(t["drift"] > 0 for t in neon.trials) and neon.drift == chosen["drift"]
    drift = {(t["percentile"], t["multiplier"]): t["drift"] for t in neon.trials}
    assert all(drift[(p, -5.0)] > drift[(p, -1.0)] for p in (98.0, 99.0))
    assert (result.recipes_dir / "Neon_Glow" / "recipe.json").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{study / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.data.params["Neon_Glow.percentile"] == str(neon.percentile) and parent.data.tags["saeuron.recipes"].startswith(
        "runs:/"
    )
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert len(children) == 4 and all("objective" in c.data.metrics for c in children)
    assert all("drift" in c.data.metrics for c in children) and parent.data.metrics["Neon_Glow.drift"] == neon.drift
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "heatmaps")}
    assert artifacts == {"heatmaps/heatmap_Neon_Glow.png"}
    assert client.get_model_version_by_alias("test-recipes", "current").run_id == result.run_id

    # A search in another folder with the same experiment (a setting that does not touch Neon_Glow's trials changed,
    # as a study's new search field does) takes the finished trials over: no trial runs, the same choice.
    again = search(replace(cfg, name="again", register_as=""))
    assert again.concepts[0]._replace(trials=[]) == neon._replace(trials=[])
    assert sorted(t["objective"] for t in again.concepts[0].trials) == sorted(t["objective"] for t in neon.trials)
    assert not client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{again.run_id}'")
    taken_over = client.get_run(again.run_id).data.tags["saeuron.taken_over.Neon_Glow"]
    assert taken_over == str(cfg.search_dir.local_path)

    def evaluate_recipes(reference: str):
        cfg = build_config(
            EvaluateConfig,
            recipes=[reference],
            seeds=[188],
            num_inference_steps=STEPS,
            guidance_scale=7.5,
            study_dir=str(study),
            batch_size=22,
            fid="none",
        )
        return evaluate(cfg)

    evaluation = evaluate_recipes(f"runs:/{result.run_id}/recipes")
    assert [name for name, _ in evaluation.scores] == ["Neon_Glow"] and evaluation.scores[0][1].ua >= 0.75
    again = evaluate_recipes("models:/test-recipes@current")
    assert again.scores[0][1] == evaluation.scores[0][1]


def _result_lines(experiment: Path) -> dict[str, int]:
    return {p.parent.name: len(p.read_text().splitlines()) for p in experiment.glob("*/result.json")}


def _terminated_in_saved_state(experiment: Path) -> set[str]:
    """The trials Tune's last saved experiment state calls finished: the ones a restore must not run again.

    A trial's result.json can show its last report a moment before the driver saves that the trial ended; a
    driver killed in between restores that trial from its checkpoint and runs its tail again (seen in CI).
    """
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"]
    except (json.JSONDecodeError, KeyError):  # read while the driver was writing it
        return set()
    ids = {json.loads(state)["trial_id"] for state, _ in trial_data if json.loads(state)["status"] == "TERMINATED"}
    return {p.name for p in experiment.iterdir() if p.is_dir() and any(f"_{i}_" in p.name for i in ids)}


def _finished(experiment: Path, budget: int) -> list[str]:
    done = []
    for p in experiment.glob("*/result.json"):
        lines = p.read_text().splitlines()
        if lines and json.loads(lines[-1])["prompts"] >= budget:
            done.append(p.parent.name)
    return done


@pytest.mark.slow
def test_a_stopped_search_resumes_and_a_killed_trial_is_retried(style_statistics, ray_cluster, tmp_path):
    study = tmp_path / "study"
    cfg = small_search(style_statistics, study, scheduler="grid", max_concurrent_trials=1, max_failures=2)
    experiment = cfg.search_dir.local_path / "tune" / "Neon_Glow"
    config_file = tmp_path / "search.yaml"
    config_file.write_text(config_to_yaml(cfg))
    # The driver copies Tune's experiment state and result.json to storage every 10 s or more by default; four
    # short trials can all finish inside one such period (seen in CI). Every second, the storage shows what
    # the driver knew a second before it was killed.
    env, log = driver_env(ray_cluster, TUNE_GLOBAL_CHECKPOINT_S="1"), tmp_path / "driver.log"
    driver = start_driver(job_command("tune/search.py", config_file), env, log)
    wait_until(lambda: bool(_terminated_in_saved_state(experiment)), driver, log, 300)
    kill_driver(driver)  # the search is stopped hard after its first finished trial
    finished_before = _terminated_in_saved_state(experiment)
    assert 1 <= len(finished_before) < 4
    assert finished_before <= set(_finished(experiment, 22))
    lines_before = _result_lines(experiment)

    def a_trial_running_after_the_stop() -> bool:
        now, done = _result_lines(experiment), set(_finished(experiment, 22))
        return any(n > lines_before.get(name, 0) and name not in done | finished_before for name, n in now.items())

    # Tune runs a function trainable in an actor titled ray::ImplicitFunc.train: kill one mid-run.
    killer = KillWhen("ImplicitFunc", a_trial_running_after_the_stop, 300)
    killer.start()
    result = search(cfg)  # restores the experiment: Tuner.restore
    killer.join()
    assert killer.killed, "no trial worker was seen mid-run"
    (neon,) = result.concepts
    assert len(neon.trials) == 4 and all(t["prompts"] == 22 for t in neon.trials)
    # Trials finished before the stop were not run again.
    after = _result_lines(experiment)
    assert all(after[name] == lines_before[name] for name in finished_before)


@pytest.fixture(scope="module")
def stars_at_the_style_block(style_sae, minicanvas_activations, tmp_path_factory):
    """Object statistics at the style block, where the fixture SAE forgets Stars worse than at the mid block."""
    from helpers import STYLE_HOOK, fixture_statistics

    return fixture_statistics(style_sae, STYLE_HOOK, "object", tmp_path_factory.mktemp("stats"))


@pytest.mark.slow
def test_a_candidate_block_that_scores_better_takes_the_concept_and_its_recipe(
    object_statistics, stars_at_the_style_block, ray_cluster, tmp_path
):
    from helpers import OBJECT_HOOK, STYLE_HOOK

    from saeuron.method.recipe import Recipe

    # The kind's block is the weaker one here, so the candidate has to win for the right recipe to come out.
    study = tmp_path / "study"
    cfg = small_search(
        "",
        study,
        concepts=["Stars"],
        object_statistics=str(stars_at_the_style_block),
        candidate_statistics=[str(object_statistics)],
        scheduler="grid",
        percentiles=[99.0],
    )
    result = search(cfg)
    (stars,) = result.concepts
    # Measured here (22 tuning prompts, p 99, γ −1 / −5): the mid block forgets Stars, the style block barely.
    assert stars.blocks == {
        STYLE_HOOK: pytest.approx(0.583, abs=1e-3),
        OBJECT_HOOK: pytest.approx(0.967, abs=1e-3),
    }
    assert list(stars.blocks) == [STYLE_HOOK, OBJECT_HOOK]
    assert stars.hookpoint == OBJECT_HOOK and stars.objective == stars.blocks[OBJECT_HOOK]
    assert (stars.percentile, stars.multiplier) == (99.0, -1.0)
    assert len(stars.trials) == 4 and stars.generations == 4 * 22
    assert {t["hookpoint"] for t in stars.trials} == {OBJECT_HOOK, STYLE_HOOK}
    recipe = Recipe.load(result.recipes_dir / "Stars")
    assert recipe.hookpoint == OBJECT_HOOK
    tune_dir = cfg.search_dir.local_path / "tune"
    assert {p.name for p in tune_dir.iterdir() if p.is_dir()} == {"Stars", f"Stars@{OBJECT_HOOK}"}

    mlflow.set_tracking_uri(f"sqlite:///{study / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    assert client.get_run(result.run_id).data.params["Stars.hookpoint"] == OBJECT_HOOK
    (review,) = review_search(load_summary(str(cfg.search_dir)), cfg.min_retain)  # tune/review.py reads it back
    assert review.at_floor["hookpoint"] == OBJECT_HOOK and trial_label(review.at_floor, True) == trial_label(
        review.searched, True
    )
    assert {a.path for a in client.list_artifacts(result.run_id, "heatmaps")} == {
        "heatmaps/heatmap_Stars.png",
        f"heatmaps/heatmap_Stars@{OBJECT_HOOK}.png",
    }


@pytest.mark.slow
def test_the_search_chooses_steering_where_it_keeps_a_styles_objects(unstyled_reference_statistics, ray_cluster, tmp_path):
    from saeuron.method.recipe import Recipe
    from saeuron.method.steering import Steer

    study = tmp_path / "study"
    cfg = small_search(
        unstyled_reference_statistics,
        study,
        concepts=["Checkerboard"],
        scheduler="grid",
        percentiles=[97.0],
        multipliers=[-5.0],
        anchors=["none"],
        strengths=[5.0],
        contrast="max",
        objective="ua_ira_cra_own",
    )
    result = search(cfg)
    (checkerboard,) = result.concepts
    # Measured here (22 tuning prompts, p 97, contrast max): the paper's γ −5 loses Checkerboard's objects on its own
    # images, steering toward the unstyled rendering keeps them (as on the evaluation grid, README "Every concept").
    # Steering's 0.896 was measured on the earlier CI machine; an AMD EPYC's fixture SAE (other float kernels) gives 0.917.
    scores = {t["edit"]: t["objective"] for t in checkerboard.trials}
    assert scores == {"γ -5": pytest.approx(0.792, abs=1e-3), "→none β5": pytest.approx(0.896, abs=0.025)}
    assert scores["→none β5"] - scores["γ -5"] > 0.1
    assert checkerboard.edit == Steer("none", 5.0) and checkerboard.multiplier == 0.0
    recipe = Recipe.load(result.recipes_dir / "Checkerboard")
    assert recipe.edit_of("Checkerboard") == Steer("none", 5.0) and len(recipe.rules) == 0 and len(recipe.steering) > 0
    mlflow.set_tracking_uri(f"sqlite:///{study / 'mlflow.db'}")
    params = mlflow.MlflowClient().get_run(result.run_id).data.params
    assert (params["Checkerboard.anchor"], params["Checkerboard.strength"]) == ("none", "5.0")
    # tune/review.py reads the same trials back from the search's folder: its choice is the search's, and steering
    # keeps the most objects on Checkerboard's own images.
    (review,) = review_search(load_summary(str(cfg.search_dir)), cfg.min_retain, bar=0.0)
    assert trial_label(review.searched) == trial_label(review.at_floor) == "p97 →none β5"
    assert review.cleanest["edit"] == "→none β5"


@pytest.mark.slow
def test_the_search_runs_every_edit_under_each_gate_and_the_recipe_keeps_the_gate_it_chose(
    style_statistics, ray_cluster, tmp_path
):
    from saeuron.method.recipe import Recipe
    from saeuron.method.selection import Gate

    study = tmp_path / "study"
    cfg = small_search(
        style_statistics,
        study,
        scheduler="grid",
        percentiles=[99.0],
        multipliers=[-1.0],
        contrast="max",
        gate=["mean", "image"],
        gate_share=0.05,
        max_drift=0.015,
    )
    result = search(cfg)
    (neon,) = result.concepts
    trials = {t["edit"]: t for t in neon.trials}
    assert {label: t["gate"] for label, t in trials.items()} == {"γ -1": "mean", "γ -1 image": "image"}
    assert all(t["prompts"] == 22 for t in trials.values())
    # Measured here: both forget Neon_Glow alike (objective 0.938 each, a tie the paper's gate would win), but the
    # paper's gate moves the kept styles' images (drift 0.023) and the image gate barely (0.0083): under the ceiling
    # the concept keeps the image gate.
    assert {label: t["objective"] for label, t in trials.items()} == {
        "γ -1": pytest.approx(0.938, abs=0.03),
        "γ -1 image": pytest.approx(0.938, abs=0.03),
    }
    assert trials["γ -1"]["drift"] == pytest.approx(0.023, abs=0.005)
    assert trials["γ -1 image"]["drift"] == pytest.approx(0.0083, abs=0.003)
    assert neon.gate == "image" and neon.label == "γ -1 image"
    recipe = Recipe.load(result.recipes_dir / "Neon_Glow")
    assert recipe.gate == Gate("image", 1.0, 0.05) and recipe.detect is not None
    params = mlflow.MlflowClient(f"sqlite:///{study / 'mlflow.db'}").get_run(result.run_id).data.params
    assert params["Neon_Glow.gate"] == "image"
