"""The feature bank: every per-frame feature a paper may name, as one registry entry each.

Liu, Sun et al. 2023 (Sec. 3.2) feed their temporal models any combination of six visual and
seven audio features. Each entry here says what the paper used (network, pre-training task and
data), what this pipeline computes in its place, the feature's size and rate, and how to open
its cache, so a model config can name features exactly as the paper's tables do
("fau,ires100 | ecapatdnn,hubert") and a report can print the paper-vs-here table.

    from common.features import bank
    bank.open_cache(params, "compare")        # -> FeatureCache, rows aligned to label frames
    bank.available(params)                     # names whose cache is built for these params
    bank.table()                               # rows for the report's "feature: paper / here" table

Entries whose extractor is not built in this pipeline have `cache=None`; asking for one raises
a FeatureBankError that says so, never a stand-in under the paper's name.
All caches hold one float16 row per label frame (see common/features/cache.py); the audio ones
are resampled to the video frame rate by nearest time (Zhang Sec. 4.2 alignment), the visual
ones take the nearest frame with a face where there is none (Liu Sec. 3.1).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from common.features.cache import DamagedCacheError, FeatureCache, FeatureCacheError


class FeatureBankError(KeyError):
    """A feature name is unknown or its extractor is not built; the message says which and why."""

    def __str__(self):
        return str(self.args[0])


@dataclass(frozen=True)
class Feature:
    name: str                 # the paper's name (Liu Sec. 4 tables)
    modality: str             # visual | audio
    paper: str                # network + pre-training task + data the paper used
    here: str                 # what this pipeline computes in its place ("" = not built)
    rate: str                 # native rate before alignment to the label frames
    cache: Callable | None    # params -> FeatureCache; None = not built here
    stage: str = ""           # the DVC stage that fills the cache


def _audio(name: str) -> Callable:
    def open_(params):
        from common.features.extract import open_audio_cache
        return open_audio_cache(params, name)
    return open_


def _frame_encoder(params) -> FeatureCache:
    from common.features import visual
    return visual.feature_cache(params)


def _network(module: str, *args) -> Callable:
    """params -> the cache of common/features/<module>.py's network (`cache_for(params, *args)`),
    imported on first use so that reading the registry does not import torch."""
    def open_(params):
        return importlib.import_module(f"common.features.{module}").cache_for(params, *args)
    return open_


FEATURES = {f.name: f for f in [
    # ---------------------------------------------------------------- visual (Liu Sec. 3.2.1)
    Feature("densenet", "visual", "DenseNet, facial expression on FER+ and AffectNet",
            "a narrow DenseNet-BC in pure torch (common/backbones/densenet.py) trained in the pipeline for 7-class "
            "expression on the AffectNet-like stills (or weights from densenet.weights); pooled final features per "
            "face frame (common/features/face_networks.py)", "video fps", _network("face_networks", "densenet"),
            "face_network@densenet"),
    Feature("ires100", "visual", "IResNet-100, facial expression on FER+, RAF-DB and AffectNet",
            "a narrow IResNet in pure torch (common/backbones/iresnet.py) trained in the pipeline for 7-class "
            "expression on the AffectNet-like + ExpW-like stills (ExpW for RAF-DB; or weights from ires100.weights); "
            "BN-FC-BN embedding per face frame (common/features/face_networks.py)", "video fps",
            _network("face_networks", "ires100"), "face_network@ires100"),
    Feature("fau", "visual", "IResNet-100, facial action unit detection on a commercial AU set",
            "a narrow IResNet in pure torch (common/backbones/iresnet.py; IResNet-100 in the paper profile) trained "
            "in the pipeline for the 12 ABAW AUs on the Train_Set's AU-annotated frames (or weights from "
            "fau.weights); BN-FC-BN embedding per face frame (common/features/fau.py)", "video fps", _network("fau"),
            "face_network@fau"),
    Feature("ms_va", "visual", "MobileNet, valence-arousal regression on AffectNet",
            "a narrow MobileNetV2 in pure torch (common/backbones/mobilenet.py) trained in the pipeline for valence "
            "and arousal (1 - CCC) on the AffectNet-like stills (or weights from ms_va.weights); pooled penultimate "
            "feature per face frame (common/features/face_networks.py)", "video fps",
            _network("face_networks", "ms_va"),
            "face_network@ms_va"),
    Feature("mae", "visual", "ViT masked autoencoder on DFEW, EmotioNet, FERV39k (expression + AU)",
            "a tiny ViT masked autoencoder in pure torch (common/backbones/vit_mae.py) pre-trained in the pipeline, "
            "self-supervised, on Train_Set faces (or weights from mae.weights); no expression / AU fine-tuning; "
            "mean encoder token per face frame (common/features/mae.py)", "video fps", _network("mae"),
            "face_network@mae"),
    Feature("affectnet", "visual", "expression model pre-trained on AffectNet (Table 1 row 3; not described further)",
            "the shared frame encoder (common/features/visual.py): a small ResNet pre-trained in the pipeline on the "
            "AffectNet-like stills for 7-class expression + VA, 512-d; a faithful small stand-in",
            "video fps", _frame_encoder, "network@frame_encoder"),
    # ---------------------------------------------------------------- audio (Liu Sec. 3.2.2)
    Feature("fbank", "audio", "log Mel filter banks", "torchaudio Kaldi fbank, 80 bins (common/features/audio.py)",
            "100 Hz", _audio("fbank"), "audio_features@fbank"),
    Feature("egemaps", "audio", "openSMILE eGeMAPS LLDs", "openSMILE eGeMAPSv02 LLDs, 25-d", "100 Hz",
            _audio("egemaps"), "audio_features@egemaps"),
    Feature("compare", "audio", "openSMILE ComParE 2016 LLDs", "openSMILE ComParE 2016 LLDs (65-d)", "100 Hz",
            _audio("compare"), "audio_features@compare"),
    Feature("vggish", "audio", "VGGish, audio event tagging on AudioSet",
            "VGGish in pure torch (common/features/vggish.py), narrow, pre-trained in the pipeline on the corpus's "
            "speech / other-voice events (or published weights from vggish.weights), 128-d",
            "10 Hz (default profile)", _network("vggish"), "network@vggish"),
    Feature("wav2vec", "audio", "wav2vec 2.0, self-supervised on speech",
            "a tiny wav2vec 2.0 (torchaudio's encoder + a Gumbel quantiser and the contrastive + diversity "
            "losses, common/backbones/wav2vec.py) pre-trained in the pipeline on the training audio (or weights "
            "from wav2vec.weights); last layer (common/features/wav2vec.py)", "50 Hz", _network("wav2vec"),
            "network@wav2vec"),
    Feature("hubert", "audio", "HuBERT, self-supervised masked prediction on speech",
            "a tiny HuBERT from torchaudio's blocks (common/backbones/hubert.py), HuBERT iteration 1 in the "
            "pipeline: masked prediction of MFCC k-means ids on the training audio (or weights from "
            "hubert.weights); last layer (common/features/hubert.py)", "50 Hz", _network("hubert"), "network@hubert"),
    Feature("ecapatdnn", "audio", "ECAPA-TDNN, speaker verification (published VoxCeleb model)",
            "ECAPA-TDNN in pure torch (common/backbones/ecapatdnn.py), narrow, pre-trained in the pipeline on "
            "speaker identity of the training subjects (or weights from ecapatdnn.weights: speechbrain's published "
            "spkrec-ecapa-voxceleb file with ecapatdnn.variant speechbrain); 2 s windows every 0.5 s",
            "2 Hz (default profile)", _network("ecapatdnn"), "network@ecapatdnn"),
]}
VISUAL = tuple(n for n, f in FEATURES.items() if f.modality == "visual")
AUDIO = tuple(n for n, f in FEATURES.items() if f.modality == "audio")


def get(name: str) -> Feature:
    if name not in FEATURES:
        raise FeatureBankError(f"unknown feature '{name}'; the bank has: {', '.join(FEATURES)}")
    return FEATURES[name]


def open_cache(params: dict, name: str) -> FeatureCache:
    """The cache of one feature for these params; refuses features that are not built here."""
    feature = get(name)
    if feature.cache is None:
        built = ", ".join(n for n, f in FEATURES.items() if f.cache is not None)
        raise FeatureBankError(f"feature '{name}' ({feature.paper}) has no extractor in this pipeline yet; "
                               f"built: {built}")
    return feature.cache(params)


def dims(params: dict, names) -> dict:
    """{name: feature dimension} from each cache's declared size."""
    return {n: open_cache(params, n).dim for n in names}


def available(params: dict) -> list[str]:
    """Names whose extractor is built and whose cache can be opened (model files present)."""
    names = []
    for name, feature in FEATURES.items():
        if feature.cache is None:
            continue
        try:
            cache = feature.cache(params)
        except DamagedCacheError:                  # a truncated manifest: an error, not an absent feature
            raise
        except (FeatureCacheError, OSError, RuntimeError, ValueError):
            continue
        if cache.manifest_path.exists():
            names.append(name)
    return names


def table() -> list[dict]:
    """One row per feature for the report: the paper's extractor beside this pipeline's."""
    return [{"feature": f.name, "modality": f.modality, "paper": f.paper,
             "here": f.here or "not built in this pipeline (configurations naming it do not run)",
             "rate": f.rate} for f in FEATURES.values()]
