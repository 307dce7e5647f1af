"""Pretrained backbones of every family, their preprocessing, and checkpoints read as weights."""
