"""The compiled draw (models/row_draw.py): the guidance mix and the class guide's steer are torch's bits, the
codes are the ones controls.draw picks from them, and the codes become the rows' next inputs; a sampled
video is the same with the compiled draw as with torch's, top-k and top-p samples and class guides
included; what does not fit the plan is refused."""

from __future__ import annotations

import pytest
import torch
from model_factory import random_gpt
from test_class_guide import CLASSES, FRAMES, VQ_CONFIG, _prior_on, _recognizer

from models import kernels, sample
from models.controls import draw
from models.engine import DecodeEngine, SampleRequest, _Plan
from models.row_draw import RowDraw, row_draw
from models.sampling import ClassGuide

N_CODES = 40


@pytest.fixture
def library():
    found = row_draw()
    if found is None:
        pytest.skip("no C compiler: the engine draws with torch")
    return found


def _plan(samples: int = 5, guided: bool = True) -> tuple[_Plan, torch.Tensor, torch.Tensor]:
    """A plan of samples on rows [2i, 2i+1] (conditioned, unconditioned), the first two steered by a guide
    of four rows; the tokens tensors the codes go to."""
    gen = torch.Generator().manual_seed(3)
    plan = _Plan(
        live=[None] * samples, main=torch.arange(samples) * 2, companion=torch.arange(samples) * 2 + 1,
        scales=torch.tensor([1.0, 4.0, 0.3, -0.2, 2.5])[:samples],
        temperature=torch.tensor([1.0, 0.9, 1.7, 0.5, 1.0])[:samples],
        top_k=torch.zeros(samples, dtype=torch.long), top_p=torch.ones(samples),
        uniforms=torch.rand(samples, 50, generator=gen, dtype=torch.float64),
        drawn=torch.zeros(samples, dtype=torch.long),
        main_rows=torch.arange(2 * samples), main_owner=torch.arange(samples).repeat_interleave(2))
    if guided:
        plan.guided, plan.guide_class = torch.tensor([0, 1]), torch.tensor([0, 2])
        plan.guide_none = torch.tensor([1, 3])
        plan.guide_scales, plan.guide_rows = torch.tensor([3.0, 0.7]), torch.arange(4)
        plan.guide_owner = torch.tensor([0, 0, 1, 1])
    return plan, torch.zeros(2 * samples, dtype=torch.long), torch.zeros(4, dtype=torch.long)


def _compiled(library, plan: _Plan, main_tokens, guide_tokens, drawn_here=None) -> RowDraw:
    guide = None if plan.guided is None else {
        "guided": plan.guided, "class": plan.guide_class, "none": plan.guide_none, "rows": plan.guide_rows,
        "owner": plan.guide_owner, "tokens": guide_tokens, "scales": plan.guide_scales}
    samples = plan.main.shape[0]
    here = torch.ones(samples, dtype=torch.bool) if drawn_here is None else drawn_here
    return RowDraw(library, N_CODES, plan.main, plan.companion, plan.scales, plan.temperature, here,
                   plan.uniforms, plan.drawn, main_tokens, plan.main_rows, plan.main_owner, guide)


@pytest.mark.parametrize("guided", [False, True], ids=["guidance", "guidance-and-class-guide"])
def test_the_mix_is_torch_s_bits_and_the_codes_controls_draw_s(library, guided):
    plan, main_tokens, guide_tokens = _plan(guided=guided)
    compiled = _compiled(library, plan, main_tokens, guide_tokens)
    gen = torch.Generator().manual_seed(5)
    for step in range(50):
        logits = 4 * torch.randn(10, N_CODES, generator=gen)
        guide_logits = 4 * torch.randn(4, N_CODES, generator=gen) if guided else None
        mixed = DecodeEngine._mix(plan, logits, guide_logits)
        expected = draw(mixed, plan.temperature, plan.top_k, plan.top_p, plan.uniforms[:, step], truncated=False)
        codes = compiled(logits, guide_logits)
        assert torch.equal(compiled.chosen, mixed), f"step {step}: the mix differs from torch's"
        assert torch.equal(codes, expected), f"step {step}: codes {codes.tolist()} against {expected.tolist()}"
        assert plan.drawn.tolist() == [step + 1] * 5  # each sample's next uniform
        assert torch.equal(main_tokens, codes.repeat_interleave(2))
        if guided:
            assert torch.equal(guide_tokens, codes[plan.guide_owner])


