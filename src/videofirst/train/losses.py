"""Contrastive losses over the global (all-process) batch, with gradients through the gather.

Why a module of its own: the model's built-in ``return_loss`` only sees the local batch, but a
contrastive loss gets its negatives from the batch, so data-parallel training must compare every
local row with the rows of ALL processes. Two details decide whether that is right:

* **The gather must carry gradients.** ``accelerate.gather`` / ``dist.all_gather`` are not
  differentiable, so the other processes' rows would be constants and their share of the
  gradient would be lost. :func:`gather_with_grad` uses ``torch.distributed.nn``'s autograd
  all-gather, whose backward sums (reduce-scatters) every process's gradient for a row back
  to the process that produced it.
* **The normalisation must match DDP's gradient averaging.** Each process computes only its
  local rows of the global logit matrix (against all gathered columns) and scales that partial
  sum by ``world_size / global_batch``. With equal local batches this is the plain local mean;
  the mean of the per-process losses is exactly the single-process loss on the global batch,
  and since the gather's backward routes each process's gradient contributions home, the
  gradient DDP averages over N processes equals the single-process global-batch gradient
  (``tests/test_losses.py`` checks this with two processes, also for uneven local batches).

Both losses take L2-normalised embeddings and an already exponentiated (and clamped) scale, the
way ``VideoFirstModel`` exposes them. Half-precision embeddings are upcast to float32 before the
logits: a softmax over thousands of columns is too lossy in bf16, and the (local x global)
logit matrix is small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gather_with_grad", "contrastive_loss", "sigmoid_loss"]


def _dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather_sizes(tensor: Tensor, world_size: int) -> list[int]:
    """First-dimension size of ``tensor`` on every process (one tiny all-gather)."""
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    torch.distributed.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_autograd(tensor: Tensor, sizes: list[int]) -> Tensor:
    """Differentiable all-gather along dim 0 of tensors whose first sizes are ``sizes``.

    The collective needs equal shapes, so shorter tensors are zero-padded to the longest and
    the padding is cut off again; the pad rows receive no gradient.
    """
    from torch.distributed.nn.functional import all_gather

    longest = max(sizes)
    local = tensor
    if tensor.shape[0] < longest:
        pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        local = torch.cat([tensor, pad], dim=0)
    parts = all_gather(local.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)], dim=0)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from all processes along dim 0, in rank order, keeping gradients.

    Identity when ``torch.distributed`` is not initialised or has a single process. Local first
    dimensions may differ between processes (an uneven last batch); the other dimensions must
    match. In the backward pass every process receives the SUM over processes of the gradients
    flowing into its slice, which is what makes a loss over gathered rows differentiate like
    the same loss computed on one process.
    """
    _, world_size = _dist_info()
    if world_size == 1:
        return tensor
    return _all_gather_autograd(tensor, _gather_sizes(tensor, world_size))


