"""Train a SentencePiece tokenizer on captions and save it as a transformers tokenizer.

For a text tower trained from scratch (the demo, small synthetic corpora). SentencePiece learns a unigram
vocabulary; its pieces and scores become a `tokenizers` Unigram model with BERT-style special tokens
(`[CLS] ... [SEP]`, `[PAD]` = 0), saved so that `AutoTokenizer.from_pretrained(folder)` loads it.

    python -m videofirst.data.tokenization --manifest data/train.jsonl --out runs/tokenizer --vocab-size 64
"""

import argparse
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from videofirst.data.sources import source_captions

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
SPECIAL_TOKENS["mask_token"] = "[MASK]"


def train_sentencepiece_tokenizer(
    captions: Iterable[str], output_dir: str | Path, vocab_size: int = 8000, lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """Train a unigram SentencePiece model on `captions` and save it as a transformers tokenizer.

    `vocab_size` is an upper bound: small corpora get the vocabulary they support.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    texts = [text.lower() if lowercase else text for text in captions]
    if not texts:
        raise ValueError("No captions to train a tokenizer on.")
    with tempfile.TemporaryDirectory() as scratch:
        prefix = Path(scratch) / "spm"
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=str(prefix),
            vocab_size=vocab_size,
            model_type="unigram",
            hard_vocab_limit=False,
            character_coverage=1.0,
            # SentencePiece's own specials are replaced by BERT-style ones below.
            unk_id=0,
            bos_id=-1,
            eos_id=-1,
            pad_id=-1,
            minloglevel=2,
        )
        processor = sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model")
        (output_dir / "spiece.model").write_bytes(Path(f"{prefix}.model").read_bytes())
    pieces = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    # Specials first so that [PAD] is id 0; SentencePiece's <unk> (id 0) becomes [UNK].
    specials = list(SPECIAL_TOKENS.values())
    vocab = [(token, 0.0) for token in specials] + pieces[1:]
    unk_id = specials.index(SPECIAL_TOKENS["unk_token"])

    backend = Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    normalizer_steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    backend.normalizer = normalizers.Sequence(normalizer_steps)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    cls_id, sep_id = specials.index("[CLS]"), specials.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_input_names=["input_ids", "attention_mask"])
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--manifest", required=True, help="a manifest with a caption/text column, or any data source (tar shards, ...)"
    )
    parser.add_argument("--out", required=True, help="folder to save the tokenizer to")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--keep-case", action="store_true", help="do not lowercase")
    args = parser.parse_args(argv)
    # The training data's reader and checks (non-empty strings, UTF-8, errors naming the file and row).
    captions = source_captions(args.manifest)
    tokenizer = train_sentencepiece_tokenizer(captions, args.out, args.vocab_size, lowercase=not args.keep_case)
    print(f"Saved a {len(tokenizer)}-token tokenizer to {args.out}")
    return Path(args.out)


if __name__ == "__main__":
    main()
