"""The study commands the presets' headers and the README print are read from those files and parsed, so an edit
that breaks one (a renamed flag, a value of the wrong type, a config path that moved) fails here, not for a user."""

import re
import shlex
from pathlib import Path

import pytest
from helpers import REPO

from saeuron.config import parse_config
from saeuron.study import StudyConfig

CONFIGS = REPO / "configs"
SCRIPT = "python jobs/pipeline.py"


def pipeline_commands(text: str) -> list[list[str]]:
    """Each `python jobs/pipeline.py ...` command in TEXT (shell continuations joined, `# ...` comments and optional
    `[...]` parts dropped) as the argv after the script."""
    joined = re.sub(r"\\\n\s*(#\s*)?", " ", text)
    commands = []
    for line in joined.splitlines():
        if SCRIPT in line:
            rest = re.sub(r"\[[^\]]*\]", "", line.split(SCRIPT, 1)[1])
            commands.append(shlex.split(rest, comments=True))
    return commands


def code_blocks(markdown: str) -> str:
    """The lines inside MARKDOWN's fenced code blocks (indented fences too: the README's lists hold some)."""
    inside, kept = False, []
    for line in markdown.splitlines():
        if line.strip().startswith("```"):
            inside = not inside
        elif inside:
            kept.append(line)
    return "\n".join(kept)


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line[1:] for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


PRESETS = sorted(p for p in CONFIGS.rglob("*.yaml") if SCRIPT in header(p))


def test_the_command_reader_joins_continuations_and_drops_comments_and_optional_parts():
    text = "x\n#   python jobs/pipeline.py --config a.yaml --search.concepts Rings \\\n#       --epochs 3  # why\n"
    assert pipeline_commands(text) == [["--config", "a.yaml", "--search.concepts", "Rings", "--epochs", "3"]]
    assert pipeline_commands("python jobs/pipeline.py --config b.yaml [--search.concepts X ...]\n") == [["--config", "b.yaml"]]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_command_in_a_presets_header_runs_that_preset_and_parses(preset):
    from saeuron.benchmarks.minicanvas.concepts import OBJECTS, STYLES

    commands = pipeline_commands(header(preset))
    assert commands, f"{preset} names no command"
    for argv in commands:
        assert argv[:2] == ["--config", str(preset.relative_to(REPO))]
        cfg = parse_config(StudyConfig, ["--config", str(preset)] + argv[2:])
        # A misspelt concept parses and fails only at the search, after collection and training: caught here.
        if cfg.model.benchmark == "minicanvas":
            assert set(cfg.search.concepts) <= {*STYLES, *OBJECTS}, argv


def test_every_study_command_in_the_readme_parses(capsys):
    code = code_blocks((REPO / "README.md").read_text())
    commands = pipeline_commands(code)
    assert len(commands) == code.count(SCRIPT)  # the reader lost none
    for argv in commands:
        argv = [str(REPO / a) if a.startswith("configs/") else a for a in argv]
        if "--dry_run" in argv:
            with pytest.raises(SystemExit) as exit_:
                parse_config(StudyConfig, argv)
            assert exit_.value.code == 0 and "name: minicanvas-full" in capsys.readouterr().out
        else:
            parse_config(StudyConfig, argv)


def objects_header_command(flag: str, first: str) -> StudyConfig:
    """The header command whose ``flag`` (``--search.concepts``, ``--search.steer_concepts``) starts with ``first``."""
    preset = CONFIGS / "minicanvas" / "study-objects-nearest.yaml"
    (argv,) = [a for a in pipeline_commands(header(preset)) if flag in a and a[a.index(flag) + 1] == first]
    return parse_config(StudyConfig, ["--config", str(preset)] + argv[2:])


def test_the_objects_presets_header_commands_are_its_one_search_and_the_steps_that_led_there_as_the_readme_says():
    from dataclasses import replace

    preset = CONFIGS / "minicanvas" / "study-objects-nearest.yaml"
    every = parse_config(StudyConfig, ["--config", str(preset)])
    assert [a for a in pipeline_commands(header(preset)) if len(a) == 2] == [["--config", str(preset.relative_to(REPO))]]
    # Item 21: the paper's scaling alone, one of each object's own images a cell.
    scaling = objects_header_command("--search.anchors", "--search.steer_concepts")
    assert (scaling.search.anchors, scaling.search.steer_concepts, scaling.search.cond_strengths) == ([], [], [])
    assert scaling.search.forget_prompts_per_cell == 0
    assert scaling.search == replace(every.search, anchors=[], steer_concepts=[], cond_strengths=[], forget_prompts_per_cell=0)
    # Item 22: Rings with steering toward every other object, one of its own images a cell.
    rings = objects_header_command("--search.concepts", "Rings")
    assert rings.search == replace(every.search, concepts=["Rings"], forget_prompts_per_cell=0)
    # Items 24-25: Hearts and Squares with the preset's settings (item 30 searched all eight with them).
    hearts = objects_header_command("--search.concepts", "Hearts")
    assert hearts.search == replace(every.search, concepts=["Hearts", "Squares"])


def test_the_readme_lists_every_command_the_presets_headers_give():
    readme = pipeline_commands(code_blocks((REPO / "README.md").read_text()))
    missing = [argv for preset in PRESETS for argv in pipeline_commands(header(preset)) if argv not in readme]
    assert missing == []