def _upcast(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _as_tensor(value: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(like.dtype) if value.dtype != like.dtype else value
    return torch.tensor(value, dtype=like.dtype, device=like.device)


def _global_view(local: list[Tensor], gather: bool) -> tuple[list[Tensor], int, int, float]:
    """Gathered versions of ``local`` tensors (same first size), the local row offset in the
    global batch, the global batch size, and the per-process normaliser ``world / global``."""
    n = local[0].shape[0]
    rank, world_size = _dist_info() if gather else (0, 1)
    if world_size == 1:
        if n == 0:
            raise ValueError("contrastive losses need a non-empty batch")
        return local, 0, n, 1.0 / n
    sizes = _gather_sizes(local[0], world_size)
    total = sum(sizes)
    if total == 0:
        raise ValueError("contrastive losses need a non-empty global batch")
    gathered = [_all_gather_autograd(t, sizes) for t in local]
    return gathered, sum(sizes[:rank]), total, world_size / total


def _check_pair(video_embeds: Tensor, text_embeds: Tensor) -> None:
    if video_embeds.ndim != 2 or text_embeds.ndim != 2 or video_embeds.shape != text_embeds.shape:
        raise ValueError(
            "video_embeds and text_embeds must both be (batch, dim) with the same shape, got "
            f"{tuple(video_embeds.shape)} and {tuple(text_embeds.shape)}"
        )


def contrastive_loss(
    video_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    *,
    gather: bool = True,
) -> Tensor:
    """Symmetric InfoNCE (CLIP) loss over the global batch.

    Args:
        video_embeds: ``(local_batch, dim)`` L2-normalised video embeddings; row ``i`` pairs
            with ``text_embeds[i]``.
        text_embeds: ``(local_batch, dim)`` L2-normalised text embeddings.
        logit_scale: the multiplier of the cosine similarities, already exponentiated and
            clamped (CLIP's ``logit_scale.exp().clamp(max=100)``), a scalar tensor or float.
        gather: compare the local rows with the rows of all processes (default). With
            ``False``, or without an initialised process group, only the local batch is used.

    Returns:
        A scalar: ``(CE(video -> text) + CE(text -> video)) / 2`` where each cross entropy runs
        over the local rows against all ``B`` gathered columns, summed and scaled by
        ``world_size / B``. With equal local batches that is the local mean, and the mean over
        processes equals the single-process loss on the global batch (so do the gradients once
        DDP has averaged them).
    """
    _check_pair(video_embeds, text_embeds)
    video, text = _upcast(video_embeds), _upcast(text_embeds)
    (all_video, all_text), offset, _, norm = _global_view([video, text], gather)
    scale = _as_tensor(logit_scale, video)
    labels = torch.arange(video.shape[0], device=video.device) + offset
    logits_per_video = scale * video @ all_text.T  # (local, global)
    logits_per_text = scale * text @ all_video.T
    loss = F.cross_entropy(logits_per_video, labels, reduction="sum")
    loss = loss + F.cross_entropy(logits_per_text, labels, reduction="sum")
    return 0.5 * norm * loss


def sigmoid_loss(
    video_embeds: Tensor,
    text_embeds: Tensor,
    logit_scale: Tensor | float,
    logit_bias: Tensor | float,
    *,
    gather: bool = True,
) -> Tensor:
    """SigLIP pairwise sigmoid loss over the global batch.

    Every (video ``i``, text ``j``) pair of the global batch is an independent binary
    classification with logit ``scale * <v_i, t_j> + bias`` and label +1 for matching pairs,
    -1 otherwise. Normalisation (SigLIP's): the single-process loss on a global batch of ``B``
    is ``-(1 / B) * sum_{i, j} log sigmoid(label_ij * logit_ij)``, i.e. summed over the ``B^2``
    pairs and divided by the batch size, not by the number of pairs. Each process owns the
    pairs of its local videos (against all gathered texts; only texts need gathering, as each
    pair is counted exactly once), sums them and scales by ``world_size / B``, so the mean
    over processes equals that global loss and DDP-averaged gradients equal its gradient.

    Args:
        video_embeds, text_embeds: ``(local_batch, dim)`` L2-normalised embeddings, paired by row.
        logit_scale: exponentiated scale (SigLIP initialises ``log scale = log 10``).
        logit_bias: learnable bias (SigLIP initialises it to -10).
        gather: use all processes' texts (default); local batch only with ``False``.
    """
    _check_pair(video_embeds, text_embeds)
    video, text = _upcast(video_embeds), _upcast(text_embeds)
    (all_text,), offset, _, norm = _global_view([text], gather)
    scale, bias = _as_tensor(logit_scale, video), _as_tensor(logit_bias, video)
    logits = scale * video @ all_text.T + bias  # (local, global)
    signs = -torch.ones_like(logits)
    rows = torch.arange(video.shape[0], device=video.device)
    signs[rows, rows + offset] = 1.0
    return -norm * F.logsigmoid(signs * logits).sum()