def test_samples_left_to_torch_are_mixed_but_not_drawn_nor_written(library):
    plan, main_tokens, guide_tokens = _plan(guided=False)
    compiled = _compiled(library, plan, main_tokens, guide_tokens,
                         drawn_here=torch.tensor([True, False, True, True, True]))
    logits = torch.randn(10, N_CODES, generator=torch.Generator().manual_seed(1))
    compiled(logits, write_tokens=False)
    assert torch.equal(compiled.chosen, DecodeEngine._mix(plan, logits, None))
    assert plan.drawn.tolist() == [1] * 5  # the uniform torch draws it with was taken before the call
    assert not bool(main_tokens.any())  # nothing written: torch writes once it has drawn its samples


@pytest.mark.parametrize("case", ["classes", "frames-with-class-guide"])
def test_a_sampled_video_is_the_same_drawn_compiled_or_with_torch(case, monkeypatch):
    if case == "classes":
        gpt = random_gpt(VQ_CONFIG, CLASSES, seed=2)
        kwargs = {"class_labels": [0, 1, 2, 1], "guidance": [1.0, 3.0, 2.0, 0.5], "top_k": [None, None, 5, None],
                  "top_p": [None, 0.8, None, None], "temperature": [1.0, 0.9, 1.2, 1.0]}
    else:
        gpt = random_gpt(VQ_CONFIG, FRAMES, seed=1)
        gpt.class_guide = ClassGuide(_prior_on(gpt.vqvae), _recognizer(), 3.0)
        kwargs = {"cond_frames": torch.rand(3, 3, 1, 32, 32) - 0.5, "guidance": 2.0, "top_p": [None, 0.9, None]}
    videos = {}
    for way in ("compiled", "torch"):
        monkeypatch.setattr(kernels, "ENABLED", set(kernels.KERNELS) - (set() if way == "compiled" else {"row_draw"}))
        videos[way] = sample(gpt, 4 if case == "classes" else 3, seed=11, **kwargs)
    assert torch.equal(videos["compiled"], videos["torch"])


def test_the_engine_draws_compiled_on_cpu_where_it_can(monkeypatch, library):
    gpt = random_gpt(VQ_CONFIG, CLASSES, seed=2)
    for enabled, expected in ((set(kernels.KERNELS), True), (set(kernels.KERNELS) - {"row_draw"}, False)):
        monkeypatch.setattr(kernels, "ENABLED", enabled)
        engine = DecodeEngine(gpt, slots=2)
        engine.add(SampleRequest(seed=1, class_label=1, guidance=2.0))
        engine.step()
        assert (engine._plan.compiled is not None) == expected


def test_what_does_not_fit_the_plan_is_refused(library):
    plan, main_tokens, guide_tokens = _plan(guided=True)
    compiled = _compiled(library, plan, main_tokens, guide_tokens)
    with pytest.raises(ValueError, match="float32 logits"):
        compiled(torch.zeros(10, N_CODES, dtype=torch.float64), torch.zeros(4, N_CODES))
    with pytest.raises(ValueError, match="float32 logits"):
        compiled(torch.zeros(10, N_CODES + 1), torch.zeros(4, N_CODES))
    with pytest.raises(ValueError, match="beyond the step's 9 rows"):
        compiled(torch.zeros(9, N_CODES), torch.zeros(4, N_CODES))
    with pytest.raises(ValueError, match="beyond"):
        compiled(torch.zeros(10, N_CODES), None)  # a steered plan without its guide's logits
    assert plan.drawn.tolist() == [0] * 5 and not bool(main_tokens.any())  # nothing drawn
    with pytest.raises(ValueError, match="tokens not int64"):  # written to: a converted copy would hide them
        _compiled(library, plan, main_tokens, guide_tokens.int())
    plan.main_owner = plan.main_owner + 3
    with pytest.raises(ValueError, match="every row within"):
        _compiled(library, plan, main_tokens, guide_tokens)
