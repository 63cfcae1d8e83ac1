"""CMRformer-style video-text model: a video encoder (per-frame 2-D encoder + temporal attention), a text
transformer trained from scratch, projections into a shared 512-d space and the CLIP loss (with its logit scale).

Video input: ``(B, T, 1, H, W)`` frames (T = ``num_frames`` from ``mri_ssl.transforms.frames``). Every frame goes
through the same 2-D encoder (``CNNEncoder3D(spatial_dims=2)`` or the cardiac ``ViTEncoder2D``), the T frame
features plus a learned temporal position embedding go through ``temporal_layers`` transformer layers, and their
mean is the study feature; or, with ``attention="divided"``, the frames' spatial tokens go through divided space-time
attention blocks (TimeSformer: attention over time at each position, then over positions within each frame).

Text input: ``(B, L)`` ids from ``mri_ssl.text.WordTokenizer``; the ``[CLS]`` output of a small pre-norm transformer
is the report feature (padding masked out); or, when the user gives a local pretrained Hugging Face model directory,
that model's first-token output (``mri_ssl.text.pretrained``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import nn

from mri_ssl.errors import InputError
from mri_ssl.losses.clip import CLIPLoss
from mri_ssl.networks.encoder import CNNEncoder3D
from mri_ssl.networks.vit import ViTEncoder2D
from mri_ssl.text.pretrained import PretrainedTextEncoder  # transformers itself is imported only when used
from mri_ssl.text.tokenizer import PAD_ID

MAX_FRAMES = 64
ATTENTION_MODES = ("temporal", "divided")


class DividedSpaceTimeBlock(nn.Module):
    """One TimeSformer-style block on ``(B, T, S, C)`` tokens (T frames, S spatial tokens per frame), pre-norm:

        x <- x + TimeAttention(LN(x))    each spatial position attends over the T frames (same position)
        x <- x + SpaceAttention(LN(x))   each frame's S tokens attend to each other (same frame)
        x <- x + MLP(LN(x))

    Attention is factorised ("divided") instead of joint over T * S tokens: T + S instead of T * S keys per query.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.time_norm, self.space_norm, self.mlp_norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.time_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.space_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, tokens, width = x.shape
        t = x.transpose(1, 2).reshape(batch * tokens, frames, width)  # one sequence over time per position
        h = self.time_norm(t)
        t = t + self.time_attention(h, h, h, need_weights=False)[0]
        s = t.reshape(batch, tokens, frames, width).transpose(1, 2).reshape(batch * frames, tokens, width)
        h = self.space_norm(s)
        s = s + self.space_attention(h, h, h, need_weights=False)[0]
        x = s.reshape(batch, frames, tokens, width)
        return x + self.mlp(self.mlp_norm(x))


class VideoEncoder(nn.Module):
    """Per-frame 2-D encoder + attention over frames; returns (B, width) study features.

    Args:
        frame_encoder: "cnn" (``CNNEncoder3D`` 2-D with ``cnn_features``) or "vit" (``ViTEncoder2D(**vit_config)``).
        temporal_layers, temporal_heads: the attention layers (0 layers: mean of frame features).
        attention: "temporal" (default): each frame is pooled to one feature and a transformer runs over the T frame
            features. "divided": divided space-time attention (``DividedSpaceTimeBlock``, TimeSformer) on the
            frame encoder's spatial tokens (the CNN's last feature map, h * w positions, or the ViT's patch tokens)
            with a fixed 2-D sine-cosine position code per token and the learned temporal embedding per frame;
            mean over frames and tokens. ``temporal_layers`` blocks; the width must be divisible by 4.
    """

    def __init__(self, frame_encoder: str = "cnn", cnn_features=(16, 32, 64, 128), vit_config: dict | None = None,
                 temporal_layers: int = 2, temporal_heads: int = 4, dropout: float = 0.0,
                 attention: str = "temporal"):
        super().__init__()
        if frame_encoder == "cnn":
            self.frame_encoder = CNNEncoder3D(spatial_dims=2, in_channels=1, features=cnn_features, dropout=dropout)
        elif frame_encoder == "vit":
            self.frame_encoder = ViTEncoder2D(**(vit_config or {}))
        else:
            raise InputError("frame_encoder", f"expected 'cnn' or 'vit', got {frame_encoder!r}")
        if attention not in ATTENTION_MODES:
            raise InputError("attention", f"expected one of {ATTENTION_MODES}, got {attention!r}")
        width = self.frame_encoder.out_features
        if width % int(temporal_heads) != 0:
            raise InputError("temporal_heads", f"must divide the frame feature width {width}, got {temporal_heads}")
        if attention == "divided" and width % 4 != 0:
            raise InputError("attention", f"divided space-time attention needs a frame feature width divisible by 4 "
                                          f"(2-D sine-cosine position code), got {width}")
        self.width, self.attention, self.frame_encoder_kind = width, attention, frame_encoder
        self.out_features = width  # the feature width, under the name the classifier heads read
        self.time_embedding = nn.Parameter(torch.zeros(1, MAX_FRAMES, width))
        nn.init.trunc_normal_(self.time_embedding, std=0.02)
        if attention == "divided":
            self.temporal = nn.ModuleList(DividedSpaceTimeBlock(width, int(temporal_heads), dropout)
                                          for _ in range(int(temporal_layers)))
        else:
            layer = nn.TransformerEncoderLayer(width, int(temporal_heads), 4 * width, dropout, batch_first=True,
                                               norm_first=True)
            self.temporal = nn.TransformerEncoder(layer, int(temporal_layers), enable_nested_tensor=False) \
                if int(temporal_layers) > 0 else None
        self.norm = nn.LayerNorm(width)
        self._space_codes: dict[tuple[int, int], torch.Tensor] = {}

    def frame_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N, S, width) spatial tokens of N frames ``(N, 1, H, W)`` and their (h, w) grid."""
        if self.frame_encoder_kind == "vit":
            tokens = self.frame_encoder.vit(frames)[0]
            grid = self.frame_encoder.grid_size
            return tokens, (grid, grid)
        last = self.frame_encoder.forward_stages(frames)[1][-1]  # (N, width, h, w)
        return last.flatten(2).transpose(1, 2), tuple(last.shape[-2:])

    def space_code(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, h * w, width) fixed 2-D sine-cosine position code, computed once per grid (not a weight)."""
        if grid not in self._space_codes:
            with warnings.catch_warnings():  # MONAI's helper calls meshgrid without indexing=
                warnings.simplefilter("ignore", UserWarning)
                self._space_codes[grid] = build_sincos_position_embedding(list(grid), self.width, 2).detach()
        return self._space_codes[grid]

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[2] != 1:
            raise InputError("video", f"expected (B, T, 1, H, W) frames, got {tuple(video.shape)}")
        batch, frames = video.shape[:2]
        if frames > MAX_FRAMES:
            raise InputError("video", f"at most {MAX_FRAMES} frames, got {frames}")
        if self.attention == "divided":
            tokens, grid = self.frame_tokens(video.flatten(0, 1))
            space = self.space_code(grid).to(tokens)
            x = tokens.view(batch, frames, -1, self.width) + space[:, None] + self.time_embedding[:, :frames, None]
            for block in self.temporal:
                x = block(x)
            return self.norm(x.mean(dim=(1, 2)))
        features = self.frame_encoder(video.flatten(0, 1)).view(batch, frames, -1)
        features = features + self.time_embedding[:, :frames]
        if self.temporal is not None:
            features = self.temporal(features)
        return self.norm(features.mean(dim=1))


