"""Text encoders behind one interface: prompts -> (token states `[B, L, D]`, pooled `[B, Dp]`).

- `EmbeddedTextEncoder`: a small transformer with a hashing word tokenizer. It needs
  no vocabulary file and no download, and is trained together with the image model.
- `DualTextEncoder`: the FLUX.1 / SDXL pair, T5 token states + CLIP pooled vector, loaded
  through transformers from local directories (never from a hub).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from flowfactory.errors import UserError


@dataclass
class EmbeddedTextParams:
    vocab_size: int = 4096  # hash buckets for words; id 0 is padding, id 1 begins every prompt
    dim: int = 64  # token state width (the transformer's context_in_dim)
    depth: int = 2
    num_heads: int = 4
    max_len: int = 16  # tokens per prompt, BOS included; longer prompts are truncated
    pooled_dim: int = 64  # pooled vector width (the transformer's vec_in_dim)


@dataclass
class DualTextParams:
    t5_path: str = ""  # local directory with a T5 encoder and its tokenizer
    clip_path: str = ""  # local directory with a CLIP text model and its tokenizer
    max_len: int = 512  # T5 tokens (FLUX.1 [dev] 512, [schnell] 256)
    dim: int = 4096
    pooled_dim: int = 768


TextParams = EmbeddedTextParams | DualTextParams

_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class HashTokenizer:
    """Lower-cased words and punctuation -> stable ids by CRC32, padded to `max_len`."""

    PAD, BOS = 0, 1

    def __init__(self, vocab_size: int, max_len: int):
        self.vocab_size = vocab_size
        self.max_len = max_len

    def token_id(self, word: str) -> int:
        return 2 + zlib.crc32(word.encode()) % (self.vocab_size - 2)

    def __call__(self, prompts: list[str]) -> Tensor:
        ids = torch.full((len(prompts), self.max_len), self.PAD, dtype=torch.long)
        for i, p in enumerate(prompts):
            toks = [self.BOS] + [self.token_id(w) for w in _WORD.findall(p.lower())]
            toks = toks[: self.max_len]
            ids[i, : len(toks)] = torch.tensor(toks)
        return ids


class EmbeddedTextEncoder(nn.Module):
    def __init__(self, params: EmbeddedTextParams):
        super().__init__()
        self.params = params
        self.tokenizer = HashTokenizer(params.vocab_size, params.max_len)
        self.embed = nn.Embedding(params.vocab_size, params.dim)
        self.pos = nn.Parameter(torch.zeros(params.max_len, params.dim))
        layer = nn.TransformerEncoderLayer(
            params.dim, params.num_heads, 4 * params.dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, params.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(params.dim)
        self.pool = nn.Linear(params.dim, params.pooled_dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids = self.tokenizer(prompts).to(self.device)
        pad = ids == HashTokenizer.PAD
        h = self.norm(self.layers(self.embed(ids) + self.pos, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = self.pool((h * keep).sum(1) / keep.sum(1))
        return h, pooled


class DualTextEncoder(nn.Module):
    """Frozen T5 (sequence) + CLIP (pooled), as FLUX.1 uses them."""

    def __init__(self, params: DualTextParams):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        for what, path in (("T5", params.t5_path), ("CLIP", params.clip_path)):
            if not path or not Path(path).is_dir():
                raise UserError(f"{what} text-encoder directory not found: {path or '(not given)'}")
        self.params = params
        self.t5_tokenizer = AutoTokenizer.from_pretrained(params.t5_path, local_files_only=True)
        self.t5 = T5EncoderModel.from_pretrained(params.t5_path, local_files_only=True).eval().requires_grad_(False)
        self.clip_tokenizer = AutoTokenizer.from_pretrained(params.clip_path, local_files_only=True)
        self.clip = CLIPTextModel.from_pretrained(params.clip_path, local_files_only=True).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.t5.parameters()).device

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        t5_in = self.t5_tokenizer(
            prompts, truncation=True, max_length=self.params.max_len, padding="max_length", return_tensors="pt"
        )
        clip_max = self.clip.config.max_position_embeddings
        clip_in = self.clip_tokenizer(prompts, truncation=True, max_length=clip_max, padding="max_length", return_tensors="pt")
        txt = self.t5(input_ids=t5_in.input_ids.to(self.device)).last_hidden_state
        pooled = self.clip(input_ids=clip_in.input_ids.to(self.device)).pooler_output
        return txt, pooled


def build_text_encoder(params: TextParams) -> nn.Module:
    match params:
        case EmbeddedTextParams():
            return EmbeddedTextEncoder(params)
        case DualTextParams():
            return DualTextEncoder(params)
    raise TypeError(f"unknown text encoder params {type(params).__name__}")


class PrecomputedText(nn.Module):
    """A fixed table of prompt embeddings standing in for a frozen encoder (training from a cache
    of text embeddings keeps only what sample grids and CFG dropout need)."""

    def __init__(self, encoder: nn.Module, prompts: list[str]):
        super().__init__()
        with torch.no_grad():
            txt, pooled = encoder(list(prompts))
        self.table = {p: (txt[i].detach(), pooled[i].detach()) for i, p in enumerate(prompts)}

    def forward(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise UserError(f"no precomputed text embedding for {missing[0]!r} (the text encoder was unloaded)")
        return torch.stack([self.table[p][0] for p in prompts]), torch.stack([self.table[p][1] for p in prompts])
