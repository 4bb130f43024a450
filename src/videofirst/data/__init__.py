"""Video-text data: manifests and sources, datasets and the training dataloader, tar shards, the synthetic
long-range data, and the caption tokenizer.

Modules: `sources` (source strings, manifests, tar shards and Hub datasets read into rows: the one manifest
reader), `loading` (decoding, datasets, mixing, collator, dataloader), `shards` (WebDataset-style tar shards),
`preparation` (writing shards), `synthetic` (order-of-events videos), `tokenization` (SentencePiece tokenizer
training), `captions` (captions as causal-language-model sequences and prompts).
"""
