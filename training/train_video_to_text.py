"""Video-to-text training: a frozen VideoFirst video tower feeding a frozen causal language model through a new
Perceiver resampler and new gated cross-attention layers (the paper's second step), with the captioning loss.

    accelerate launch training/train_video_to_text.py                        # the built-in demo (tiny, CPU, minutes)
    accelerate launch training/train_video_to_text.py --config my.yaml model.vision_from=runs/demo/export
    accelerate launch training/train_video_to_text.py --config ... --resume  # continue from the latest checkpoint

Plain `python training/train_video_to_text.py` runs the same on one process.
"""

import json
import sys
from pathlib import Path

from videofirst.recipe import parse_recipe_args
from videofirst.train.video_to_text import load_video_to_text_recipe, train_video_to_text

DEMO_RECIPE = Path(__file__).parent / "configs" / "video_to_text_demo.yaml"


def main(argv: list[str] | None = None) -> int:
    config, overrides = parse_recipe_args(argv, description=__doc__, default_config=DEMO_RECIPE)
    result = train_video_to_text(load_video_to_text_recipe(config, overrides))
    if result.export_dir is not None:
        print(f"Run folder:        {result.run_dir}")
        print(f"Metrics log:       {result.run_dir / 'metrics.jsonl'}")
        print(f"Checkpoints:       {result.run_dir / 'checkpoints'}")
        print(
            f"Exported model:    {result.export_dir}  "
            "(AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True))"
        )
        print(f"Steps: {result.final_step}, bad samples skipped: {result.bad_samples}")
        if result.metrics:
            print("Held-out: " + json.dumps({key: round(value, 4) for key, value in result.metrics.items()}))
        for sample in result.samples[:3]:
            print(f"  reference: {sample['reference']!r}\n  generated: {sample['generated']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
