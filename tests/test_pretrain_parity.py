"""Pretraining-objective parity, so the losses cannot drift unnoticed.

- Every registered family's loss on fixed seeded inputs (tiny sizes), and after 3 seeded AdamW steps, against golden
  values recorded here.
- R-R3M (ViT and ResNet-50) against an upstream-equivalent computation: the loss arithmetic of upstream Voltron's
  `voltron/models/reproductions/vr3m.py` and `vrn3m.py` (siddk/voltron-robotics), written out below on the same
  embeddings and the same permutation draws (torch.randperm on the CPU, in upstream's order).
- A structure test of R3M's cross-video negatives: duplicated captions must not make a negative equal its positive.
"""

from __future__ import annotations

import pytest
import torch

from voltron.models.language import tokenize
from voltron.models.registry import FAMILIES, build_model

CAPTIONS = ["open the drawer", "push the red button down hard", "put the cup on the shelf", "close the lid"]
IMAGE_SIZE = 32
BATCH = 4
MODEL_SEED, LOSS_SEED = 0, 123

# family -> (loss, {metric: value}) at IMAGE_SIZE with MODEL_SEED / LOSS_SEED, recorded from this implementation.
GOLDEN: dict[str, tuple[float, dict[str, float]]] = {
    "r-mvp": (1.1440443992614746, {"reconstruction_loss": 1.1440443992614746}),
    "r-r3m-rn50": (
        20.050901412963867,
        {
            "l1": 2145.81201171875,
            "l2": 70.63140106201172,
            "lang_accuracy": 0.0833333358168602,
            "lang_loss": 1.608054518699646,
            "tcn_accuracy": 0.75,
            "tcn_loss": 18.42068099975586,
        },
    ),
    "r-r3m-vit": (
        3.8923933506011963,
        {
            "l1": 65.8060531616211,
            "l2": 8.568000793457031,
            "lang_accuracy": 0.0,
            "lang_loss": 1.6087322235107422,
            "tcn_accuracy": 0.875,
            "tcn_loss": 2.2829174995422363,
        },
    ),
    "v-cond": (1.1546413898468018, {"reconstruction_loss": 1.1546413898468018}),
    "v-dual": (
        1.1628681421279907,
        {
            "reconstruction_loss": 1.1628681421279907,
            "reconstruction_loss_frame0": 1.1794942617416382,
            "reconstruction_loss_frame1": 1.1462420225143433,
        },
    ),
    "v-gen": (
        6.324254035949707,
        {
            "generate_fraction": 0.5,
            "lm_loss": 10.322774887084961,
            "lm_ppl": 30417.544921875,
            "reconstruction_loss": 1.162866473197937,
        },
    ),
}


def make_model(family: str, **overrides):
    torch.manual_seed(MODEL_SEED)
    return build_model(f"{family}-tiny", image_size=IMAGE_SIZE, **overrides).train()


def make_batch(model, captions: list[str] = CAPTIONS, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    frames = getattr(model, "train_frames", model.n_frames)
    shape = (
        (len(captions), 3, IMAGE_SIZE, IMAGE_SIZE)
        if frames == 1
        else (len(captions), frames, 3, IMAGE_SIZE, IMAGE_SIZE)
    )
    ids, mask = tokenize(captions, model.config.language_model, model.config.max_lang_len)
    return {
        "frames": torch.randint(0, 256, shape, generator=generator).to(torch.uint8),
        "input_ids": ids,
        "attention_mask": mask,
        "seed": torch.arange(len(captions), dtype=torch.int64) * 977 + 5,
    }


def our_loss(model, batch) -> tuple[float, dict[str, float]]:
    torch.manual_seed(LOSS_SEED)
    with torch.no_grad():
        loss, metrics = model.pretrain_loss(batch)
    return float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_loss_matches_golden_values(family):
    assert family in GOLDEN, f"no golden values for {family}: record them when registering a family"
    model = make_model(family)
    loss, metrics = our_loss(model, make_batch(model))
    expected_loss, expected_metrics = GOLDEN[family]
    assert loss == pytest.approx(expected_loss, rel=1e-4, abs=1e-6), (family, loss, metrics)
    for key, value in expected_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (family, key, metrics)


# family -> the loss after 1, 2 and 3 AdamW steps (train_step, lr 1e-3, the default weight decay) on make_batch's batch,
# from make_model's weights with torch seeded LOSS_SEED before the first step: recorded from this implementation.
GOLDEN_AFTER_STEPS: dict[str, tuple[float, float, float]] = {
    "r-mvp": (1.0823078155517578, 1.0413891077041626, 1.0096156597137451),
    "r-r3m-rn50": (20.05946159362793, 20.052288055419922, 20.05233383178711),
    "r-r3m-vit": (4.1663498878479, 3.5229616165161133, 3.320643424987793),
    "v-cond": (1.1131082773208618, 1.0768160820007324, 1.0451000928878784),
    "v-dual": (1.128075122833252, 1.0968174934387207, 1.068922996520996),
    "v-gen": (6.2392778396606445, 6.158339977264404, 6.0808820724487305),
}


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=[pytest.mark.slow] if f == "r-r3m-rn50" else []) for f in sorted(FAMILIES)]
)
def test_loss_after_seeded_steps_matches_golden_values(family):
    """The whole step (loss, backward, AdamW with the decay rule) cannot drift unnoticed either."""
    from voltron.pretrain.optim import build_optimizer
    from voltron.pretrain.trainer import Objective, train_step

    assert family in GOLDEN_AFTER_STEPS, f"no golden step values for {family}: record them when registering a family"
    model = make_model(family)
    batch, objective = make_batch(model), Objective(model)
    optimizer = build_optimizer(objective.named_parameters(), lr=1e-3)
    torch.manual_seed(LOSS_SEED)
    losses = [train_step(objective, optimizer, [batch], 1e-3).loss for _ in range(4)]  # loss before each update
    assert losses[0] == pytest.approx(GOLDEN[family][0], rel=1e-4, abs=1e-6)
    assert losses[1:] == pytest.approx(GOLDEN_AFTER_STEPS[family], rel=1e-4, abs=1e-6), (family, losses)


