"""How many slots a continuously batching worker gives a model's engine by default."""

from __future__ import annotations

import pytest

from models import load_gpt
from models.engine import step_read_bytes
from worker.continuous import engine_slots, last_level_cache_bytes

MB = 1 << 20


@pytest.fixture(scope="module")
def shipped():
    return load_gpt("weights/moving-digits", precision="float32"), load_gpt("weights/moving-digits-frames",
                                                                             precision="float32")


def test_a_step_reads_half_the_video_of_every_layers_keys_and_values(shipped):
    class_prior, _ = shipped
    c = class_prior.config
    positions = (512 + 1) / 2  # full attention over 8x8x8 codes: position i reads i + 1 of them
    assert step_read_bytes(class_prior) == pytest.approx(2 * c.layers * c.hidden_dim * 4 * positions)


def test_slots_keep_a_cpu_steps_reads_within_a_third_of_its_cache(shipped):
    class_prior, frames_prior = shipped
    guided = 2 * step_read_bytes(class_prior)  # a guided sample: two rows
    assert engine_slots(class_prior, None, 8) == 16  # no cache known (a GPU): room for 8 guided samples
    assert engine_slots(class_prior, None, 8, 32 * MB) == 2 * int(32 * MB / 3 // guided) == 8
    assert engine_slots(class_prior, None, 8, 1024 * MB) == 16  # never more than VGS_BATCH_SIZE samples
    assert engine_slots(class_prior, None, 8, 1 * MB) == 2  # always room for one sample
    assert engine_slots(class_prior, 5, 8, 1 * MB) == 5  # VGS_ENGINE_SLOTS is what it says
    # a frames sample also takes two rows of its class guide, which read too
    with_guide = guided + 2 * step_read_bytes(frames_prior.class_guide.prior)
    assert engine_slots(frames_prior, None, 8, 32 * MB) == 2 * int(32 * MB / 3 // with_guide) < 8


def test_the_last_level_cache_is_read_from_the_machine():
    size = last_level_cache_bytes()
    assert size is None or size >= 64 * 1024
