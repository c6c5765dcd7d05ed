"""Zhang, Ding, Wei, Guan (ICCVW 2021): continuous emotion recognition with audio-visual
leader-follower attentive fusion. model.py (Sec. 3), data.py (Sec. 4.2-4.4), train.py (Sec. 4.4)."""
