"""Model commands: convert and inspect bundles, sample, train, evaluate, and set a bundle's parts.

They import torch when they run, so the gateway (which has no torch) can share the command line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any


def _class_names(value: str | None) -> list[str] | None:
    """Class names from a comma-separated list, or from a file (one name per line) given as @path."""
    if value is None:
        return None
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [name.strip() for name in value.split(",") if name.strip()]


def cmd_convert(args: argparse.Namespace) -> int:
    from models import convert_official_checkpoint, read_bundle_config

    created = not Path(args.out_dir).exists()
    try:
        out = convert_official_checkpoint(args.checkpoint, args.out_dir, name=args.name, fps=args.fps,
                                          class_names=_class_names(args.class_names))
    except BaseException:
        if created:  # a failed conversion leaves nothing behind (not even the folder it made)
            shutil.rmtree(args.out_dir, ignore_errors=True)
        raise
    info, vq, gpt = read_bundle_config(out)
    print(f"wrote {info.kind} bundle '{info.name}' to {out}: latent {'x'.join(map(str, vq.latent_shape))}, "
          f"{vq.n_codes} codes" + (f", {gpt.layers} layers, {gpt.attn_type} attention" if gpt else ""))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from models import read_bundle_config

    info, vq, gpt = read_bundle_config(args.bundle)
    summary = {"name": info.name, "kind": info.kind, "fps": info.fps, "class_names": info.class_names,
               "latent_shape": list(vq.latent_shape), "vqvae": vq.to_dict(), "gpt": gpt.to_dict() if gpt else None}
    print(json.dumps(summary, indent=2))
    return 0


def _class_label(value: str, class_names: list[str] | None) -> int:
    """A class given by index or by name."""
    if class_names and value in class_names:
        return class_names.index(value)
    try:
        return int(value)
    except ValueError:
        known = f" (known: {', '.join(class_names)})" if class_names else ""
        raise ValueError(f"--label {value!r} is neither a class index nor a class name{known}") from None


def cmd_sample(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from media import pad_frames, read_frames, tile, write_mp4
    from models import load_gpt, sample
    from models.data.frames import frames_to_tensor, to_uint8_frames
    from models.limits import default_guidance

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or _default_device()
    gpt = load_gpt(args.bundle, device=device, precision=args.precision)
    info, c = gpt.info, gpt.config
    time_steps = _time_steps(args.num_frames, gpt)
    labels = None
    if args.label is not None:
        labels = [_class_label(args.label, info.class_names)] * args.n
    frames = None
    if args.frames:
        n = c.n_cond_frames or 1
        clip = frames_to_tensor(pad_frames(read_frames(args.frames, n, gpt.vqvae.config.resolution), n))
        frames = clip.unsqueeze(0).expand(args.n, -1, -1, -1, -1).to(device)
    start = time.perf_counter()
    shown = [0.0]

    def progress(done: int, total: int) -> None:
        if time.perf_counter() - shown[0] > 2 or done == total:
            shown[0] = time.perf_counter()
            print(f"\r{done}/{total} steps", end="\n" if done == total else "", file=sys.stderr, flush=True)

    mode = "frames" if frames is not None else "class" if labels is not None else "unconditional"
    guidance = args.guidance if args.guidance is not None else default_guidance(mode, info.guidance, info.unconditional)
    temperature = args.temperature if args.temperature is not None else info.temperature
    codes = sample(gpt, args.n, class_labels=labels, cond_frames=frames, temperature=temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed, guidance=guidance,
                   class_guidance=args.class_guidance, progress=progress, time_steps=time_steps)
    sampled = time.perf_counter()
    with torch.no_grad():
        videos = gpt.vqvae.decode_long(codes).float()
    clips = np.stack([to_uint8_frames(v) for v in videos])
    fps = args.fps or info.fps
    out = Path(args.output)
    if args.per_sample:
        paths = [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.n)]
        for path, clip in zip(paths, clips):
            write_mp4(clip, path, fps, scale=args.scale)
    else:
        paths = [out]
        write_mp4(tile(clips), out, fps, scale=args.scale)
    steps = codes[0].numel()
    elapsed = sampled - start
    print(f"wrote {', '.join(map(str, paths))}: {args.n} x {clips.shape[1]} frames, {steps} tokens each, in "
          f"{elapsed:.1f} s ({args.n * steps / elapsed:.0f} tokens/s, {elapsed / steps * 1000:.2f} ms per step) on "
          f"{device} in {gpt.decode_precision}")
    return 0


def _time_steps(num_frames: int | None, gpt) -> int | None:
    """The latent time steps of --num-frames (None: the model's own length); ValueError naming what is allowed."""
    if num_frames is None:
        return None
    native, per_step = gpt.vqvae.config.sequence_length, gpt.vqvae.config.downsample[0]
    if gpt.latent_shape[0] == 1 and num_frames != native:
        raise ValueError(f"--num-frames {num_frames}: this model has one latent time step, so it makes videos of "
                         f"{native} frames only")
    if num_frames < 1 or num_frames % per_step:
        raise ValueError(f"--num-frames must be a positive multiple of {per_step} (the frames of one latent time "
                         f"step; the model's own length is {native}), not {num_frames}")
    return num_frames // per_step


def cmd_fidelity(args: argparse.Namespace) -> int:
    import torch

    from models import load_gpt
    from models.bundle import update_config
    from models.fidelity import fidelity, sampled_codes
    from models.precision import FIDELITY_KL

    if args.threads:
        torch.set_num_threads(args.threads)
    gpt = load_gpt(args.bundle, device=args.device or _default_device())
    # Codes the float32 model samples itself, as auto measures at load when a bundle has no record.
    codes, labels, frames = sampled_codes(gpt, args.n)
    measured = {}
    for precision in dict.fromkeys(args.precisions):
        figures = measured[precision] = fidelity(gpt, precision, codes, labels, frames)
        met = figures["kl_nats_per_code"] <= FIDELITY_KL
        print(f"{precision}: KL(float32 || {precision}) {figures['kl_nats_per_code']:.3g} nats/code, top-1 "
              f"agreement {figures['top1_agreement']:.4f} on {codes.shape[0]} x {codes[0].numel()} codes: "
              f"{'meets' if met else 'misses'} the goal of {FIDELITY_KL} "
              f"(auto {'may take' if met else 'never takes'} it)")
    if args.no_record:
        return 0
    update_config(args.bundle, {"precision_fidelity": {**(gpt.info.precision_fidelity or {}), **measured}})
    print(f"recorded in {Path(args.bundle) / 'config.json'} (precision_fidelity, what VGS_PRECISION=auto consults)")
    return 0


def cmd_set_defaults(args: argparse.Namespace) -> int:
    from models.bundle import update_config

    changes = {key: value for key, value in (("guidance", args.guidance), ("temperature", args.temperature))
               if value is not None}
    if not changes:
        raise SystemExit("set-defaults: give --guidance and/or --temperature")
    info = update_config(args.bundle, changes)
    print(f"{args.bundle}: requests that name none sample at guidance {info.guidance:g}, "
          f"temperature {info.temperature:g}")
    return 0


def _train_settings(args: argparse.Namespace):
    from models.training import TrainSettings, resolve_precision

    device = args.device or _default_device()
    return TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, val_every=args.val_every,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, schedule=args.schedule,
                         warmup_steps=args.warmup, device=device,
                         precision=resolve_precision(args.precision, device))


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _datasets(args: argparse.Namespace, frames: int, resolution: int):
    from models.data import open_dataset

    train_set = open_dataset(args.data, "train", frames, resolution, args.train_size, args.seed)
    val_set = open_dataset(args.data, "test", frames, resolution, args.train_size, args.seed)
    return train_set, val_set


