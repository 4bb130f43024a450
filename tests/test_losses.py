"""Tests of the global-batch contrastive losses, including a real two-process (gloo) run."""

from __future__ import annotations

import math
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videofirst.train.losses import contrastive_loss, gather_with_grad, sigmoid_loss

DTYPE = torch.float64  # double precision so that the distributed equality can be checked tightly
GLOBAL_BATCH = 8
# name -> (loss kind, local batch size of each of the two processes)
CASES = {
    "clip_even": ("clip", [4, 4]),
    "clip_uneven": ("clip", [3, 5]),
    "sigmoid_even": ("sigmoid", [4, 4]),
    "sigmoid_uneven": ("sigmoid", [3, 5]),
}


def _embeddings(n: int = 5, dim: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = F.normalize(torch.randn(n, dim, generator=g, dtype=DTYPE), dim=-1)
    t = F.normalize(torch.randn(n, dim, generator=g, dtype=DTYPE), dim=-1)
    return v, t


def _reference_clip(v: torch.Tensor, t: torch.Tensor, scale: float) -> float:
    """CLIP loss written out element by element."""
    n = v.shape[0]
    sim = [[scale * float(v[i] @ t[j]) for j in range(n)] for i in range(n)]
    v2t = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2v = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return (v2t + t2v) / 2


def _reference_sigmoid(v: torch.Tensor, t: torch.Tensor, scale: float, bias: float) -> float:
    """SigLIP loss written out element by element: -(1/B) sum_ij log sigmoid(z_ij * logit_ij)."""
    n = v.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = scale * float(v[i] @ t[j]) + bias
            total += -math.log(1.0 / (1.0 + math.exp(-z * logit)))
    return total / n


def test_contrastive_loss_matches_reference():
    v, t = _embeddings()
    for scale in (1.0, 14.3):
        got = contrastive_loss(v, t, torch.tensor(scale, dtype=DTYPE))
        assert got.shape == ()
        assert got.item() == pytest.approx(_reference_clip(v, t, scale), rel=1e-12)
        assert contrastive_loss(v, t, scale).item() == pytest.approx(got.item(), rel=1e-12)  # float scale


def test_sigmoid_loss_matches_reference():
    v, t = _embeddings()
    for scale, bias in ((10.0, -10.0), (3.0, 0.5)):
        got = sigmoid_loss(v, t, torch.tensor(scale, dtype=DTYPE), torch.tensor(bias, dtype=DTYPE))
        assert got.shape == ()
        assert got.item() == pytest.approx(_reference_sigmoid(v, t, scale, bias), rel=1e-12)


def test_losses_reward_alignment():
    v, _ = _embeddings(n=6, dim=8)
    _, t = _embeddings(n=6, dim=8, seed=1)
    assert contrastive_loss(v, v, 50.0) < 0.01 < contrastive_loss(v, t, 50.0)
    assert sigmoid_loss(v, v, 50.0, -25.0) < sigmoid_loss(v, t, 50.0, -25.0)


def test_half_precision_is_upcast():
    v, t = _embeddings(n=16, dim=32)
    loss = contrastive_loss(v.bfloat16(), t.bfloat16(), 20.0)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(contrastive_loss(v, t, 20.0).item(), rel=2e-2)
    assert sigmoid_loss(v.half(), t.half(), 10.0, -10.0).dtype == torch.float32


def test_single_process_gather_is_identity_and_shapes_are_checked():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    v, t = _embeddings()
    assert contrastive_loss(v, t, 5.0, gather=True) == contrastive_loss(v, t, 5.0, gather=False)
    with pytest.raises(ValueError, match="same shape"):
        contrastive_loss(v, t[:3], 5.0)
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_loss(v[0], t[0], 5.0, 0.0)


# ---------------------------------------------------------------------------------------------
# Two processes versus one: loss and DDP-averaged gradients must equal the global-batch ones.


class _TinyDualEncoder(nn.Module):
    """Linear 'encoders' with a learnable scale and bias: enough to exercise every gradient path."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.video = nn.Linear(6, 4, dtype=DTYPE)
        self.text = nn.Linear(5, 4, dtype=DTYPE)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE))
        self.log_scale = nn.Parameter(torch.tensor(math.log(5.0), dtype=DTYPE))
        self.bias = nn.Parameter(torch.tensor(-1.5, dtype=DTYPE))

    def loss(self, xv: torch.Tensor, xt: torch.Tensor, kind: str, gather: bool) -> torch.Tensor:
        v = F.normalize(self.video(xv), dim=-1)
        t = F.normalize(self.text(xt), dim=-1)
        scale = self.log_scale.exp().clamp(max=100)
        if kind == "clip":
            return contrastive_loss(v, t, scale, gather=gather)
        return sigmoid_loss(v, t, scale, self.bias, gather=gather)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=DTYPE), torch.randn(
        GLOBAL_BATCH, 5, generator=g, dtype=DTYPE
    )


def _single_process(kind: str) -> tuple[float, dict[str, torch.Tensor]]:
    model = _TinyDualEncoder()
    xv, xt = _inputs()
    loss = model.loss(xv, xt, kind, gather=False)
    loss.backward()
    return loss.item(), {n: _grad(p) for n, p in model.named_parameters()}


def _grad(p: nn.Parameter) -> torch.Tensor:
    """The gradient, zeros for a parameter the loss does not use (the bias under the CLIP loss)."""
    return torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()


def _averaged(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    tensor = tensor.detach().clone()
    torch.distributed.all_reduce(tensor)
    return tensor / world_size


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One process: local slice of the global batch, gathered loss, DDP-style gradient mean."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        results: dict = {"world_size": torch.distributed.get_world_size()}
        for name, (kind, sizes) in CASES.items():
            start = sum(sizes[:rank])
            rows = slice(start, start + sizes[rank])
            xv, xt = _inputs()
            for gather in (True, False):  # gather=False: the local-only loss, a negative control
                model = _TinyDualEncoder()
                loss = model.loss(xv[rows], xt[rows], kind, gather=gather)
                loss.backward()
                results[f"{name}/gather={gather}"] = {
                    "loss": _averaged(loss, world_size).item(),
                    "grads": {n: _averaged(_grad(p), world_size) for n, p in model.named_parameters()},
                }

        # gather_with_grad on uneven rows: rank r holds r + 2 rows filled with r.
        x = torch.full((rank + 2, 3), float(rank), dtype=DTYPE, requires_grad=True)
        gathered = gather_with_grad(x)
        weights = torch.arange(gathered.numel(), dtype=DTYPE).reshape(gathered.shape) * (rank + 1)
        (gathered * weights).sum().backward()
        results["gather"] = {"value": gathered.detach(), "grad": x.grad}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> list[dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("two_processes")
    # File rendezvous: no port to pick or collide on. Gloo itself talks over the loopback device.
    # Fork (as accelerate.debug_launcher does) where available: spawned children would re-import
    # torch and transformers, several seconds each; the workers only run tiny single-threaded ops.
    method = "fork" if sys.platform == "linux" else "spawn"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
        torch.multiprocessing.start_processes(
            _worker, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True, start_method=method
        )
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_process_on_the_global_batch(two_process_results, case):
    kind, _ = CASES[case]
    ref_loss, ref_grads = _single_process(kind)
    for result in two_process_results:
        assert result["world_size"] == 2
        got = result[f"{case}/gather=True"]
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
        assert set(got["grads"]) == set(ref_grads)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(got["grads"][name], grad, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("case", list(CASES))
def test_local_only_loss_differs_so_the_check_is_sensitive(two_process_results, case):
    kind, _ = CASES[case]
    _, ref_grads = _single_process(kind)
    local = two_process_results[0][f"{case}/gather=False"]
    assert not torch.allclose(local["grads"]["video.weight"], ref_grads["video.weight"], rtol=1e-3)


def test_gather_with_grad_concatenates_in_rank_order_and_sums_gradients(two_process_results):
    expected = torch.cat([torch.zeros(2, 3, dtype=DTYPE), torch.ones(3, 3, dtype=DTYPE)])
    # Every process weights the gathered tensor by arange * (rank + 1); a row's gradient on its
    # owner is the sum over processes: arange * (1 + 2).
    total = 3 * torch.arange(15, dtype=DTYPE).reshape(5, 3)
    for rank, result in enumerate(two_process_results):
        torch.testing.assert_close(result["gather"]["value"], expected)
        rows = slice(0, 2) if rank == 0 else slice(2, 5)
        torch.testing.assert_close(result["gather"]["grad"], total[rows])
