"""Which model a request gets when it names none, and the guidance scale its job samples with."""

import pytest

from service.errors import ApiError
from service.requests import default_for, request_guidance, resolve_model
from service.schemas import GenerateRequest

MODELS = {
    "digits": {"name": "digits", "modes": ["unconditional", "class"], "workers_up": 1, "guidance": 3.0,
               "guidance_supported": True},
    "drawing": {"name": "drawing", "modes": ["unconditional", "class"], "workers_up": 1, "guidance": 3.0,
                "guidance_supported": True, "unconditional": "classes"},
    "digits-frames": {"name": "digits-frames", "modes": ["frames"], "workers_up": 1, "guidance": 1.0,
                      "guidance_supported": False},
    "asleep": {"name": "asleep", "modes": ["unconditional", "class", "frames"], "workers_up": 0},
}


@pytest.mark.parametrize("default, mode, expected", [
    ("digits", "class", "digits"),
    ("digits", "frames", "digits-frames"),  # the default does not do frames: a served model that does
    (None, "unconditional", "digits"),
    ("asleep", "frames", "asleep"),  # the configured default first, served or not
    (None, "sideways", "digits"),  # no model does it: the usual order, and the mode check refuses it later
    ("digits-frames,digits", "frames", "digits-frames"),  # a list: the first of it that does the mode
    ("digits-frames, digits", "class", "digits"),
    ("gone,digits-frames", "unconditional", "digits"),  # unknown names are passed over; none does it: served
])
def test_a_request_without_a_model_gets_one_that_does_its_mode(default, mode, expected):
    assert resolve_model(None, MODELS, default, mode)["name"] == expected


def test_adding_a_model_changes_nothing_for_the_pinned_defaults():
    """What `up` does: VGS_DEFAULT_MODEL lists its bundles, so a model served beside them later (here one
    that sorts first) does not take the requests that name none."""
    pinned = "digits,digits-frames"
    before = {mode: default_for(mode, MODELS, pinned) for mode in ("unconditional", "class", "frames")}
    more = {**MODELS, "another": {"name": "another", "modes": ["unconditional", "class", "frames"], "workers_up": 1}}
    assert {mode: default_for(mode, more, pinned) for mode in before} == before == {
        "unconditional": "digits", "class": "digits", "frames": "digits-frames"}
    assert default_for("unconditional", more, None) == "another"  # unpinned: the first by name a worker serves


def test_no_models_is_503_and_an_unknown_name_is_named():
    with pytest.raises(ApiError) as caught:
        resolve_model(None, {}, None, "class")
    assert caught.value.status == 503
    with pytest.raises(ApiError, match="unknown model 'x'; available: asleep, digits, digits-frames"):
        resolve_model("x", MODELS, None, "class")


def test_guidance_defaults_to_the_models_and_is_refused_where_it_cannot_apply():
    def guidance(model, **body):
        return request_guidance(GenerateRequest(**body), MODELS[model])

    assert guidance("digits", mode="class", class_label=1) == 3.0
    assert guidance("digits", mode="class", class_label=1, guidance=1.5) == 1.5
    assert guidance("digits", mode="unconditional") == 1.0
    # A prior that draws unconditional requests a class steers towards it as class requests do.
    assert guidance("drawing", mode="unconditional") == 3.0
    assert guidance("drawing", mode="unconditional", guidance=1) == 1.0
    assert guidance("digits-frames", mode="frames", cond_frames="x") == 1.0
    assert guidance("digits-frames", mode="frames", cond_frames="x", guidance=1) == 1.0
    with pytest.raises(ApiError, match="'digits-frames' was not trained with condition dropout"):
        guidance("digits-frames", mode="frames", cond_frames="x", guidance=2)
    with pytest.raises(ApiError, match="leave it out in mode 'unconditional'"):
        guidance("digits", mode="unconditional", guidance=2)