def _checkpoint_path(args: argparse.Namespace) -> str:
    return args.checkpoint or str(args.out).rstrip("/") + ".train.pt"


def cmd_train_vqvae(args: argparse.Namespace) -> int:
    import torch

    from models import VQVAE, BundleInfo, VQVAEConfig, load_vqvae, save_bundle
    from models.training import train

    settings = _train_settings(args)
    torch.manual_seed(settings.seed)
    source = {"trained_on": args.data, "steps": settings.steps}
    if args.finetune_decoder:
        model = load_vqvae(args.finetune_decoder)
        model.freeze_codes()
        source["decoder_finetuned_from"] = str(args.finetune_decoder)
    else:
        model = VQVAE(VQVAEConfig(embedding_dim=args.embedding_dim, n_codes=args.n_codes, n_hiddens=args.n_hiddens,
                                  n_res_layers=args.n_res_layers, downsample=tuple(args.downsample),
                                  axial_attention=not args.no_axial_attention, padding=args.padding,
                                  sequence_length=args.frames, resolution=args.resolution))
    train_set, val_set = _datasets(args, model.config.sequence_length, model.config.resolution)
    metrics = train(model, lambda batch: model.training_losses(batch["video"]), train_set, val_set, settings,
                    _checkpoint_path(args))
    save_bundle(model, args.out, BundleInfo(name=args.name or Path(args.out).name, kind="vqvae", fps=args.fps,
                                            source={**source, "validation": metrics}),
                storage_dtype=getattr(torch, args.save_dtype))
    print(f"wrote VQ-VAE bundle {args.out}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


def cmd_train_gpt(args: argparse.Namespace) -> int:
    import torch

    from models import BundleInfo, GPTConfig, VideoGPT, load_vqvae, save_bundle
    from models.bundle import check_guidance, check_unconditional
    from models.data import EncodedVideos
    from models.training import train

    settings = _train_settings(args)
    torch.manual_seed(settings.seed)
    vqvae = load_vqvae(args.vqvae)
    vq_config = vqvae.config
    train_set, val_set = _datasets(args, vq_config.sequence_length, vq_config.resolution)
    class_names = getattr(train_set, "class_names", None) or None
    if args.class_cond and not class_names:
        raise ValueError(f"--class-cond needs classes, and {args.data} has none (use class sub-folders)")
    config = GPTConfig(hidden_dim=args.hidden_dim, heads=args.heads, layers=args.layers, dropout=args.dropout,
                       attn_dropout=args.attn_dropout, attn_type=args.attn_type,
                       class_cond_dim=len(class_names) if args.class_cond else None,
                       n_cond_frames=args.n_cond_frames, resnet_widths=tuple(args.resnet_widths),
                       resnet_blocks=tuple(args.resnet_blocks), resnet_dim=args.resnet_dim,
                       condition_dropout=args.condition_dropout, aligned_frames=args.aligned_frames is not None,
                       aligned_steps=args.aligned_frames or "all",
                       global_frames=args.global_frames)
    check_guidance(args.default_guidance, config, "--default-guidance")  # before training, not after
    check_unconditional(args.unconditional, config, "--unconditional")
    model = VideoGPT(config, vqvae)
    if args.init:
        _init_from(model, args.init)
    if args.encoded:  # each video encoded once, not at every step
        train_set, val_set = (EncodedVideos(videos, vqvae, n_cond_frames=config.n_cond_frames, device=settings.device,
                                            log=lambda line: print(line, file=sys.stderr))
                              for videos in (train_set, val_set))

    def loss_fn(batch: dict) -> dict:
        labels = batch["label"] if args.class_cond else None
        if args.encoded:
            return {"loss": model.training_loss(None, labels, codes=batch["codes"], cond_frames=batch.get("frames"))}
        return {"loss": model.training_loss(batch["video"], labels)}

    metrics = train(model, loss_fn, train_set, val_set, settings, _checkpoint_path(args))
    source = {"trained_on": args.data, "steps": settings.steps, "vqvae": str(args.vqvae), "validation": metrics}
    if args.init:
        source["initialised_from"] = str(args.init)
    info = BundleInfo(name=args.name or Path(args.out).name, kind="gpt", fps=args.fps,
                      class_names=list(class_names) if args.class_cond else None, source=source,
                      guidance=args.default_guidance, unconditional=args.unconditional)
    save_bundle(model, args.out, info, storage_dtype=getattr(torch, args.save_dtype))
    print(f"wrote GPT bundle {args.out}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


# Settings of a prior that only training reads: a bundle trained with others has the same architecture.
TRAINING_ONLY = ("dropout", "attn_dropout", "condition_dropout")


def _init_from(model, bundle: str) -> None:
    """Copy the weights of the prior in `bundle` into model (the VQ-VAE stays model's); ValueError unless the
    two priors have the same architecture."""
    from models import load_gpt, read_bundle_config
    from models.bundle import VQVAE_PREFIX, load_weights, own_state

    _, vq_config, gpt_config = read_bundle_config(bundle)
    if gpt_config is None:
        raise ValueError(f"--init {bundle}: the bundle holds only a VQ-VAE; --init takes a GPT bundle")
    ours, theirs = model.config.to_dict(), gpt_config.to_dict()
    differing = [k for k in ours if k not in TRAINING_ONLY and ours[k] != theirs.get(k)]
    if gpt_config.conditions_optional != model.config.conditions_optional:
        differing.append("condition_dropout")  # > 0 or not: the prior has the no-condition embeddings or not
    if vq_config.latent_shape != model.vqvae.config.latent_shape or vq_config.n_codes != model.vqvae.config.n_codes:
        differing.append("latent shape and codes of the VQ-VAE")
    if differing:
        name = differing[0]
        shown = f"{name} {theirs.get(name)!r} there, {ours.get(name)!r} here" if name in ours else name
        raise ValueError(f"--init {bundle}: its prior has another architecture than these options build ({shown}); "
                         f"give train-gpt the bundle's settings (videogpt-serve info {bundle} shows them)")
    start = load_gpt(bundle, with_class_guide=False)
    load_weights(model, own_state(start, VQVAE_PREFIX), f"--init {bundle}", skip_prefix=VQVAE_PREFIX)
    print(f"starting from the weights of {bundle} (a fresh optimizer)", file=sys.stderr)


def cmd_set_decoder(args: argparse.Namespace) -> int:
    import torch

    from models.bundle import set_decoder

    for prior in args.priors:
        set_decoder(prior, args.vqvae, storage_dtype=getattr(torch, args.save_dtype))
        print(f"{prior}: decoder of {args.vqvae}")
    return 0


def _bundle_dirs(paths: list[str]) -> list[Path]:
    """The bundle directories among paths, looking one level into folders that hold bundles."""
    found = []
    for raw in paths:
        path = Path(raw)
        if (path / "config.json").is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.iterdir() if (p / "config.json").is_file())
    if not found:
        raise ValueError(f"no bundle (a directory with config.json) in {', '.join(paths)}")
    return found


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from models import load_gpt, load_vqvae, read_bundle_config
    from models.classifier import load_classifier, save_classifier
    from models.data import MovingDigitsSpec
    from models.evaluation import check_bars, evaluate, train_classifier
    from models.limits import default_guidance

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or _default_device()
    bundles = _bundle_dirs(args.bundles)
    models, sources, guidance, temperature = {}, {}, {}, {}
    for path in bundles:
        _, _, gpt_config = read_bundle_config(path)
        if gpt_config is None:
            continue
        gpt = load_gpt(path, device=device, precision=args.precision)
        # A prior trained with condition dropout serves several modes; the first bundle given for a mode
        # serves it, as the first model does for requests that name none.
        for mode in gpt_config.modes:
            if mode not in models:
                models[mode], sources[mode] = gpt, str(path)
                guidance[mode] = default_guidance(mode, gpt.info.guidance, gpt.info.unconditional)
                temperature[mode] = gpt.info.temperature
    vqvae = load_vqvae(bundles[0], device=device)
    c = vqvae.config
    spec = MovingDigitsSpec.for_video(c.sequence_length, c.resolution)
    classifier_path = Path(args.classifier or bundles[0].parent / "classifier.safetensors")
    if classifier_path.is_file():
        classifier = load_classifier(classifier_path)
    else:
        print(f"training the evaluation classifier ({classifier_path} not found)", file=sys.stderr)
        classifier = train_classifier(spec, steps=args.classifier_steps, seed=args.seed, device=device)
        save_classifier(classifier, classifier_path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Digit stability reads each frame with a frame recognizer: the one a frames bundle's class guide holds.
    recognizer = next((gpt.class_guide.recognizer for gpt in models.values() if gpt.class_guide is not None), None)
    if recognizer is None:
        print("no bundle has a frame recognizer (a class guide): digit stability is not measured", file=sys.stderr)
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    if args.long:
        return _eval_long(args, models, classifier, recognizer, spec, guidance, temperature, sources, out, log)
    report = evaluate(models, vqvae, classifier, spec, n=args.n, batch=args.batch, seed=args.seed,
                      sheet_path=out / "contact_sheet.png", log=log, guidance=guidance, recognizer=recognizer,
                      temperature=temperature)
    report["bundles"], report["precision"] = sources, args.precision
    report["bars"] = check_bars(report)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for bar in report["bars"]:
        print(f"{'ok  ' if bar['met'] else 'MISS'} {bar['metric']:40s} {bar['value']:.3f} (bar {bar['bar']})")
    print(f"wrote {out / 'report.json'} and {out / 'contact_sheet.png'}")
    return 0


def _eval_long(args: argparse.Namespace, models: dict, classifier: Any, recognizer: Any, spec: Any,
               guidance: dict[str, float], temperature: dict[str, float], sources: dict[str, str], out: Path,
               log: Any) -> int:
    """eval --long: the long-video report (models/long_eval.py) of the class and frames modes."""
    from models.long_eval import evaluate_long

    if recognizer is None:
        raise SystemExit("eval --long needs a frames bundle with a class guide (its frame recognizer)")
    report = evaluate_long(models, classifier, recognizer, spec, lengths=tuple(args.long), n=args.n,
                           batch=args.batch, seed=args.seed, guidance=guidance, stride=args.window_stride,
                           sheet_path=out / "long_contact_sheet.png", log=log, later_frames=args.later_frames,
                           later_context=args.later_context, temperature=temperature)
    report["bundles"] = sources
    (out / "long_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'long_report.json'} and {out / 'long_contact_sheet.png'}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from models.classifier import ClassifierConfig, save_classifier
    from models.data import MovingDigitsSpec
    from models.evaluation import train_classifier

    spec = MovingDigitsSpec.for_video(args.frames, args.resolution)
    classifier = train_classifier(spec, steps=args.steps, seed=args.seed, config=ClassifierConfig(width=args.width),
                                  device=args.device or _default_device())
    save_classifier(classifier, args.out)
    print(f"wrote the evaluation classifier {args.out}")
    return 0


def cmd_train_recognizer(args: argparse.Namespace) -> int:
    import torch

    from models.classifier import FrameRecognizer, RecognizerConfig, recognizer_loss, save_classifier
    from models.training import train

    settings = _train_settings(args)
    torch.manual_seed(settings.seed)
    train_set, val_set = _datasets(args, args.frames, args.resolution)
    class_names = getattr(train_set, "class_names", None)
    if not class_names:
        raise ValueError(f"a frame recognizer learns classes, and {args.data} has none (use class sub-folders)")
    recognizer = FrameRecognizer(RecognizerConfig(n_classes=len(class_names), width=args.width))
    metrics = train(recognizer, recognizer_loss(recognizer), train_set, val_set, settings, _checkpoint_path(args))
    save_classifier(recognizer.cpu(), args.out)
    print(f"wrote the frame recognizer {args.out}: held-out accuracy {metrics['accuracy']:.3f} (random frames)")
    return 0


def cmd_set_class_guide(args: argparse.Namespace) -> int:
    import torch

    from models.bundle import set_class_guide

    set_class_guide(args.frames_prior, args.prior, args.recognizer, args.scale,
                    storage_dtype=getattr(torch, args.save_dtype))
    print(f"{args.frames_prior}: guided toward the recognised class by {args.prior} (scale {args.scale})")
    return 0


def _add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="moving-digits",
                   help="'moving-digits' (generated) or a folder ROOT/{train,test}/[<class>/]*.mp4")
    p.add_argument("--out", required=True, help="what to write when training ends: a bundle directory (a "
                                                "recognizer: a .safetensors file)")
    p.add_argument("--checkpoint", help="training state, resumed when it exists (default: OUT.train.pt)")
    p.add_argument("--name", help="model name (default: the bundle directory's name)")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning rate: constant, or cosine decay to zero at the last step")
    p.add_argument("--warmup", type=int, default=0, help="steps of linear learning-rate warm-up")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--train-size", type=int, default=20000, help="moving-digits: training videos (test: a tenth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--precision", choices=["float32", "bfloat16", "auto"], default="float32",
                   help="bfloat16 runs the forward pass under autocast (faster where the hardware has bf16); "
                        "auto: bfloat16 on CUDA with bf16 and on CPUs with AVX-512, else float32")
    p.add_argument("--save-dtype", choices=["float32", "float16"], default="float32",
                   help="storage precision of the bundle's weights (float16 halves the files)")


def _parser_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an official VideoGPT .ckpt (VQ-VAE or GPT) into a bundle",
                       description="Read an official VideoGPT Lightning checkpoint without running code from it "
                                   "and write a bundle directory (config.json + safetensors).")
    p.add_argument("checkpoint", help="the .ckpt file")
    p.add_argument("out_dir", help="bundle directory to write")
    p.add_argument("--name", help="model name (default: the checkpoint's file name)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second of the model's videos (default 8)")
    p.add_argument("--class-names", help="class names, comma-separated or @file with one per line")
    p.set_defaults(func=cmd_convert)


def _parser_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate videos from a GPT bundle into an mp4",
                       description="Sample codes with the KV-cached sampler and decode them into an mp4 "
                                   "(a grid of all samples, or one file per sample).")
    p.add_argument("bundle", help="GPT bundle directory")
    p.add_argument("--n", type=int, default=1, help="number of samples (default 1)")
    p.add_argument("--label", help="class index or name (class-conditional models)")
    p.add_argument("--frames", help="image, GIF or video whose first frames condition the model")
    p.add_argument("--seed", type=int, help="seed: the same seed and settings give the same videos")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: the bundle's)")
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale for modes class and frames (default: the model's)")
    p.add_argument("--class-guidance", type=float,
                   help="frames mode with a class guide: how strongly to follow the recognised class "
                        "(default: the bundle's; 0: off)")
    p.add_argument("-o", "--output", default="sample.mp4", help="output mp4 (default sample.mp4)")
    p.add_argument("--per-sample", action="store_true", help="one file per sample: OUT_0.mp4, OUT_1.mp4, ...")
    p.add_argument("--fps", type=float, help="frames per second (default: the bundle's)")
    p.add_argument("--scale", type=int, default=4, help="integer nearest-neighbour upscaling (default 4)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--num-frames", type=int, metavar="N",
                   help="frames of each video (default: the model's own length); longer: a window slides over "
                        "time; a multiple of the frames of one latent time step")
    # models.precision.CHOICES, spelled out: the parser must not import torch (the gateway uses it too).
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "int8", "auto"],
                   help="decoding precision: float32 (exact), bfloat16, int8 (weight-only) or auto (the fastest "
                        "here that meets the fidelity goal; measured at load) (default float32)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_sample)


