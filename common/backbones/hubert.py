"""HuBERT (Hsu et al. 2021) from torchaudio's building blocks, tiny: the network of Liu et al. 2023's `hubert` feature.

torchaudio.models.hubert_pretrain_model with a small configuration (params.yaml `hubert`): the
wav2vec 2.0 convolutional feature encoder (7 layers, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2:
one frame per 20 ms = 50 Hz of 16 kHz audio, group norm), a Transformer encoder with a
convolutional position embedding, span masking (mask_prob of the frames start a span of
mask_length), and HuBERT's logit generator (cosine similarity to one embedding per cluster id,
temperature 0.1; the target is column 0). The published HuBERT-Base: conv width 512, 12 layers
of width 768, 500 clusters (504 in the second iteration). State dict keys are torchaudio's.
"""
from __future__ import annotations

import torch
from torchaudio.models import hubert_pretrain_model

from common.weights import load_checked

STRIDE = 320                       # samples per output frame (5 * 2**6): 50 Hz at 16 kHz


class HubertWeightsError(ValueError):
    """A weights file does not fit the configured HuBERT; the message names the file and the fix."""


def build_hubert(cfg: dict):
    c = int(cfg["conv"])
    model = hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(c, 10, 5)] + [(c, 3, 2)] * 4 + [(c, 2, 2)] * 2,
        extractor_conv_bias=False, encoder_embed_dim=int(cfg["dim"]), encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=int(cfg["pos_conv_kernel"]), encoder_pos_conv_groups=int(cfg["pos_conv_groups"]),
        encoder_num_layers=int(cfg["layers"]), encoder_num_heads=int(cfg["heads"]), encoder_attention_dropout=0.0,
        encoder_ff_interm_features=4 * int(cfg["dim"]), encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
        encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        mask_prob=float(cfg["mask_prob"]), mask_selection="static", mask_other=0.0, mask_length=int(cfg["mask_length"]),
        no_mask_overlap=False, mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static",
        mask_channel_other=0.0, mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1,
        skip_masked=False, skip_nomask=True,          # HuBERT's loss on masked frames only (alpha = 1)
        num_classes=int(cfg["clusters"]), final_dim=int(cfg["final_dim"]), feature_grad_mult=None)
    model.config = {k: cfg[k] for k in ("conv", "dim", "layers", "heads", "clusters", "final_dim")}
    model.embed_dim = int(cfg["dim"])
    return model


def last_layer(model, waveforms: torch.Tensor) -> torch.Tensor:
    """(B, samples) 16 kHz -> (B, frames, dim): the last Transformer layer's output at 50 Hz, no masking."""
    return model.wav2vec2.extract_features(waveforms)[0][-1]


def load_hubert_weights(model, path) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit."""
    load_checked(model, path, HubertWeightsError, "HuBERT", "hubert", "conv / dim / layers / heads / clusters / final_dim")
