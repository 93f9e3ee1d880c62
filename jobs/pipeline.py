"""The whole study as one job: collect → train → gather → search → evaluate, each stage skipped when
it already ran with the same config, all under one MLflow run. Ends with the UA/IRA/CRA table.

    python jobs/pipeline.py                                              # MiniCanvas, quick: minutes on a laptop CPU
    python jobs/pipeline.py --config configs/minicanvas/study-full.yaml  # the full MiniCanvas study
    python jobs/pipeline.py --config configs/unlearncanvas/study.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pipeline.py \\
        --study_dir /shared/runs/minicanvas --tracking_uri http://127.0.0.1:5000
"""

from saeuron.config import parse_config
from saeuron.study import StudyConfig, run_study

if __name__ == "__main__":
    run_study(parse_config(StudyConfig, description=__doc__))
