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
