"""What every foil attention processor shares with diffusers' default one (`AttnProcessor2_0`):
the input side (spatial and group norms, a 4-d feature map flattened to tokens, the q/k/v
projections viewed as [batch, heads, tokens, head_dim] without a copy) and the output side
(heads merged, `to_out`, the map reshaped back, residual, rescale). A processor computes only
what it changes in between: `project`, its own attention on `Projected.query/key/value`
(`attend` where nothing changes, `attention_probs` where it edits the maps), then `finish`.
Laid out as diffusers lays them out, so a layer a processor leaves alone computes what the
default processor computes, with the same kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Projected:
    query: Any  # [batch, heads, tokens, head_dim]
    key: Any  # [batch, heads, keys, head_dim]
    value: Any  # [batch, heads, keys, head_dim]
    mask: Any  # additive, [batch, heads, tokens or 1, keys], or None
    is_cross: bool
    batch: int
    tokens: int
    residual: Any
    map_shape: tuple[int, int, int, int] | None  # (batch, channels, height, width) of a 4-d input


def project(attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None, temb: Any = None) -> Projected:
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    map_shape = None
    if hidden_states.ndim == 4:
        map_shape = tuple(hidden_states.shape)
        batch, channel, height, width = map_shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    batch, tokens, _ = hidden_states.shape
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    is_cross = encoder_hidden_states is not None
    context = hidden_states if not is_cross else (attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states)
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)  # [batch*heads, 1 or tokens, keys]
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

    def heads(x: Any) -> Any:  # [batch, n, heads*head_dim] -> [batch, heads, n, head_dim], a view
        return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

    query, key = heads(attn.to_q(hidden_states)), heads(attn.to_k(context))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    return Projected(
        query=query, key=key, value=heads(attn.to_v(context)),
        mask=attention_mask, is_cross=is_cross, batch=batch, tokens=tokens, residual=residual, map_shape=map_shape,
    )


def attend(attn: Any, query: Any, key: Any, value: Any, mask: Any) -> Any:
    """Attention as the default processor computes it (the SDPA kernel): [b, heads, tokens, value dim]."""
    import torch.nn.functional as F

    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attn.scale)


def attention_probs(attn: Any, query: Any, key: Any, mask: Any) -> Any:
    """The attention maps themselves, softmax over keys: [b, heads, tokens, keys], in the query's
    dtype (upcast for the product and the softmax where the layer asks, as diffusers does)."""
    dtype = query.dtype
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    scores = (query @ key.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    if attn.upcast_softmax:
        scores = scores.float()
    return scores.softmax(dim=-1).to(dtype)


def finish(attn: Any, out: Any, projected: Projected) -> Any:
    """The attention output [batch, heads, tokens, head_dim] back to the layer's output."""
    out = out.transpose(1, 2).reshape(projected.batch, -1, out.shape[1] * out.shape[3]).to(projected.query.dtype)
    hidden_states = attn.to_out[1](attn.to_out[0](out))
    if projected.map_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(*projected.map_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + projected.residual
    return hidden_states / attn.rescale_output_factor
