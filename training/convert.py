"""Inflate a CLIP or SigLIP image–text checkpoint into a VideoFirst video–text checkpoint.

    python training/convert.py SOURCE OUTPUT_DIR                       # CLIP / SigLIP folder or Hub id
    python training/convert.py SOURCE OUTPUT_DIR --inflation central --pooling mean --num-frames 16
    python training/convert.py SOURCE OUTPUT_DIR --text-model path/to/bert   # the paper's BERT text tower
    python training/convert.py SOURCE OUTPUT_DIR --set attention_type=factorized --set mask_ratio=0.75

The output folder is an ordinary VideoFirst checkpoint with its model code (load it with
`AutoModel.from_pretrained(OUTPUT_DIR, trust_remote_code=True)`), plus a processor when the source (or the
text model) ships a tokenizer.
"""

import argparse
import json
import sys
from pathlib import Path

from videofirst.hub.conversion import CONVERSION_VISION_OPTIONS, INFLATION_MODES, POOLING_CHOICES, convert_checkpoint


def _parse_setting(text: str) -> tuple[str, object]:
    key, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        parsed = json.loads(value)  # numbers, booleans, lists (e.g. tubelet_size=[4,16,16])
    except json.JSONDecodeError:
        parsed = value
    return key.strip(), parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="CLIPModel / SiglipModel checkpoint: a local folder or a Hub id")
    parser.add_argument("output_dir", type=Path, help="where to write the VideoFirst checkpoint")
    parser.add_argument("--inflation", choices=INFLATION_MODES, default="average", help="3D kernel from the 2D one")
    parser.add_argument("--pooling", choices=POOLING_CHOICES, default="source", help="source pooling or paper's mean")
    parser.add_argument("--num-frames", type=int, default=16, help="frames the temporal positions are made for")
    parser.add_argument("--tubelet-frames", type=int, default=2, help="frames per tubelet")
    parser.add_argument("--text-model", default=None, help="a BERT-style checkpoint replacing the text tower")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        type=_parse_setting,
        default=[],
        metavar="KEY=VALUE",
        help=f"vision option, one of {', '.join(CONVERSION_VISION_OPTIONS)} (JSON values)",
    )
    args = parser.parse_args(argv)
    output_dir = convert_checkpoint(
        args.source,
        args.output_dir,
        text_source=args.text_model,
        inflation=args.inflation,
        pooling=args.pooling,
        num_frames=args.num_frames,
        tubelet_frames=args.tubelet_frames,
        **dict(args.settings),
    )
    print(f"VideoFirst checkpoint written to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
