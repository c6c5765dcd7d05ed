"""A masked autoencoder ViT (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners") in pure torch.

The encoder of Liu et al. 2023's `mae` feature. Input: (B, 3, S, S) faces normalised to [-1, 1],
cut into (S / patch)^2 patches, linearly embedded, + fixed 2-D sine-cosine position embeddings
(MAE Sec. A.1, encoder and decoder alike; the CLS position is zero), a CLS token.
Pre-training (MAE Sec. 3): a random `mask_ratio` of the patches per image is dropped, the encoder
sees only the visible ones; a narrow decoder gets the encoded visible tokens plus a shared mask
token at every dropped position and predicts the dropped patches' pixels, each patch normalised
by its own mean and variance ("norm_pix_loss", MAE Sec. 3 / Table 1d); the loss is the mean
squared error over dropped patches only. Feature: the encoder on all patches, the mean of its
patch tokens after the final LayerNorm (MAE's linear-probing / fine-tuning uses the average
token as well as the CLS token; Sec. A.1). The published ViT-B: patch 16 at 224 px, width 768,
depth 12; decoder width 512, depth 8, 16 heads. State dict keys are this module's own names (the
position tables are persistent buffers, so a checkpoint that stores them still loads).

Published weights: the official MAE release (`mae_pretrain_vit_base.pth`: {"model": {...}} in timm's
VisionTransformer names: cls_token, pos_embed, patch_embed.proj, blocks.N.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}, norm) is read as published (`MAE_RELEASE`): attn.qkv is the packed q, k, v
projection that torch's MultiheadAttention calls in_proj, in the same order. That file holds the
encoder only; the decoder then keeps its seeded initialisation (the feature never runs it), and
the `mae_visualize_*` files, which carry the decoder (decoder_blocks.N...), load whole. The
published encoder uses LayerNorm eps 1e-6, this module torch's 1e-5: on unit-variance tokens the
normalised values differ by about 5e-6 relative. Why not timm's class: timm is not a dependency
(the pre-training loop, masking and decoder are MAE's, not timm's), and the blocks are torch's own
TransformerEncoderLayer; tests/test_published_weights.py runs a forward written from the published
block definition on the published key layout against this module.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from common.weights import Layout, load_checked


class MAEWeightsError(ValueError):
    """A weights file does not fit the configured MAE; the message names the file and the fix."""


def sincos_positions(grid: int, dim: int) -> torch.Tensor:
    """(1, 1 + grid^2, dim): a zero row for CLS, then per patch (row-major) sin/cos of its row
    index in the first dim/2 channels and of its column index in the last dim/2, at frequencies
    1 / 10000^(2k / (dim/2)) as in the Transformer's 1-D table."""
    if dim % 4:
        raise ValueError(f"MAE width {dim} must be a multiple of 4 for 2-D sine-cosine positions")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def table(pos):
        angle = pos.reshape(-1, 1).double() * freq
        return torch.cat([angle.sin(), angle.cos()], 1)
    patches = torch.cat([table(rows), table(cols)], 1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches]).float()[None]


