"""Contrastive pretraining of VideoFirst encoders.

    accelerate launch training/pretrain.py                      # the built-in demo (tiny, CPU, minutes)
    accelerate launch training/pretrain.py --config training/configs/short_stage.yaml optim.max_steps=1000
    accelerate launch training/pretrain.py --config ... --resume  # continue from the latest checkpoint

Plain `python training/pretrain.py` runs the same on one process.
"""

import json
import sys
from pathlib import Path

from videofirst.pretraining import pretrain
from videofirst.recipe import load_recipe, parse_recipe_args

DEMO_RECIPE = Path(__file__).parent / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    config, overrides = parse_recipe_args(argv, description=__doc__, default_config=DEMO_RECIPE)
    result = pretrain(load_recipe(config, overrides))
    if result.export_dir is not None:
        print(f"Run folder:        {result.run_dir}")
        print(f"Metrics log:       {result.run_dir / 'metrics.jsonl'}")
        print(f"Checkpoints:       {result.run_dir / 'checkpoints'}")
        print(f"Exported model:    {result.export_dir}  (AutoModel.from_pretrained(path, trust_remote_code=True))")
        print(f"Steps: {result.final_step}, bad samples skipped: {result.bad_samples}")
        if result.metrics:
            print("Held-out retrieval: " + json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