def _parser_fidelity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fidelity", help="measure how reduced decoding precisions compare with float32 on a prior",
                       description="Teacher-forced next-code distributions of codes the float32 prior samples "
                                   "itself, in each precision against float32: mean KL (nats per code; goal <= "
                                   "0.01) and top-1 agreement. Recorded in the bundle's config.json "
                                   "(precision_fidelity), which VGS_PRECISION=auto consults instead of measuring "
                                   "at load.")
    p.add_argument("bundle", help="GPT bundle directory")
    p.add_argument("--n", type=int, default=4, help="videos sampled to measure on (default 4)")
    p.add_argument("--precisions", nargs="+", choices=["bfloat16", "int8"], default=["bfloat16", "int8"],
                   help="precisions to measure (default: bfloat16 int8)")
    p.add_argument("--no-record", action="store_true", help="print the figures only; leave the bundle as it is")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_fidelity)


def _parser_train_vqvae(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-vqvae", help="train a VQ-VAE and write a bundle",
                       description="Train a VQ-VAE on moving-digits or a video folder (EMA codebook with data "
                                   "init and dead-code restart, as the reference).")
    _add_training_options(p)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--n-codes", type=int, default=512)
    p.add_argument("--n-hiddens", type=int, default=64)
    p.add_argument("--n-res-layers", type=int, default=2)
    p.add_argument("--no-axial-attention", action="store_true",
                   help="residual blocks without axial attention: local codes, easier for the prior")
    # models.layers.PADDINGS, spelled out: the parser must not import torch (the gateway uses it too).
    p.add_argument("--padding", choices=["zeros", "replicate"], default="zeros",
                   help="convolution padding: zeros (the reference's) or replicate (edge codes like inner ones)")
    p.add_argument("--downsample", type=int, nargs=3, default=[4, 8, 8], metavar=("T", "H", "W"))
    p.add_argument("--finetune-decoder", metavar="BUNDLE",
                   help="train only the decoder of BUNDLE's VQ-VAE (its settings replace the options above), "
                        "codes held fixed: priors trained on its codes take the result with set-decoder")
    p.set_defaults(func=cmd_train_vqvae)


