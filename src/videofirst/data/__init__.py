"""Video-text data: manifests and sources, datasets and the training dataloader, tar shards, the synthetic
long-range data, and the caption tokenizer.

Modules: `loading` (sources, datasets, collator, dataloader), `shards` (WebDataset-style tar shards),
`synthetic` (order-of-events videos), `tokenization` (SentencePiece tokenizer training).
"""
