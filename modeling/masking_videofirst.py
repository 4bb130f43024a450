"""Token dropping and token grouping for the VideoFirst video tower.

Video tokens live on a (time, space) grid of `T x S` tubelets, flattened to `N = T * S` in time-major
order. Two pieces of bookkeeping let every attention type work on a *subset* of that grid, so that
dropped tokens cost neither compute nor memory:

* [`TokenSelection`] says which grid positions each sample keeps (training-time masking, padded frames).
  Samples may keep different numbers of tokens; rows are right-padded and carry a validity mask.
* [`TokenGroups`] packs the kept tokens by frame (spatial attention) or by spatial position (temporal
  attention) into a dense `(groups, longest group, dim)` tensor, and scatters the result back.
"""

from dataclasses import dataclass

import torch


@dataclass
class TokenSelection:
    """Grid positions kept per sample.

    Attributes:
        indices: `(batch, kept)` positions in the flattened `T * S` grid, ascending within the valid prefix.
        valid: `(batch, kept)` True for real tokens, False for the right padding of shorter rows.
        all_valid: whether `valid` is all True (then no attention mask is needed).
    """

    indices: torch.LongTensor
    valid: torch.BoolTensor
    all_valid: bool


def _compact(candidates: torch.LongTensor, keep: torch.BoolTensor, grid_size: int) -> TokenSelection:
    """Move the kept candidates of each row to its front, in ascending grid order, and trim the columns."""
    sentinel = torch.full_like(candidates, grid_size)
    indices, _ = torch.where(keep, candidates, sentinel).sort(dim=1)
    kept_per_row = keep.sum(dim=1)
    width = int(kept_per_row.max())
    indices = indices[:, :width]
    valid = indices < grid_size
    return TokenSelection(indices=indices.masked_fill(~valid, 0), valid=valid, all_valid=bool(valid.all()))


def _all_valid(candidates: torch.LongTensor) -> TokenSelection:
    """Every row keeps all its `candidates`, sorted. Unlike [`_compact`], the shapes depend on no tensor's values,
    so `torch.compile(fullgraph=True)` traces masked training without padding."""
    indices, _ = candidates.sort(dim=1)
    return TokenSelection(indices=indices, valid=torch.ones_like(indices, dtype=torch.bool), all_valid=True)


def _generator(generator: torch.Generator | None) -> dict:
    """`generator=` for torch.rand only when there is one: `torch.rand(..., generator=None)` does not trace with
    symbolic sizes (torch.compile with dynamic shapes), the call without it does."""
    return {} if generator is None else {"generator": generator}


def select_tokens(
    grid: tuple[int, int],
    batch_size: int,
    mask_ratio: float,
    mask_type: str,
    token_valid: torch.BoolTensor | None,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> TokenSelection | None:
    """Choose the tokens each sample keeps; `None` means "all of them" (no masking, no padding).

    Exactly `round((1 - mask_ratio) * n)` tokens are kept per sample, where `n` is the sample's number of
    real (unpadded) tokens, and never fewer than one. Padded tokens are never kept. With `"tube"` masking the
    same `round((1 - mask_ratio) * S)` spatial positions are kept in every real time step, so a sample keeps
    that many tokens per time step.

    Args:
        grid: `(T, S)`, tubelets along time and spatial positions per time step.
        token_valid: `(batch, T * S)` True for tokens of real frames, or None when nothing is padded.
    """
    num_times, num_spatial = grid
    grid_size = num_times * num_spatial
    if mask_ratio == 0.0:
        if token_valid is None or bool(token_valid.all()):
            return None
        candidates = torch.arange(grid_size, device=device).expand(batch_size, grid_size)
        return _compact(candidates, token_valid, grid_size)

    if mask_type == "random":
        noise = torch.rand(batch_size, grid_size, device=device, **_generator(generator))
        if token_valid is None:
            return _all_valid(noise.argsort(dim=1)[:, : max(1, round((1.0 - mask_ratio) * grid_size))])
        # Padded tokens sort after every real one and are then cut by the per-sample count.
        noise = noise.masked_fill(~token_valid, 2.0)
        keep_count = torch.round((1.0 - mask_ratio) * token_valid.sum(dim=1)).long().clamp(min=1)
        ranked = noise.argsort(dim=1)
        keep = torch.arange(grid_size, device=device)[None, :] < keep_count[:, None]
        return _compact(ranked, keep, grid_size)

    # Tube masking: one spatial subset per sample, repeated over all real time steps.
    spatial_keep = max(1, round((1.0 - mask_ratio) * num_spatial))
    noise = torch.rand(batch_size, num_spatial, device=device, **_generator(generator))
    kept_spatial = noise.argsort(dim=1)[:, :spatial_keep]
    times = torch.arange(num_times, device=device)
    candidates = (times[None, :, None] * num_spatial + kept_spatial[:, None, :]).flatten(1)
    if token_valid is None:
        return _all_valid(candidates)
    return _compact(candidates, token_valid.gather(1, candidates), grid_size)


class TokenGroups:
    """Packs a `(batch, length, dim)` token sequence into groups that attend only among themselves.

    `group_keys[b, i]` names the group of token `i` of sample `b` (e.g. its frame for spatial attention);
    invalid tokens belong to no group and pass through unchanged. Only non-empty groups are packed, so no
    row of the packed tensor is fully masked.
    """

    def __init__(self, group_keys: torch.LongTensor, num_keys: int, valid: torch.BoolTensor | None):
        batch_size, length = group_keys.shape
        device = group_keys.device
        group_ids = group_keys + num_keys * torch.arange(batch_size, device=device)[:, None]
        positions = torch.arange(batch_size * length, device=device)
        group_ids = group_ids.flatten()
        if valid is not None:
            positions = positions[valid.flatten()]
            group_ids = group_ids[valid.flatten()]
        # Renumber the non-empty groups 0..G-1, then order tokens by (group, position) to rank them.
        present, group_ids = torch.unique(group_ids, return_inverse=True)
        order = torch.argsort(group_ids * (batch_size * length) + positions)
        group_ids = group_ids[order]
        counts = torch.bincount(group_ids, minlength=present.numel())
        starts = counts.cumsum(0) - counts
        self.source_positions = positions[order]
        self.group_ids = group_ids
        self.ranks = torch.arange(group_ids.numel(), device=device) - starts[group_ids]
        self.num_groups = present.numel()
        self.max_length = int(counts.max())
        self.batch_size, self.length = batch_size, length
        # All groups full: the packed tensor has no padding and attention needs no mask.
        self.key_valid = None
        if int(counts.min()) != self.max_length:
            self.key_valid = torch.arange(self.max_length, device=device)[None, :] < counts[:, None]

    def pack(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dim = hidden_states.shape[-1]
        packed = hidden_states.new_zeros(self.num_groups, self.max_length, dim)
        packed[self.group_ids, self.ranks] = hidden_states.reshape(-1, dim)[self.source_positions]
        return packed

    def unpack(self, packed: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Scatter packed results back to their sequence positions; tokens in no group get zeros."""
        dim = packed.shape[-1]
        flat = like.new_zeros(self.batch_size * self.length, dim)
        flat = flat.index_copy(0, self.source_positions, packed[self.group_ids, self.ranks])
        return flat.view(self.batch_size, self.length, dim)
