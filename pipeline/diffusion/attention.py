"""What every foil attention processor shares with diffusers' default one (`AttnProcessor`):
the input side (spatial and group norms, a 4-d feature map flattened to tokens, the q/k/v
projections, one row per image and head) and the output side (heads merged, `to_out`, the map
reshaped back, residual, rescale). A processor computes only what it changes in between:
`project`, its own attention on `Projected.query/key/value`, then `finish`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Projected:
    query: Any  # [batch*heads, tokens, head_dim]
    key: Any  # [batch*heads, keys, head_dim]
    value: Any  # [batch*heads, keys, head_dim]
    mask: Any  # prepared for [batch*heads, tokens, keys], or None
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
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
    return Projected(
        query=attn.head_to_batch_dim(attn.to_q(hidden_states)),
        key=attn.head_to_batch_dim(attn.to_k(context)),
        value=attn.head_to_batch_dim(attn.to_v(context)),
        mask=attention_mask, is_cross=is_cross, batch=batch, tokens=tokens, residual=residual, map_shape=map_shape,
    )


def finish(attn: Any, out: Any, projected: Projected) -> Any:
    """The attention output [batch*heads, tokens, head_dim] back to the layer's output."""
    hidden_states = attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(out)))
    if projected.map_shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(*projected.map_shape)
    if attn.residual_connection:
        hidden_states = hidden_states + projected.residual
    return hidden_states / attn.rescale_output_factor
