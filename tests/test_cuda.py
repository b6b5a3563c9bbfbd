"""The CUDA paths (skipped without a GPU; bench/gpu.sh runs them where there is one): the step captured as
a CUDA graph equals the plain step, and a sample's codes do not depend on its companions there either."""

from __future__ import annotations

import pytest
import torch
from model_factory import random_gpt

from models import GPTConfig, VQVAEConfig, sample
from models.decoding import RowDecoder
from models.engine import DecodeEngine, SampleRequest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh)")

VQ = VQVAEConfig(embedding_dim=8, n_codes=32, n_hiddens=16, n_res_layers=1, downsample=(2, 4, 4),
                 sequence_length=8, resolution=32)
CONFIGS = {
    "full": GPTConfig(hidden_dim=48, heads=3, layers=2, attn_type="full", class_cond_dim=4, condition_dropout=0.5,
                      dropout=0.0, attn_dropout=0.0),
    "sparse-frames": GPTConfig(hidden_dim=48, heads=3, layers=2, attn_type="sparse", n_cond_frames=2,
                               condition_dropout=0.5, resnet_widths=(8, 16, 16), resnet_blocks=(1, 1, 1, 1),
                               dropout=0.0, attn_dropout=0.0),
}


@pytest.fixture(params=sorted(CONFIGS))
def gpt(request):
    return random_gpt(VQ, CONFIGS[request.param], seed=2).cuda()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_captured_step_equals_the_plain_step(gpt, precision):
    codes = torch.randint(0, gpt.n_codes, (3, *gpt.latent_shape), device="cuda")
    cond = gpt.condition(None, None, 3)
    outs = {}
    for graph in (True, False):
        decoder = RowDecoder(gpt, 4, cuda_graph=graph, precision=precision)
        decoder.admit(cond, 3)
        steps = []
        for pos in range(codes[0].numel()):
            steps.append(decoder.step().float())
            decoder.set_tokens(torch.arange(3, device="cuda"), codes.flatten(1)[:, pos])
        outs[graph] = torch.stack(steps)
    tolerance = 1e-4 if precision == "float32" else 5e-2
    assert (outs[True] - outs[False]).abs().max() < tolerance * outs[False].abs().max().clamp_min(1)


def test_a_sample_joining_a_running_engine_keeps_its_codes(gpt):
    c = gpt.config
    requests = [SampleRequest(seed=100 + i, class_label=i % 4 if c.class_conditional else None,
                              guidance=[1.0, 2.0][i % 2], tag=i) for i in range(4)]
    alone = []
    for r in requests:
        engine = DecodeEngine(gpt, slots=8)
        engine.add(r)
        while engine.live:
            finished = engine.step()
        alone.append(finished[0].codes)
    engine = DecodeEngine(gpt, slots=8)
    engine.add(requests[0])
    got, step = {}, 0
    pending = dict(enumerate(requests[1:], start=1))
    while engine.live or pending:
        if step in (2, 5, 9) and pending:
            engine.add(pending.pop(min(pending)))
        for f in engine.step():
            got[f.tag] = f.codes
        step += 1
    for i in range(4):
        assert torch.equal(got[i], alone[i])


def test_reduced_precisions_sample_on_the_gpu(gpt):
    for precision in ("bfloat16", "int8"):
        gpt.decode_precision = precision
        try:
            codes = sample(gpt, 2, seed=1)
        finally:
            gpt.decode_precision = "float32"
        assert codes.shape == (2, *gpt.latent_shape) and int(codes.max()) < gpt.n_codes


def test_sampled_codes_decode_to_video_on_the_gpu(gpt):
    """What a worker does with a model on the GPU: sample (the engine hands grids back on the CPU), then
    decode, at the trained length and longer (later windows condition on frames decoded on the way)."""
    t = gpt.latent_shape[0]
    for time_steps in (None, 2 * t):
        codes = sample(gpt, 2, seed=3, time_steps=time_steps, window_stride=t // 2 if time_steps else None)
        video = gpt.vqvae.decode_long(codes)
        steps = time_steps or t
        assert video.device.type == "cuda"
        assert video.shape[:3] == (2, 3, steps * gpt.vqvae.config.downsample[0])
        assert torch.isfinite(video).all()


def test_a_sample_has_the_same_codes_in_an_engine_of_its_own_size_as_in_a_worker_s(gpt):
    """`sample` builds an engine of just the rows its samples take; a worker's has VGS_ENGINE_SLOTS. Under
    the CUDA graph every step computes all of an engine's rows, so the products have other row counts in
    the two (cuBLAS picks its kernels by shape): a seed must give the same codes all the same."""
    c = gpt.config
    requests = [SampleRequest(seed=300 + i, class_label=i % 4 if c.class_conditional else None,
                              guidance=[2.0, 1.0][i % 2], tag=i) for i in range(6)]
    own = []
    for r in requests[:2]:
        engine = DecodeEngine(gpt, slots=2 if r.guidance != 1 else 1)
        engine.add(r)
        while engine.live:
            finished = engine.step()
        own.append(finished[0].codes)
    worker = DecodeEngine(gpt, slots=16)
    for r in requests:
        worker.add(r)
    got = {}
    while worker.live:
        for f in worker.step():
            got[f.tag] = f.codes
    for i in range(2):
        assert torch.equal(got[i], own[i]), f"sample {i} changed with the engine's size"
