"""Vu, Beurton-Aimar, Marchand 2021: multitask multi-database teacher-student CNN, then CNN-GRU."""