class TextEncoder(nn.Module):
    """Token + position embeddings, a pre-norm transformer, the ``[CLS]`` output as (B, width) report feature."""

    def __init__(self, vocab_size: int, width: int = 128, layers: int = 2, heads: int = 4, max_length: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        if int(vocab_size) < 5:
            raise InputError("vocab_size", f"expected a built vocabulary (>= 5 tokens), got {vocab_size}")
        self.width, self.max_length = int(width), int(max_length)
        self.token_embedding = nn.Embedding(int(vocab_size), self.width, padding_idx=PAD_ID)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.max_length, self.width))
        nn.init.trunc_normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(self.width, int(heads), 4 * self.width, dropout, batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, int(layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.max_length:
            raise InputError("ids", f"expected (B, L <= {self.max_length}) token ids, got {tuple(ids.shape)}")
        x = self.token_embedding(ids) + self.position_embedding[:, :ids.shape[1]]
        x = self.transformer(x, src_key_padding_mask=ids == PAD_ID)
        return self.norm(x[:, 0])


def make_text_encoder(vocab_size: int, text_config: dict) -> nn.Module:
    """``TextEncoder`` trained from scratch, or with ``text_config["pretrained_dir"]`` set the local Hugging Face
    model of that directory (``mri_ssl.text.pretrained``; its own size: width / layers / heads are not used)."""
    config = dict(text_config)
    pretrained_dir = config.pop("pretrained_dir", None)
    if pretrained_dir:
        return PretrainedTextEncoder(pretrained_dir, pad_token_id=config.get("pad_token_id", PAD_ID),
                                     max_length=config.get("max_length", 64))
    config.pop("pad_token_id", None)
    return TextEncoder(vocab_size, **config)


class VideoTextModel(nn.Module):
    """Video and text encoders, linear projections to ``embed_dim`` (512) and the CLIP loss with its logit scale.

    ``forward(video, ids)`` returns ``{"video": (B, 512), "text": (B, 512)}`` L2-normalised embeddings;
    ``self.loss(video_embedding, text_embedding)`` is the symmetric CLIP loss.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 512, video_config: dict | None = None,
                 text_config: dict | None = None):
        super().__init__()
        self.video_encoder = VideoEncoder(**(video_config or {}))
        self.text_encoder = make_text_encoder(vocab_size, text_config or {})
        self.video_projection = nn.Linear(self.video_encoder.width, int(embed_dim), bias=False)
        self.text_projection = nn.Linear(self.text_encoder.width, int(embed_dim), bias=False)
        self.loss = CLIPLoss()

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.video_projection(self.video_encoder(video)), dim=1)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_encoder(ids)), dim=1)

    def forward(self, video: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"video": self.embed_video(video), "text": self.embed_text(ids)}