def blocks(dim: int, depth: int, heads: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)   # pre-norm ViT blocks
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, image_size: int, patch: int, dim: int, depth: int, heads: int,
                 decoder_dim: int, decoder_depth: int, decoder_heads: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"MAE image size {image_size} must be a multiple of the patch size {patch}")
        self.config = {"image_size": image_size, "patch": patch, "dim": dim, "depth": depth, "heads": heads,
                       "decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}
        self.patch, self.embed_dim = patch, dim
        g = image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_positions(g, dim))
        self.encoder, self.norm = blocks(dim, depth, heads), nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_positions(g, decoder_dim))
        self.decoder, self.decoder_norm = blocks(decoder_dim, decoder_depth, decoder_heads), nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch * patch * 3)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, n_patches, patch * patch * 3), patches in row-major order."""
        b, c, s, _ = images.shape
        g, p = s // self.patch, self.patch
        return images.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * c)

    def encode(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1 + n_kept, dim): CLS + the patch tokens listed in `keep` (B, n_kept) (all when None)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        if keep is not None:
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(len(x), -1, -1)
        return self.norm(self.encoder(torch.cat([cls, x], 1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, dim): the mean patch token of the unmasked encoder (the feature)."""
        return self.encode(images)[:, 1:].mean(1)

    def reconstruction_loss(self, images: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """MAE pre-training loss: MSE on the normalised pixels of the masked patches only."""
        target = self.patchify(images)
        b, n, _ = target.shape
        n_keep = max(1, int(round(n * (1 - mask_ratio))))
        order = torch.rand(b, n, device=images.device).argsort(1)       # random masking, per image
        keep, restore = order[:, :n_keep], order.argsort(1)
        latent = self.decoder_embed(self.encode(images, keep))
        tokens = torch.cat([latent[:, 1:], self.mask_token.expand(b, n - n_keep, -1)], 1)
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, tokens.shape[-1]))   # unshuffle
        x = torch.cat([latent[:, :1], tokens], 1) + self.decoder_pos_embed
        pred = self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()                  # norm_pix_loss
        masked = torch.ones(b, n, device=images.device)
        masked[:, :n_keep] = 0
        masked = torch.gather(masked, 1, restore)                       # 1 = dropped patch
        return (((pred - target) ** 2).mean(-1) * masked).sum() / masked.sum()


def build_mae(cfg: dict) -> MaskedAutoencoderViT:
    """From the params.yaml `mae` section."""
    return MaskedAutoencoderViT(cfg["crop"], cfg["patch"], cfg["dim"], cfg["depth"],
                                cfg["heads"], cfg["decoder_dim"], cfg["decoder_depth"],
                                cfg["decoder_heads"])


_BLOCK_PARTS = {"norm1": "norm1", "norm2": "norm2", "attn.qkv": "self_attn.in_proj", "attn.proj": "self_attn.out_proj",
                "mlp.fc1": "linear1", "mlp.fc2": "linear2"}


def from_mae_release(state: dict) -> dict:
    """The official MAE checkpoint's timm names -> this module's (blocks.N -> encoder.layers.N,
    decoder_blocks.N -> decoder.layers.N, patch_embed.proj -> patch_embed; qkv weight/bias ->
    in_proj_weight/in_proj_bias). A fine-tuning head (head.*, fc_norm.*) is dropped."""
    out = {}
    for key, value in state.items():
        m = re.match(r"(blocks|decoder_blocks)\.(\d+)\."
                     r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", key)
        if m:
            stack = "encoder" if m[1] == "blocks" else "decoder"
            part = _BLOCK_PARTS[m[3]]
            leaf = f"_{m[4]}" if part == "self_attn.in_proj" else f".{m[4]}"
            out[f"{stack}.layers.{m[2]}.{part}{leaf}"] = value
        elif key.startswith("patch_embed.proj."):
            out["patch_embed." + key[len("patch_embed.proj."):]] = value
        elif not key.startswith(("head.", "fc_norm.")):
            out[key] = value
    return out


MAE_RELEASE = Layout(
    "official MAE release (timm ViT names)", "blocks.0.attn.qkv.weight", from_mae_release,
    "mae_pretrain_vit_base.pth (ViT-B/16 encoder) with crop 224, patch 16, dim 768, depth 12, heads 12 "
    "(pos_embed (1, 197, 768) fixes the crop at 224 px / 16 = 14 patches a side)",
    absent=("decoder", "mask_token"))


def load_mae_weights(model: MaskedAutoencoderViT, path) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, or the official MAE release (MAE_RELEASE)."""
    load_checked(model, path, MAEWeightsError, "MAE", "mae",
                 "crop / patch / dim / depth / decoder_dim / decoder_depth / decoder_heads",
                 (MAE_RELEASE,))
