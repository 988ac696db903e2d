"""Time per training step of CoOp, CoCoOp and CPL on the same frozen CLIP and the same batches, in one run.

Run from the repository root:
  .venv/bin/python bench/cpl.py                      # CPU: a small CLIP (about 2 minutes on 2 cores)
  python3 bench/cpl.py --size vit-b16 --device cuda  # GPU: CLIP ViT-B/16 shapes, bf16 autocast
Writes bench/results/cpl_<size>_<device>_batch<B>_classes<C>.json (bench/result_file.py). Target: cpl <= 1.5x cocoop.

The CLIP is built from a config with random weights (no download; speed does not depend on the weights) and a
word-level tokenizer built here. A step is what Lightning runs per batch: CPLModule.training_step (image features
from the frozen encoder without gradients -- not cached, as with augmentation on --, prompts, text encoder, and for
CPL the counterfactual search and its loss terms), backward, SGD step, zero_grad. Variants are interleaved, each
repeat times STEPS steps after WARMUP untimed ones; the figure is the median over repeats of the mean step time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.result_file import medians, write_result  # noqa: E402
from lightning_modules.cpl.module import CPLModule  # noqa: E402
from lightning_modules.clip_pretrain.tokenizer import build_tokenizer, save_tokenizer  # noqa: E402

SIZES = {
    # CLIP ViT-B/16: text 512 wide x 12 layers, vision 768 x 12, patch 16 at 224, projection 512
    "vit-b16": {"text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                                "num_attention_heads": 8, "max_position_embeddings": 77},
                "vision_config": {"image_size": 224, "patch_size": 16, "hidden_size": 768, "intermediate_size": 3072,
                                  "num_hidden_layers": 12, "num_attention_heads": 12},
                "projection_dim": 512},
    "small": {"text_config": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                              "num_attention_heads": 4, "max_position_embeddings": 77},
              "vision_config": {"image_size": 64, "patch_size": 16, "hidden_size": 128, "intermediate_size": 512,
                                "num_hidden_layers": 4, "num_attention_heads": 4},
              "projection_dim": 128},
}
WORDS = ("a photo of the dog cat car bird plane ship truck horse deer frog flower tree house road river lake "
         "mountain chair table lamp cup bottle phone clock book shoe hat bag ball kite boat bus train bike "
         "red green blue yellow black white small large old new").split()


def build(size: str, variant: str, tokenizer_dir: Path, classes: list[str], device: str) -> CPLModule:
    config = json.loads(json.dumps(SIZES[size]))
    config["text_config"].update(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    module = CPLModule(clip={"config": config, "tokenizer": str(tokenizer_dir)}, variant=variant,
                       scorer={"model": "unused"} if variant == "cpl" else None, k=None, cache_image_features=False)
    if variant == "cpl":  # the BERTScore matrix is built once per dataset; a fixed one stands in for it here
        n = len(classes)
        distance = (torch.arange(n).unsqueeze(1) - torch.arange(n).unsqueeze(0)).abs()
        module.negative_scores = -torch.minimum(distance, n - distance).float()  # neighbouring classes are nearest
    module.configure_classes(classes, {})
    module.log = module.log_dict = lambda *a, **k: None  # no Trainer here: logging is Lightning's cost, not CPL's
    return module.to(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=50, help="training classes (CoOp base sets: 16 to 500)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    classes = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]} {i}" for i in range(args.classes)]
    image_size = SIZES[args.size]["vision_config"]["image_size"]
    batches = [{"pixel_values": torch.randn(args.batch, 3, image_size, image_size, device=args.device),
                # pairs of neighbouring classes, so every sample has a negative in its batch (CPL's full cost)
                "cls": (torch.randint(0, args.classes, (1,)) + torch.arange(args.batch) % 2).remainder(args.classes)
                .to(args.device),
                "__key__": [f"{s}-{i}" for i in range(args.batch)]} for s in range(args.steps + args.warmup)]
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(build_tokenizer(WORDS), Path(tmp))
        modules = {v: build(args.size, v, Path(tmp), classes, args.device) for v in ("coop", "cocoop", "cpl")}
    optimizers = {v: torch.optim.SGD(m.trainable_parameters(), lr=0.002, momentum=0.9) for v, m in modules.items()}
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    samples: dict[str, list[float]] = {v: [] for v in modules}

    def step(variant: str, batch: dict) -> None:
        with autocast():
            loss = modules[variant].training_step(batch, 0)
        loss.backward()
        optimizers[variant].step()
        optimizers[variant].zero_grad(set_to_none=True)

    for repeat in range(args.repeats):
        order = list(modules)[repeat % 3:] + list(modules)[:repeat % 3]
        for variant in order:
            for batch in batches[:args.warmup]:
                step(variant, batch)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for batch in batches[args.warmup:]:
                step(variant, batch)
            if cuda:
                torch.cuda.synchronize()
            samples[variant].append((time.perf_counter() - start) / args.steps * 1000)
    samples_ms = {f"{v}_ms_per_step": s for v, s in samples.items()}
    med = medians(samples_ms)
    write_result(
        f"cpl_{args.size}_{'cuda' if cuda else 'cpu'}_batch{args.batch}_classes{args.classes}",
        settings={"size": args.size, "classes": args.classes, "batch": args.batch, "steps": args.steps,
                  "warmup": args.warmup, "repeats": args.repeats, "precision": "bf16 autocast" if cuda else "fp32",
                  "cpl": {"search_steps": modules["cpl"].hparams.search_steps, "k": modules["cpl"].hparams.k}},
        figures=med,
        ratios={"cpl_over_cocoop": med["cpl_ms_per_step"] / med["cocoop_ms_per_step"],
                "cocoop_over_coop": med["cocoop_ms_per_step"] / med["coop_ms_per_step"]},
        targets={"cpl_over_cocoop": "<= 1.5"},
        samples=samples_ms, libraries=("transformers",), device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
