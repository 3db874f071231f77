"""Building blocks of the tiny models: per-family specs, chat templates and the local BPE tokenizer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

#: Language-model size shared by all tiny models.
TEXT: dict[str, int] = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2}

#: Vocabulary size the local BPE trainer aims at (special tokens included).
VOCAB_SIZE = 600

_CORPUS = """\
How do I bake bread at home? Describe the image in detail. What is shown in this picture?
Write a short story about a cat who lives in a library. Explain how photosynthesis works.
I'm sorry, but I cannot help with that request. Sure, here is a step by step guide.
The image shows a red car parked next to a tall building on a sunny day.
List three ways to stay safe online. What colour is the sky? Count the objects in the photo.
Translate this sentence into French. Summarise the text below in one paragraph.
A person is holding a knife in a kitchen while cutting vegetables for dinner.
Image description: a dog running on the beach near the water with a ball in its mouth.
Give me instructions for building a birdhouse from wood. Is this image safe for children?
Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024. Questions, answers; quotes "like this" and (brackets)!
"""


@dataclass(frozen=True)
class FamilySpec:
    """Prompt format, special tokens and image geometry of one tiny family."""

    user_start: str
    user_end: str
    assistant_start: str
    assistant_end: str
    image_text: str  # what the chat template writes for an image part
    bos: str
    eos: str
    pad: str
    image_token: str | None
    specials: tuple[str, ...] = ()
    extra_attrs: dict[str, str] = field(default_factory=dict)
    image_size: int = 28
    patch_size: int = 7
    image_tokens: int = 4
    grid_pinpoints: list[list[int]] | None = None

    def chat_template(self) -> str:
        """A Jinja chat template: string or list-of-parts content; image parts become ``image_text``."""

        def lit(s: str) -> str:
            return "{{ " + repr(s) + " }}"

        content = (
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
            "{% for part in message['content'] %}"
            "{% if part['type'] == 'image' %}" + lit(self.image_text) + "{% elif part['type'] == 'text' %}"
            "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
        )
        return (
            "{% for message in messages %}"
            "{% if message['role'] == 'assistant' %}"
            + lit(self.assistant_start)
            + content
            + lit(self.assistant_end)
            + "{% else %}"
            + lit(self.user_start)
            + content
            + lit(self.user_end)
            + "{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}" + lit(self.assistant_start) + "{% endif %}"
        )


_QWEN: dict[str, Any] = {
    "user_start": "<|im_start|>user\n",
    "user_end": "<|im_end|>\n",
    "assistant_start": "<|im_start|>assistant\n",
    "assistant_end": "<|im_end|>\n",
    "image_text": "<|vision_start|><|image_pad|><|vision_end|>",
    "bos": "<|im_start|>",
    "eos": "<|im_end|>",
    "pad": "<|endoftext|>",
    "image_token": "<|image_pad|>",
    "specials": ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
    "extra_attrs": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    "image_size": 56,
    "patch_size": 14,
}
_IDEFICS: dict[str, Any] = {
    "user_start": "<|im_start|>User:",
    "user_end": "<end_of_utterance>\n",
    "assistant_start": "Assistant:",
    "assistant_end": "<end_of_utterance>\n",
    "image_text": "<image>",
    "bos": "<|im_start|>",
    "eos": "<end_of_utterance>",
    "pad": "<pad>",
    "image_token": "<image>",
    "specials": ("<fake_token_around_image>", "<global-img>"),
    "extra_attrs": {"image_token": "<image>"},
    "image_size": 56,
    "patch_size": 14,
}
_LLAVA: dict[str, Any] = {
    "user_start": "USER: ",
    "user_end": " ",
    "assistant_start": "ASSISTANT:",
    "assistant_end": "</s>",
    "image_text": "<image>\n",
    "bos": "<s>",
    "eos": "</s>",
    "pad": "<pad>",
    "image_token": "<image>",
    "extra_attrs": {"image_token": "<image>"},
    "image_size": 28,
    "patch_size": 7,
    "image_tokens": 16,
}

SPECS: dict[str, FamilySpec] = {
    "llava": FamilySpec(**_LLAVA),
    "llava_next": FamilySpec(
        **{**_LLAVA, "user_start": "[INST] ", "user_end": " [/INST]", "assistant_start": ""},
        grid_pinpoints=[[28, 28], [28, 56], [56, 28]],
    ),
    "qwen2_vl": FamilySpec(**_QWEN),
    "qwen2_5_vl": FamilySpec(**_QWEN),
    "idefics3": FamilySpec(**_IDEFICS),
    "smolvlm": FamilySpec(**_IDEFICS),
    "gemma3": FamilySpec(
        user_start="<start_of_turn>user\n",
        user_end="<end_of_turn>\n",
        assistant_start="<start_of_turn>model\n",
        assistant_end="<end_of_turn>\n",
        image_text="<start_of_image>",
        bos="<bos>",
        eos="<end_of_turn>",
        pad="<pad>",
        image_token="<image_soft_token>",
        specials=("<start_of_turn>", "<start_of_image>", "<end_of_image>", "<eos>"),
        extra_attrs={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        image_size=28,
        patch_size=7,
        image_tokens=4,
    ),
    "causal_lm": FamilySpec(
        user_start="<|im_start|>user\n",
        user_end="<|im_end|>\n",
        assistant_start="<|im_start|>assistant\n",
        assistant_end="<|im_end|>\n",
        image_text="",
        bos="<|im_start|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        image_token=None,
    ),
}


def train_tokenizer(spec: FamilySpec) -> Any:
    """Train a byte-level BPE tokenizer on the built-in corpus, with ``spec``'s special tokens and template.

    Deterministic: the same spec always gives the same vocabulary.
    """

    specials: list[str] = []
    for token in (spec.pad, spec.bos, spec.eos, spec.image_token, *spec.specials):
        if token and token not in specials:
            specials.append(token)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        extra_special_tokens=dict(spec.extra_attrs),
    )
    extra = [t for t in specials if t not in (spec.pad, spec.bos, spec.eos)]
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.chat_template = spec.chat_template()
    tok.padding_side = "left"
    return tok