# === Upstream Voltron's R3M loss (vr3m.py / vrn3m.py), written out on our model's embeddings and reward MLP ===
EPS = 1e-8  # upstream's `eps` in every InfoNCE


def upstream_r3m_loss(model, batch, masked_language_mean: bool) -> dict[str, float]:
    """forward() -> get_time_contrastive_loss() -> get_reward_loss() of upstream's VR3M/VRN3M, term by term.

    Upstream pools the language model's last hidden state over every position (pads included); our default
    pools over real tokens only, and `legacy_query_mask=True` restores upstream's pooling.
    """
    n_negatives = model.config.n_negatives
    frames = model.batch_frames(batch)  # (B, 5, 3, S, S): [initial, i, j, k, final]
    bsz = frames.shape[0]
    all_embeddings = model.embed(frames.flatten(0, 1))  # "bsz n_states c h w -> (bsz n_states) c h w"
    initial, state_i, state_j, state_k, final = all_embeddings.unflatten(0, (bsz, 5)).transpose(0, 1)
    l1_loss = torch.linalg.norm(all_embeddings, ord=1, dim=-1).mean()
    l2_loss = torch.linalg.norm(all_embeddings, ord=2, dim=-1).mean()

    def time_similarity(x, y):
        return -torch.linalg.norm(x - y, dim=-1)

    # get_time_contrastive_loss
    sim_i_j_exp = torch.exp(time_similarity(state_i, state_j))
    sim_j_k_exp = torch.exp(time_similarity(state_j, state_k))
    neg_i_k_exp = torch.exp(time_similarity(state_i, state_k))
    neg_i, neg_j = [], []
    for _ in range(n_negatives):
        neg_idx = torch.randperm(bsz)
        state_i_shuf = state_i[neg_idx]
        neg_idx = torch.randperm(bsz)
        state_j_shuf = state_j[neg_idx]
        neg_i.append(time_similarity(state_i, state_i_shuf))
        neg_j.append(time_similarity(state_j, state_j_shuf))
    neg_i_exp, neg_j_exp = torch.exp(torch.stack(neg_i, -1)), torch.exp(torch.stack(neg_j, -1))
    denominator_i = sim_i_j_exp + neg_i_k_exp + neg_i_exp.sum(-1)
    denominator_j = sim_j_k_exp + neg_i_k_exp + neg_j_exp.sum(-1)
    nce_i = -torch.log(EPS + (sim_i_j_exp / (EPS + denominator_i)))
    nce_j = -torch.log(EPS + (sim_j_k_exp / (EPS + denominator_j)))
    tcn_loss = ((nce_i + nce_j) / 2).mean()
    tcn_acc = ((sim_i_j_exp > neg_i_k_exp).float().mean() + (sim_j_k_exp > neg_i_k_exp).float().mean()) / 2

    # get_reward_loss
    hidden = model.lm(batch["input_ids"], batch["attention_mask"])
    if masked_language_mean:
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        lang_embed = (hidden * weights).sum(1) / weights.sum(1)
    else:
        lang_embed = hidden.mean(dim=1)

    def get_reward(initial_, later, lang):
        return model.language_reward(torch.cat([initial_, later, lang], dim=-1)).squeeze()

    pos_final_exp = torch.exp(get_reward(initial, final, lang_embed))
    pos_j_exp = torch.exp(get_reward(initial, state_j, lang_embed))
    pos_k_exp = torch.exp(get_reward(initial, state_k, lang_embed))
    negs_final = [get_reward(initial, initial, lang_embed)]
    negs_j = [get_reward(initial, state_i, lang_embed)]
    negs_k = [get_reward(initial, state_j, lang_embed)]
    for _ in range(n_negatives):
        neg_idx = torch.randperm(bsz)
        negs_final.append(get_reward(initial[neg_idx], final[neg_idx], lang_embed))
        neg_idx = torch.randperm(bsz)
        negs_j.append(get_reward(initial[neg_idx], state_j[neg_idx], lang_embed))
        neg_idx = torch.randperm(bsz)
        negs_k.append(get_reward(initial[neg_idx], state_k[neg_idx], lang_embed))
    negs_final, negs_j, negs_k = torch.stack(negs_final, -1), torch.stack(negs_j, -1), torch.stack(negs_k, -1)
    negs_final_exp, negs_j_exp, negs_k_exp = torch.exp(negs_final), torch.exp(negs_j), torch.exp(negs_k)
    nce_final = -torch.log(EPS + (pos_final_exp / (EPS + pos_final_exp + negs_final_exp.sum(-1))))
    nce_j = -torch.log(EPS + (pos_j_exp / (EPS + pos_j_exp + negs_j_exp.sum(-1))))
    nce_k = -torch.log(EPS + (pos_k_exp / (EPS + pos_k_exp + negs_k_exp.sum(-1))))
    acc_final = (negs_final_exp.max(dim=-1)[0] < pos_final_exp).float().mean()
    acc_j = (negs_j_exp.max(dim=-1)[0] < pos_j_exp).float().mean()
    acc_k = (negs_k_exp.max(dim=-1)[0] < pos_k_exp).float().mean()
    reward_loss = ((nce_final + nce_j + nce_k) / 3).mean()
    reward_acc = (acc_final + acc_j + acc_k) / 3

    cfg = model.config
    loss = cfg.l1_weight * l1_loss + cfg.l2_weight * l2_loss + cfg.tcn_weight * tcn_loss + cfg.lang_weight * reward_loss
    values = {
        "loss": loss,
        "tcn_loss": tcn_loss,
        "lang_loss": reward_loss,
        "l1": l1_loss,
        "l2": l2_loss,
        "tcn_accuracy": tcn_acc,
        "lang_accuracy": reward_acc,
    }
    return {k: float(v) for k, v in values.items()}


