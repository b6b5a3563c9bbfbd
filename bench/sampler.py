"""Sampler speed: ms per token step averaged over a whole video, per config and batch size; prints JSON lines.

    python bench/sampler.py                                  # all configs, batches 1 and 8, CPU, 2 threads
    python bench/sampler.py --configs small --batches 1 4 --device cuda --dtype bfloat16
    python bench/sampler.py --configs small-class --guidance 1 3     # what classifier-free guidance costs
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


def build(name: str, device: str, dtype: torch.dtype) -> VideoGPT:
    vq_config, gpt_config = CONFIGS[name]
    gpt = VideoGPT(gpt_config, VQVAE(vq_config))
    torch.nn.init.normal_(gpt.fc_out.weight, std=0.02)  # random weights: speed does not depend on them
    return gpt.to(device=device, dtype=dtype).eval()


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated, or on CPU the process's peak RSS (each case runs in its own process)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run(name: str, batch: int, device: str, dtype: torch.dtype, guidance: float = 1.0) -> dict:
    gpt = build(name, device, dtype)
    steps = math.prod(gpt.latent_shape)
    c = gpt.config
    cond = {"class_labels": [i % c.class_cond_dim for i in range(batch)]} if c.class_conditional else {}
    if guidance != 1:
        cond["guidance"] = guidance
    sample(gpt, batch, seed=0, top_k=None, **cond) if steps <= 1024 else None  # warm-up on small models only
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    sample(gpt, batch, seed=1, **cond)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {
        "config": name, "batch": batch, "guidance": guidance, "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "steps": steps,
        "ms_per_step": round(elapsed / steps * 1000, 3),
        "tokens_per_s": round(batch * steps / elapsed, 1),
        "seconds_per_batch": round(elapsed, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "kv_cache_mb": round(2 * gpt.config.layers * batch * steps * gpt.config.hidden_dim
                             * gpt.fc_in.weight.element_size() / 2**20, 1),
        "params_m": round(sum(p.numel() for n, p in gpt.named_parameters() if not n.startswith("vqvae.")) / 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance", nargs="+", type=float, default=[1.0],
                        help="guidance scales (other than 1 only for configs trained with condition dropout)")
    parser.add_argument("--in-process", action="store_true", help="run the cases here, not one process each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.configs:
        for batch in args.batches:
            for guidance in args.guidance:
                if args.in_process:
                    print(json.dumps(run(name, batch, args.device, getattr(torch, args.dtype), guidance)), flush=True)
                else:  # a fresh process per case, so peak memory is that case's
                    subprocess.run([sys.executable, __file__, "--in-process", "--configs", name, "--batches",
                                    str(batch), "--device", args.device, "--dtype", args.dtype, "--threads",
                                    str(args.threads), "--guidance", str(guidance)], check=True)


if __name__ == "__main__":
    main()
