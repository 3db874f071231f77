"""The organism's supervised fine-tuning examples, encoded with the library's SFT encoding.

:func:`sft_collate` encodes a batch with :func:`vlsafe.methods.training.encoding.encode_batch` (the model's chat
template, the reply followed by the template's end-of-turn text, labels on the reply only, right-padded), the
input of :func:`vlsafe.methods.training.sft.sft_loss`. The organism-specific part: a reply that was cut short
(``complete=False``, e.g. the base model's answers truncated after ``answer_tokens`` tokens) is learnt without
its end-of-turn token, so that the model is not taught to stop mid-sentence; the end-of-turn token stays in
the input, after the reply, where it changes no supervised prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vlsafe.methods.training.encoding import IGNORE_INDEX, GroupedBatch, encode_batch
from vlsafe.models.bundle import ModelBundle

#: Longest training sequence (prompt + reply) in tokens; longer replies are cut.
MAX_LENGTH = 256


@dataclass(frozen=True)
class SFTExample:
    """A user prompt and the assistant reply to learn; ``complete`` also teaches the end-of-turn token."""

    prompt: str
    reply: str
    complete: bool = True


def sft_collate(
    bundle: ModelBundle, examples: Sequence[SFTExample], max_length: int = MAX_LENGTH
) -> GroupedBatch:
    """Encode text-only examples into one batch (see the module docstring).

    The reply's own tokens are those of the reply tokenised alone; the end-of-turn text starts a new token
    (a special token in ChatML), so the labels past them are the end-of-turn's.

    Raises:
        InputError: an empty reply, or a prompt of ``max_length`` tokens or more
            (:func:`~vlsafe.methods.training.encoding.encode_batch`).
    """
    batch = encode_batch(bundle, [ex.prompt for ex in examples], [ex.reply for ex in examples],
                         max_length=max_length)  # fmt: skip
    for row, ex in enumerate(examples):
        if not ex.complete:
            own = bundle.tokenizer(ex.reply.strip(), add_special_tokens=False)["input_ids"]
            batch.labels[row, batch.prompt_lengths[row] + len(own) :] = IGNORE_INDEX
    return GroupedBatch([batch])