@pytest.mark.parametrize("family", ["r-r3m-vit", "r-r3m-rn50"])
@pytest.mark.parametrize("legacy_pooling", [True, False], ids=["upstream-pooling", "masked-pooling"])
def test_r3m_loss_equals_upstreams_arithmetic(family, legacy_pooling):
    model = make_model(family, legacy_query_mask=legacy_pooling)
    captions = CAPTIONS[:2] * 2  # duplicated captions, as a Sth-Sth batch has: upstream scores them as any other
    batch = make_batch(model, captions)
    loss, metrics = our_loss(model, batch)
    torch.manual_seed(LOSS_SEED)  # the same permutation draws
    with torch.no_grad():
        expected = upstream_r3m_loss(model, batch, masked_language_mean=not legacy_pooling)
    assert loss == pytest.approx(expected.pop("loss"), rel=1e-5, abs=1e-6)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_r3m_duplicate_captions_never_make_a_negative_equal_its_positive():
    """The cross-video negatives are another video's progress R(s0[p], s[p]) under *this* caption. Scoring this
    video's progress under another example's caption instead (R(s0, s, lang[p])) makes every negative whose
    caption repeats the positive's identical to the positive: zero margin, a gradient that cannot separate them."""
    model = make_model("r-r3m-vit")
    batch = make_batch(model, ["open the drawer"] * BATCH)  # every caption the same
    frames = model.batch_frames(batch)
    with torch.no_grad():
        states = model.embed(frames.flatten(0, 1)).unflatten(0, (BATCH, 5)).unbind(dim=1)
        lang = model.language_embedding(batch["input_ids"], batch["attention_mask"])
        torch.manual_seed(LOSS_SEED)
        perms = model.permutations(BATCH, 3, frames.device)
        tables = model.language_logits(states, lang, perms)
    n_compared = 0
    for table, term_perms in zip(tables, perms):
        assert table.shape == (BATCH, 2 + model.config.n_negatives)
        for column, perm in enumerate(term_perms, start=2):
            moved = perm != torch.arange(BATCH)  # a fixed point of the permutation is this very video (as upstream)
            margin = (table[:, 0] - table[:, column]).abs()
            assert (margin[moved] > 0).all(), (column, perm, table)
            n_compared += int(moved.sum())
    assert n_compared >= BATCH  # the permutations moved enough rows for the check to mean something
    # the in-video negatives (an earlier frame of the same clip) differ from their positives too
    assert all(((table[:, 0] - table[:, 1]).abs() > 0).all() for table in tables)
