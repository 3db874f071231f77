"""TGA on the model organism in one call: :func:`run_tga_organism`.

It mirrors the organism's plain VL adaptation (:mod:`vlsafe_organism.vl_train`): the same safe LLM wired
with DINOv2 at the same image size, the same benign synthetic training images and questions, the same two
stages (projector, then projector + LoRA r16 on the LLM) with the same step counts and learning rates, but
trained through the library's TGA engine (:class:`vlsafe.methods.training.TGATrainer`, on ``transformers.Trainer``)
with the TGA loss and retrieval prompts. Differences: one
question per record (the plain recipe packs an image's questions into one multi-turn chat) and the vision
tower runs every step (frozen) instead of caching its features. The recipe's pictograms
(``VLConfig.n_pictograms``; none in the committed recipe) join the scenes as the plain recipe trains them
(:func:`vlsafe_organism.vl_mix.pictogram_training`: benign captions naming the object and naming questions).

Where the retrieved texts come from (``retrieval`` of :func:`run_tga_organism`):

* ``corpus`` (the committed ``tga`` artefact's): BM25 over the captions, queried with the record's caption, its
  own caption excluded, the image before the retrieved text; the paper's loss with a linearly decaying weight;
* ``vision``: every record carries its retrieved text from the training images themselves
  (:func:`write_organism_tga_data` with ``embed``): the caption of the nearest OTHER training image by the frozen
  vision tower's pooled features (:func:`pooled_vision_embedder`), and, by the released rule, a retrieved caption
  identical to the record's own is cut to its first half; the retrieved text before the image (as released),
  the released loss. The same images answer at evaluation (:func:`training_retriever`, for
  :class:`vlsafe_organism.evaluation.EvalSystem`'s ``retriever``);
* ``none``: no retrieved text (the plain prompt).

``loss="ce"`` trains the same records with the cross-entropy alone (guide weight 0): with ``retrieval="none"``
it is TGA's plain counterpart, same data, stages, steps, learning rates and seed. ``stages="projector"`` trains
the projector stage only (the language model, and so its text safety, untouched).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from vlsafe.core.digest import json_digest
from vlsafe.core.errors import ConfigError
from vlsafe.data.pictograms import make_pictogram_example
from vlsafe.data.retrieval import EmbeddingIndex, halve_own_caption
from vlsafe.data.scenes import make_example, vqa_prompt
from vlsafe.methods.training.tga import GuideConfig, RetrievalConfig, TGAConfig, run_tga
from vlsafe_organism.base import load_base_vision
from vlsafe_organism.recipe import OrganismRecipe
from vlsafe_organism.registry import build_system
from vlsafe_organism.vl_mix import pictogram_training
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


#: where the retrieved texts of :func:`run_tga_organism` come from (see the module docstring)
TGARetrieval = Literal["corpus", "vision", "none"]
#: the images of a data folder (image path, caption), in key order
IMAGES_FILE = "images.jsonl"
#: the image keys of a data folder (pooled vision features), with the digest of the images they embed
KEYS_FILE = "retrieval_keys.safetensors"


def _image_keys(out: Path, rels: list[str], embed: Callable[[list[Any]], torch.Tensor]) -> torch.Tensor:
    """``[N, D]`` keys of the data folder's images (``embed`` of the files), cached in :data:`KEYS_FILE` under
    the digest of the image list (the cache is the folder's: one embedder per data folder)."""
    digest = json_digest(rels)
    path = out / KEYS_FILE
    if path.is_file():
        with safe_open(str(path), "pt") as fh:
            if (fh.metadata() or {}).get("images") == digest:
                return fh.get_tensor("keys")
    keys = torch.cat([torch.as_tensor(embed([str(out / r) for r in rels[i : i + 256]])).float()
                      for i in range(0, len(rels), 256)])  # fmt: skip
    save_file({"keys": keys.contiguous()}, str(path), metadata={"images": digest})
    return keys


def nearest_other(keys: torch.Tensor | np.ndarray) -> list[int]:
    """For each key, the index of the nearest OTHER key by cosine similarity (ties: the lower index)."""
    m = np.asarray(torch.as_tensor(keys).double().numpy())
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    sims = m @ m.T
    np.fill_diagonal(sims, -np.inf)
    return [int(j) for j in sims.argmax(axis=1)]


def write_organism_tga_data(
    out_dir: str | Path,
    n_images: int = 400,
    seed: int = 0,
    *,
    n_pictograms: int = 0,
    embed: Callable[[list[Any]], torch.Tensor] | None = None,
) -> tuple[Path, Path]:
    """Write the organism's training images, ``train.jsonl`` and ``corpus.txt`` (all captions, the retrieval
    corpus); returns ``(data, corpus)``.

    Records: one per question of each of the first ``n_images`` train scenes (with the image's exact caption),
    then, per train-split pictogram of :func:`vlsafe_organism.vl_mix.pictogram_training` (``n_pictograms``,
    ``seed``), one per turn of the conversation the plain recipe trains on (naming questions, an open naming
    request, a caption request). :data:`IMAGES_FILE` lists the images (path, caption).

    With ``embed`` (``images -> [n, D]``, e.g. :func:`pooled_vision_embedder`), every record carries its
    ``retrieved`` text: the caption of the nearest other training image by ``embed`` (:func:`nearest_other`),
    cut to its first half when it equals the record's own caption (the released rule,
    :func:`~vlsafe.data.retrieval.halve_own_caption`); the keys are kept in :data:`KEYS_FILE`.
    """

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, str]] = []
    records: list[list[dict[str, Any]]] = []
    for i in range(n_images):
        ex = make_example(i, "train")
        rel = f"images/{i:05d}.png"
        if not (out / rel).is_file():
            ex.image.save(out / rel)
        images.append((rel, ex.caption))
        records.append([{"id": f"{i}-{k}", "image": rel, "instruction": vqa_prompt(qa.question),
                         "answer": qa.answer.capitalize() + ".", "caption": ex.caption}
                        for k, qa in enumerate(ex.qa)])  # fmt: skip
    if n_pictograms:
        (out / "pictograms").mkdir(parents=True, exist_ok=True)
    for key, turns in pictogram_training(n_pictograms, seed):
        pic = make_pictogram_example(key, "train")
        rel = f"pictograms/{key:05d}.png"
        if not (out / rel).is_file():
            pic.image.save(out / rel)
        images.append((rel, pic.caption))
        records.append([{"id": f"p{key}-{k}", "image": rel, "instruction": q, "answer": a, "caption": pic.caption}
                        for k, (q, a) in enumerate(turns)])  # fmt: skip
    if embed is not None:
        keys = _image_keys(out, [rel for rel, _ in images], embed)
        for i, j in enumerate(nearest_other(keys)):
            retrieved = halve_own_caption(images[j][1], images[i][1])
            for rec in records[i]:
                rec["retrieved"] = retrieved
    data, corpus = out / "train.jsonl", out / "corpus.txt"
    data.write_text("".join(json.dumps(r) + "\n" for group in records for r in group), encoding="utf-8")
    corpus.write_text("\n".join(dict.fromkeys(c for _, c in images)) + "\n", encoding="utf-8")
    (out / IMAGES_FILE).write_text("".join(json.dumps({"image": r, "caption": c}) + "\n" for r, c in images),
                                   encoding="utf-8")  # fmt: skip
    return data, corpus


