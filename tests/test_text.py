"""Text encoders: the embedded one, and the T5 + CLIP pair loaded from local directories."""

import pytest
import torch

from flowfactory.errors import UserError
from flowfactory.models.text import (
    DualTextEncoder,
    DualTextParams,
    EmbeddedTextEncoder,
    EmbeddedTextParams,
    HashTokenizer,
)


def test_hash_tokenizer_is_stable_and_padded():
    tok = HashTokenizer(512, 6)
    ids = tok(["A red circle.", ""])
    assert ids.shape == (2, 6)
    assert ids[0, 0] == HashTokenizer.BOS and ids[1, 0] == HashTokenizer.BOS
    assert (ids[1, 1:] == HashTokenizer.PAD).all()
    assert torch.equal(tok(["a RED circle."]), ids[:1])  # case-insensitive
    assert (ids[0, 1:5] >= 2).all() and ids[0, 5] == HashTokenizer.PAD
    assert tok(["one two three four five six seven"]).shape == (1, 6)  # truncated


def test_embedded_encoder_shapes_and_prompt_sensitivity():
    enc = EmbeddedTextEncoder(EmbeddedTextParams(vocab_size=256, dim=16, depth=1, num_heads=2, max_len=8, pooled_dim=12))
    txt, pooled = enc(["a red circle", "a blue square", ""])
    assert txt.shape == (3, 8, 16) and pooled.shape == (3, 12)
    assert torch.isfinite(txt).all() and torch.isfinite(pooled).all()
    assert not torch.allclose(pooled[0], pooled[1])


def _tiny_hf_dirs(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", "a", "red", "circle", "blue", "square"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")
    t5_dir, clip_dir = tmp_path / "t5", tmp_path / "clip"
    T5EncoderModel(T5Config(vocab_size=8, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(t5_dir)
    fast.save_pretrained(t5_dir)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=8, hidden_size=12, intermediate_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=10, eos_token_id=1))
    clip.save_pretrained(clip_dir)
    fast.save_pretrained(clip_dir)
    return str(t5_dir), str(clip_dir)


def test_dual_encoder_loads_from_local_directories(tmp_path):
    t5, clip = _tiny_hf_dirs(tmp_path)
    enc = DualTextEncoder(DualTextParams(t5_path=t5, clip_path=clip, max_len=6, dim=16, pooled_dim=12))
    txt, pooled = enc(["a red circle", "a blue square"])
    assert txt.shape == (2, 6, 16) and pooled.shape == (2, 12)
    assert not torch.allclose(txt[0], txt[1])


def test_missing_text_encoder_directory(tmp_path):
    with pytest.raises(UserError, match="T5 text-encoder directory not found"):
        DualTextEncoder(DualTextParams(t5_path=str(tmp_path / "nope"), clip_path=str(tmp_path)))
