"""Tensors of the wrong shape, type or range get InputErrors that say what was expected."""

import pytest
import torch

from models import InputError, convert_official_checkpoint, load_gpt


@pytest.fixture(scope="module")
def models(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("bundles")
    return {name: load_gpt(convert_official_checkpoint(fixtures_dir / f"{name}.ckpt", out / name))
            for name in ("gpt_classcond_full", "gpt_uncond_sparse", "gpt_framecond_full")}


def test_encode_rejects_a_video_of_the_wrong_size(models):
    vq = models["gpt_uncond_sparse"].vqvae
    with pytest.raises(InputError, match=r"video has shape \(1, 3, 8, 64, 64\); this VQ-VAE takes \(B, 3, 8, 32, 32\)"):
        vq.encode(torch.zeros(1, 3, 8, 64, 64))
    with pytest.raises(InputError, match="float tensor"):
        vq.encode(torch.zeros(1, 3, 8, 32, 32, dtype=torch.uint8))


def test_decode_rejects_codes_out_of_range_or_shape(models):
    vq = models["gpt_uncond_sparse"].vqvae
    with pytest.raises(InputError, match=r"codes must lie in 0\.\.63, got values 0\.\.64"):
        vq.decode(torch.arange(256).view(1, 4, 8, 8) % 65)
    with pytest.raises(InputError, match=r"latent grid is \(B, 4, 8, 8\)"):
        vq.decode(torch.zeros(1, 4, 8, 9, dtype=torch.long))


def test_class_label_out_of_range(models):
    gpt = models["gpt_classcond_full"]
    codes = torch.zeros(2, 4, 8, 8, dtype=torch.long)
    with pytest.raises(InputError, match="class label 5 is out of range: this model has classes 0-4"):
        gpt.logits(codes, class_labels=torch.tensor([0, 5]))
    with pytest.raises(InputError, match="class label -1 is out of range"):
        gpt.logits(codes, class_labels=torch.tensor([-1, 0]))
    with pytest.raises(InputError, match="class_labels .* are required"):
        gpt.logits(codes)
    with pytest.raises(InputError, match=r"class_labels must be integers of shape \(2,\)"):
        gpt.logits(codes, class_labels=torch.tensor([1]))


def test_conditioning_the_model_does_not_take(models):
    codes = torch.zeros(1, 4, 8, 8, dtype=torch.long)
    with pytest.raises(InputError, match="not class-conditional"):
        models["gpt_uncond_sparse"].logits(codes, class_labels=torch.tensor([0]))
    with pytest.raises(InputError, match="not frame-conditional"):
        models["gpt_uncond_sparse"].logits(codes, cond_frames=torch.zeros(1, 3, 1, 32, 32))


def test_cond_frames_of_the_wrong_shape(models):
    gpt = models["gpt_framecond_full"]
    codes = torch.zeros(1, 4, 8, 8, dtype=torch.long)
    with pytest.raises(InputError, match=r"cond_frames of shape \(1, 3, 1, 32, 32\) are required"):
        gpt.logits(codes)
    with pytest.raises(InputError, match=r"got \(1, 3, 1, 16, 16\)"):
        gpt.logits(codes, cond_frames=torch.zeros(1, 3, 1, 16, 16))
