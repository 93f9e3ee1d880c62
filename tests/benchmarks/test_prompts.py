import pytest

from saeuron.benchmarks import get_benchmark
from saeuron.benchmarks.prompts import (
    SEED_IMAGES,
    UNLEARNCANVAS_OBJECTS,
    UNLEARNCANVAS_STYLES,
    UNLEARNCANVAS_THEMES,
    read_anchor_captions,
    training_rows,
)


def test_unlearncanvas_concept_lists():
    assert len(UNLEARNCANVAS_STYLES) == 50 and len(UNLEARNCANVAS_OBJECTS) == 20
    assert len(UNLEARNCANVAS_THEMES) == 51 and UNLEARNCANVAS_THEMES[38] == SEED_IMAGES
    assert UNLEARNCANVAS_THEMES[:10] == UNLEARNCANVAS_STYLES[:10]


def write_anchor_files(folder, lines=3):
    folder.mkdir()
    for obj in UNLEARNCANVAS_OBJECTS:
        body = "".join(f"A {obj.lower()} scene number {i}{'.' if i % 2 else ''}\n" for i in range(lines))
        (folder / f"sd_prompt_{obj}.txt").write_text(body)


def test_unlearncanvas_training_prompts_from_anchor_files(tmp_path):
    write_anchor_files(tmp_path / "anchors")
    rows = get_benchmark("unlearncanvas").training_prompt_rows(str(tmp_path / "anchors"))
    assert len(rows) == 20 * 3 * 52
    assert len({row.prompt_id for row in rows}) == len(rows)
    styled = next(
        r for r in rows if r.object == "Cats" and r.style == "Van_Gogh" and r.prompt.startswith("A cats scene number 1 ")
    )
    assert styled.prompt == "A cats scene number 1 in Van Gogh style."
    plain = next(r for r in rows if r.object == "Cats" and r.style is None and "number 1" in r.prompt)
    assert plain.prompt == "A cats scene number 1."
    assert sum(r.style == SEED_IMAGES for r in rows) == 20 * 3


def test_max_prompts_is_a_seeded_subset_that_grows_consistently(tmp_path):
    write_anchor_files(tmp_path / "anchors")
    captions = read_anchor_captions(tmp_path / "anchors")
    small = training_rows(captions, UNLEARNCANVAS_THEMES, seed=42, max_prompts=100)
    large = training_rows(captions, UNLEARNCANVAS_THEMES, seed=42, max_prompts=300)
    assert len(small) == 100 and {r.prompt_id for r in small} <= {r.prompt_id for r in large}
    assert {r.prompt_id for r in small} != set(range(100))


def test_missing_anchor_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="finetune_prompts"):
        get_benchmark("unlearncanvas").training_prompt_rows(str(tmp_path))
    with pytest.raises(ValueError, match="anchor_prompts_dir"):
        get_benchmark("unlearncanvas").training_prompt_rows("")
    with pytest.raises(ValueError, match="minicanvas"):
        get_benchmark("imagenet")


def test_minicanvas_prompt_sets_carry_labels():
    rows = get_benchmark("minicanvas").training_prompt_rows()
    spec = get_benchmark("minicanvas")
    assert len(rows) == len(spec.objects) * 8 * (len(spec.styles) + 1)
    assert all((r.style is None) == ("style." not in r.prompt) for r in rows)
    assert all(r.object in r.prompt for r in rows)
    evaluation = get_benchmark("minicanvas").evaluation_prompt_rows(seeds=[1, 2])
    assert len(evaluation) == (len(spec.styles) + 1) * len(spec.objects) * 2
    assert evaluation[0].prompt == "An image of Circles in Diagonal Stripes style."
    assert evaluation[-1].prompt == "An image of Diamonds." and evaluation[-1].style is None


def test_a_trial_can_first_report_once_its_prompts_hold_all_three_groups():
    from saeuron.benchmarks.tuning_prompts import scorable_prefix, tuning_prompt_rows

    minicanvas = get_benchmark("minicanvas")
    style = [r.as_dict() for r in tuning_prompt_rows(minicanvas, "Neon_Glow", "style")]
    # Measured: the first unstyled image (a style's CRA) is the 6th tuning prompt; an object's first 2 suffice.
    assert scorable_prefix(style, "Neon_Glow", "style") == 6
    assert style[5]["style"] is None and all(r["style"] is not None for r in style[:5])
    assert scorable_prefix([r.as_dict() for r in tuning_prompt_rows(minicanvas, "Stars", "object")], "Stars", "object") == 2
    assert scorable_prefix(style[:5], "Neon_Glow", "style") == 6  # never: one more than there are
