import pytest
import torch

from aha.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tiny():
    """A small random Llama with untied embeddings and O(1) weights, so that greedy decoding depends on the
    context (with the default 0.02 init and tied embeddings it just repeats the last token)."""
    model, tok = build_tiny(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, tie_word_embeddings=False
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                scale = 1.0 if "embed" in name else p.shape[1] ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    model.eval()
    return model, tok
