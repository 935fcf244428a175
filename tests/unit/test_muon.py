import pytest
import torch

from decoder.muon import Muon, orthogonalise


def _train(make_optimizer, steps: int = 4) -> list[torch.Tensor]:
    torch.manual_seed(0)
    weights = [torch.nn.Parameter(torch.randn(48, 16) * 0.1), torch.nn.Parameter(torch.randn(16, 40) * 0.1)]
    optimizer = make_optimizer(weights)
    for step in range(steps):
        torch.manual_seed(100 + step)
        x = torch.randn(8, 48)
        loss = (x @ weights[0] @ weights[1]).tanh().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return [w.detach() for w in weights]


def test_bf16_iterations_match_torch_optim_muon():
    ours = _train(lambda ws: Muon(ws, lr=0.02, weight_decay=0.1, momentum=0.95, ns_dtype=torch.bfloat16))
    theirs = _train(lambda ws: torch.optim.Muon(ws, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
                                                adjust_lr_fn="match_rms_adamw"))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fp32_iterations_stay_close_to_torchs_bf16_ones():
    ours = _train(lambda ws: Muon(ws, lr=0.02, weight_decay=0.1, ns_dtype=torch.float32))
    theirs = _train(lambda ws: torch.optim.Muon(ws, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"))
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 0.02 * b.abs().max()
        assert not torch.equal(a, b)  # really computed in another precision


def test_orthogonalise_flattens_the_spectrum():
    torch.manual_seed(0)
    g = torch.randn(64, 24) @ torch.diag(torch.logspace(-1.5, 1, 24))  # singular values over 2.5 decades
    s = torch.linalg.svdvals(orthogonalise(g, torch.float32))
    assert s.min() > 0.3 and s.max() < 1.3
    assert orthogonalise(g, torch.float32).shape == g.shape and orthogonalise(g.T, torch.float32).shape == g.T.shape


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="2-D parameters only"):
        Muon([torch.nn.Parameter(torch.zeros(4))])
