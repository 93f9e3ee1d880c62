"""A search takes over the Tune experiments another search of the same study has already finished with the same
settings, instead of running them again.

Every search field is part of a study's search record and names its folder (``search-<key>``), so a study whose
search section changes at all (a concept added, one concept's grid widened, a new option) starts a new folder. Most
of its experiments (one concept at one block) are often what an earlier folder already holds: same grid, statistics,
tuning prompts, scheduler, sampling, objective and ceilings — the *signature* below, everything a trial's numbers
depend on. Such an experiment, when finished, is copied into the new folder, where Tune restores it and finds every
trial done (Ray keeps an experiment's paths relative to its folder, so a copy restores). A search of all eight
MiniCanvas objects then runs only what changed (README, "Every concept", item 30).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from saeuron.console import logger
from saeuron.method.selection import PAPER_GATE
from saeuron.method.statistics import INDEX
from saeuron.storage import Location
from saeuron.tuning.config import SearchConfig

SUMMARY = "search.json"
"""What a search writes once every experiment in it finished (``saeuron.tuning.search``)."""


def experiment_signature(cfg: SearchConfig, space: dict[str, Any], prompts: list[dict[str, Any]]) -> str:
    """What one experiment's trials depend on beyond the model and judge (which name the study): its grid, tuning
    prompts, scheduler and budget, sampling, and the settings that score and choose. Fields at their defaults are left
    out, so that a search recorded before a field existed keeps its signature."""
    return json.dumps(
        {
            "space": dict(space),
            "scheduler": cfg.scheduler,
            "prompts": prompts,
            "chunk": cfg.chunk,
            "grace": cfg.grace_prompts,
            "reduction_factor": cfg.reduction_factor,
            "sampling": [cfg.sampling.num_inference_steps, cfg.sampling.guidance_scale, cfg.edit.error_mode],
            **{k: v for k, v in (("contrast", cfg.contrast), ("objective", cfg.objective)) if v not in ("mean", "ua_ira")},
            **{k: v for k, v in (("min_retain", cfg.min_retain), ("max_drift", cfg.max_drift)) if v},
            **({"gate": [cfg.gate_sigmas, cfg.gate_share]} if cfg.gate != [PAPER_GATE.kind] else {}),
        },
        sort_keys=True,
        default=str,
    )


def signature_file(storage: Location, experiment: str) -> Location:
    return storage / f"{experiment}.search.json"


def finished_file(storage: Location, experiment: str) -> Location:
    return storage / f"{experiment}.finished.json"


def statistics_identity(folder: str | Location) -> str:
    """The content of a statistics folder (sha256 over its files): the folder of a kind's block keeps its name when a
    study gathers it again, with another SAE or other prompts. Where the SAE was loaded from (its index's
    ``sae_ref``: a registry version, a folder) is left out; its ``sae_fingerprint`` (of the weights) stays."""
    digest = hashlib.sha256()
    for file in Location.parse(folder).files():
        if file.name == INDEX:
            index = {k: v for k, v in json.loads(file.read_text()).items() if k != "sae_ref"}
            content = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()
        else:
            content = file.sha256()
        digest.update(f"{file.name}:{content}".encode())
    return digest.hexdigest()[:16]


def mark_finished(storage: Location, experiment: str, signature: str, identity: str) -> None:
    """Written once every trial of the experiment reported: the sign another search may take it over, with what it
    was scored on (``identity``: the ``statistics_identity`` of its statistics)."""
    finished_file(storage, experiment).write_text(json.dumps({"signature": signature, "statistics": identity}))


def finished_twin(storage: Location, experiment: str, signature: str, statistics: str, identity: str) -> Location | None:
    """The Tune storage (``<search folder>/tune``) of another search beside this one that finished ``experiment``
    with ``signature`` on the statistics in folder ``statistics`` as they are now (``identity``: their
    ``statistics_identity``); None when none did. A search from before finished files counts when its summary exists
    (written only after every experiment in it) and the statistics folder has not been written since it started the
    experiment."""
    searches = storage.parent.parent
    selector = pafs.FileSelector(searches.path, recursive=False, allow_not_found=True)
    others = sorted(
        info.path
        for info in searches.fs.get_file_info(selector)
        if info.type == pafs.FileType.Directory and info.path.rstrip("/") != storage.parent.path.rstrip("/")
    )
    for path in others:
        other = Location(searches.fs, path, searches.scheme, searches.query) / storage.name
        marker = signature_file(other, experiment)
        if not marker.is_file() or marker.read_text() != signature:
            continue
        if (other / experiment).info().type != pafs.FileType.Directory:
            continue
        done = finished_file(other, experiment)
        if done.is_file():
            if json.loads(done.read_text()) == {"signature": signature, "statistics": identity}:
                return other
        elif (other.parent / SUMMARY).is_file() and _written_before(statistics, marker):
            return other
    return None


def _written_before(statistics: str, marker: Location) -> bool:
    started = marker.info().mtime
    return all(file.info().mtime <= started for file in Location.parse(statistics).files())


def take_over_finished_twin(
    storage: Location, experiment: str, signature: str, statistics: str, identity: str
) -> Location | None:
    """Copies the finished ``experiment`` another search holds with the same signature into ``storage`` (where this
    search has nothing Tune can restore); returns where it came from, or None when there is no such experiment. A
    local copy lands whole or not at all (copied beside it, then renamed); on an object store a copy cut short is an
    unfinished experiment, which Tune resumes."""
    twin = finished_twin(storage, experiment, signature, statistics, identity)
    if twin is None:
        return None
    source, target = twin / experiment, storage / experiment
    if storage.is_local:
        staging = Path(storage.path) / f".{experiment}.{uuid.uuid4().hex[:8]}.copying"
        try:
            shutil.copytree(source.path, staging)
            # A folder here without Tune's state (a start cut short before Tune saved any) holds nothing to resume.
            shutil.rmtree(target.path, ignore_errors=True)
            staging.rename(target.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        pafs.copy_files(source.path, target.path, source_filesystem=twin.fs, destination_filesystem=storage.fs)
    logger.info(f"search: {experiment}: finished with the same settings in {twin.parent.uri}; its trials taken over")
    return twin
