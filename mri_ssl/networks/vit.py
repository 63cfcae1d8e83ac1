"""A 2-D Vision Transformer backbone (MONAI's ViT) that returns one feature vector per image.

The cardiac paper fine-tunes an ImageNet-pretrained ViT on 84 x 84 images. MONAI's ``ViT`` (no class token when
``classification=False``) gives one token per patch; the feature is the mean of the final, layer-normed tokens
(global average pooling, as in MAE / DeiT-III linear evaluation). A patch of 12 pixels tiles 84 x 84 into 7 x 7.

ImageNet weights are loaded from a local file only (``pretrained_path``), never downloaded. Two layouts are read:
this module's own state dict (or one exported by ``export_encoder``), and a timm ``vit_*`` state dict (the layout of
the common ImageNet checkpoints: ``patch_embed.proj``, ``pos_embed``, ``blocks.N.attn.qkv``, ...), adapted to one
grey channel (the RGB kernels summed, which equals feeding the grey image as R = G = B), to this patch size
(kernels resampled, scaled by the area ratio so a flat image keeps its response) and to this token grid (position
embeddings interpolated bicubically, the class-token position dropped).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re

import torch
import torch.nn.functional as F
from monai.networks.layers import trunc_normal_
from monai.networks.nets import ViT
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.io.weights import load_checkpoint, load_exported_module

logger = logging.getLogger(__name__)

DEMO_IMAGE_SIZE = 84
DEMO_PATCH_SIZE = 12


class ViTEncoder2D(nn.Module):
    """MONAI's 2-D ViT, mean-pooled to ``(B, hidden_size)``.

    Args:
        in_channels: image channels (1 for MR).
        img_size: side of the square input in pixels (84 in the paper).
        patch_size: side of a patch; must divide ``img_size``.
        hidden_size, mlp_dim, num_layers, num_heads: transformer size (ViT-B/16: 768, 3072, 12, 12).
        dropout_rate: dropout inside the transformer blocks.
        pretrained_path: a local weights file (see the module docstring); "" keeps the random initialisation.
    """

    def __init__(self, in_channels: int = 1, img_size: int = DEMO_IMAGE_SIZE, patch_size: int = DEMO_PATCH_SIZE,
                 hidden_size: int = 768, mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12,
                 dropout_rate: float = 0.0, pretrained_path: str | os.PathLike = ""):
        super().__init__()
        if int(img_size) % int(patch_size) != 0:
            raise InputError("patch_size", f"must divide img_size {img_size}, got {patch_size}")
        if int(hidden_size) % int(num_heads) != 0:
            raise InputError("num_heads", f"must divide hidden_size {hidden_size}, got {num_heads}")
        self.in_channels, self.img_size, self.patch_size = int(in_channels), int(img_size), int(patch_size)
        self.hidden_size, self.mlp_dim = int(hidden_size), int(mlp_dim)
        self.num_layers, self.num_heads, self.dropout_rate = int(num_layers), int(num_heads), float(dropout_rate)
        self.vit = ViT(in_channels=self.in_channels, img_size=(self.img_size,) * 2, patch_size=(self.patch_size,) * 2,
                       hidden_size=self.hidden_size, mlp_dim=self.mlp_dim, num_layers=self.num_layers,
                       num_heads=self.num_heads, dropout_rate=self.dropout_rate, spatial_dims=2, qkv_bias=True,
                       classification=False)
        if pretrained_path not in (None, ""):
            load_pretrained_weights(self, pretrained_path)

    @property
    def out_features(self) -> int:
        return self.hidden_size

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    def reset_parameters(self) -> None:
        """Random initialisation as MONAI's ``ViT`` draws it: every layer's own reset, then the patch embedding's
        truncated-normal position embeddings and linear layers (``PatchEmbeddingBlock._init_weights``)."""
        for module in self.vit.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        embedding = self.vit.patch_embedding
        if isinstance(getattr(embedding, "position_embeddings", None), nn.Parameter):
            trunc_normal_(embedding.position_embeddings, mean=0.0, std=0.02, a=-2.0, b=2.0)
        embedding.apply(embedding._init_weights)

    def config(self) -> dict:
        """Constructor arguments (without weights paths), saved with exported weights to rebuild the encoder."""
        return {"in_channels": self.in_channels, "img_size": self.img_size, "patch_size": self.patch_size,
                "hidden_size": self.hidden_size, "mlp_dim": self.mlp_dim, "num_layers": self.num_layers,
                "num_heads": self.num_heads, "dropout_rate": self.dropout_rate}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise InputError("input", f"expected images of {self.img_size} x {self.img_size} pixels, got "
                                      f"{list(x.shape[-2:])}; resize them first (the bundle's Resized does)")
        tokens, _ = self.vit(x)
        return tokens.mean(dim=1)


VIT_CONFIG_KEYS = frozenset(inspect.signature(ViTEncoder2D).parameters) - {"pretrained_path"}

_TIMM_BLOCK_KEYS = {
    "norm1": "norm1", "norm2": "norm2", "attn.qkv": "attn.qkv", "attn.proj": "attn.out_proj",
    "mlp.fc1": "mlp.linear1", "mlp.fc2": "mlp.linear2",
}


def timm_to_monai(state: dict, encoder: ViTEncoder2D) -> dict:
    """Rename and adapt a timm ViT state dict to ``encoder.vit``'s keys (see the module docstring)."""
    converted = {}
    block = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
    for key, value in state.items():
        match = block.match(key)
        if match:
            converted[f"blocks.{match[1]}.{_TIMM_BLOCK_KEYS[match[2]]}.{match[3]}"] = value
        elif key in ("norm.weight", "norm.bias"):
            converted[key] = value
        elif key == "patch_embed.proj.weight":
            converted["patch_embedding.patch_embeddings.weight"] = adapt_patch_kernel(value, encoder)
        elif key == "patch_embed.proj.bias":
            converted["patch_embedding.patch_embeddings.bias"] = value
        elif key == "pos_embed":
            converted["patch_embedding.position_embeddings"] = adapt_position_embeddings(value, encoder.grid_size)
    return converted


