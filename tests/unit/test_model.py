import math

import pytest
import torch

from tinyconf import DEVICES
from decoder.config import ModelConfig
from decoder.model import GPT

TINY = ModelConfig(d_model=32, n_heads=2, n_blocks=2, context_length=16, dropout=0.0)
VOCAB = 50


def make(config: ModelConfig = TINY, device: str = "cpu") -> GPT:
    torch.manual_seed(0)
    return GPT(config, VOCAB).to(device).eval()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_causality_changing_token_t_leaves_earlier_logits(device, positional):
    model = make(ModelConfig(**{**vars(TINY), "positional": positional}), device)
    idx = torch.randint(VOCAB, (2, 16), device=device)
    base, _ = model(idx)
    for t in (0, 5, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(logits[:, t:], base[:, t:])


@pytest.mark.parametrize("device", DEVICES)
def test_causality_with_cache(device):
    model = make(device=device)
    idx = torch.randint(VOCAB, (1, 12), device=device)
    _, past = model(idx[:, :6])
    new, _ = model(idx[:, 6:], past)
    changed = idx.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    new2, _ = model(changed[:, 6:], past)
    torch.testing.assert_close(new2[:, :3], new[:, :3], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("past_len", [0, 1, 5, 15])
def test_cache_equivalence(device, past_len):
    model = make(device=device)
    idx = torch.randint(VOCAB, (3, 16), device=device)
    full, _ = model(idx)
    past = None
    if past_len:
        _, past = model(idx[:, :past_len])
    pieces = []
    # The rest one token at a time and, separately, as one chunk.
    step_past = past
    for t in range(past_len, 16):
        logits, step_past = model(idx[:, t : t + 1], step_past)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full[:, past_len:], rtol=1e-5, atol=1e-5)
    chunk, presents = model(idx[:, past_len:], past)
    torch.testing.assert_close(chunk, full[:, past_len:], rtol=1e-5, atol=1e-5)
    assert presents[0][0].shape == (3, TINY.n_heads, 16, TINY.head_dim)


def test_dropout_only_in_training():
    model = make(ModelConfig(**{**vars(TINY), "dropout": 0.5}))
    idx = torch.randint(VOCAB, (2, 16))
    a, _ = model(idx)
    b, _ = model(idx)
    torch.testing.assert_close(a, b)
    model.train()
    c, _ = model(idx)
    assert not torch.allclose(a, c)


def test_tied_and_untied_heads_and_param_counts():
    tied = make()
    assert tied.lm_head.weight is tied.transformer.wte.weight
    untied = make(ModelConfig(**{**vars(TINY), "tie_embeddings": False}))
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == VOCAB * 32
    assert tied.num_params(non_embedding=True) == tied.num_params() - VOCAB * 32 - 16 * 32


def test_gpt2_initialisation():
    config = ModelConfig(d_model=256, n_heads=4, n_blocks=8, context_length=16)
    model = GPT(config, 1000)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0


def test_d_ff_default_and_override():
    assert make().transformer.h[0].mlp.c_fc.out_features == 128
    model = make(ModelConfig(**{**vars(TINY), "d_ff": 20}))
    assert model.transformer.h[0].mlp.c_fc.out_features == 20


def test_bad_model_config_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPT(ModelConfig(d_model=30, n_heads=4), 10)


def test_pinned_attention_kernels_agree():
    from torch.nn.attention import SDPBackend

    from decoder.hardware import training_attention_backend

    model = make()
    idx = torch.randint(VOCAB, (2, 16))
    reference, _ = model(idx)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        model.set_attention_backend(backend)
        logits, _ = model(idx)
        torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    assert training_attention_backend("cpu", 128, "bf16") == SDPBackend.MATH
    assert training_attention_backend("cpu", 128, "fp32") is None
    assert training_attention_backend("cpu", 256, "bf16") is None and training_attention_backend("cuda", 40, "bf16") is None


def left_pad(rows: list[torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids) of rows of different lengths, padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_padded_rows_give_the_logits_of_each_row_alone(device, positional):
    """Prefill of left-padded rows of different lengths, then cached steps: every real column's
    logits are those of the row run alone; padding never shifts a row's positions."""
    model = make(ModelConfig(**{**vars(TINY), "positional": positional}), device)
    rows = [torch.randint(VOCAB, (n,), device=device) for n in (3, 9, 1, 6)]
    ids, mask, positions = left_pad(rows, device)
    with torch.no_grad():
        logits, past = model(ids, None, mask, positions)
        alone = [model(r[None]) for r in rows]
        for i, r in enumerate(rows):
            torch.testing.assert_close(logits[i, -len(r):], alone[i][0][0], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(logits).all()  # padding queries stay finite (they see themselves)
        new = torch.randint(VOCAB, (len(rows), 2), device=device)
        for t in range(2):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            positions = positions[:, -1:] + 1
            logits, past = model(new[:, t : t + 1], past, mask, positions)
            for i in range(len(rows)):
                expected, cache = model(new[i : i + 1, t : t + 1], alone[i][1])
                alone[i] = (expected, cache)
                torch.testing.assert_close(logits[i], expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_position_ids_are_respected(positional):
    model = make(ModelConfig(**{**vars(TINY), "positional": positional}))
    idx = torch.randint(VOCAB, (2, 6))
    with torch.no_grad():
        plain, past = model(idx)
        explicit, _ = model(idx, None, torch.ones(2, 6, dtype=torch.long), torch.arange(6).repeat(2, 1))
        torch.testing.assert_close(explicit, plain, rtol=1e-5, atol=1e-5)
        shifted, _ = model(idx, None, None, torch.arange(5, 11).repeat(2, 1))
        assert not torch.allclose(shifted, plain, atol=1e-3)
        # A row's positions are its own: row 1 at positions 2..7 equals that row after a 2-token cache,
        # whose keys are masked out (the mask marks them padding).
        mask = torch.tensor([[1] * 8, [0, 0] + [1] * 6])
        positions = torch.stack([torch.arange(2, 8), torch.arange(0, 6)])
        stepped, _ = model(idx, [(k[:, :, :2], v[:, :, :2]) for k, v in past], mask, positions)
        torch.testing.assert_close(stepped[1], plain[1], rtol=1e-5, atol=1e-5)


def test_mask_and_positions_of_the_wrong_shape_are_refused():
    model = make()
    idx = torch.randint(VOCAB, (2, 4))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 3\): must be \(batch, past \+ seq\)"):
        model(idx, None, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids has shape \(4,\): must be \(batch, seq\) = \(2, 4\)"):
        model(idx, None, None, torch.arange(4))
