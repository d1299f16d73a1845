"""Chat templates of pretrained tokenizers: where they are found, and turning messages into token ids with them.

A template is the Jinja text Transformers keeps in `tokenizer_config.json` (or `chat_template.jinja`, or a GGUF's
metadata). It is rendered by Transformers' own `apply_chat_template` on a copy of the tokenizer, so the ids equal
what Transformers gives, and its special tokens (`<|im_start|>`, ...) become their ids.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from lmlab.errors import LmlabError

TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
"""The special tokens a template may name; `eos_token` also ends the assistant's turn."""


def chat_token_ids(
    tokenizer_json: str,
    template: str,
    tokens: dict[str, str],
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
) -> list[int]:
    """Token ids of `messages` ([{"role": ..., "content": ...}]) rendered with the Jinja `template`."""
    from jinja2.exceptions import TemplateError

    fast = _templating_tokenizer(tokenizer_json, template, tuple(sorted(tokens.items())))
    try:
        ids = fast.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
    except TemplateError as err:
        raise LmlabError(f"the tokenizer's chat template refused the conversation: {err}; check the prompt") from err
    return list(ids)


@functools.lru_cache(maxsize=4)
def _templating_tokenizer(tokenizer_json: str, template: str, tokens: tuple[tuple[str, str], ...]) -> Any:
    """A Transformers tokenizer that renders `template`, built once per tokenizer (SFT data renders every
    conversation several times, and building one parses the whole tokenizer JSON)."""
    from tokenizers import Tokenizer as Backend
    from transformers import PreTrainedTokenizerFast

    backend = Backend.from_str(tokenizer_json)
    backend.no_padding()
    backend.no_truncation()
    known = {name: token for name, token in tokens if backend.token_to_id(token) is not None}
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, **known)


def read_chat_template(tokenizer_file: Path) -> tuple[str | None, dict[str, str]]:
    """The chat template beside a `tokenizer.json` (`chat_template.jinja` or `tokenizer_config.json`'s
    `chat_template`) and the special tokens `tokenizer_config.json` names; (None, {}) when there is none."""
    folder = tokenizer_file.parent
    config_file = folder / "tokenizer_config.json"
    try:
        config: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot read {config_file}: {err}; fix or remove it") from err
    jinja = folder / "chat_template.jinja"
    template = jinja.read_text(encoding="utf-8") if jinja.is_file() else config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if not isinstance(template, str) or not template:
        return None, {}
    return template, {name: _content(config[name]) for name in TEMPLATE_TOKENS if config.get(name)}


def _content(token: str | dict[str, Any]) -> str:
    """A special token as `tokenizer_config.json` writes it: its text, or an AddedToken dict with `content`."""
    return token["content"] if isinstance(token, dict) else str(token)
