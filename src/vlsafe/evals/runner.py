"""The generation runner: batched, resumable, shardable evaluation of a model on a benchmark.

``run_eval(config, out_dir)`` loads the samples, skips those already in ``out_dir/samples.jsonl``,
renders each pending sample under its image setting, generates in left-padded batches sorted by prompt
length in tokens (greedy unless ``do_sample``; with ``shared_prefix`` the prefix a batch shares is computed
once), scores multiple-choice / yes-no utility samples by the log-likelihood of
each option, appends one record per sample (flushed and fsynced after each batch), then judges the
records and writes ``results.json``. Under ``accelerate launch`` every process takes its share of the
pending samples, writes ``shards/rank{R}.jsonl``, and the main process merges the shards at the end.

Order of work: the output folder is checked for writability, the samples and the model's identity are read,
the run directory's lock is taken (a second writer is refused), the stored identity is compared
(:mod:`vlsafe.evals.rundir`), the model is loaded, and only then are ``config.yaml`` and ``run.json`` written:
a run that fails on its inputs leaves no run directory behind. A sample whose prompt, with ``max_new_tokens``,
does not fit in the model's context fails on its own (or is cut to fit with ``truncate_prompts``); so does a
sample whose image cannot be decoded, within ``max_error_fraction``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import check_writable
from vlsafe.data.retrieval import ImageRetriever, load_corpus, make_retriever, retrieval_cache_dir
from vlsafe.evals.config import EvalConfig
from vlsafe.evals.generation import Prepared, generate_batch, needs_image, prepare, score_record
from vlsafe.evals.identity import check_samples, model_content, sample_hashes
from vlsafe.evals.images import apply_image_setting, image_identity, setting_text
from vlsafe.evals.interventions import BatchObserver, intervention_fingerprint, observers_of
from vlsafe.evals.judges import JUDGES, build_judge
from vlsafe.evals.judging import build_results, judge_records, versions
from vlsafe.evals.loaders import LoadReport, load_benchmark_report
from vlsafe.evals.retrieval import retriever_fingerprint, with_retrieval
from vlsafe.evals.rundir import RecordWriter, RunDir
from vlsafe.evals.sample import ImageSetting, Sample
from vlsafe.hooks import SteeringVector
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.context import ContextOverflowError
from vlsafe.models.fingerprint import bundle_fingerprint
from vlsafe.models.greedy import shared_prefix_supported
from vlsafe.models.inputs import user_turn_layout
from vlsafe.models.loading import load_model

logger = logging.getLogger(__name__)

__all__ = ["Intervention", "run_eval"]

#: A context manager (entered once around all generation and scoring), a zero-argument callable
#: returning one, or ``(SteeringVector, alpha)``.
Intervention = AbstractContextManager[Any] | Callable[[], AbstractContextManager[Any]] | tuple[Any, float]


class _Dist:
    """Process topology: ``accelerate.PartialState`` when launched with several processes."""

    def __init__(self) -> None:
        self.state: Any = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:

            # Without CUDA, ask for the gloo CPU backend explicitly (accelerate would otherwise see
            # one process per rank when launched through torchrun / ``accelerate launch --multi_gpu``).
            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.world = self.state.num_processes if self.state else 1
        self.is_main = self.rank == 0

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    @property
    def device(self) -> torch.device | None:
        return self.state.device if self.state is not None else None


def _enter_interventions(
    stack: contextlib.ExitStack, bundle: ModelBundle, config: EvalConfig, intervention: Any
) -> list[BatchObserver]:
    """Enter the configured steering and ``intervention``; return those that observe batches."""
    if config.steer is not None:
        vec = SteeringVector.load(config.steer)  # checked against the model before the run was written
        stack.enter_context(
            vec.apply(
                bundle,
                config.alpha,
                positions=config.steer_positions,
                prefill_only=config.steer_prefill_only,
                layers=config.steer_layers,
                norm_scale=config.steer_norm_scale,
            )
        )
    if intervention is None:
        return []
    if isinstance(intervention, tuple):
        vec, alpha = intervention
        stack.enter_context(vec.apply(bundle, alpha))
        return []
    if hasattr(intervention, "__enter__"):
        return observers_of(intervention, stack.enter_context(intervention))
    if callable(intervention):
        manager = intervention()
        return observers_of(intervention, manager, stack.enter_context(manager))
    else:
        raise ConfigError(
            f"intervention must be a context manager, a callable returning one, or (SteeringVector, alpha); "
            f"got {type(intervention).__name__}"
        )


def _generation_kwargs(bundle: ModelBundle, config: EvalConfig) -> dict[str, Any]:
    model: Any = bundle.model
    gc = copy.deepcopy(model.generation_config)
    gc.max_new_tokens = config.max_new_tokens
    gc.do_sample = config.do_sample
    if config.do_sample:
        gc.temperature, gc.top_p = config.temperature, config.top_p
    else:  # greedy: clear sampling knobs the checkpoint may carry, so transformers does not warn
        gc.temperature, gc.top_p, gc.top_k = None, None, None
    if gc.pad_token_id is None:
        gc.pad_token_id = bundle.tokenizer.pad_token_id
    return {"generation_config": gc}


def _load_samples(
    config: EvalConfig, samples: Sequence[Sample] | None, retriever: Any = None
) -> tuple[list[Sample], LoadReport]:
    """The run's samples and the report of their load (files read, fallbacks; see ``EvalConfig.strict``), with
    the retrieval prompt of TGA when the config names a corpus or a ``retriever`` is given."""
    if samples is None:
        loaded = load_benchmark_report(
            config.benchmark, config.data_dir, split=config.split, limit=config.limit, strict=config.strict
        )
        out, report = loaded.samples, loaded.report
    else:
        out = list(samples)[: config.limit] if config.limit else list(samples)
        report = LoadReport(config.benchmark, config.split, config.data_dir, config.strict)
    seen: set[str] = set()
    for s in out:
        if s.id in seen:
            raise InputError(
                f"benchmark {config.benchmark!r} has two samples with id {s.id!r}; ids must be unique"
            )
        seen.add(s.id)
    if not out:
        raise InputError(f"benchmark {config.benchmark!r} produced no samples (data_dir={config.data_dir!r})")
    if retriever is not None or config.retrieval_corpus is not None:
        out = _with_retrieval(out, config, retriever)
    return out, report


def _config_retriever(config: EvalConfig) -> Any:
    """The retriever ``config`` names (``retriever`` over ``retrieval_corpus``)."""
    assert config.retrieval_corpus is not None
    options: dict[str, Any] = {}
    if config.retriever == "embedding":
        options["model_path"] = config.retrieval_model
    elif config.retriever == "clip":
        options.update(model=config.retrieval_model, cache_dir=retrieval_cache_dir())
    return make_retriever(config.retriever, load_corpus(config.retrieval_corpus), **options)


def _with_retrieval(samples: list[Sample], config: EvalConfig, retriever: Any = None) -> list[Sample]:
    """TGA inference: the retrieval prompt of TGA training in each sample (``config.retrieval_order``), from
    ``retriever`` (default: the one the config names), retrieved by the image each sample is shown when the
    retriever retrieves by image (:class:`~vlsafe.data.retrieval.ImageRetriever`: ``clip``, an
    :class:`~vlsafe.data.retrieval.EmbeddingIndex`), by the prompt's text otherwise.

    The judged request stays the original one (``metadata["request"]``), so verdicts are comparable
    with runs without retrieval. A sample whose image cannot be rendered is queried by text (its record
    reports the image error later).
    """

    if retriever is None:
        retriever = _config_retriever(config)
    originals = {s.id: s.request for s in samples}
    images: list[Any] | None = None
    if isinstance(retriever, ImageRetriever):
        images = []
        for s in samples:
            try:
                image = apply_image_setting(s, _setting(s, config), data_dir=config.data_dir,
                                            size=config.image_size, seed=config.seed)[1]  # fmt: skip
            except (InputError, ValueError, OSError):
                image = None
            images.append(image)
    query = "image" if images is not None else "text"
    out = with_retrieval(samples, retriever, query=query, order=config.retrieval_order, images=images)
    return [s.model_copy(update={"metadata": {**s.metadata, "request": originals[s.id]}}) for s in out]


def _setting(sample: Sample, config: EvalConfig) -> ImageSetting:
    return config.image_setting if config.image_setting is not None else sample.image_setting


def _prompt_lengths(bundle: ModelBundle, samples: list[Sample], config: EvalConfig) -> list[int]:
    """Token length of each sample's chat prompt as the model is shown it (image placeholder unexpanded)."""
    if not samples:
        return []
    turns = {flag: user_turn_layout(bundle, flag, True) for flag in {needs_image(_setting(s, config)) for s in samples}}
    texts = []
    for s in samples:
        setting = _setting(s, config)
        try:
            shown = setting_text(s, setting).strip()
        except InputError:  # rendered as the sample's error record later
            shown = ""
        try:
            texts.append(turns[needs_image(setting)].render(shown).text)
        except InputError:  # an image slot given twice: the sample's error record later
            texts.append(shown)
    return [len(ids) for ids in bundle.tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _batches(
    samples: list[Sample], config: EvalConfig, bundle: ModelBundle, group_images: bool
) -> list[list[Sample]]:
    """Chunks of ``batch_size`` that all show an image or all show none.

    Within each group, open-ended samples come before multiple-choice ones and go shortest prompt first (in
    tokens; ties keep the input order), so a batch pads little. With ``group_images``, samples that show the
    same image (:func:`vlsafe.evals.images.image_identity`) are next to each other, the groups ordered by
    their shortest prompt, so a shared-prefix batch computes each image once.
    """
    lengths = dict(zip((s.id for s in samples), _prompt_lengths(bundle, samples, config), strict=True))
    groups: dict[bool, list[Sample]] = {True: [], False: []}
    for s in samples:
        groups[needs_image(_setting(s, config))].append(s)
    out: list[list[Sample]] = []
    for has_image, group in groups.items():
        group.sort(key=lambda s: (s.choices is not None, lengths[s.id]))
        if group_images and has_image:
            keys = {s.id: image_identity(s, _setting(s, config), size=config.image_size, seed=config.seed) for s in group}
            rank: dict[Any, int] = {}
            for s in group:
                rank.setdefault(keys[s.id], len(rank))
            group.sort(key=lambda s: (s.choices is not None, rank[keys[s.id]]))
        out.extend(group[i : i + config.batch_size] for i in range(0, len(group), config.batch_size))
    return out


def _run_batch(
    bundle: ModelBundle,
    chunk: list[Sample],
    config: EvalConfig,
    gen_kwargs: dict[str, Any],
    batch_no: int,
    observers: list[BatchObserver],
    shared_prefix: bool = False,
) -> list[dict[str, Any]]:
    prepared = [prepare(s, _setting(s, config), config.data_dir, config.seed, config.image_size) for s in chunk]
    records: list[dict[str, Any]] = []
    to_generate: list[Prepared] = []
    for p in prepared:
        if not p.ok:
            records.append({**p.record, "timings": {"render_s": round(p.render_s, 6)}})
        elif p.sample.choices:
            try:
                records.append(score_record(bundle, p, observers))
            except InputError as exc:
                records.append({**p.record, "error": f"InputError: {exc}"})
        else:
            to_generate.append(p)
    if config.do_sample:
        torch.manual_seed(config.seed * 1_000_003 + batch_no)
    for has_image in (True, False):
        group = [p for p in to_generate if (p.image is not None) == has_image]
        if not group:
            continue
        try:
            records.extend(
                generate_batch(
                    bundle, group, gen_kwargs, seed=config.seed, observers=observers, shared_prefix=shared_prefix
                )
            )
        except InputError:  # isolate the offending sample(s)
            for p in group:
                records.append(_generate_one(bundle, p, config, gen_kwargs, observers, shared_prefix))
    return records


def _generate_one(
    bundle: ModelBundle,
    p: Prepared,
    config: EvalConfig,
    gen_kwargs: dict[str, Any],
    observers: list[BatchObserver],
    shared_prefix: bool,
) -> dict[str, Any]:
    """One sample's record; a prompt too long for the context is cut to fit when ``truncate_prompts``."""
    for _ in range(4):  # decoding the kept tokens may re-tokenise a little longer: cut again
        try:
            return generate_batch(
                bundle, [p], gen_kwargs, seed=config.seed, observers=observers, shared_prefix=shared_prefix
            )[0]
        except ContextOverflowError as exc:
            cut = _truncate(bundle, p, exc) if config.truncate_prompts else None
            if cut is None:
                return {**p.record, "error": f"InputError: {exc}"}
            p = cut
        except InputError as exc:
            return {**p.record, "error": f"InputError: {exc}"}
    return {**p.record, "error": "InputError: the prompt could not be cut to fit the model's context"}


def _truncate(bundle: ModelBundle, p: Prepared, exc: ContextOverflowError) -> Prepared | None:
    """``p`` with the end of its prompt text cut by the overflow (``None`` if nothing of the text would be left)."""
    tok: Any = bundle.tokenizer
    ids = tok(str(p.text), add_special_tokens=False)["input_ids"]
    keep = len(ids) - exc.overflow()
    if keep < 1:
        return None
    text = tok.decode(ids[:keep], skip_special_tokens=True)
    note = (
        f"prompt cut from {len(ids)} to {keep} text tokens to fit the model's context of {exc.limit} "
        f"with max_new_tokens={exc.max_new_tokens} (truncate_prompts)"
    )
    record = {**p.record, "prompt": text, "warnings": [*p.record.get("warnings", []), note]}
    logger.warning("sample %s: %s", p.sample.id, note)
    return Prepared(p.sample, p.setting, record, text, p.image, p.render_s)


def _shared_prefix(bundle: ModelBundle, config: EvalConfig, intervention: Any) -> bool:
    """Whether this run decodes with a shared-prefix KV cache (see ``EvalConfig.shared_prefix``)."""
    if not config.shared_prefix:
        return False
    usable = not config.do_sample and config.steer is None and intervention is None
    if not usable or not shared_prefix_supported(bundle.model):
        logger.info("shared_prefix is off for this run: it needs greedy decoding without steering or "
                    "interventions on a supported model (%s)", bundle.extra.get("model_type"))  # fmt: skip
        return False
    return True


def _check_model(bundle: ModelBundle, samples: list[Sample], config: EvalConfig) -> None:
    if bundle.is_vlm:
        return
    bad = sorted({_setting(s, config).value for s in samples if needs_image(_setting(s, config))})
    if bad:
        raise ConfigError(
            f"image settings {bad} show an image but {bundle.name!r} is a text-only model; "
            "use image_setting 'none' or 'caption'"
        )


def _load(config: EvalConfig, dist: _Dist) -> ModelBundle:
    device = dist.device if dist.state is not None else config.device
    return load_model(
        config.model,
        dtype=config.dtype,
        device=device,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )


def _generate(
    run: RunDir,
    dist: _Dist,
    mine: list[Sample],
    n_total: int,
    n_err_before: int,
    config: EvalConfig,
    bundle: ModelBundle | None,
    intervention: Any,
    progress: bool,
    hashes: dict[str, str],
) -> dict[str, Any] | None:
    if not mine:
        return None
    if bundle is None:
        bundle = _load(config, dist)
    _check_model(bundle, mine, config)
    gen_kwargs = _generation_kwargs(bundle, config)
    path = run.samples_path if dist.state is None else run.shard_path(dist.rank)
    budget = config.max_error_fraction * n_total
    n_err = n_err_before
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(mine),
        desc=f"eval {config.benchmark}",
        unit="sample",
        disable=not (progress and dist.is_main),
    )
    with RecordWriter(path) as writer, contextlib.ExitStack() as stack, bar:
        observers = _enter_interventions(stack, bundle, config, intervention)
        shared = _shared_prefix(bundle, config, intervention)
        for batch_no, chunk in enumerate(_batches(mine, config, bundle, shared)):
            records = _run_batch(bundle, chunk, config, gen_kwargs, batch_no, observers, shared)
            stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            writer.write_many(
                {**r, "sample_hash": hashes.get(str(r["id"])), "rank": dist.rank, "finished": stamp}
                for r in records
            )
            bar.update(len(chunk))
            failed = [r for r in records if r.get("error")]
            n_err += len(failed)
            if n_err > budget:
                raise InputError(
                    f"{n_err} of {n_total} samples failed, more than max_error_fraction={config.max_error_fraction} "
                    f"allows; last error ({failed[-1]['id']}): {failed[-1]['error']}. Finished records are kept "
                    f"in {path}; fix the data or raise max_error_fraction, then rerun into a new directory"
                )
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 3),
        "n_generated": len(mine),
        "samples_per_s": len(mine) / seconds if seconds else None,
    }


