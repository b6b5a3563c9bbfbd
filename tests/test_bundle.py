"""Bundles round-trip exactly and refuse configs and tensors that do not fit."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import (
    BundleInfo,
    CheckpointError,
    ConfigError,
    GPTConfig,
    VideoGPT,
    VQVAEConfig,
    convert_official_checkpoint,
    load_gpt,
    load_vqvae,
    save_bundle,
)

ALL_FIXTURES = ["vqvae_s244", "gpt_classcond_full", "gpt_uncond_sparse", "gpt_framecond_full"]


@pytest.fixture
def gpt_bundle(tmp_path, fixtures_dir):
    return convert_official_checkpoint(fixtures_dir / "gpt_classcond_full.ckpt", tmp_path / "gpt",
                                       class_names=["a", "b", "c", "d", "e"])


def _state(model):
    return model.state_dict()


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_convert_load_save_load_gives_identical_tensors(tmp_path, fixtures_dir, name):
    first_dir = convert_official_checkpoint(fixtures_dir / f"{name}.ckpt", tmp_path / "first", fps=10)
    load = load_vqvae if name.startswith("vqvae") else load_gpt
    first = load(first_dir)
    second_dir = save_bundle(first, tmp_path / "second", first.info)
    second = load(second_dir)
    a, b = _state(first), _state(second)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert json.loads((first_dir / "config.json").read_text()) == json.loads((second_dir / "config.json").read_text())
    assert second.info.fps == 10


def test_bundle_records_every_setting(gpt_bundle):
    config = json.loads((gpt_bundle / "config.json").read_text())
    assert config["format"] == "videogpt-serve-bundle" and config["format_version"] == 1
    assert config["kind"] == "gpt" and config["name"] == "gpt_classcond_full"
    assert config["class_names"] == ["a", "b", "c", "d", "e"]
    assert set(config["gpt"]) == {f.name for f in dataclasses.fields(GPTConfig)}
    assert set(config["vqvae"]) == {f.name for f in dataclasses.fields(VQVAEConfig)}
    assert config["latent_shape"] == [4, 8, 8]
    # derived causal masks are not shipped
    assert not any(k.endswith("attn.attn.mask") for k in load_file(str(gpt_bundle / "gpt.safetensors")))


def _edit_config(bundle, **changes):
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    for dotted, value in changes.items():
        target = config
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[leaf]
        else:
            target[leaf] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    ({"gpt__hidden_dim": 50}, "hidden_dim 50 must be divisible by 3"),
    ({"gpt__heads": 5}, "divisible by heads 5"),
    ({"gpt__attn_type": "dense"}, "attn_type must be one of full, sparse"),
    ({"gpt__dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
    ({"gpt__layers": KeyError}, "missing setting 'layers'"),
    ({"gpt__n_layers": 3}, "unknown setting 'n_layers'"),
    ({"vqvae__downsample": [3, 4, 4]}, "powers of two"),
    ({"vqvae__resolution": 30}, "does not divide the video size"),
    ({"class_names": ["a", "b"]}, "2 class_names for a model with 5 classes"),
    ({"format_version": 99}, "format_version 99 is not supported"),
    ({"kind": "diffusion"}, "kind must be 'vqvae' or 'gpt'"),
    ({"fps": -1}, r"fps must be a number in \(0, 240\]"),
    ({"guidance": "high"}, r"guidance must be a number in \[0, 20.0\]"),
    ({"guidance": 2.0}, "guidance 2.0 needs a prior trained with condition dropout"),
    ({"temperature": 0}, r"temperature must be a number in \(0, 10\], got 0"),
    ({"temperature": "warm"}, r"temperature must be a number in \(0, 10\], got 'warm'"),
])
def test_bad_config_is_refused_with_a_message(gpt_bundle, changes, message):
    _edit_config(gpt_bundle, **changes)
    with pytest.raises(ConfigError, match=message):
        load_gpt(gpt_bundle)


def test_guidance_default_round_trips_and_older_bundles_still_load(tmp_path, gpt_bundle):
    gpt = load_gpt(gpt_bundle)
    assert gpt.info.guidance == 1.0
    optional = dataclasses.replace(gpt.config, condition_dropout=0.2, aligned_frames=False)
    model = VideoGPT(optional, gpt.vqvae)
    saved = save_bundle(model, tmp_path / "guided", dataclasses.replace(gpt.info, guidance=2.5, temperature=0.8))
    info = load_gpt(saved).info
    assert (info.guidance, info.temperature) == (2.5, 0.8)
    with pytest.raises(ConfigError, match="guidance 2.5 needs a prior trained with condition dropout"):
        save_bundle(gpt, tmp_path / "refused", dataclasses.replace(gpt.info, guidance=2.5))
    # Bundles written before guidance, temperature, aligned_frames (and its steps), global_frames, axial_attention and
    # padding existed load with the defaults, which are what their models computed.
    _edit_config(saved, guidance=KeyError, temperature=KeyError, gpt__aligned_frames=KeyError,
                 gpt__aligned_steps=KeyError, gpt__global_frames=KeyError, vqvae__axial_attention=KeyError,
                 vqvae__padding=KeyError, unconditional=KeyError)
    old = load_gpt(saved)
    assert old.info.guidance == 1.0 and old.info.temperature == 1.0 and old.info.unconditional == "dropped"
    assert old.config == optional and old.vqvae.config == gpt.vqvae.config


def test_update_config_writes_valid_settings_and_leaves_a_bundle_as_it_was_otherwise(gpt_bundle):
    from models.bundle import update_config

    assert update_config(gpt_bundle, {"temperature": 0.85}).temperature == 0.85
    assert load_gpt(gpt_bundle).info.temperature == 0.85
    before = (gpt_bundle / "config.json").read_text()
    with pytest.raises(ConfigError, match="guidance 3 needs a prior trained with condition dropout"):
        update_config(gpt_bundle, {"guidance": 3})
    assert (gpt_bundle / "config.json").read_text() == before


def test_config_that_is_not_json(gpt_bundle):
    (gpt_bundle / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_gpt(gpt_bundle)


def test_missing_bundle_and_missing_files(tmp_path, gpt_bundle):
    with pytest.raises(CheckpointError, match="no such bundle directory"):
        load_gpt(tmp_path / "nowhere")
    (gpt_bundle / "gpt.safetensors").unlink()
    with pytest.raises(CheckpointError, match="bundle is missing gpt.safetensors"):
        load_gpt(gpt_bundle)


def test_vqvae_bundle_is_not_a_gpt(tmp_path, fixtures_dir):
    out = convert_official_checkpoint(fixtures_dir / "vqvae_s244.ckpt", tmp_path / "vq")
    with pytest.raises(CheckpointError, match="holds only a VQ-VAE"):
        load_gpt(out)


def _edit_tensors(path, edit):
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_tensor_of_the_wrong_shape_is_named(gpt_bundle):
    _edit_tensors(gpt_bundle / "gpt.safetensors",
                  lambda t: t.__setitem__("attn_stack.pos_embd.emb.d_1", torch.zeros(9, 16)))
    with pytest.raises(CheckpointError, match=r"'attn_stack\.pos_embd\.emb\.d_1' has shape \[9, 16\], "
                                              r"the config expects \[8, 16\]"):
        load_gpt(gpt_bundle)


def test_missing_and_unexpected_tensors_are_named(gpt_bundle):
    _edit_tensors(gpt_bundle / "vqvae.safetensors", lambda t: t.pop("codebook.N"))
    with pytest.raises(CheckpointError, match="missing tensor 'codebook.N'"):
        load_vqvae(gpt_bundle)
    _edit_tensors(gpt_bundle / "vqvae.safetensors", lambda t: t.update({"codebook.N": torch.zeros(64),
                                                                         "codebook.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected tensor 'codebook.extra'"):
        load_vqvae(gpt_bundle)


def test_corrupt_safetensors(gpt_bundle):
    (gpt_bundle / "gpt.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_gpt(gpt_bundle)


def test_configs_validate_on_construction():
    with pytest.raises(ConfigError, match="hidden_dim 50 must be divisible by 3"):
        GPTConfig(hidden_dim=50, heads=5)
    with pytest.raises(ConfigError, match="downsample must have 3 entries"):
        VQVAEConfig(downsample=(4, 4))
    with pytest.raises(ConfigError, match="n_codes must be at least 1"):
        VQVAEConfig(n_codes=0)
    with pytest.raises(ConfigError, match="must be an integer"):
        GPTConfig(layers="8")


def test_sparse_prior_needs_whole_blocks():
    from models import VQVAE, VideoGPT

    vq = VQVAE(VQVAEConfig(embedding_dim=4, n_codes=8, n_hiddens=4, n_res_layers=0, downsample=(2, 2, 2),
                           sequence_length=6, resolution=12))  # latent 3x6x6 = 108 positions
    with pytest.raises(ConfigError, match="divisible by the block size 32"):
        VideoGPT(GPTConfig(hidden_dim=12, heads=2, layers=1, attn_type="sparse"), vq)


def test_save_refuses_class_names_that_do_not_fit(tmp_path, gpt_bundle):
    gpt = load_gpt(gpt_bundle)
    with pytest.raises(ConfigError, match="3 class_names for a model with 5 classes"):
        save_bundle(gpt, tmp_path / "x", BundleInfo(name="x", class_names=["a", "b", "c"]))
