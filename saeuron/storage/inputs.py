"""Inputs given as paths or URIs: a model folder, classifier checkpoints, anchor prompts, real images, Inception weights.

A URI (``s3://``, ``gs://``) is fetched once per node into the node's cache (:mod:`saeuron.storage.mirror`: a file
is fetched again only when the store's copy changes size or is newer), so every node of a cluster reads the same
input without a shared filesystem. A plain path is used as it is. No pyarrow import for a plain path.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_remote(ref: str | os.PathLike[str]) -> bool:
    text = str(ref)
    return "://" in text and not text.startswith("file://")


def local_input(ref: str | os.PathLike[str], what: str) -> Path:
    """This node's path of the input ``ref``; an unreadable URI fails here, naming ``what`` and the URI."""
    if not is_remote(ref):
        return Path(str(ref).removeprefix("file://")).expanduser().resolve()
    from saeuron.storage.access import check_readable
    from saeuron.storage.location import Location
    from saeuron.storage.mirror import pull

    location = Location.parse(ref)
    check_readable(location, what)
    return pull(location)