def _parser_set_decoder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("set-decoder", help="give prior bundles a fine-tuned decoder of their own VQ-VAE",
                       description="Replace each prior bundle's VQ-VAE by VQVAE's, refused unless both encode "
                                   "videos to the same codes (train-vqvae --finetune-decoder keeps them).")
    p.add_argument("priors", nargs="+", help="GPT bundle directories, rewritten in place")
    p.add_argument("--vqvae", required=True, help="the VQ-VAE bundle with the fine-tuned decoder")
    p.add_argument("--save-dtype", choices=["float32", "float16"], default="float32")
    p.set_defaults(func=cmd_set_decoder)


def _parser_set_defaults(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("set-defaults", help="set the guidance scale and temperature of requests that name none",
                       description="Rewrite a prior bundle's sampling defaults in place (config.json): what "
                                   "requests, `sample` and `eval` use when they name no guidance or temperature.")
    p.add_argument("bundle", help="GPT bundle directory")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1: off; needs condition dropout)")
    p.add_argument("--temperature", type=float, help="sampling temperature, in (0, 10]")
    p.set_defaults(func=cmd_set_defaults)


def _parser_set_class_guide(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("set-class-guide", help="let a frames prior follow a class prior toward the class its "
                                               "given frame shows",
                       description="Copy a class prior (trained with condition dropout, on the same codes) and a "
                                   "frame recognizer into a frame-conditional prior bundle: its frames samples then "
                                   "add SCALE x (class prior with the recognised class - without) to their logits.")
    p.add_argument("frames_prior", help="the frame-conditional GPT bundle, rewritten in place")
    p.add_argument("--prior", required=True, help="the class-conditional GPT bundle (same VQ-VAE codes)")
    p.add_argument("--recognizer", required=True, help="frame recognizer .safetensors (train-recognizer)")
    p.add_argument("--scale", type=float, default=4.0, help="how strongly to follow the class (0: not at all)")
    p.add_argument("--save-dtype", choices=["float32", "float16"], default="float32")
    p.set_defaults(func=cmd_set_class_guide)


def _parser_train_recognizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-recognizer", help="train a frame recognizer (which class a single frame shows)",
                       description="Train a small 2D CNN on single frames of a labelled dataset's videos; "
                                   "set-class-guide gives it to a frames prior.")
    _add_training_options(p)
    p.add_argument("--frames", type=int, default=16, help="video length the dataset is cut into")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=int, default=32, help="channels of the first convolutions (doubled after)")
    p.set_defaults(func=cmd_train_recognizer)


