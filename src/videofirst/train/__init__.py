"""Training: the contrastive pretraining and video-to-text loops and what they share.

Modules: `setup` (data, tokenizer, processor and model before the first step), `loop` (run setup, resumable
iteration, bookkeeping), `pretraining`, `video_to_text`, `losses`, `optimization`, `checkpointing`, `run_folder`,
`run_logging`, `distributed` (FSDP2, DDP, compile), `determinism`, `run_export` (exporting a run folder).
"""
