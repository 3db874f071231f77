"""TGA on the model organism in one call: :func:`run_tga_organism`.

It mirrors the organism's plain VL adaptation (:mod:`vlsafe_organism.vl_train`): the same safe LLM wired
with DINOv2 at the same image size, the same benign synthetic training images and questions, the same two
stages (projector, then projector + LoRA r16 on the LLM) with the same step counts and learning rates, but
trained through the library's TGA engine (:class:`vlsafe.methods.training.TGATrainer`, on ``transformers.Trainer``)
with the TGA loss and retrieval prompts. Differences: one
question per record (the plain recipe packs an image's questions into one multi-turn chat) and the vision
tower runs every step (frozen) instead of caching its features.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from vlsafe.data.retrieval import EmbeddingIndex
from vlsafe.data.scenes import make_example, vqa_prompt
from vlsafe.methods.training.tga import GuideConfig, RetrievalConfig, TGAConfig, run_tga
from vlsafe_organism.base import load_base_vision
from vlsafe_organism.recipe import OrganismRecipe
from vlsafe_organism.registry import build_system
from vlsafe_organism.vl_train import VLConfig
from vlsafe_organism.wiring import make_image_processor, save_vlm, wire_llava

if TYPE_CHECKING:
    from vlsafe_organism.recipe import OrganismRecipe
    from vlsafe_organism.vl_train import VLConfig


def pooled_vision_embedder(vision: Any, processor: Any, feature_layer: int) -> Callable[[list[Any]], torch.Tensor]:
    """``images -> [n, d]``: the frozen vision tower's patch states at ``hidden_states[feature_layer]`` (the
    layer the organism's projector reads), CLS dropped, averaged over the patches. Images are PIL images or
    paths."""

    @torch.no_grad()
    def embed(images: list[Any]) -> torch.Tensor:
        pil = [Image.open(x).convert("RGB") if isinstance(x, (str, Path)) else x.convert("RGB") for x in images]
        out = []
        for i in range(0, len(pil), 32):
            pix = processor(pil[i : i + 32], return_tensors="pt")["pixel_values"]
            states = vision(pix, output_hidden_states=True).hidden_states[feature_layer][:, 1:]
            out.append(states.mean(1))
        return torch.cat(out)

    return embed


def vision_retriever(
    images: Sequence[Any],
    captions: Sequence[str],
    embed: Callable[[list[Any]], torch.Tensor] | None = None,
    *,
    size: int = 84,
    feature_layer: int = 8,
    cache_dir: str | Path | None = None,
) -> EmbeddingIndex:
    """The organism's image-to-text retriever (TGA retrieves "the texts related to the input vision"): the
    training images nearest to a query image by the frozen vision tower's pooled features
    (:func:`pooled_vision_embedder`; default: the organism's DINOv2 at ``size`` px and ``feature_layer``) return
    their captions. The same retriever serves training and evaluation."""
    if embed is None:
        embed = pooled_vision_embedder(load_base_vision(cache_dir).eval(), make_image_processor(size), feature_layer)
    return EmbeddingIndex(embed(list(images)), captions, embed_image=embed)


def write_organism_tga_data(out_dir: str | Path, n_images: int = 400, seed: int = 0) -> tuple[Path, Path]:
    """Write the organism's training images, ``train.jsonl`` (one record per question, with the image's
    exact caption) and ``corpus.txt`` (all captions, the retrieval corpus); returns ``(data, corpus)``."""

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines, captions = [], []
    for i in range(n_images):
        ex = make_example(i, "train")
        rel = f"images/{i:05d}.png"
        if not (out / rel).is_file():
            ex.image.save(out / rel)
        captions.append(ex.caption)
        for k, qa in enumerate(ex.qa):
            lines.append(
                json.dumps(
                    {
                        "id": f"{i}-{k}",
                        "image": rel,
                        "instruction": vqa_prompt(qa.question),
                        "answer": qa.answer.capitalize() + ".",
                        "caption": ex.caption,
                    }
                )
            )
    data, corpus = out / "train.jsonl", out / "corpus.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus.write_text("\n".join(dict.fromkeys(captions)) + "\n", encoding="utf-8")
    return data, corpus


def organism_tga_config(
    out_dir: str | Path,
    base_vlm: str | Path,
    data: Path,
    corpus: Path,
    vl: VLConfig | None = None,
    **overrides: Any,
) -> TGAConfig:
    """The TGA config that matches the organism's VL adaptation recipe ``vl`` (default ``VLConfig()``):
    the same stages, steps, learning rates, batch size, seed and LoRA shape."""

    vl = vl or VLConfig()
    common = {"batch_size": vl.batch_size, "seed": vl.seed, "save_every": 20, "warmup_steps": 10}
    raw: dict[str, Any] = {
        "model": str(base_vlm),
        "data": data,
        "output_dir": Path(out_dir),
        # the library's former defaults, kept explicitly: image before the retrieved text, own caption excluded,
        # the paper's loss with a linearly decaying weight
        "retrieval": RetrievalConfig.model_validate(
            {"corpus": corpus, "query": "caption", "exclude_self": True, "order": "image_first"}
        ).model_dump(),
        "guide": GuideConfig.model_validate({"form": "paper", "schedule": "linear"}).model_dump(),
        "stages": [
            {**common, "stage": "projector", "max_steps": vl.proj_steps, "lr": vl.proj_lr},
            {**common, "stage": "projector_lora", "max_steps": vl.vl_steps, "lr": vl.vl_lr,
             "projector_lr": vl.vl_projector_lr, "lora": {"rank": vl.rank, "alpha": vl.alpha}},
        ],
    }  # fmt: skip
    raw.update(overrides)
    return TGAConfig.model_validate(raw)


def run_tga_organism(
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    recipe: OrganismRecipe | None = None,
    art_dir: Path | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Wire the organism's safe LLM with DINOv2 (random projector, seed 0), write the data, and run TGA with
    the VL recipe of ``recipe`` (default: the committed organism's recipe); returns the TGA summary
    (``model_dir`` is the trained VLM).

    The safe LLM is the ``safe-llm`` system of ``art_dir`` (default: the committed artefacts), the same one the
    plain ``vl`` artefact of that directory was adapted from.
    """

    out = Path(out_dir)
    recipe = recipe or OrganismRecipe()
    vl = recipe.vl
    base = out / "base_vlm"
    if not (base / "config.json").is_file():
        llm, tok = build_system("safe-llm", cache_dir, art_dir)
        model, processor = wire_llava(
            load_base_vision(cache_dir), llm, tok, size=vl.size, feature_layer=vl.feature_layer
        )
        save_vlm(model.cpu(), processor, base)
    data, corpus = write_organism_tga_data(out / "data", vl.n_images, vl.seed)
    return run_tga(organism_tga_config(out / "tga", base, data, corpus, vl, **overrides), progress=progress)
