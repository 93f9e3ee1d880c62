"""Stage records: what each finished stage of a study ran with and produced, so a rerun skips it.

A stage whose record (``<study_dir>/stages/<name>/<stage>.json``, in the study's storage) holds the same
config and whose outputs still exist is skipped; a stage that runs again invalidates every stage after it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from saeuron.config import to_dict
from saeuron.console import logger
from saeuron.storage import Location


class StageRecords:
    """What each finished stage was run with and produced."""

    def __init__(self, root: Location, name: str):
        self.folder = root / "stages" / name
        self.invalidated = False

    def done(self, stage: str, config: Any) -> dict | None:
        """The outputs of ``stage`` when it ran with ``config`` and nothing before it was rerun."""
        path = self.folder / f"{stage}.json"
        if self.invalidated or not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record["config"] != _comparable(config):
            return None
        return record["outputs"]

    def record(self, stage: str, config: Any, outputs: dict) -> None:
        (self.folder / f"{stage}.json").write_text(
            json.dumps({"config": _comparable(config), "outputs": outputs}, indent=2, default=str)
        )

    def run(
        self, stage: str, config: Any, work: Callable[[], dict], still_there: Callable[[dict], bool] = lambda _: True
    ) -> dict:
        outputs = self.done(stage, config)
        if outputs is not None and still_there(outputs):
            logger.info(f"study: {stage} already done with this config, skipped")
            return outputs
        self.invalidated = True  # later stages depend on this one's new outputs
        logger.info(f"study: {stage} …")
        started = time.perf_counter()
        outputs = work()
        self.record(stage, config, outputs)
        logger.info(f"study: {stage} done in {time.perf_counter() - started:.0f}s")
        return outputs


def _comparable(config: Any) -> Any:
    data = to_dict(config) if not isinstance(config, dict) else dict(config)
    data.get("tracking", {}).pop("parent_run_id", None)  # a rerun under another study run is the same stage
    return json.loads(json.dumps(data, default=str))
