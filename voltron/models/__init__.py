"""Voltron models: ViT building blocks, the V-Cond/V-Dual/V-Gen family, the R-MVP and R3M baselines, and extractors."""
