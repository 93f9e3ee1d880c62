"""Another search's finished experiment with the same signature, on the same statistics, is taken over; anything
less is not."""

import json
import os
from pathlib import Path

from saeuron.storage import Location
from saeuron.tuning.reuse import SUMMARY, finished_twin, mark_finished, statistics_identity, take_over_finished_twin

EXPERIMENT = "Rings@unet.down_blocks.1.attentions.1"


def gathered(folder: Path, values: bytes) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "statistics.json").write_text('{"kind": "object"}')
    (folder / "statistics.safetensors").write_bytes(values)
    return str(folder)


def signed(statistics: str, chunk: int) -> str:
    return json.dumps({"space": {"statistics": statistics}, "chunk": chunk}, sort_keys=True)


def searched(searches: Path, name: str, signature: str, finished_on: str | None) -> Location:
    """A search folder holding ``EXPERIMENT`` run with ``signature`` (one trial file), finished on the statistics of
    identity ``finished_on``, or not finished (None)."""
    storage = Location.parse(searches / name / "tune")
    (searches / name / "tune" / EXPERIMENT / "trial_0").mkdir(parents=True)
    (searches / name / "tune" / EXPERIMENT / "trial_0" / "result.json").write_text('{"objective": 0.996}\n')
    (storage / f"{EXPERIMENT}.search.json").write_text(signature)
    if finished_on is not None:
        mark_finished(storage, EXPERIMENT, signature, finished_on)
    return storage


def test_only_a_finished_experiment_with_the_same_signature_and_statistics_is_taken_over_whole(tmp_path):
    statistics = gathered(tmp_path / "statistics" / "object-mid", b"\x01" * 64)
    now = statistics_identity(statistics)
    assert now != statistics_identity(gathered(tmp_path / "other", b"\x02" * 64))
    # The same SAE looked up elsewhere (another registry version of the same weights) is the same statistics.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "statistics.json").write_text('{"kind": "object", "sae_ref": "models:/sae/2"}')
    (tmp_path / "elsewhere" / "statistics.safetensors").write_bytes(b"\x01" * 64)
    assert statistics_identity(tmp_path / "elsewhere") == now
    searches, signature = tmp_path / "search", signed(statistics, 8)
    searched(searches, "search-a", signed(statistics, 4), finished_on=now)  # other settings
    searched(searches, "search-b", signature, finished_on=None)  # the same, but cut short
    searched(searches, "search-c", signature, finished_on="0123456789abcdef")  # scored on statistics since replaced
    here = Location.parse(searches / "search-new" / "tune")
    assert finished_twin(here, EXPERIMENT, signature, statistics, now) is None
    assert take_over_finished_twin(here, EXPERIMENT, signature, statistics, now) is None
    assert not (searches / "search-new").exists()

    twin = searched(searches, "search-d", signature, finished_on=now)
    assert finished_twin(here, EXPERIMENT, signature, statistics, now) == twin
    cut_short = searches / "search-new" / "tune" / EXPERIMENT / "trial_7"  # a start cut short before Tune saved state
    cut_short.mkdir(parents=True)
    (cut_short / "params.json").write_text("{}")
    assert take_over_finished_twin(here, EXPERIMENT, signature, statistics, now) == twin
    copied = searches / "search-new" / "tune" / EXPERIMENT / "trial_0" / "result.json"
    assert copied.read_text() == '{"objective": 0.996}\n' and not cut_short.exists()
    assert [p.name for p in (searches / "search-new" / "tune").iterdir()] == [EXPERIMENT]  # no staging copy left
    # A search never takes over from itself (its own experiment is resumed by Tune instead).
    assert finished_twin(twin, EXPERIMENT, signature, statistics, now) is None


def test_a_search_from_before_finished_files_counts_once_it_wrote_its_summary_on_statistics_not_gathered_since(tmp_path):
    statistics = gathered(tmp_path / "statistics" / "object-mid", b"\x01" * 64)
    searches, signature = tmp_path / "search", signed(statistics, 8)
    old = searched(searches, "search-old", signature, finished_on=None)
    here, now = Location.parse(searches / "search-new" / "tune"), statistics_identity(statistics)
    assert finished_twin(here, EXPERIMENT, signature, statistics, now) is None
    (old.parent / SUMMARY).write_text("{}")
    assert finished_twin(here, EXPERIMENT, signature, statistics, now) == old
    started = (old / f"{EXPERIMENT}.search.json").info().mtime.timestamp()
    os.utime(Path(statistics) / "statistics.safetensors", (started + 60, started + 60))  # gathered again since
    assert finished_twin(here, EXPERIMENT, signature, statistics, statistics_identity(statistics)) is None
