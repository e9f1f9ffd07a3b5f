"""Pretraining: one torchrun-distributed trainer for every Voltron objective, with exact resume.

    voltron pretrain --config configs/pretrain/v-cond.yaml [--optim.lr=3e-4 ...]
    torchrun --nnodes N --nproc-per-node G -m voltron.pretrain --config configs/pretrain/v-cond.yaml

Modules: `config` (typed config, YAML + dotted overrides), `trainer` (`train_step`, the loop, `pretrain`),
`schedule`, `optim`, `sampler` and `data` (what each step trains on), `checkpointing`, `distributed`, `tracking`.
Kept free of imports so `voltron --help` stays fast.
"""
