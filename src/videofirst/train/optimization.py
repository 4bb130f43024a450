"""AdamW with CLIP-style weight-decay exclusions, and a linear-warmup cosine schedule."""

import math

import torch
from torch import nn

from videofirst.recipe import OptimSection


def _decays(name: str, parameter: nn.Parameter) -> bool:
    """Decay matrices and kernels only: biases, norms, gains, scales and embedding tables are left alone."""
    if parameter.ndim < 2:
        return False
    no_decay_markers = ("position_embedding", "class_embedding", "probe", "embeddings.word_embeddings")
    return not any(marker in name for marker in no_decay_markers)


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if _decays(name, parameter) else no_decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("The model has no trainable parameters; check the adaptation recipe.")
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=optim.learning_rate,
        betas=(optim.beta1, optim.beta2),
        eps=optim.eps,
    )


def warmup_cosine_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear from 1/warmup to 1, then cosine down to `min_ratio` at `max_steps`.

    Hand-written because transformers' `cosine_with_min_lr` schedule warms up from 0 instead of 1/warmup (equal
    from the end of the warm-up on; `tests/train/test_pretraining.py` compares them), and runs must stay
    reproducible."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimSection) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: warmup_cosine_factor(step, optim.warmup_steps, optim.max_steps, optim.min_learning_rate_ratio),
    )