def _parser_train_gpt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-gpt", help="train a GPT prior on a VQ-VAE bundle's codes and write a bundle",
                       description="Train the prior (unconditional, --class-cond and/or --n-cond-frames N).")
    _add_training_options(p)
    p.add_argument("--vqvae", required=True, help="VQ-VAE bundle (or a GPT bundle, whose VQ-VAE is taken)")
    p.add_argument("--class-cond", action="store_true", help="condition on the dataset's classes")
    p.add_argument("--n-cond-frames", type=int, default=0, help="condition on the first N frames")
    p.add_argument("--condition-dropout", type=float, default=0.0,
                   help="probability of dropping each condition in training: one prior then also serves "
                        "the modes without it (unconditional with both)")
    p.add_argument("--default-guidance", type=float, default=1.0,
                   help="guidance scale of requests that name none (needs --condition-dropout; 1: off)")
    p.add_argument("--unconditional", choices=["dropped", "classes"], default="dropped",
                   help="how a class prior serves requests without a class: through its class-dropped path "
                        "(dropped), or by drawing a class uniformly and sampling it (classes; balanced classes)")
    p.add_argument("--aligned-frames", nargs="?", const="all", choices=["all", "given"],
                   help="also add the frame encoding to the input of each code at the same place (a shortcut "
                        "a small prior learns far sooner than cross-attention): at every latent time step "
                        "(all, the default) or only at those the given frames fall in (given)")
    p.add_argument("--global-frames", action="store_true",
                   help="also give every layer norm a summary of the frame encoding (its mean and maximum over "
                        "space), as class conditioning gives the class: what the frame shows reaches every code")
    p.add_argument("--encoded", action="store_true",
                   help="encode every training and validation video once before training (codes and first frames "
                        "kept in memory) instead of at every step: faster, the same data")
    p.add_argument("--init", metavar="BUNDLE",
                   help="start from the weights of this GPT bundle's prior (the same architecture: give the same "
                        "options), with a fresh optimizer")
    p.add_argument("--hidden-dim", type=int, default=144)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--attn-dropout", type=float, default=0.1)
    p.add_argument("--attn-type", choices=["full", "sparse"], default="full")
    p.add_argument("--resnet-widths", type=int, nargs=3, default=[16, 32, 64])
    p.add_argument("--resnet-blocks", type=int, nargs=4, default=[1, 1, 1, 1])
    p.add_argument("--resnet-dim", type=int, default=96)
    p.set_defaults(func=cmd_train_gpt)


