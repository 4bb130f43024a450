"""Captions as causal-language-model text: the tokenizer's special tokens, training sequences and prompts.

Text layout for a causal language model. A training sequence is `[BOS] prompt caption [EOS]`, where the prompt (for
instance `"Summary:"`, or a question) is optional and is joined to the caption with one space. Only the caption and
EOS carry labels; BOS, the prompt and the padding are -100. Generation starts from `[BOS] prompt` and the model
continues with the caption. Tokenizers need a BOS and an EOS; `prepare_causal_tokenizer` gives the project's
BERT-style SentencePiece tokenizers `[CLS]` / `[SEP]` for them and pads with EOS where there is no pad token.
Captions are located in the joined text through the tokenizer's character offsets, so any fast tokenizer works
(SentencePiece, byte-level BPE) without splitting a word at the prompt boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from videofirst.data.tokenization import train_sentencepiece_tokenizer

__all__ = ["IGNORE_INDEX", "encode_captions", "encode_prompts", "prepare_causal_tokenizer", "train_caption_tokenizer"]

IGNORE_INDEX = -100


def prepare_causal_tokenizer(tokenizer):
    """Give `tokenizer` the BOS, EOS and pad tokens a causal captioner needs (in place; returns it).

    BERT-style tokenizers (`videofirst.data.tokenization`) use `[CLS]` as BOS and `[SEP]` as EOS; a tokenizer with an
    EOS but no BOS (some byte-level BPEs) starts from EOS, as GPT-2 does; a missing pad token becomes EOS (padding never
    carries a label, so the choice does not matter).
    """
    if tokenizer.bos_token is None and tokenizer.cls_token is not None:
        tokenizer.bos_token = tokenizer.cls_token
    if tokenizer.eos_token is None and tokenizer.sep_token is not None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.eos_token is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS (or [SEP]) token; generation could never stop.")
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_caption_tokenizer(captions: Iterable[str], output_dir: str | Path, vocab_size: int = 8000):
    """A SentencePiece tokenizer trained on `captions` (`videofirst.data.tokenization`), made ready for a causal LM and
    saved to `output_dir` (loads with `AutoTokenizer.from_pretrained`)."""
    tokenizer = prepare_causal_tokenizer(train_sentencepiece_tokenizer(captions, output_dir, vocab_size))
    tokenizer.save_pretrained(output_dir)
    return tokenizer


def _per_item(value: str | Sequence[str] | None, count: int, name: str) -> list[str]:
    if value is None or isinstance(value, str):
        return [value or ""] * count
    if len(value) != count:
        raise ValueError(f"`{name}` has {len(value)} entries for {count} texts.")
    return list(value)


def _special_id(tokenizer, name: str) -> int:
    token_id = getattr(tokenizer, f"{name}_token_id")
    if token_id is None:
        raise ValueError(f"The tokenizer has no {name.upper()} token; call `prepare_causal_tokenizer` on it first.")
    return int(token_id)


def encode_captions(
    tokenizer,
    captions: Sequence[str],
    prompts: str | Sequence[str] | None = None,
    max_length: int | None = None,
    add_eos: bool = True,
) -> dict[str, torch.Tensor]:
    """Tokenize `[BOS] prompt caption [EOS]` sequences with labels on the caption (and EOS) only.

    Args:
        tokenizer: a fast tokenizer with BOS, EOS and pad tokens (see `prepare_causal_tokenizer`).
        captions: the target texts.
        prompts: one prompt for all, or one per caption; joined to the caption with a space. None: no prompt.
        max_length: longest sequence in tokens, BOS and EOS included (the caption is cut from the right).
        add_eos: end each labelled text with EOS (captioning); False scores the text alone (QA answers).

    Returns:
        Right-padded `input_ids`, `attention_mask` and `labels` (-100 outside the captions), `(batch, length)`.
    """
    if isinstance(captions, str):
        raise TypeError("`captions` must be a sequence of strings, not one string.")
    prompts = _per_item(prompts, len(captions), "prompts")
    bos, eos, pad = _special_id(tokenizer, "bos"), _special_id(tokenizer, "eos"), _special_id(tokenizer, "pad")
    texts = [f"{prompt} {caption}" if prompt else caption for prompt, caption in zip(prompts, captions)]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    rows, label_rows = [], []
    for prompt, ids, offsets in zip(prompts, encoded["input_ids"], encoded["offset_mapping"]):
        boundary = len(prompt)
        # A token belongs to the caption when it ends past the prompt (its leading space may sit at the boundary).
        labels = [token if end > boundary else IGNORE_INDEX for token, (_, end) in zip(ids, offsets)]
        ids, labels = [bos, *ids], [IGNORE_INDEX, *labels]
        if add_eos:
            ids, labels = ids + [eos], labels + [eos]
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        rows.append(ids)
        label_rows.append(labels)
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for index, (row, label_row) in enumerate(zip(rows, label_rows)):
        input_ids[index, : len(row)] = torch.tensor(row)
        labels[index, : len(row)] = torch.tensor(label_row)
        attention_mask[index, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def encode_prompts(tokenizer, prompts: str | Sequence[str] | None, count: int | None = None) -> dict[str, torch.Tensor]:
    """`[BOS] prompt` sequences, left-padded (decoder-only generation continues from the right end)."""
    if count is None:
        if prompts is None or isinstance(prompts, str):
            raise ValueError("Pass `count` with a single prompt.")
        count = len(prompts)
    prompts = _per_item(prompts, count, "prompts")
    bos, pad = _special_id(tokenizer, "bos"), _special_id(tokenizer, "pad")
    rows = [[bos, *(tokenizer(p, add_special_tokens=False)["input_ids"] if p else [])] for p in prompts]
    length = max(len(row) for row in rows)
    input_ids = torch.full((count, length), pad, dtype=torch.long)
    attention_mask = torch.zeros((count, length), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, length - len(row) :] = torch.tensor(row)
        attention_mask[index, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
