"""Liu, Sun et al. (CVPRW 2023, ABAW5 valence-arousal): a bank of visual and audio features, early
or late fusion, LSTM / GRU / Transformer / Transformer-LSTM encoders over segments, and ensembles.
model.py (Sec. 3.3, the encoders and fusions), data.py (Sec. 3.2, 4.2), train.py (Sec. 3.4, Eq. 10;
the method switch), experiment.py (what the notebooks call: Tables 1-7)."""
