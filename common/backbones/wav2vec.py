"""wav2vec 2.0 (Baevski et al. 2020) pre-training in pure torch around torchaudio's Wav2Vec2Model, tiny.

The network of Liu et al. 2023's `wav2vec` feature. torchaudio.models.wav2vec2_model gives the
convolutional feature encoder (50 Hz at 16 kHz, as in common/backbones/hubert.py) and the
Transformer context network; torchaudio has no wav2vec 2.0 pre-training head, so this module adds
it (Sec. 2-3 of the paper):
  * a Gumbel-softmax product quantiser on the (unmasked) latent frames z_t: G groups of V
    entries, hard one-hot choices with straight-through gradients, the chosen entries
    concatenated and projected = the targets q_t (Sec. 2);
  * span masking of the projected latents (torchaudio's MaskGenerator, p = mask_prob, M = mask_length);
  * the contrastive loss (Eq. 3): for each masked step, the cosine similarity / kappa (0.1) of the
    projected context c_t to q_t against K distractors q drawn from other masked steps of the same
    utterance; + alpha x the diversity loss (Eq. 4): (GV - perplexity of the batch's mean code
    distribution) / GV.
The published Base: conv width 512, 12 layers of width 768, G = 2, V = 320, K = 100, alpha = 0.1.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchaudio.models import wav2vec2_model
from torchaudio.models.wav2vec2.components import MaskGenerator, _compute_mask_indices

from common.weights import load_checked


class Wav2VecWeightsError(ValueError):
    """A weights file does not fit the configured wav2vec 2.0; the message names the file and the fix."""


class GumbelQuantizer(nn.Module):
    """(B, T, C) latents -> (B, T, D) quantised targets and the (G, V) mean code probabilities."""

    def __init__(self, c_in: int, groups: int, entries: int, dim: int):
        super().__init__()
        self.groups, self.entries = groups, entries
        self.logits = nn.Linear(c_in, groups * entries)
        self.codebook = nn.Parameter(torch.randn(groups, entries, dim // groups) * 0.1)
        self.out = nn.Linear(dim, dim)
        self.tau = 2.0                                   # annealed by the training loop (paper: 2 -> 0.5)

    def forward(self, z):
        b, t, _ = z.shape
        logits = self.logits(z).view(b, t, self.groups, self.entries)
        onehot = F.gumbel_softmax(logits, tau=self.tau, hard=True) if self.training else \
            F.one_hot(logits.argmax(-1), self.entries).to(z.dtype)
        q = torch.einsum("btgv,gvd->btgd", onehot, self.codebook).reshape(b, t, -1)
        return self.out(q), logits.softmax(-1).mean((0, 1))


class Wav2Vec2Pretrain(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c, dim = cfg["conv"], cfg["dim"]
        self.config = {k: cfg[k] for k in ("conv", "dim", "layers", "heads", "groups", "entries", "final_dim")}
        self.embed_dim = dim
        self.model = wav2vec2_model(
            extractor_mode="group_norm", extractor_conv_layer_config=[(c, 10, 5)] + [(c, 3, 2)] * 4 + [(c, 2, 2)] * 2,
            extractor_conv_bias=False, encoder_embed_dim=dim, encoder_projection_dropout=0.0,
            encoder_pos_conv_kernel=cfg["pos_conv_kernel"], encoder_pos_conv_groups=cfg["pos_conv_groups"],
            encoder_num_layers=cfg["layers"], encoder_num_heads=cfg["heads"], encoder_attention_dropout=0.0,
            encoder_ff_interm_features=4 * dim, encoder_ff_interm_dropout=0.0, encoder_dropout=0.0,
            encoder_layer_norm_first=False, encoder_layer_drop=0.0, aux_num_out=None)
        self.mask_generator = MaskGenerator(dim, cfg["mask_prob"], "static", 0.0, cfg["mask_length"],
                                            False, 1, 0.0, "static", 0.0, 10, False, 1)
        final = cfg["final_dim"]
        self.quantizer = GumbelQuantizer(c, cfg["groups"], cfg["entries"], final)
        self.final_proj = nn.Linear(dim, final)
        self.distractors, self.diversity_weight = cfg["distractors"], cfg["diversity_weight"]

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, frames, dim): the last Transformer layer at 50 Hz, no masking (the feature)."""
        return self.model.extract_features(waveforms)[0][-1]

    def masked_logits(self, waveforms: torch.Tensor):
        """Per utterance, (masked steps, 1 + K) similarity logits (target column 0), and the code probabilities."""
        z, _ = self.model.feature_extractor(waveforms, None)            # (B, T, conv) latents
        # as fairseq: normalised latents
        q, code_probs = self.quantizer(self.model.encoder.feature_projection.layer_norm(z))
        x, _ = self.model.encoder._preprocess(z, None)                   # layer norm + projection to dim
        x, mask = self._mask_spans(x)
        c = self.final_proj(self.model.encoder.transformer(x))
        out = []
        for b in range(len(c)):
            # the steps come from the mask on the host: no device sync per utterance, and the
            # indices (host tensors) may index the device tensors q and c
            steps = mask[b].nonzero().squeeze(1)
            if len(steps) < 2:
                continue
            k = min(self.distractors, len(steps) - 1)
            # K distractors per masked step: other masked steps of this utterance (never the step itself)
            pick = torch.randint(0, len(steps) - 1, (len(steps), k))
            pick = pick + (pick >= torch.arange(len(steps))[:, None]).long()
            candidates = torch.cat([q[b, steps][:, None], q[b, steps[pick]]], 1)    # (n, 1 + K, D)
            logits = F.cosine_similarity(c[b, steps][:, None], candidates, dim=-1) / 0.1   # Eq. 3, kappa = 0.1
            same = (candidates[:, 1:] == candidates[:, :1]).all(-1)     # a distractor with the target's code
            out.append(logits.masked_fill(torch.cat([torch.zeros_like(same[:, :1]), same], 1), float("-inf")))
        return out, code_probs

    def _mask_spans(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torchaudio's MaskGenerator (span masking, then the learnt mask embedding) with the mask
        kept on the host, where torchaudio draws it (CPU generator): the same random numbers and
        values, but x is replaced by torch.where instead of boolean-mask assignment, so nothing
        waits on the device (and the step runs on the `meta` device of tests/test_device_placement.py).
        Channel masking is off in this configuration (mask_channel_prob 0)."""
        g = self.mask_generator
        mask = _compute_mask_indices(tuple(x.shape[:2]), None, g.mask_prob, g.mask_length, g.mask_selection,
                                     g.mask_other, min_masks=2, no_overlap=g.no_mask_overlap,
                                     min_space=g.mask_min_space)
        x = torch.where(mask.to(x.device, non_blocking=True)[..., None], g.mask_embedding.to(x.dtype), x)
        return x, mask

    def contrastive_loss(self, waveforms: torch.Tensor) -> torch.Tensor:
        logits, code_probs = self.masked_logits(waveforms)
        n = sum(len(lg) for lg in logits)
        # the target (column 0) follows the logits to their device
        contrastive = sum(F.cross_entropy(lg, torch.zeros(len(lg), dtype=torch.long, device=lg.device), reduction="sum")
                          for lg in logits) / max(n, 1) if logits else code_probs.sum() * 0.0
        gv = code_probs.numel()
        perplexity = torch.exp(-(code_probs * (code_probs + 1e-7).log()).sum(-1)).sum()
        return contrastive + self.diversity_weight * (gv - perplexity) / gv              # Eq. 4

    @torch.no_grad()
    def masked_accuracy(self, waveforms: torch.Tensor) -> tuple[int, int, float]:
        """(hits, masked steps, expected hits by chance): steps whose own q_t is the most similar among
        q_t and its K distractors; chance is 1 / (candidates left) per step."""
        logits, _ = self.masked_logits(waveforms)
        return (sum(int((lg.argmax(1) == 0).sum()) for lg in logits), sum(len(lg) for lg in logits),
                sum(float((1.0 / torch.isfinite(lg).sum(1)).sum()) for lg in logits))


def load_wav2vec_weights(model: Wav2Vec2Pretrain, path) -> None:
    """Load a local state dict (torch.load weights_only=True) into `model`, or say what does not fit:
    this module's own names, or the published wav2vec 2.0 Base as torchaudio's bundle state dict
    (WAV2VEC2_BASE: `wav2vec2_fairseq_base_ls960.pth`) or fairseq's checkpoint (`wav2vec_small.pt`)
    through torchaudio's importer key map (common/backbones/hubert.py torchaudio_layouts). They carry
    the network, not this module's pre-training head (quantiser, final projection, mask embedding),
    which keeps its seeded initialisation: extraction never runs it."""
    from common.backbones.hubert import torchaudio_layouts
    published = torchaudio_layouts(
        "model.", "wav2vec 2.0 Base wav2vec2_fairseq_base_ls960.pth (torchaudio WAV2VEC2_BASE) "
        "or fairseq wav2vec_small.pt with conv 512, dim 768, layers 12, heads 12, pos_conv_kernel 128, "
        "pos_conv_groups 16 (the paper profile)",
        ("quantizer.", "final_proj.", "mask_generator."))
    load_checked(model, path, Wav2VecWeightsError, "wav2vec 2.0", "wav2vec",
                 "conv / dim / layers / heads / groups / entries / final_dim", published)
