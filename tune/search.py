"""Step 5 of the study: choose (percentile, edit) per concept with Ray Tune, judged by the benchmark's
classifiers on tuning prompts that never overlap the evaluation prompts. The edit is a multiplier γ, or with
--anchors steering toward an anchor concept by a strength β (--strengths); --anchors all: toward every other one;
--cond_multipliers / --cond_strengths: the same edits on the conditional CFG half only (the guidance scale multiplies
them there, so they are small: γ −0.1 … −1); --map_strengths: a style's map edit toward its statistics' map anchor
(gathered with --map_anchor), under a detecting --gate.

    python tune/search.py --config configs/minicanvas/search.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python tune/search.py --config ...

Watch the trials in the Ray dashboard (Jobs / Tune); the chosen recipes land in MLflow (run tag
saeuron.recipes) for jobs/evaluate.py --recipes runs:/<run id>/recipes.
"""

from saeuron.config import parse_config
from saeuron.tuning.search import SearchConfig, search

if __name__ == "__main__":
    search(parse_config(SearchConfig, description=__doc__))
