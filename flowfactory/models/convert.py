"""State-dict conversion between the reference (BFL) layout and the diffusers layout.

Both directions, for the transformer and the autoencoder, at any width and depth:
every size is read off the state dict itself. Each mapping is one table of rules, so
the two directions are the same table read both ways.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

StateDict = dict[str, Tensor]


class ConversionError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    """One reference module <-> one or more diffusers modules (split along dim 0).

    `swap` reverses the two halves (reference `[shift, scale]` vs diffusers `[scale, shift]`).
    """

    ref: str
    diff: tuple[str, ...]
    swap: bool = False

    @property
    def suffixes(self) -> tuple[tuple[str, str], ...]:
        """(reference, diffusers) parameter names: RMSNorm keeps its weight as `scale` in the reference."""
        return (("scale", "weight"),) if self.ref.endswith("_norm") else (("weight", "weight"), ("bias", "bias"))


def _count(keys, pattern: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def _flux_rules(depth: int, depth_single: int, guidance: bool) -> list[Rule]:
    rules = [
        Rule("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
        Rule("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
        Rule("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
        Rule("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
        Rule("txt_in", ("context_embedder",)),
        Rule("img_in", ("x_embedder",)),
        Rule("final_layer.linear", ("proj_out",)),
        Rule("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=True),
    ]
    if guidance:
        rules += [
            Rule("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
            Rule("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
        ]
    for i in range(depth):
        r, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        rules += [
            Rule(r + "img_mod.lin", (d + "norm1.linear",)),
            Rule(r + "txt_mod.lin", (d + "norm1_context.linear",)),
            Rule(r + "img_attn.qkv", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v")),
            Rule(r + "txt_attn.qkv", (d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj")),
            Rule(r + "img_attn.norm.query_norm", (d + "attn.norm_q",)),
            Rule(r + "img_attn.norm.key_norm", (d + "attn.norm_k",)),
            Rule(r + "txt_attn.norm.query_norm", (d + "attn.norm_added_q",)),
            Rule(r + "txt_attn.norm.key_norm", (d + "attn.norm_added_k",)),
            Rule(r + "img_attn.proj", (d + "attn.to_out.0",)),
            Rule(r + "txt_attn.proj", (d + "attn.to_add_out",)),
            Rule(r + "img_mlp.0", (d + "ff.net.0.proj",)),
            Rule(r + "img_mlp.2", (d + "ff.net.2",)),
            Rule(r + "txt_mlp.0", (d + "ff_context.net.0.proj",)),
            Rule(r + "txt_mlp.2", (d + "ff_context.net.2",)),
        ]
    for i in range(depth_single):
        r, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        rules += [
            Rule(r + "modulation.lin", (d + "norm.linear",)),
            Rule(r + "linear1", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp")),
            Rule(r + "norm.query_norm", (d + "attn.norm_q",)),
            Rule(r + "norm.key_norm", (d + "attn.norm_k",)),
            Rule(r + "linear2", (d + "proj_out",)),
        ]
    return rules


def _apply(rules: list[Rule], sd: StateDict, hidden: int, to_diffusers: bool) -> StateDict:
    sd = dict(sd)
    out: StateDict = {}
    for rule in rules:
        for ref_suffix, diff_suffix in rule.suffixes:
            ref_key = f"{rule.ref}.{ref_suffix}"
            diff_keys = [f"{d}.{diff_suffix}" for d in rule.diff]
            if to_diffusers:
                if ref_key not in sd:
                    continue
                t = sd.pop(ref_key)
                if rule.swap:
                    shift, scale = t.chunk(2, dim=0)
                    t = torch.cat([scale, shift], dim=0)
                # fused qkv splits in three; single-block linear1 is [q, k, v, mlp]
                sizes = [hidden] * len(diff_keys)
                sizes[-1] = t.shape[0] - hidden * (len(diff_keys) - 1)
                out.update(zip(diff_keys, torch.split(t, sizes, dim=0)))
            else:
                if not all(k in sd for k in diff_keys):
                    continue
                t = torch.cat([sd.pop(k) for k in diff_keys], dim=0)
                if rule.swap:
                    scale, shift = t.chunk(2, dim=0)
                    t = torch.cat([shift, scale], dim=0)
                out[ref_key] = t
    if sd:
        raise ConversionError(f"{len(sd)} keys have no mapping, e.g. {sorted(sd)[:3]}")
    return out


def _strip_prefix(sd: StateDict, prefix: str) -> StateDict:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


def flux_to_diffusers(sd: StateDict) -> StateDict:
    """Reference FLUX.1 transformer state dict -> diffusers `FluxTransformer2DModel` state dict."""
    sd = _strip_prefix(sd, "model.diffusion_model.")
    if "img_in.weight" not in sd:
        raise ConversionError("not a reference-layout FLUX transformer state dict (no img_in.weight)")
    rules = _flux_rules(
        _count(sd, r"double_blocks\.(\d+)\."), _count(sd, r"single_blocks\.(\d+)\."), "guidance_in.in_layer.weight" in sd
    )
    return _apply(rules, sd, sd["img_in.weight"].shape[0], to_diffusers=True)


def flux_from_diffusers(sd: StateDict) -> StateDict:
    """diffusers `FluxTransformer2DModel` state dict -> reference FLUX.1 layout."""
    if "x_embedder.weight" not in sd:
        raise ConversionError("not a diffusers FLUX transformer state dict (no x_embedder.weight)")
    rules = _flux_rules(
        _count(sd, r"transformer_blocks\.(\d+)\."),
        _count(sd, r"single_transformer_blocks\.(\d+)\."),
        "time_text_embed.guidance_embedder.linear_1.weight" in sd,
    )
    return _apply(rules, sd, sd["x_embedder.weight"].shape[0], to_diffusers=False)


# ---------------------------------------------------------------------------------------------
# Autoencoder: pure renames (plus 1x1 conv <-> linear for the attention and a reversed
# decoder level order), one table of (reference, diffusers) key templates read both ways.
# Fields: {c} encoder|decoder, {i} {j} indices, {u} a decoder level (reversed in diffusers).

_AE_TEMPLATES = [
    ("encoder.down.{i}.block.{j}.", "encoder.down_blocks.{i}.resnets.{j}."),
    ("encoder.down.{i}.downsample.conv.", "encoder.down_blocks.{i}.downsamplers.0.conv."),
    ("decoder.up.{u}.block.{j}.", "decoder.up_blocks.{u}.resnets.{j}."),
    ("decoder.up.{u}.upsample.conv.", "decoder.up_blocks.{u}.upsamplers.0.conv."),
    ("{c}.mid.block_1.", "{c}.mid_block.resnets.0."),
    ("{c}.mid.block_2.", "{c}.mid_block.resnets.1."),
    ("{c}.mid.attn_1.norm.", "{c}.mid_block.attentions.0.group_norm."),
    ("{c}.mid.attn_1.q.", "{c}.mid_block.attentions.0.to_q."),
    ("{c}.mid.attn_1.k.", "{c}.mid_block.attentions.0.to_k."),
    ("{c}.mid.attn_1.v.", "{c}.mid_block.attentions.0.to_v."),
    ("{c}.mid.attn_1.proj_out.", "{c}.mid_block.attentions.0.to_out.0."),
    ("{c}.norm_out.", "{c}.conv_norm_out."),
]
_FIELDS = {"c": "(?P<c>encoder|decoder)", "i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "u": r"(?P<u>\d+)"}


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile(pattern)


_AE_REGEX = [(_regex(r), _regex(d)) for r, d in _AE_TEMPLATES]


def _rename(key: str, to_diffusers: bool, n_levels: int) -> str:
    src, dst = (0, 1) if to_diffusers else (1, 0)
    for regexes, templates in zip(_AE_REGEX, _AE_TEMPLATES):
        m = regexes[src].match(key)
        if m:
            fields = m.groupdict()
            if "u" in fields:
                fields["u"] = str(n_levels - 1 - int(fields["u"]))
            key = templates[dst].format(**fields) + key[m.end():]
            break
    shortcut = ("nin_shortcut", "conv_shortcut")
    return key.replace(*(shortcut if to_diffusers else shortcut[::-1]))


_ATTN_LINEAR = re.compile(r".*mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def ae_to_diffusers(sd: StateDict) -> StateDict:
    """Reference autoencoder state dict -> diffusers `AutoencoderKL` (no quant convs)."""
    sd = _strip_prefix(sd, "first_stage_model.")
    n = _count(sd, r"encoder\.down\.(\d+)\.")
    if not n:
        raise ConversionError("not a reference-layout autoencoder state dict (no encoder.down.*)")
    out = {}
    for k, v in sd.items():
        nk = _rename(k, True, n)
        out[nk] = v[:, :, 0, 0] if _ATTN_LINEAR.match(nk) else v
    return out


def ae_from_diffusers(sd: StateDict) -> StateDict:
    """diffusers `AutoencoderKL` state dict -> reference autoencoder layout."""
    n = _count(sd, r"encoder\.down_blocks\.(\d+)\.")
    if not n:
        raise ConversionError("not a diffusers autoencoder state dict (no encoder.down_blocks.*)")
    extra = [k for k in sd if k.startswith(("quant_conv", "post_quant_conv"))]
    if extra:
        raise ConversionError("autoencoders with quant_conv / post_quant_conv have no FLUX.1 equivalent")
    out = {}
    for k, v in sd.items():
        out[_rename(k, False, n)] = v[:, :, None, None] if _ATTN_LINEAR.match(k) else v
    return out
