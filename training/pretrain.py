"""Contrastive pretraining of VideoFirst encoders.

    accelerate launch training/pretrain.py                      # the built-in demo (tiny, CPU, minutes)
    accelerate launch training/pretrain.py --config training/configs/short_stage.yaml optim.max_steps=1000
    accelerate launch training/pretrain.py --config ... --resume  # continue from the latest checkpoint

Plain `python training/pretrain.py` runs the same on one process.
"""

import argparse
import json
import sys
from pathlib import Path

from videofirst.pretraining import pretrain
from videofirst.recipe import load_recipe

DEMO_RECIPE = Path(__file__).parent / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEMO_RECIPE, help="recipe YAML (default: the demo)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    parser.add_argument("overrides", nargs="*", help="recipe overrides such as optim.max_steps=10")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + (["checkpoint.resume=true"] if args.resume else [])
    result = pretrain(load_recipe(args.config, overrides))
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