def training_retriever(data_dir: str | Path, embed: Callable[[list[Any]], torch.Tensor]) -> EmbeddingIndex:
    """The image-to-text retriever over a data folder's training images (:func:`write_organism_tga_data`): a
    query image returns the caption of the nearest training image by ``embed`` (the keys of :data:`KEYS_FILE`,
    computed if missing). What a ``vision``-retrieval TGA model is evaluated with."""
    folder = Path(data_dir)
    rows = [json.loads(line) for line in (folder / IMAGES_FILE).read_text(encoding="utf-8").splitlines()]
    keys = _image_keys(folder, [r["image"] for r in rows], embed)
    return EmbeddingIndex(keys, [r["caption"] for r in rows], embed_image=embed)


def organism_tga_config(
    out_dir: str | Path,
    base_vlm: str | Path,
    data: Path,
    corpus: Path,
    vl: VLConfig | None = None,
    *,
    retrieval: TGARetrieval = "corpus",
    loss: Literal["tga", "ce"] = "tga",
    stages: Literal["all", "projector"] = "all",
    order: Literal["text_first", "image_first"] | None = None,
    form: Literal["paper", "released", "released-no-grad"] | None = None,
    **overrides: Any,
) -> TGAConfig:
    """The TGA config that matches the organism's VL adaptation recipe ``vl`` (default ``VLConfig()``):
    the same stages, steps, learning rates, batch size, seed and LoRA shape.

    ``retrieval`` (module docstring): ``corpus`` searches ``corpus`` (the committed artefact's settings: image
    first, the paper's loss, linear weight); ``vision`` and ``none`` use the records' own retrieved texts (none
    for ``none``), the retrieved text first and the released loss. ``order`` and ``form`` replace those
    defaults; ``loss="ce"`` sets the guide weight to 0 (cross-entropy alone); ``stages="projector"`` keeps the
    projector stage only. ``overrides`` replace whole fields of the config last.

    Raises:
        ConfigError: an unknown ``retrieval``, ``loss`` or ``stages``.
    """

    vl = vl or VLConfig()
    for name, value, known in (("retrieval", retrieval, ("corpus", "vision", "none")), ("loss", loss, ("tga", "ce")),
                               ("stages", stages, ("all", "projector"))):  # fmt: skip
        if value not in known:
            raise ConfigError(f"TGA {name} {value!r} is unknown; choose one of {', '.join(known)}")
    common = {"batch_size": vl.batch_size, "seed": vl.seed, "save_every": 20, "warmup_steps": 10}
    if retrieval == "corpus":
        # the library's former defaults, kept explicitly: image before the retrieved text, own caption excluded,
        # the paper's loss with a linearly decaying weight
        found = {"corpus": corpus, "query": "caption", "exclude_self": True, "order": order or "image_first"}
        guide: dict[str, Any] = {"form": form or "paper", "schedule": "linear" if form in (None, "paper") else None}
    else:  # the records carry their retrieved texts (or none)
        found = {"corpus": None, "order": order or "text_first"}
        guide = {"form": form or "released"}
    if loss == "ce":
        guide["weight"] = 0.0
    plan = [{**common, "stage": "projector", "max_steps": vl.proj_steps, "lr": vl.proj_lr}]
    if stages == "all":
        plan.append({**common, "stage": "projector_lora", "max_steps": vl.vl_steps, "lr": vl.vl_lr,
                     "projector_lr": vl.vl_projector_lr, "lora": {"rank": vl.rank, "alpha": vl.alpha}})  # fmt: skip
    raw: dict[str, Any] = {
        "model": str(base_vlm),
        "data": data,
        "output_dir": Path(out_dir),
        "retrieval": RetrievalConfig.model_validate(found).model_dump(),
        "guide": GuideConfig.model_validate(guide).model_dump(),
        "stages": plan,
    }
    raw.update(overrides)
    return TGAConfig.model_validate(raw)


