"""Jeong, Oh, Lim 2022: multi-task affect prediction with SoundNet + FER features and knowledge distillation."""