def run_eval(
    config: EvalConfig | dict[str, Any],
    out_dir: str | Path,
    *,
    bundle: ModelBundle | None = None,
    intervention: Intervention | None = None,
    samples: Sequence[Sample] | None = None,
    progress: bool = True,
    retriever: Any = None,
) -> dict[str, Any]:
    """Evaluate ``config.model`` on ``config.benchmark`` into the run directory ``out_dir``.

    Args:
        config: the run's config (or a dict of its fields).
        out_dir: run directory; created, or resumed (finished ids are skipped) when it exists. A run whose
            identity differs from the stored one (generation options, the model's content, the intervention, a
            finished sample's content) is refused, as is a directory another writer holds.
        bundle: an already loaded model (default: load ``config.model``).
        intervention: applied while generating and scoring: a context manager, a zero-argument
            callable returning one, or ``(SteeringVector, alpha)``; on top of ``config.steer``.
        samples: evaluate these instead of loading ``config.benchmark`` (``limit`` still applies).
        progress: show a tqdm bar with ETA.
        retriever: TGA inference with a retriever object instead of ``config.retrieval_corpus``: a
            :class:`~vlsafe.data.retrieval.Retriever` (queried with the prompt) or
            :class:`~vlsafe.data.retrieval.ImageRetriever` (queried with the image each sample is shown, e.g. an
            :class:`~vlsafe.data.retrieval.EmbeddingIndex` over training images); each prompt becomes the TGA
            training prompt (``config.retrieval_order``). The run's fingerprint holds
            :func:`~vlsafe.evals.retrieval.retriever_fingerprint` (``retriever_object``) and the order.

    Returns:
        The content of ``results.json`` (see :mod:`vlsafe.evals.judging`).

    Raises:
        ConfigError: invalid config, a mismatching run directory, one in use by another writer, or both
            ``retriever`` and ``config.retrieval_corpus``.
        InputError: too many per-sample errors (see ``max_error_fraction``), duplicate ids, no samples.
        ModelLoadError: the model cannot be loaded (nothing is written then).
        OutputError: ``out_dir`` cannot be written (checked before anything is computed).
    """
    if not isinstance(config, EvalConfig):
        config = EvalConfig.from_dict(dict(config))
    run = RunDir(out_dir)
    dist = _Dist()
    if dist.is_main:
        check_writable(run.path, "run directory")
    extra: dict[str, Any] = {}
    if intervention is not None:
        extra["intervention"] = intervention_fingerprint(intervention)
    if retriever is not None:
        if config.retrieval_corpus is not None:
            raise ConfigError(f"give either a retriever or retrieval_corpus ({config.retrieval_corpus!r}), not both")
        extra.update(retriever_object=retriever_fingerprint(retriever), retrieval_order=config.retrieval_order)
    all_samples, report = _load_samples(config, samples, retriever)
    hashes = sample_hashes(all_samples, config.data_dir)

    JUDGES.get(config.judge)  # fail early on an unknown judge, on every rank
    judge = build_judge(config.judge, **config.judge_options) if dist.is_main else None
    with run.lock() if dist.is_main else contextlib.nullcontext():
        content: dict[str, Any] | None = None
        files: dict[str, str] = {}
        if dist.is_main:
            content, files = model_content(config, bundle, run.known_digests())
            if content is None:  # a hub id is identified by the model it loads
                bundle = _load(config, dist)
                content = {"model": bundle_fingerprint(bundle)}
            run.check_compatible(config, extra, content)
            run.merge_shards()  # leftovers of an interrupted multi-process run
            check_samples(run.path, run.records(), hashes)
        dist.wait()
        done = {str(r["id"]): r for r in run.records()}
        ids = {s.id for s in all_samples}
        n_err_before = sum(1 for i, r in done.items() if i in ids and r.get("error"))
        pending = [s for s in all_samples if s.id not in done]
        logger.info(
            "%d samples, %d already done, %d to run",
            len(all_samples),
            len(all_samples) - len(pending),
            len(pending),
        )
        mine = pending[dist.rank :: dist.world]
        if mine and bundle is None:
            bundle = _load(config, dist)  # before anything is written: a model that fails to load leaves no run
        if mine and bundle is not None:
            _check_model(bundle, mine, config)
            if config.steer is not None:
                SteeringVector.load(config.steer).validate(bundle)
        if dist.is_main:
            meta = {"versions": versions(), "world_size": dist.world}
            data = report.to_json([_setting(s, config) for s in all_samples])
            run.write_config(config, extra, meta, content, files, data)
        dist.wait()
        generation = _generate(
            run, dist, mine, len(all_samples), n_err_before, config, bundle, intervention, progress, hashes
        )
        dist.wait()
        if dist.is_main and judge is not None:
            run.merge_shards()
            by_id = {str(r["id"]): r for r in run.records()}
            missing = [s.id for s in all_samples if s.id not in by_id]
            if missing:
                raise InputError(f"{len(missing)} samples have no record after the run (e.g. {missing[:3]})")
            records = judge_records(run, [by_id[s.id] for s in all_samples], judge)
            data = report.to_json([_setting(s, config) for s in all_samples])
            results = build_results(run, records, judge, config.model_dump(mode="json"), generation, data=data)
            run.write_results(results)
        dist.wait()
    return run.read_results()
