"""Contract tests over every registered model family (tiny size), plus correctness and bad-input checks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import voltron
from voltron.errors import UserError
from voltron.models.blocks import hashed_uniform, set_attention_impl
from voltron.models.checkpoints import CheckpointError, convert_upstream, read_config
from voltron.models.extractors import EXTRACTORS
from voltron.models.language import tokenize
from voltron.models.registry import FAMILIES, build_model, default_config

CAPTIONS = ["open the drawer", "push the red button down hard"]


def tiny(family: str, **overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, preprocess = voltron.load(f"{family}-tiny", pretrained=False, freeze=False, **overrides)
    return model, preprocess


def images_for(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *model.image_shape()), generator=generator)


def pretraining_batch(model, batch: int = 2) -> dict:
    size = model.config.image_size
    frames = getattr(model, "train_frames", model.n_frames)
    shape = (batch, 3, size, size) if frames == 1 else (batch, frames, 3, size, size)
    ids, mask = tokenize(CAPTIONS[:batch] * (batch // 2 or 1))
    return {
        "frames": torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1)),
        "input_ids": ids[:batch],
        "attention_mask": mask[:batch],
        "seed": torch.arange(batch, dtype=torch.int64) + 7,
    }


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return request.param


def test_forward_shapes_in_both_modes(family):
    model, _ = tiny(family)
    model.eval()
    images = images_for(model)
    lang = CAPTIONS if model.uses_language else None
    n_patches = (model.config.image_size // model.config.patch_size) ** 2
    multimodal, visual = model(images, lang, mode="multimodal"), model(images, lang, mode="visual")
    if family.startswith("r-r3m"):
        assert multimodal.shape == visual.shape == (2, 1, model.embed_dim)
    elif model.uses_language:
        assert multimodal.shape == (2, n_patches + model.config.max_lang_len, model.embed_dim)
        assert visual.shape == (2, n_patches, model.embed_dim)
    else:
        assert multimodal.shape == visual.shape == (2, n_patches, model.embed_dim)
    assert torch.isfinite(multimodal).all()


def test_pretraining_loss_is_finite_and_backpropagates(family):
    model, _ = tiny(family)
    model.train()
    loss, metrics = model.pretrain_loss(pretraining_batch(model))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert metrics and all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values())
    loss.backward()
    # as timm's test: every trainable parameter gets a gradient (an unused one would be dead weight, or a bug)
    trainable = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{family} has no trainable parameters"
    missing = sorted(name for name, grad in trainable.items() if grad is None or not grad.abs().sum() > 0)
    assert not missing, f"{family}: no gradient reaches {missing}"
    assert all(torch.isfinite(grad).all() for grad in trainable.values())
    assert all(p.grad is None for name, p in model.named_parameters() if name.startswith("lm."))


def test_save_pretrained_then_load_is_exact(family, tmp_path):
    model, _ = tiny(family)
    model.eval()
    images = images_for(model)
    lang = CAPTIONS if model.uses_language else None
    expected = model(images, lang)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    restored, preprocess = voltron.load(tmp_path / "ckpt")
    assert type(restored) is type(model) and isinstance(restored, torch.nn.Module)
    assert torch.equal(restored(images, lang), expected)
    assert (preprocess.resize, preprocess.crop, preprocess.mean) == (
        model.config.resize,
        model.config.crop,
        model.config.mean,
    )


def test_freeze_really_freezes(family):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen, _ = voltron.load(f"{family}-tiny", pretrained=False)
    assert not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable, _ = tiny(family)
    assert any(p.requires_grad for p in trainable.parameters())
    # the language model never trains, whatever `freeze` says
    assert not any(p.requires_grad for n, p in trainable.named_parameters() if n.startswith("lm."))


def test_preprocess_resizes_crops_and_normalises():
    model, preprocess = tiny("v-cond")
    frame = torch.full((3, 240, 320), 255, dtype=torch.uint8)
    out = preprocess(frame)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    expected = (1.0 - torch.tensor(model.config.mean)) / torch.tensor(model.config.std)
    assert torch.allclose(out[:, 100, 100], expected, atol=1e-5)
    batch = preprocess(torch.zeros(2, 5, 3, 240, 320, dtype=torch.uint8))
    assert batch.shape == (2, 5, 3, 224, 224)
    hwc = preprocess(torch.zeros(240, 320, 3, dtype=torch.uint8).numpy())
    assert hwc.shape == (3, 224, 224)


# === Correctness ===
def test_map_extractor_pools_and_respects_key_mask():
    model, _ = tiny("v-cond")
    tokens = torch.randn(3, 10, model.embed_dim)
    pool = voltron.instantiate_extractor(model)
    assert pool(tokens).shape == (3, model.embed_dim)
    assert voltron.instantiate_extractor(model, n_latents=4)(tokens).shape == (3, 4, model.embed_dim)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[:, 7:] = 0
    perturbed = tokens.clone()
    perturbed[:, 7:] += 100.0
    assert torch.allclose(pool(tokens, mask), pool(perturbed, mask), atol=1e-5)
    assert not torch.allclose(pool(tokens), pool(perturbed), atol=1e-3)
    assert sum(p.numel() for p in pool.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("kind", sorted(EXTRACTORS))
def test_every_extractor_pools_every_encoder(family, kind):
    model, _ = tiny(family)
    model.eval()
    tokens = model(images_for(model))
    assert voltron.instantiate_extractor(model, kind=kind)(tokens).shape == (2, model.embed_dim)


def test_batch_of_different_captions_matches_one_at_a_time():
    model, _ = tiny("v-cond")
    model.eval()
    images = images_for(model)
    together = model(images, CAPTIONS)
    for i, caption in enumerate(CAPTIONS):
        alone = model(images[i : i + 1], [caption])
        assert torch.allclose(together[i], alone[0], atol=1e-5)
    assert not torch.allclose(together[0], model(images[:1], [CAPTIONS[1]])[0], atol=1e-4)


def test_key_mask_ignores_padding_but_legacy_query_mask_does_not():
    torch.manual_seed(0)
    short = build_model("v-cond-tiny", max_lang_len=12).eval()
    long = build_model("v-cond-tiny", max_lang_len=24).eval()
    long.load_state_dict(short.state_dict())
    images = images_for(short)
    # the same captions padded to 12 and to 24 tokens: only the number of pad tokens differs
    assert torch.allclose(short(images, CAPTIONS, mode="visual"), long(images, CAPTIONS, mode="visual"), atol=1e-5)
    short.config.legacy_query_mask = long.config.legacy_query_mask = True
    assert not torch.allclose(short(images, CAPTIONS, mode="visual"), long(images, CAPTIONS, mode="visual"), atol=1e-4)


def test_sdpa_matches_eager_reference_attention():
    model, _ = tiny("v-gen")
    model.eval()
    images = images_for(model)
    sdpa = model(images, CAPTIONS)
    eager = set_attention_impl(model, "eager")(images, CAPTIONS)
    assert torch.allclose(sdpa, eager, atol=1e-5)
    batch = pretraining_batch(model)
    eager_loss, _ = model.pretrain_loss(batch)
    sdpa_loss, _ = set_attention_impl(model, "sdpa").pretrain_loss(batch)
    assert torch.allclose(sdpa_loss, eager_loss, atol=1e-5)


def test_masks_depend_only_on_each_examples_seed():
    seeds = torch.tensor([3, 11, 42, 5])
    noise = hashed_uniform(seeds, 196)
    assert noise.shape == (4, 196) and (noise >= 0).all() and (noise < 1).all()
    assert torch.equal(torch.cat([hashed_uniform(seeds[:2], 196), hashed_uniform(seeds[2:], 196)]), noise)
    assert not torch.equal(noise[0], noise[1])
    model, _ = tiny("v-dual")
    batch = pretraining_batch(model, batch=2)
    halves = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(2)]
    loss_full, _ = model.pretrain_loss(batch)
    loss_halves = sum(model.pretrain_loss(half)[0] for half in halves) / 2
    assert torch.allclose(loss_full, loss_halves, atol=1e-5)


def test_vgen_scores_captions_per_image():
    model, _ = tiny("v-gen")
    model.eval()
    scores = model.score(images_for(model), ["open the drawer", "hammer the nail", "press the button"])
    assert scores.shape == (2, 3) and torch.isfinite(scores).all() and (scores < 0).all()


# === Bad input ===
@pytest.mark.parametrize(
    "images, match",
    [
        (torch.randn(3, 224, 224), r"expected \(B, 3, 224, 224\)"),
        (torch.randn(2, 3, 128, 128), r"expected \(B, 3, 224, 224\)"),
        (torch.zeros(2, 3, 224, 224, dtype=torch.uint8), r"must be float.*\(B, 3, 224, 224\)"),
    ],
)
def test_bad_images_get_a_value_error_naming_the_shape(images, match):
    model, _ = tiny("v-cond")
    with pytest.raises(ValueError, match=match):
        model(images)


def test_dual_frame_model_names_its_shape():
    model, _ = tiny("v-dual")
    with pytest.raises(ValueError, match=r"\(B, 2, 3, 224, 224\)"):
        model(torch.randn(2, 3, 224, 224))


def test_mismatched_lang_length_and_bad_mode():
    model, _ = tiny("v-cond")
    with pytest.raises(ValueError, match="2 captions for 1 images"):
        model(images_for(model, batch=1), CAPTIONS)
    with pytest.raises(TypeError, match="list of strings"):
        model(images_for(model, batch=1), "open the drawer")
    with pytest.raises(ValueError, match="unknown mode"):
        model(images_for(model, batch=1), mode="patches")


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(KeyError, match="v-cond.*r-r3m-rn50"):
        voltron.load("v-condd")


def test_missing_pretrained_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLTRON_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/v-cond.*v-cond.pt.*convert-upstream.*pretrained=False"):
        voltron.load("v-cond")


def test_pretrained_weights_load_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLTRON_HOME", str(tmp_path))
    model, _ = tiny("v-cond")
    model.save_pretrained(tmp_path / "v-cond-tiny")
    loaded, _ = voltron.load("v-cond-tiny")
    assert torch.equal(loaded.patch2embed.proj.weight, model.patch2embed.proj.weight)


def test_truncated_safetensors_gets_a_clear_error(tmp_path):
    model, _ = tiny("r-mvp")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or truncated"):
        voltron.load(tmp_path)


def test_malformed_config_names_file_and_position(tmp_path):
    model, _ = tiny("r-mvp")
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"family": "r-mvp",\n "size": }')
    with pytest.raises(CheckpointError, match=r"config.json: malformed model config at line 2, column"):
        voltron.load(tmp_path)


# config.json of v-cond-tiny and r-r3m-rn50-tiny as main wrote them while ModelConfig was one flat dataclass of every
# family's fields (format voltron-encoder/1): each carries the other families' keys at their default or size values.
FLAT_CONFIGS = {
    "v-cond-tiny": """{"format": "voltron-encoder/1", "family": "v-cond", "size": "tiny", "image_size": 224,
        "patch_size": 16, "in_channels": 3, "embed_dim": 96, "depth": 2, "n_heads": 3, "mlp_ratio": 4.0,
        "decoder_embed_dim": 64, "decoder_depth": 1, "decoder_n_heads": 2, "mask_ratio": 0.75, "language_model": "minilm",
        "max_lang_len": 20, "lang_cache_size": 0, "legacy_query_mask": false, "gen_ratio": 0.5, "mae_weight": 1.0,
        "lm_weight": 0.5, "trunk": "vit", "l1_weight": 1e-05, "l2_weight": 1e-05, "tcn_weight": 1.0, "lang_weight": 1.0,
        "n_negatives": 3, "reward_hidden": 1024, "resize": 224, "crop": 224, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225]}""",
    "r-r3m-rn50-tiny": """{"format": "voltron-encoder/1", "family": "r-r3m-rn50", "size": "tiny", "image_size": 64,
        "patch_size": 16, "in_channels": 3, "embed_dim": 2048, "depth": 0, "n_heads": 16, "mlp_ratio": 4.0,
        "decoder_embed_dim": 64, "decoder_depth": 1, "decoder_n_heads": 2, "mask_ratio": 0.75, "language_model": "minilm",
        "max_lang_len": 20, "lang_cache_size": 0, "legacy_query_mask": false, "gen_ratio": 0.5, "mae_weight": 1.0,
        "lm_weight": 0.5, "trunk": "resnet50", "l1_weight": 1e-05, "l2_weight": 1e-05, "tcn_weight": 1.0,
        "lang_weight": 1.0, "n_negatives": 3, "reward_hidden": 1024, "resize": 64, "crop": 64, "mean": [0.0, 0.0, 0.0],
        "std": [0.00392156862745098, 0.00392156862745098, 0.00392156862745098]}""",
}


@pytest.mark.parametrize("name", sorted(FLAT_CONFIGS))
def test_each_family_owns_its_config_fields_and_flat_files_still_load(name, tmp_path):
    (tmp_path / "config.json").write_text(FLAT_CONFIGS[name])
    config = read_config(tmp_path)
    assert config == default_config(name) and type(config) is FAMILIES[config.family].model_class.config_class
    foreign = {"v-cond": {"trunk", "reward_hidden", "gen_ratio"}, "r-r3m-rn50": {"mask_ratio", "decoder_depth"}}
    assert not foreign[config.family] & set(config.to_dict())  # nor are they written again


@pytest.mark.parametrize(
    ("name", "key", "value", "owners"),
    [("v-cond-tiny", "trunk", "resnet50", "r-r3m-vit, r-r3m-rn50"), ("r-r3m-rn50-tiny", "mask_ratio", 0.9, "v-cond")],
)
def test_another_familys_key_is_refused_naming_key_and_family(name, key, value, owners, tmp_path):
    family = name.removesuffix("-tiny")
    expected = rf"{key}={value!r}: a key of {owners}.*which {family} does not have"
    with pytest.raises(UserError, match=expected):
        default_config(name, **{key: value})
    # an old flat file whose foreign key was set on purpose (not its default) is refused, not silently dropped
    data = {**json.loads(FLAT_CONFIGS[name]), key: value}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=rf"config.json: {expected}"):
        read_config(tmp_path)


# === Upstream import ===
def test_convert_upstream_release_checkpoint(tmp_path):
    """A state dict in the upstream V-Gen key layout ([state_dict, optimizer] list, DDP prefixes, lm.* weights,
    4-D tokens) imports, switches on the legacy query mask, and reproduces the source weights' outputs."""
    torch.manual_seed(0)
    source = build_model("v-gen-tiny", legacy_query_mask=True).eval()
    renames = {
        "img_token": "img_enc_token",
        "lang_token": "lang_enc_token",
        "decoder_prediction": "decoder_patch_prediction",
    }
    upstream = {}
    for key, value in source.state_dict().items():
        head, dot, rest = key.partition(".")
        key = renames.get(head, head) + dot + rest
        if key in ("img_enc_token",):
            value = value.view(1, 1, 1, -1)  # upstream keeps an extra context axis
        upstream[f"module.{key}"] = value
    upstream["module.prefix_mask"] = torch.ones(1, 1, 412, 412, dtype=torch.uint8)
    upstream["module.img_dec_token"] = torch.zeros(1, 1, 1, 64)
    torch.save([upstream, {"state": {}}], tmp_path / "v-gen.pt")
    config = {
        "resolution": 224, "patch_size": 16, "encoder_depth": 2, "encoder_embed_dim": 96, "encoder_n_heads": 3,
        "decoder_depth": 1, "decoder_embed_dim": 64, "decoder_n_heads": 2, "language_model": "minilm",
        "max_lang_len": 20, "vocab_size": 30522, "optimizer": "adamw", "mask_ratio": 0.75,
    }  # fmt: skip
    (tmp_path / "v-gen-config.json").write_text(__import__("json").dumps(config))
    out = convert_upstream(tmp_path / "v-gen.pt", tmp_path / "v-gen-config.json", tmp_path / "converted")
    model, _ = voltron.load(out)
    assert model.config.legacy_query_mask and model.family == "v-gen"
    images = images_for(model)
    assert torch.allclose(model(images, CAPTIONS), source(images, CAPTIONS), atol=1e-6)

    torch.save({"model_state_dict": {"module.bogus": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing keys"):
        convert_upstream(tmp_path / "bad.pt", tmp_path / "v-gen-config.json", tmp_path / "x", family="v-gen")


def test_unreachable_language_model_suggests_a_local_path_or_minilm():
    import time

    from voltron.models.language import load_tokenizer

    start = time.perf_counter()
    with pytest.raises(OSError, match="local directory.*'minilm'"):
        load_tokenizer("distilbert-base-uncased-not-cached")
    assert time.perf_counter() - start < 10, "an offline machine must fail at once, not retry the hub"


def test_map_folds_its_input_projection_exactly():
    """MAPAttention folds the token projection and key weights into the queries; the result and every parameter
    gradient equal the textbook form (project every token, then attend) to float rounding."""
    import torch.nn.functional as F

    from voltron.models.extractors import MAPBlock

    torch.manual_seed(0)
    block = MAPBlock(48, 4, n_latents=2)
    tokens, mask = torch.randn(3, 10, 48), torch.ones(3, 10)
    mask[1, 6:] = 0

    def textbook() -> torch.Tensor:
        attn, (batch, length, dim) = block.attn, tokens.shape
        x = block.projection(tokens)
        z = block.latents.unsqueeze(0).expand(batch, -1, -1)
        q = attn.q(z).view(batch, 2, 4, -1).transpose(1, 2)
        k, v = attn.kv(x).view(batch, length, 2, 4, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.bool()[:, None, None, :])
        z = block.attn_norm(z + attn.proj(out.transpose(1, 2).reshape(batch, 2, dim)))
        return block.mlp_norm(z + block.mlp(z))

    results = []
    for forward in (lambda: block(tokens, mask), textbook):
        block.zero_grad()
        out = forward()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in block.named_parameters()}))
    (folded, folded_grads), (reference, reference_grads) = results
    assert torch.allclose(folded, reference, atol=1e-5)
    for name, grad in reference_grads.items():
        assert torch.allclose(folded_grads[name], grad, atol=1e-5, rtol=1e-4), name
