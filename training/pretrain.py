"""Contrastive pretraining of VideoFirst encoders.

    accelerate launch training/pretrain.py                      # the built-in demo (tiny, CPU, minutes)
    accelerate launch training/pretrain.py --config training/configs/short_stage.yaml optim.max_steps=1000
    accelerate launch training/pretrain.py --config ... --resume  # continue from the latest valid checkpoint
    accelerate launch training/pretrain.py --config ... --overwrite  # start afresh in a folder holding a run

Flags and `section.key=value` overrides may come in any order. A run folder holds one run: without `--resume` or
`--overwrite`, a folder with another run's checkpoints, log or export is refused, and so is a second run while the
first is alive.

Plain `python training/pretrain.py` runs the same on one process.
"""

import json
import sys
from pathlib import Path

from videofirst.recipe import load_recipe, parse_recipe_args
from videofirst.train.checkpointing import CheckpointError
from videofirst.train.pretraining import pretrain
from videofirst.train.run_folder import RunFolderError

DEMO_RECIPE = Path(__file__).parent / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    config, overrides = parse_recipe_args(argv, description=__doc__, default_config=DEMO_RECIPE)
    try:
        result = pretrain(load_recipe(config, overrides))
    except (RunFolderError, CheckpointError) as error:  # a refusal, with what to do about it: no traceback
        print(f"pretrain.py: {error}", file=sys.stderr)
        return 2
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
