"""What a finished search's trials hold beyond its choice: the (p, edit) it would choose at another floor on IRA and
CRA, and per style the trial that keeps the most objects on the style's own images among those that forget it at the
bar (tuning scores: UA / IRA / CRA / own-style CRA). Reads the search's search.json; generates nothing, needs no Ray.

    python tune/review.py --search runs/minicanvas/search/<name> --min_retain 0.95

With --max_drift D the choice also keeps the kept images' drift at D (searches that measured it). A changed choice is
marked *. It is an estimate: ASHA's rungs applied the search's own floor, so a search run with
the other one would carry other trials to the end (README, "Every concept", item 16).
"""

from saeuron.config import parse_config
from saeuron.tuning.review import ReviewConfig, load_summary, review_search, review_table

if __name__ == "__main__":
    cfg = parse_config(ReviewConfig, description=__doc__)
    reviews = review_search(load_summary(cfg.search), cfg.min_retain, cfg.bar, cfg.min_prompts, cfg.max_drift)
    print(review_table(reviews, cfg.min_retain, cfg.bar, cfg.max_drift))
