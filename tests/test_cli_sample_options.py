"""The command line's long videos and decoding precisions: `sample --num-frames`, `sample --precision`,
`fidelity` (measured and recorded in the bundle), and the worker's VGS_PRECISION."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError
from service_stack import write_bundle
from test_video_and_cli_sample import probe

from cli.main import main
from jobs.settings import ServiceSettings
from models import load_gpt, read_bundle_config, sample


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles")
    # tiny: 4 frames natively, 2 per latent time step; short: one latent time step of 2 frames.
    return {"tiny": write_bundle(out, "tiny"), "short": write_bundle(out, "short", latent=(1, 4, 4))}


def test_sample_num_frames_writes_that_many_frames(bundles, tmp_path, capsys):
    out = tmp_path / "long.mp4"
    assert main(["sample", str(bundles["tiny"]), "--num-frames", "12", "--label", "two", "--seed", "3",
                 "-o", str(out), "--scale", "1"]) == 0
    assert "1 x 12 frames" in capsys.readouterr().out
    assert probe(out)[1].shape[0] == 12
    assert main(["sample", str(bundles["tiny"]), "--num-frames", "2", "--n", "2", "--per-sample",
                 "-o", str(tmp_path / "s.mp4"), "--scale", "1"]) == 0  # shorter than native works too
    assert probe(tmp_path / "s_1.mp4")[1].shape[0] == 2


@pytest.mark.parametrize("bundle, frames, text", [
    ("tiny", "3", "--num-frames must be a positive multiple of 2"),
    ("tiny", "0", "--num-frames must be a positive multiple of 2"),
    ("short", "4", "one latent time step, so it makes videos of 2 frames only"),
])
def test_sample_refuses_lengths_the_model_cannot_make(bundles, tmp_path, capsys, bundle, frames, text):
    assert main(["sample", str(bundles[bundle]), "--num-frames", frames, "-o", str(tmp_path / "x.mp4")]) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_sample_precision(bundles, tmp_path, capsys):
    for precision in ("bfloat16", "int8", "auto"):
        out = tmp_path / f"{precision}.mp4"
        assert main(["sample", str(bundles["tiny"]), "--precision", precision, "--seed", "1", "-o", str(out)]) == 0
        said = capsys.readouterr().out
        assert said.rstrip().endswith(("in float32", "in bfloat16", "in int8")), said
        if precision != "auto":
            assert said.rstrip().endswith(f"in {precision}")
        assert probe(out)[1].shape[0] == 4
    with pytest.raises(SystemExit) as exited:
        main(["sample", str(bundles["tiny"]), "--precision", "float16"])
    assert exited.value.code == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_fidelity_measures_and_records_in_the_bundle(bundles, tmp_path, capsys):
    bundle = Path(shutil.copytree(bundles["tiny"], tmp_path / "tiny"))
    before = (bundle / "config.json").read_text()
    assert main(["fidelity", str(bundle), "--n", "2", "--no-record"]) == 0
    said = capsys.readouterr().out
    assert "bfloat16: KL(float32 || bfloat16)" in said and "int8: KL(float32 || int8)" in said
    assert (bundle / "config.json").read_text() == before, "--no-record leaves the bundle as it was"

    assert main(["fidelity", str(bundle), "--n", "2"]) == 0
    assert "recorded in" in capsys.readouterr().out
    recorded = read_bundle_config(bundle)[0].precision_fidelity
    assert set(recorded) == {"bfloat16", "int8"}
    for figures in recorded.values():
        assert figures["kl_nats_per_code"] >= 0 and 0 <= figures["top1_agreement"] <= 1
    assert recorded["bfloat16"]["kl_nats_per_code"] < 0.01  # a random tiny prior is no hard case

    # Measuring one precision again keeps the other's record; auto then reads the record, not a measurement.
    config = json.loads((bundle / "config.json").read_text())
    config["precision_fidelity"]["int8"] = {"kl_nats_per_code": 5.0, "top1_agreement": 0.1}
    (bundle / "config.json").write_text(json.dumps(config))
    assert main(["fidelity", str(bundle), "--n", "2", "--precisions", "bfloat16"]) == 0
    recorded = read_bundle_config(bundle)[0].precision_fidelity
    assert recorded["int8"] == {"kl_nats_per_code": 5.0, "top1_agreement": 0.1}
    gpt = load_gpt(bundle, precision="auto")
    assert gpt.precision_report["fidelity"] == recorded
    assert "int8" not in gpt.precision_report["ms_per_step"], "auto never times a precision missing the goal"
    assert gpt.decode_precision in ("float32", "bfloat16")


def test_set_defaults_sets_what_sample_uses_and_refuses_bad_values(bundles, tmp_path, capsys, monkeypatch):
    import models

    bundle = Path(shutil.copytree(bundles["tiny"], tmp_path / "tiny"))
    assert main(["set-defaults", str(bundle), "--temperature", "0.8", "--guidance", "3"]) == 0
    assert "guidance 3, temperature 0.8" in capsys.readouterr().out
    info = read_bundle_config(bundle)[0]
    assert (info.guidance, info.temperature) == (3.0, 0.8)
    before = (bundle / "config.json").read_text()
    assert main(["set-defaults", str(bundle), "--temperature", "0"]) == 2
    assert "temperature must be a number in (0, 10], got 0" in capsys.readouterr().err
    assert (bundle / "config.json").read_text() == before

    asked = []
    real_sample = models.sample
    monkeypatch.setattr(models, "sample", lambda *a, **kw: asked.append(kw["temperature"]) or real_sample(*a, **kw))
    for extra, expected in (([], 0.8), (["--temperature", "1.2"], 1.2)):
        assert main(["sample", str(bundle), "--seed", "1", "-o", str(tmp_path / "t.mp4"), "--scale", "1", *extra]) == 0
        assert asked.pop() == expected, "sample takes the bundle's temperature unless told otherwise"


def test_fidelity_needs_a_prior(bundles, tmp_path, capsys):
    from models import load_vqvae, save_bundle
    from models.bundle import BundleInfo

    vq_bundle = save_bundle(load_vqvae(bundles["tiny"]), tmp_path / "vq", BundleInfo(name="vq", kind="vqvae"))
    assert main(["fidelity", str(vq_bundle)]) == 2
    assert "only a VQ-VAE" in capsys.readouterr().err


def test_the_worker_loads_in_vgs_precision_and_logs_it(bundles, monkeypatch, caplog):
    from worker.loading import load_models, model_info

    assert ServiceSettings().precision == "auto"
    monkeypatch.setenv("VGS_PRECISION", "fp16")
    with pytest.raises(ValidationError, match="precision"):
        ServiceSettings()
    caplog.set_level(logging.INFO, logger="worker.loading")
    models = load_models([bundles["tiny"]], "cpu", "int8")
    assert models["tiny"].decode_precision == "int8"
    assert model_info(models["tiny"], ServiceSettings(precision="int8"))["precision"] == "int8"
    assert "decoding in int8 (VGS_PRECISION int8: as asked)" in caplog.text
    caplog.clear()
    chosen = load_models([bundles["tiny"]], "cpu", "auto")["tiny"]
    assert f"decoding in {chosen.decode_precision} (VGS_PRECISION auto: " in caplog.text
    assert '"ms_per_step"' in caplog.text and '"fidelity"' in caplog.text  # what auto measured


def test_progress_counts_every_window_of_a_long_batch(bundles, monkeypatch):
    """The static path's progress: sample() reports codes over all windows, not the first one's."""
    import models.sampling

    monkeypatch.setattr(models.sampling, "PROGRESS_INTERVAL_S", 0.0)
    gpt = load_gpt(bundles["tiny"])
    t, h, w = gpt.latent_shape
    calls = []
    codes = sample(gpt, 2, seed=1, time_steps=4 * t, progress=lambda done, total: calls.append((done, total)))
    assert codes.shape == (2, 4 * t, h, w)
    assert {total for _, total in calls} == {4 * t * h * w}
    assert calls[-1] == (4 * t * h * w, 4 * t * h * w)
    assert any(t * h * w < done < 4 * t * h * w for done, _ in calls), "progress goes on past the first window"
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