def organism_embedder(
    cache_dir: str | Path | None = None, vl: VLConfig | None = None
) -> Callable[[list[Any]], torch.Tensor]:
    """:func:`pooled_vision_embedder` of the organism's frozen DINOv2 at the recipe's image size and vision
    layer (the features its projector reads)."""
    vl = vl or VLConfig()
    return pooled_vision_embedder(load_base_vision(cache_dir).eval(), make_image_processor(vl.size), vl.feature_layer)


def run_tga_organism(
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    recipe: OrganismRecipe | None = None,
    art_dir: Path | None = None,
    *,
    retrieval: TGARetrieval = "corpus",
    loss: Literal["tga", "ce"] = "tga",
    stages: Literal["all", "projector"] = "all",
    order: Literal["text_first", "image_first"] | None = None,
    form: Literal["paper", "released", "released-no-grad"] | None = None,
    embed: Callable[[list[Any]], torch.Tensor] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Wire the organism's safe LLM with DINOv2 (random projector, seed 0), write the data, and run TGA with
    the VL recipe of ``recipe`` (default: the committed organism's recipe); returns the TGA summary
    (``model_dir`` is the trained VLM; ``data_dir`` the data folder, whose images :func:`training_retriever`
    searches).

    The safe LLM is the ``safe-llm`` system of ``art_dir`` (default: the committed artefacts), the same one the
    plain ``vl`` artefact of that directory was adapted from. The data (:func:`write_organism_tga_data`) holds
    the recipe's scenes and pictograms; with ``retrieval="vision"`` every record carries the caption of the
    nearest other training image by ``embed`` (default :func:`organism_embedder`). ``retrieval``, ``loss``,
    ``stages``, ``order``, ``form`` and ``overrides``: :func:`organism_tga_config`. The defaults reproduce the
    committed ``tga`` artefact's settings.
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
    if retrieval == "vision" and embed is None:
        embed = organism_embedder(cache_dir, vl)
    data, corpus = write_organism_tga_data(out / "data", vl.n_images, vl.seed, n_pictograms=vl.n_pictograms,
                                           embed=embed if retrieval == "vision" else None)  # fmt: skip
    cfg = organism_tga_config(out / "tga", base, data, corpus, vl, retrieval=retrieval, loss=loss, stages=stages,
                              order=order, form=form, **overrides)  # fmt: skip
    return {**run_tga(cfg, progress=progress), "data_dir": str(out / "data")}
