"""HuBERT (Hsu et al. 2021) from torchaudio's building blocks, tiny: the network of Liu et al. 2023's `hubert` feature.

torchaudio.models.hubert_pretrain_model with a small configuration (params.yaml `hubert`): the
wav2vec 2.0 convolutional feature encoder (7 layers, kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2:
one frame per 20 ms = 50 Hz of 16 kHz audio, group norm), a Transformer encoder with a
convolutional position embedding, span masking (mask_prob of the frames start a span of
mask_length), and HuBERT's logit generator (cosine similarity to one embedding per cluster id,
temperature 0.1; the target is column 0). The published HuBERT-Base: conv width 512, 12 layers
of width 768, 500 clusters (504 in the second iteration). State dict keys are torchaudio's.

Published weights, read as published (`torchaudio_layouts`): torchaudio's bundle state dicts
(torchaudio.pipelines.HUBERT_BASE: `hubert_fairseq_base_ls960.pth`, the Wav2Vec2Model names
feature_extractor.*, encoder.*), and fairseq's own checkpoints (`hubert_base_ls960.pt`:
{"model": {...}} in fairseq names), whose names torchaudio's importer maps
(torchaudio.models.wav2vec2.utils.import_fairseq, the key map of import_fairseq_model; a
checkpoint that pickles fairseq classes beside the weights cannot pass weights_only=True: save its
"model" entry alone). The positional convolution's weight norm is stored as weight_g / weight_v
there and as parametrizations.weight.original0 / original1 here (torch's current weight_norm). The
files carry the network, not the pre-training heads (mask embedding, label embeddings), which keep
their seeded initialisation: extraction never runs them. Why torchaudio: it is the maintained
definition of these networks and of their published bundles, so the network is built from it.
"""
from __future__ import annotations

import torch
from torchaudio.models import hubert_pretrain_model

from common.weights import Layout, load_checked

STRIDE = 320                       # samples per output frame (5 * 2**6): 50 Hz at 16 kHz


class HubertWeightsError(ValueError):
    """A weights file does not fit the configured HuBERT; the message names the file and the fix."""


def build_hubert(cfg: dict):
    c = cfg["conv"]
    model = hubert_pretrain_model(
        extractor_mode="group_norm", extractor_conv_layer_config=[(c, 10, 5)] + [(c, 3, 2)] * 4 + [(c, 2, 2)] * 2,
        extractor_conv_bias=False, encoder_embed_dim=cfg["dim"], encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=cfg["pos_conv_kernel"], encoder_pos_conv_groups=cfg["pos_conv_groups"],
        encoder_num_layers=cfg["layers"], encoder_num_heads=cfg["heads"], encoder_attention_dropout=0.0,
        encoder_ff_interm_features=4 * cfg["dim"], encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
        encoder_layer_norm_first=False, encoder_layer_drop=0.0,
        mask_prob=cfg["mask_prob"], mask_selection="static", mask_other=0.0, mask_length=cfg["mask_length"],
        no_mask_overlap=False, mask_min_space=1, mask_channel_prob=0.0, mask_channel_selection="static",
        mask_channel_other=0.0, mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1,
        skip_masked=False, skip_nomask=True,          # HuBERT's loss on masked frames only (alpha = 1)
        num_classes=cfg["clusters"], final_dim=cfg["final_dim"], feature_grad_mult=None)
    model.config = {k: cfg[k] for k in ("conv", "dim", "layers", "heads", "clusters", "final_dim")}
    model.embed_dim = cfg["dim"]
    return model


def last_layer(model, waveforms: torch.Tensor) -> torch.Tensor:
    """(B, samples) 16 kHz -> (B, frames, dim): the last Transformer layer's output at 50 Hz, no masking."""
    return model.wav2vec2.extract_features(waveforms)[0][-1]


_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def _torchaudio_names(state: dict, prefix: str) -> dict:
    """A Wav2Vec2Model state dict (torchaudio names) under `prefix`, the positional convolution's
    weight_g / weight_v renamed to torch's parametrized weight norm; an ASR head (aux.*) is dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("aux."):
            continue
        head, _, leaf = key.rpartition(".")
        if head == "encoder.transformer.pos_conv_embed.conv" and leaf in _WEIGHT_NORM:
            key = f"{head}.{_WEIGHT_NORM[leaf]}"
        out[prefix + key] = value
    return out


def _from_fairseq(state: dict, prefix: str) -> dict:
    from torchaudio.models.wav2vec2.utils import import_fairseq    # the importer's key map
    converted = {}
    for key, value in state.items():
        name = import_fairseq._map_key(key)                         # None: pre-training heads (quantiser, mask_emb...)
        if name is not None and name != "label_embs_concat":
            converted[name] = value
    return _torchaudio_names(converted, prefix)


def torchaudio_layouts(prefix: str, fits: str, absent: tuple) -> tuple:
    """The two published layouts of a wav2vec 2.0-family network whose Wav2Vec2Model sits at `prefix`."""
    return (Layout("torchaudio bundle state dict (Wav2Vec2Model names)", "feature_extractor.conv_layers.0.conv.weight",
                   lambda state: _torchaudio_names(state, prefix), fits, absent),
            Layout("fairseq checkpoint (through torchaudio's import_fairseq key map)", "post_extract_proj.weight",
                   lambda state: _from_fairseq(state, prefix), fits, absent))


PUBLISHED = torchaudio_layouts(
    "wav2vec2.", "HuBERT-Base hubert_fairseq_base_ls960.pth (torchaudio HUBERT_BASE) or fairseq hubert_base_ls960.pt "
    "with conv 512, dim 768, layers 12, heads 12, pos_conv_kernel 128, pos_conv_groups 16 (the paper profile)",
    ("mask_generator.", "logit_generator."))


def load_hubert_weights(model, path) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, a torchaudio bundle state dict or a fairseq checkpoint (PUBLISHED)."""
    load_checked(model, path, HubertWeightsError, "HuBERT", "hubert",
                 "conv / dim / layers / heads / clusters / final_dim",
                 PUBLISHED)