def _parser_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure the sample quality of moving-digits bundles",
                       description="Generate videos in every mode the bundles serve and score them with a video "
                                   "classifier trained on real moving-digits data; writes report.json and "
                                   "contact_sheet.png (rows: real, reconstruction, then one per mode).")
    p.add_argument("bundles", nargs="+", help="GPT bundle directories, or a folder holding them")
    p.add_argument("--out", default="eval", help="output folder (default ./eval)")
    p.add_argument("--n", type=int, default=200, help="videos per mode (default 200)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", help="classifier .safetensors (default: classifier.safetensors beside the "
                                        "bundles; trained and saved there when missing)")
    p.add_argument("--classifier-steps", type=int, default=800)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="cpu or cuda, where the videos are generated (default: cuda when available)")
    p.add_argument("--precision", choices=["float32", "bfloat16", "int8"], default="float32",
                   help="what the priors decode in (default float32): compare a report with float32's to see "
                        "what a reduced precision costs in quality")
    p.add_argument("--long", type=int, nargs="+", metavar="FRAMES",
                   help="instead: the long-video report at these lengths (e.g. 64 128; class and frames modes): "
                        "per 16-frame window agreement and motion, seams, colour, digit stability, cost")
    p.add_argument("--window-stride", type=int, help="--long: latent time steps each later window adds "
                                                     "(default: half the model's)")
    p.add_argument("--later-frames", choices=["generated", "original"], default="generated",
                   help="--long: what conditions a frames video's later windows (default: the first frames of "
                        "their own context)")
    p.add_argument("--later-context", choices=["reencoded", "codes"], default="reencoded",
                   help="--long: a later window's context re-encoded from its frames (default) or the codes as "
                        "drawn")
    p.set_defaults(func=cmd_eval)


def _parser_train_classifier(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-classifier", help="train the evaluation classifier on real moving-digits videos",
                       description="The 3D-CNN video classifier `eval` scores generated videos with (as I3D is "
                                   "for FVD); `eval` trains one itself when none is given.")
    p.add_argument("--out", required=True, help="classifier .safetensors to write")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--width", type=int, default=32, help="channels of the first convolution (doubled after)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=cmd_train_classifier)


def _parser_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a bundle's settings")
    p.add_argument("bundle", help="bundle directory")
    p.set_defaults(func=cmd_info)


PARSERS = (_parser_convert, _parser_sample, _parser_fidelity, _parser_train_vqvae, _parser_set_decoder,
           _parser_set_defaults, _parser_set_class_guide, _parser_train_recognizer, _parser_train_gpt, _parser_eval,
           _parser_train_classifier, _parser_info)


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    for add_parser in PARSERS:
        add_parser(sub)
