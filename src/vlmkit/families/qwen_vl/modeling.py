"""Qwen-VL (first generation) as a transformers model: ViT + cross-attention resampler + Qwen2 language model.

Written from Qwen-VL-Chat's remote code (visual.py, modeling_qwen.py), read not copied. The language model
of Qwen-VL is Qwen-7B, which is transformers' Qwen2 with q/k/v split out of `c_attn` and the MLP's two
input projections renamed (`convert.py`); so the text side is `Qwen2Model` itself. What is Qwen-VL's own:

- `QwenVLVision`: a ViT over a fixed 448x448 image (14 px patches -> a 32x32 grid), whose 256 learned
  positions are resized bicubically to the grid, then `QwenVLResampler`: 256 learned queries attend once to
  the ViT's patches (2-D sin-cos positions on both sides), a LayerNorm and a square projection. Every image
  becomes exactly 256 vectors of the language model's width.
- The prompt holds each image as `<img>` + 256 `<imgpad>` + `</img>`; the 256 `<imgpad>` embeddings are
  replaced by the image's vectors (the remote code replaces the same 256 positions, which it fills with the
  image path's bytes).

Known difference: past 2048 tokens (`seq_length`) the remote code stretches RoPE (dynamic NTK) and scales
queries by log-n at inference only; this implementation uses plain RoPE at every length, as the remote code
itself does in training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2 import Qwen2Config, Qwen2Model
from transformers.utils import logging

logger = logging.get_logger(__name__)


def slice_logits_to_keep(hidden: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """transformers' `slice_logits_to_keep` (5.21 on; vLLM pins older ones) for the values vlmkit passes: an int
    keeps the last n positions of hidden (B, T, H) (0: all); a boolean (B, T) mask keeps its True positions,
    flattened to (N, H); other tensors are positions kept in every row."""
    if isinstance(logits_to_keep, int):
        return hidden[:, -logits_to_keep:, :] if logits_to_keep else hidden
    if logits_to_keep.dtype == torch.bool and logits_to_keep.dim() == 2:
        return hidden[logits_to_keep]  # (N, H)
    return hidden[:, logits_to_keep, :]


MODEL_TYPE = "qwen_vl"
VISION_DEFAULTS = {
    "image_size": 448, "patch_size": 14, "width": 1664, "layers": 48, "heads": 16, "mlp_ratio": 4.9231,
    "output_dim": 4096, "n_queries": 256,
}  # fmt: skip


class QwenVLConfig(PreTrainedConfig):
    """`text_config`: a Qwen2 config; `vision_config`: a dict with the keys of `VISION_DEFAULTS` (the remote
    config's `visual`); `image_token_id`: `<imgpad>`, whose positions receive the image vectors."""

    model_type = MODEL_TYPE
    sub_configs = {"text_config": Qwen2Config}

    def __init__(
        self,
        text_config: dict | Qwen2Config | None = None,
        vision_config: dict | None = None,
        image_token_id: int = 151859,
        image_start_token_id: int = 151857,
        image_end_token_id: int = 151858,
        seq_length: int = 2048,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = Qwen2Config(**{k: v for k, v in text_config.items() if k != "model_type"})
        self.text_config = text_config if text_config is not None else Qwen2Config()
        self.vision_config = {**VISION_DEFAULTS, **(vision_config or {})}
        self.image_token_id = image_token_id
        self.image_start_token_id = image_start_token_id
        self.image_end_token_id = image_end_token_id
        self.seq_length = seq_length  # the original's training length; past it, see the module docstring
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.text_config


def resize_positions(positions: torch.Tensor, count: int) -> torch.Tensor:
    """(L, C) positions of a sqrt(L) x sqrt(L) grid -> (count, C) for a sqrt(count) grid, bicubic as the
    remote code does (in fp32, then back to the input dtype)."""
    side, new_side = math.isqrt(positions.shape[0]), math.isqrt(count)
    if side == new_side:
        return positions
    grid = positions.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, side, side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(count, -1).to(positions.dtype)


def sincos_positions(dim: int, side: int) -> torch.Tensor:
    """(side*side, dim) 2-D sin-cos positions (MAE's recipe): the first half encodes the row, the second
    the column, each as [sin, cos] of the position times 1/10000^(2i/d)."""
    freqs = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float32) / (dim / 4.0))  # (dim/4,)
    cols, rows = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))

    def encode(pos):
        angles = np.einsum("m,d->md", pos.reshape(-1), freqs)  # (side*side, dim/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    # The remote code's meshgrid puts the column index first; it is encoded in the first half.
    return torch.from_numpy(np.concatenate([encode(cols), encode(rows)], axis=1)).float()


class VisionAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection laid out [q; k; v] (converted from the
    remote code's per-head interleaving)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (
            self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class VisionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VisionAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.fc1 = nn.Linear(width, mlp_width)
        self.fc2 = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class QwenVLResampler(nn.Module):
    """n_queries learned queries cross-attend once to the patch features: (B, N, width) -> (B, Q, dim)."""

    def __init__(self, width: int, dim: int, n_queries: int):
        super().__init__()
        self.heads = dim // 128  # the remote code's choice; the reason a tiny model is at least 128 wide
        self.query = nn.Parameter(torch.zeros(n_queries, dim))
        self.register_buffer("pos_embed", sincos_positions(dim, math.isqrt(n_queries)))  # saved, as upstream
        self.kv_proj = nn.Linear(width, dim, bias=False)
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        kv = self.norm_kv(self.kv_proj(x))  # (B, N, dim)
        query = self.norm_q(self.query) + self.pos_embed  # (Q, dim)
        key = kv + resize_positions(self.pos_embed, n)

        def heads(t):  # (B, L, dim) -> (B, h, L, dim/h)
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        q = heads(self.q_proj(query).unsqueeze(0).expand(b, -1, -1))
        out = F.scaled_dot_product_attention(
            q, heads(self.k_proj(key)), heads(self.v_proj(kv))
        )  # (B, h, Q, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, out.shape[2], -1))  # (B, Q, dim)


class QwenVLVision(nn.Module):
    """(B, 3, 448, 448) normalised pixels -> (B, n_queries, output_dim) image vectors."""

    def __init__(self, config: dict):
        super().__init__()
        width, patch = config["width"], config["patch_size"]
        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.position_embedding = nn.Parameter(torch.zeros(256, width))  # 16x16, resized to the patch grid
        self.pre_norm = nn.LayerNorm(width, eps=1e-6)
        mlp_width = int(width * config["mlp_ratio"])
        self.blocks = nn.ModuleList(
            VisionBlock(width, config["heads"], mlp_width) for _ in range(config["layers"])
        )
        self.resampler = QwenVLResampler(width, config["output_dim"], config["n_queries"])
        self.post_norm = nn.LayerNorm(config["output_dim"], eps=1e-6)
        self.proj = nn.Parameter(torch.zeros(config["output_dim"], config["output_dim"]))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # (B, width, g, g)
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, width)
        x = self.pre_norm(x + resize_positions(self.position_embedding, x.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.post_norm(self.resampler(x)) @ self.proj  # (B, Q, output_dim)


class QwenVLPreTrainedModel(PreTrainedModel):
    config_class = QwenVLConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "VisionBlock"]
    _supports_sdpa = True
    _supports_attention_backend = True

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.text_config.initializer_range
        if isinstance(module, QwenVLResampler):
            nn.init.normal_(module.query, std=std)
            module.pos_embed.copy_(sincos_positions(module.query.shape[1], math.isqrt(module.query.shape[0])))
        elif isinstance(module, QwenVLVision):
            width, dim = module.position_embedding.shape[1], module.proj.shape[0]
            nn.init.normal_(module.position_embedding, std=width**-0.5)
            nn.init.normal_(module.proj, std=dim**-0.5)


class QwenVLModel(QwenVLPreTrainedModel):
    def __init__(self, config: QwenVLConfig):
        super().__init__(config)
        self.visual = QwenVLVision(config.vision_config)
        self.language_model = Qwen2Model(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings (B, T, D) with each image's 256 vectors in place of its `<imgpad>` tokens."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.image_token_id  # (B, T)
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"{n_slots} image tokens in the input but no pixel_values")
            return embeds
        images = self.visual(pixel_values)  # (N, Q, D)
        if n_slots != images.shape[0] * images.shape[1]:
            raise ValueError(
                f"{n_slots} image tokens in the input for {images.shape[0]} images of {images.shape[1]} tokens each"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), images.to(embeds.dtype))

    def forward(self, input_ids=None, pixel_values=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, pixel_values)
        mask = kwargs.get("attention_mask")
        length = (
            mask.shape[-1] if isinstance(mask, torch.Tensor) and mask.ndim == 2 else inputs_embeds.shape[1]
        )
        if not self.training and length > self.config.seq_length:
            logger.warning_once(
                f"Qwen-VL past {self.config.seq_length} tokens: the original remote code stretches RoPE (dynamic "
                "NTK) and scales attention by log-n there at inference; vlmkit's implementation does not, so "
                "replies to such long inputs may differ from the original's"
            )
        return self.language_model(inputs_embeds=inputs_embeds, **kwargs)


class QwenVLForConditionalGeneration(QwenVLPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {}

    def __init__(self, config: QwenVLConfig):
        super().__init__(config)
        self.model = QwenVLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, T), pixel_values (N, 3, H, W) for the N images of the batch in order -> logits
        (B, T, V); `loss` when `labels` (B, T) are given (-100 = not trained)."""
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)  # all, last n, or a mask
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1], **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )  # fmt: skip


def register() -> None:
    """Make `AutoConfig` / `AutoModelForImageTextToText` know model_type `qwen_vl` (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, QwenVLConfig)
        AutoModelForImageTextToText.register(QwenVLConfig, QwenVLForConditionalGeneration)
    except ValueError:  # already registered
        pass
