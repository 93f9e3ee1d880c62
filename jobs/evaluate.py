"""Step 6 of the study: score unlearned models — UA, IRA, CRA and FID — log them to MLflow and
write a report (sample grids, bar chart, table; PNG + HTML).

    python jobs/evaluate.py --recipes runs/minicanvas/recipes/Neon_Glow runs/minicanvas/recipes/Stars \
        --num_inference_steps 20 --guidance_scale 7.5
"""

from saeuron.config import parse_config
from saeuron.evaluation.evaluate import EvaluateConfig, evaluate

if __name__ == "__main__":
    evaluate(parse_config(EvaluateConfig, description=__doc__))
