"""Sampler speed: ms per token step averaged over a whole video, per config, batch size and precision; prints
JSON lines, then a summary.

    python bench/sampler.py                                    # all configs, batches 1 and 8, float32, CPU
    python bench/sampler.py --configs bair-like bair-like-sparse --precisions float32 bfloat16 int8 \\
        --against ../baseline                                  # beside a checkout of an older sampler
    python bench/sampler.py --configs small-class --guidance 1 3    # what classifier-free guidance costs
    python bench/sampler.py --positions 8                      # estimate from 8 evenly spaced positions
    python bench/sampler.py --configs small --against ../baseline --alternate 6   # both in one process

A whole video's average: every step of a sample (default), or (--positions K) K positions spread evenly
over the video, each timed over --steps-per-position steps with the cache prefilled up to it: a step's
cost depends only on where it is, so this estimates the same average at a fraction of the time.
--against PATH runs that checkout's own bench/sampler.py (float32) in the same run: with PATH a checkout
of the sampler before the decoding engine (commit 93b7a0d), whose float32 steps the reference
implementation's own sample loop takes 2.0x (batch 1) and 2.5x (batch 8) as long for bair-like (measured
side by side earlier), the summary's `x_reference` estimates the speed-up over the reference.
--alternate ROUNDS (with --against): whole videos of ours and the older sampler (float32) in one
process, one after the other, ROUNDS times; it prints each one's median and the median of the rounds'
ratios. On a shared host whose speed drifts within minutes, the two videos of a round meet the same
drift, where separate processes run minutes apart do not (their ratios for one case varied by 30%).
Bytes read per step: the decoding weights plus the KV cache a step reads on average; the floor is those
bytes at the memory bandwidth this machine reaches (a large copy, timed here).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import VQVAE, GPTConfig, VideoGPT, VQVAEConfig, sample

SMALL_VQVAE = VQVAEConfig(embedding_dim=64, n_codes=256, n_hiddens=64, n_res_layers=2, downsample=(4, 4, 4),
                          sequence_length=16, resolution=64)  # latent 4x16x16 = 1024 steps
BAIR_VQVAE = VQVAEConfig(embedding_dim=256, n_codes=1024, n_hiddens=240, n_res_layers=4, downsample=(4, 2, 2),
                         sequence_length=16, resolution=64)  # latent 4x32x32 = 4096 steps
CONFIGS = {
    "bair-like": (BAIR_VQVAE, GPTConfig(hidden_dim=576, heads=4, layers=8, attn_type="full")),
    "bair-like-sparse": (BAIR_VQVAE, GPTConfig(hidden_dim=576, heads=4, layers=8, attn_type="sparse")),
    "small": (SMALL_VQVAE, GPTConfig(hidden_dim=192, heads=4, layers=4, attn_type="full")),
    # class-conditional with condition dropout: can be guided
    "small-class": (SMALL_VQVAE, GPTConfig(hidden_dim=192, heads=4, layers=4, attn_type="full", class_cond_dim=10,
                                           condition_dropout=0.3)),
}
# The reference implementation's sample loop over the sampler of commit 93b7a0d, float32, bair-like (the
# decoding-engine issue's measurement, both on the same checkpoint in one run): batch 1 and batch 8.
REFERENCE_OVER_BASELINE = {1: 2.0, 8: 2.5}
CPU_KERNELS = {"all": ("row_attention", "row_ops", "row_step", "row_draw"),
               "torch-draw": ("row_attention", "row_ops", "row_step"), "layered": ("row_attention", "row_ops"),
               "attention": ("row_attention",), "none": ()}


def build(name: str, device: str, dtype: torch.dtype = torch.float32, package=None) -> VideoGPT:
    """The config's prior with random weights; package: another checkout's models package (load_older) to
    build it with that one's classes."""
    vq_config, gpt_config = CONFIGS[name]
    if package is None:
        gpt = VideoGPT(gpt_config, VQVAE(vq_config))
    else:
        gpt = package.VideoGPT(package.GPTConfig(**gpt_config.to_dict()),
                               package.VQVAE(package.VQVAEConfig(**vq_config.to_dict())))
    torch.nn.init.normal_(gpt.fc_out.weight, std=0.02)  # random weights: speed does not depend on them
    return gpt.to(device=device, dtype=dtype).eval()


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated, or on CPU the process's peak RSS (each case runs in its own process)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def bandwidth_gb_s(device: str) -> float:
    """The copy bandwidth this machine reaches (read + write of a 512 MiB buffer), GB/s."""
    source = torch.empty(2**27, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(4):
        target.copy_(source)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 4 * 2 * source.numel() * 4 / (time.perf_counter() - started) / 1e9


def bytes_per_step(gpt: VideoGPT, decoder, batch: int) -> float:
    """Weights of the decoding copy plus the KV cache a step reads, averaged over a video."""
    from models.decoding import DecodeLinear

    weights = 0
    for lin in decoder.model.decode_linears:
        tensors = (lin.weight_t, lin.bias) if isinstance(lin, DecodeLinear) else (lin.weight, lin.scales, lin.bias)
        weights += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    c, n = gpt.config, decoder.seq_len
    per_position = 2 * c.layers * c.hidden_dim * decoder.keys.element_size()  # keys and values, all heads
    reads = decoder.mean_read(batch) if hasattr(decoder, "mean_read") else (n / 2 + decoder.chunk / 2)
    return weights + batch * reads * per_position


def time_whole(gpt: VideoGPT, batch: int, device: str, cond: dict, rows: int) -> float:
    sample(gpt, batch, seed=0, **cond) if math.prod(gpt.latent_shape) <= 1024 else None  # warm-up, small only
    return video_seconds(sample, gpt, batch, device, cond, seed=1) / math.prod(gpt.latent_shape)


def video_seconds(sampler, gpt, batch: int, device: str, cond: dict, seed: int) -> float:
    """Seconds `sampler` (a `sample` function, ours or an older checkout's) takes for one batch of videos."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    sampler(gpt, batch, seed=seed, **cond)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def time_positions(gpt: VideoGPT, rows: int, positions: int, steps: int, device: str) -> float:
    """Mean seconds per step at `positions` evenly spaced positions (each prefilled, then stepped)."""
    from models.decoding import RowDecoder

    decoder = RowDecoder(gpt, rows)
    n = decoder.seq_len
    cond = gpt.condition(None, None, rows) if gpt.config.conditions_optional or not (
        gpt.config.class_conditional or gpt.config.frame_conditional) else \
        gpt.condition(torch.zeros(rows, dtype=torch.long, device=device), None, rows)
    ids = decoder.admit(cond, rows)
    codes = torch.randint(0, gpt.n_codes, (rows, n), device=device)
    total = 0.0
    for k in range(positions):
        start = min(n - steps, int((k + 0.5) * n / positions) - steps // 2)
        decoder.prefill(ids, codes[:, :max(start, 0)])
        decoder.step()  # warm-up at this position
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        began = time.perf_counter()
        for _ in range(steps - 1):
            decoder.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        total += (time.perf_counter() - began) / (steps - 1)
    return total / positions


def run(args: argparse.Namespace, name: str, batch: int, precision: str, guidance: float,
        kernels: str = "all") -> dict:
    from models import kernels as compiled

    compiled.ENABLED = set(CPU_KERNELS[kernels])
    gpt = build(name, args.device)
    gpt.decode_precision = precision
    c = gpt.config
    cond = {"class_labels": [i % c.class_cond_dim for i in range(batch)]} if c.class_conditional else {}
    if guidance != 1:
        cond["guidance"] = guidance
    rows = batch * (1 if guidance == 1 else 2)
    if device_is_cuda := args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if args.positions:
        per_step = time_positions(gpt, rows, args.positions, args.steps_per_position, args.device)
    else:
        per_step = time_whole(gpt, batch, args.device, cond, rows)
    from models.decoding import RowDecoder

    decoder = RowDecoder(gpt, rows)
    moved = bytes_per_step(gpt, decoder, rows)
    steps = math.prod(gpt.latent_shape)
    return {
        "config": name, "batch": batch, "guidance": guidance, "device": args.device, "precision": precision,
        "threads": torch.get_num_threads(), "steps": steps, "estimated_from_positions": args.positions or None,
        "ms_per_step": round(per_step * 1000, 3), "tokens_per_s": round(batch / per_step, 1),
        "mb_read_per_step": round(moved / 1e6, 1), "row_tile": decoder.tile, "read_chunk": decoder.chunk,
        "attention": "kernel" if decoder.kernel is not None else "torch",
        "products": products.describe() if (products := getattr(decoder.model, "decode_products", None)) else None,
        "step": "compiled" if decoder.compiled_step is not None else "layer by layer",
        "peak_memory_mb": round(peak_memory_mb(args.device), 1),
        "cuda_graph": decoder.cuda_graph if device_is_cuda else None,
        "params_m": round(sum(p.numel() for n, p in gpt.named_parameters() if not n.startswith("vqvae.")) / 1e6, 2),
    }


# The older sampler (commit 93b7a0d: models.sampling.CachedDecoder) timed at evenly spaced positions, run
# with that checkout first on the path: its own step, on its own model classes, this file's configs.
OLDER_POSITIONS = """
import json, sys, time, torch
sys.path.insert(0, {older!r})
torch.set_num_threads({threads})
from models import VQVAE, GPTConfig, VideoGPT, VQVAEConfig
from models.sampling import CachedDecoder
vq, gc = {vq!r}, {gc!r}
gpt = VideoGPT(GPTConfig(**gc), VQVAE(VQVAEConfig(**vq))).eval()
torch.nn.init.normal_(gpt.fc_out.weight, std=0.02)
rows, positions, steps = {rows}, {positions}, {steps}
decoder = CachedDecoder(gpt, gpt.condition(None, None, rows), rows)
n = decoder.seq_len
previous = torch.zeros(rows, dtype=torch.long)
total = 0.0
with torch.no_grad():
    for k in range(positions):
        start = max(0, min(n - steps, int((k + 0.5) * n / positions) - steps // 2))
        decoder.step(start, previous)
        began = time.perf_counter()
        for pos in range(start + 1, start + steps):
            decoder.step(pos, previous)
        total += (time.perf_counter() - began) / (steps - 1)
print(json.dumps({{"ms_per_step": round(total / positions * 1000, 3)}}))
"""


def against(args: argparse.Namespace, name: str, batch: int) -> dict | None:
    """The older sampler at PATH, float32, same config and batch (and way of timing), in its own process."""
    if args.positions:
        vq, gc = CONFIGS[name]
        code = OLDER_POSITIONS.format(older=str(Path(args.against).resolve()), threads=args.threads,
                                      vq=vq.to_dict(), gc=gc.to_dict(), rows=batch, positions=args.positions,
                                      steps=args.steps_per_position)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    else:
        done = subprocess.run([sys.executable, str(Path(args.against) / "bench" / "sampler.py"), "--in-process",
                               "--configs", name, "--batches", str(batch), "--device", args.device,
                               "--threads", str(args.threads)], capture_output=True, text=True)
    if done.returncode != 0:  # report it and time ours all the same
        print(json.dumps({"config": name, "batch": batch, "older_error": done.stderr.strip()[-2000:]}), flush=True)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_older(path: str):
    """The older checkout's models package, imported under another name (its modules import each other
    relatively), beside ours in this process."""
    import importlib.util

    package = Path(path).resolve() / "models"
    spec = importlib.util.spec_from_file_location("older_models", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["older_models"] = module
    spec.loader.exec_module(module)
    return module


def alternate(args: argparse.Namespace, name: str, batch: int) -> dict:
    """Whole videos of ours and the older sampler in turn, float32, args.alternate rounds."""
    import statistics

    older = load_older(args.against)
    ours, theirs = build(name, args.device), build(name, args.device, package=older)
    c = ours.config
    cond = {"class_labels": [i % c.class_cond_dim for i in range(batch)]} if c.class_conditional else {}
    steps = math.prod(ours.latent_shape)

    def video(sampler, gpt, seed: int) -> float:  # ms per step
        return video_seconds(sampler, gpt, batch, args.device, cond, seed) / steps * 1000

    video(sample, ours, 0), video(older.sample, theirs, 0)  # warm-up: row_tile, allocations
    rounds = [(video(sample, ours, r + 1), video(older.sample, theirs, r + 1)) for r in range(args.alternate)]
    return {"config": name, "batch": batch, "precision": "float32", "threads": torch.get_num_threads(),
            "rounds": args.alternate, "ms_per_step": round(statistics.median(a for a, _ in rounds), 3),
            "older_ms_per_step": round(statistics.median(b for _, b in rounds), 3),
            "x_older": round(statistics.median(b / a for a, b in rounds), 3),
            "x_older_range": [round(min(b / a for a, b in rounds), 3), round(max(b / a for a, b in rounds), 3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precisions", nargs="+", default=["float32"], choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.0],
                        help="guidance scales (other than 1 only for configs trained with condition dropout)")
    parser.add_argument("--positions", type=int, default=0, help="estimate from this many positions (0: whole)")
    parser.add_argument("--steps-per-position", type=int, default=17)
    parser.add_argument("--against", help="a checkout of an older sampler to run beside (float32)")
    parser.add_argument("--alternate", type=int, default=0, metavar="ROUNDS",
                        help="with --against: whole videos of both in one process, in turn, this many rounds")
    parser.add_argument("--cuda-graph", choices=["on", "off"], default="on", help="CUDA: capture the step or not")
    parser.add_argument("--kernels", nargs="+", default=["all"], choices=list(CPU_KERNELS),
                        help="CPU: the compiled kernels the decoder may use (where they can be built): all, "
                             "torch-draw (all but the compiled draw), layered (the kernels called layer by layer, "
                             "the draw in torch), the row attention alone (products and norms through torch), "
                             "or none")
    parser.add_argument("--in-process", action="store_true", help="run the cases here, not one process each")
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)  # what older checkouts' runs pass
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cuda_graph == "off":
        import models.decoding as decoding

        decoding.CUDA_GRAPHS = False
    if args.alternate:
        if not args.against:
            raise SystemExit("--alternate needs --against PATH")
        for name in args.configs:
            for batch in args.batches:
                print(json.dumps(alternate(args, name, batch)), flush=True)
        return
    if args.in_process:
        for name in args.configs:
            for batch in args.batches:
                for precision in args.precisions:
                    for guidance in args.guidance:
                        for kernels in args.kernels:
                            print(json.dumps(run(args, name, batch, precision, guidance, kernels)), flush=True)
        return
    results, floor = [], bandwidth_gb_s(args.device)
    for name in args.configs:
        for batch in args.batches:
            older = against(args, name, batch) if args.against else None
            cases = [(p, g, k) for p in args.precisions for g in args.guidance for k in args.kernels]
            for precision, guidance, kernels in cases:  # a fresh process per case: peak memory is that case's
                done = subprocess.run([sys.executable, __file__, "--in-process", "--configs", name, "--batches",
                                       str(batch), "--device", args.device, "--precisions", precision,
                                       "--threads", str(args.threads), "--guidance", str(guidance),
                                       "--positions", str(args.positions), "--steps-per-position",
                                       str(args.steps_per_position), "--cuda-graph", args.cuda_graph,
                                       "--kernels", kernels], capture_output=True, text=True)
                if done.returncode != 0:  # report the case's failure and go on with the others
                    failed = {"config": name, "batch": batch, "precision": precision, "guidance": guidance,
                              "kernels": kernels, "error": done.stderr.strip()[-2000:]}
                    results.append(failed)
                    print(json.dumps(failed), flush=True)
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["floor_ms_per_step"] = round(result["mb_read_per_step"] / floor, 3)
                result["fraction_of_floor"] = round(result["floor_ms_per_step"] / result["ms_per_step"], 3)
                if older is not None:
                    result["older_ms_per_step"] = older["ms_per_step"]
                    result["x_older"] = round(older["ms_per_step"] / result["ms_per_step"], 3)
                    if name == "bair-like" and batch in REFERENCE_OVER_BASELINE:
                        result["x_reference"] = round(result["x_older"] * REFERENCE_OVER_BASELINE[batch], 2)
                results.append(result)
                print(json.dumps(result), flush=True)
    failures = sum("error" in r for r in results)
    print(json.dumps({"summary": True, "bandwidth_gb_s": round(floor, 1), "cases": len(results),
                      "failed": failures}), flush=True)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
