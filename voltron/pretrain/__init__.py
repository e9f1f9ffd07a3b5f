"""Pretraining: one torchrun-distributed trainer for every Voltron objective, with exact resume."""