def adapt_patch_kernel(weight: torch.Tensor, encoder: ViTEncoder2D) -> torch.Tensor:
    """``(D, C_src, k, k)`` -> ``(D, in_channels, p, p)``: channels summed (grey = equal RGB), kernel resampled."""
    weight = weight.float()
    if weight.shape[1] != encoder.in_channels:
        weight = weight.sum(dim=1, keepdim=True).repeat(1, encoder.in_channels, 1, 1) / encoder.in_channels
    source = weight.shape[-1]
    if source != encoder.patch_size:
        weight = F.interpolate(weight, size=(encoder.patch_size,) * 2, mode="bicubic", align_corners=False)
        weight = weight * (source / encoder.patch_size) ** 2  # a flat patch keeps its summed response
    return weight


def adapt_position_embeddings(embeddings: torch.Tensor, grid: int) -> torch.Tensor:
    """``(1, [1 +] g*g, D)`` -> ``(1, grid*grid, D)``: drop the class-token position, interpolate the grid."""
    tokens = embeddings.shape[1]
    side = int(math.isqrt(tokens))
    if side * side != tokens:  # a leading class-token position
        embeddings = embeddings[:, 1:]
        side = int(math.isqrt(tokens - 1))
    if side * side != embeddings.shape[1]:
        raise InputError("pos_embed", f"cannot read {tokens} position embeddings as a square grid")
    if side == grid:
        return embeddings
    dim = embeddings.shape[-1]
    image = embeddings.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)


def load_pretrained_weights(encoder: ViTEncoder2D, path: str | os.PathLike) -> ViTEncoder2D:
    """Load a local ViT weights file into ``encoder`` (timm layout or this module's), with ``weights_only=True``."""
    payload = load_checkpoint(path)
    state = payload.get("state_dict", payload.get("model", payload)) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state:
        raise InputError(path, "no state dict found (expected a dict of tensors, or one under 'state_dict'/'model')")
    if "patch_embed.proj.weight" in state:
        state = timm_to_monai(state, encoder)
    else:
        state = {key[len("vit."):] if key.startswith("vit.") else key: value for key, value in state.items()}
        if "patch_embedding.position_embeddings" in state:
            state["patch_embedding.position_embeddings"] = adapt_position_embeddings(
                state["patch_embedding.position_embeddings"], encoder.grid_size)
        if "patch_embedding.patch_embeddings.weight" in state:
            state["patch_embedding.patch_embeddings.weight"] = adapt_patch_kernel(
                state["patch_embedding.patch_embeddings.weight"], encoder)
    expected = encoder.vit.state_dict()
    wrong_shape = [k for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong_shape:
        raise InputError(path, f"weights do not fit this ViT (hidden_size {encoder.hidden_size}, {encoder.num_layers} "
                               f"layers): e.g. {wrong_shape[0]} {tuple(state[wrong_shape[0]].shape)} vs "
                               f"{tuple(expected[wrong_shape[0]].shape)}")
    missing, unexpected = encoder.vit.load_state_dict(state, strict=False)
    # norm_cross_attn exists in MONAI's block for cross-attention, which this encoder never uses.
    missing = [k for k in missing if "norm_cross_attn" not in k]
    if missing:
        raise InputError(path, f"{len(missing)} weights missing, e.g. {missing[:3]}")
    if unexpected:
        logger.info("ignored %d weights of %s that the encoder does not use (e.g. %s)", len(unexpected), path,
                    unexpected[:3])
    return encoder


def load_vit_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> ViTEncoder2D:
    """Rebuild a ``ViTEncoder2D`` from an exported ``{"config", "state_dict"}`` file (``export_encoder``); its
    ``.safetensors`` twin is read when present (``load_exported_module``)."""
    return load_exported_module(path, ViTEncoder2D, VIT_CONFIG_KEYS, device,
                                "not a ViT encoder file: config has unknown keys")
