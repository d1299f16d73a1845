"""Generation metrics: a model's greedy replies to held-out conversations, scored against the references with
sacrebleu's corpus BLEU and chrF.

Each conversation is cut at its last assistant turn: the turns before it are the prompt (rendered in the
tokenizer's chat template, ending with the opening of the assistant's reply), and that turn's text is the reference.
Replies are decoded greedily in batches (KV cache) and end at the template's end of turn, so the numbers do not
depend on a seed. BLEU's effective order (sacrebleu's `eff:yes`) changes nothing on a corpus with a 4-gram anywhere,
and keeps a corpus of very short replies (dialogue, single words) from scoring 0 when it matches exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import nn

from lmlab.data.conversations import Conversation, Message
from lmlab.errors import LmlabError
from lmlab.generation.chat import ending_turns, prompt_ids
from lmlab.generation.sampling import SamplingOptions
from lmlab.generation.text import GenerationConfig, generate_text
from lmlab.tokenizers import Tokenizer

log = logging.getLogger("lmlab")


@dataclass(frozen=True)
class GeneratedExample:
    """One scored reply: the rendered prompt, what the model wrote, what the data says."""

    prompt: str
    hypothesis: str
    reference: str


@dataclass
class GenerationScores:
    """Corpus BLEU and chrF (0-100) of the replies, sacrebleu's signatures saying how they were computed, and the
    replies themselves."""

    bleu: float
    chrf: float
    signatures: dict[str, str]
    """{"bleu": ..., "chrf": ...}: sacrebleu's signature strings, to report beside the numbers."""
    examples: list[GeneratedExample] = field(default_factory=list)


def prompts_and_references(conversations: Sequence[Conversation]) -> list[tuple[list[Message], str]]:
    """(the turns before the last assistant turn, that turn's text) of each conversation that has an assistant turn
    after at least one other turn; later turns (an unanswered user turn) are left out."""
    pairs = []
    for conversation in conversations:
        last = max((i for i, m in enumerate(conversation) if m.role == "assistant"), default=0)
        if last > 0:
            pairs.append((list(conversation[:last]), conversation[last].content))
    return pairs


def greedy_replies(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    block_size: int,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """The greedy reply to each prompt of token ids, ended at the template's end of turn; decoded `batch_size` at a
    time, prompts of similar length together (less padding), returned in the order of `prompts`."""
    if batch_size < 1:
        raise LmlabError(f"batch_size={batch_size} must be a positive integer")
    config = ending_turns(tokenizer, GenerationConfig(max_new_tokens, SamplingOptions(temperature=0.0)))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    replies = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        completions = generate_text(model, tokenizer, [prompts[i] for i in batch], config, block_size)
        for i, completion in zip(batch, completions, strict=True):
            replies[i] = completion.text.strip()  # a tokenizer may open the reply with a space
    return replies


def bleu_tokenizer(references: Sequence[str]) -> str:
    """sacrebleu's tokenizer for these references: `zh` (each Chinese character a word) when most of their letters
    are CJK ideographs, which have no spaces for `13a` (the default, for European languages) to split at."""
    letters = [ch for text in references for ch in text if ch.isalpha()]
    cjk = sum("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in letters)
    return "zh" if letters and cjk > len(letters) / 2 else "13a"


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float, dict[str, str]]:
    """sacrebleu's corpus BLEU (effective order; tokenized by `bleu_tokenizer`) and chrF of `hypotheses` against one
    reference each, and their signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    if not hypotheses or len(hypotheses) != len(references):
        raise LmlabError(
            f"{len(hypotheses)} hypotheses for {len(references)} references; score at least one reply per reference"
        )
    bleu, chrf = BLEU(effective_order=True, tokenize=bleu_tokenizer(references)), CHRF()
    bleu_score = bleu.corpus_score(list(hypotheses), [list(references)]).score
    chrf_score = chrf.corpus_score(list(hypotheses), [list(references)]).score
    return bleu_score, chrf_score, {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())}


def evaluate_generation(
    model: nn.Module,
    tokenizer: Tokenizer,
    conversations: Sequence[Conversation],
    block_size: int,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    max_examples: int | None = None,
) -> GenerationScores:
    """Reply greedily to the first `max_examples` conversations (all: None) and score the replies against their
    last assistant turns with corpus BLEU and chrF."""
    if max_examples is not None and max_examples < 1:
        raise LmlabError(f"max_examples={max_examples} must be a positive integer (or null for all)")
    pairs = prompts_and_references(conversations)[:max_examples]
    if not pairs:
        raise LmlabError("no conversation ends in an assistant turn after a prompt; give conversations with replies")
    prompts = [prompt_ids(tokenizer, messages) for messages, _ in pairs]
    if too_long := sum(len(p) > block_size for p in prompts):
        log.warning("%d of %d prompts are longer than the model's context of %d tokens; it sees only their end",
                    too_long, len(prompts), block_size)  # fmt: skip
    hypotheses = greedy_replies(model, tokenizer, prompts, block_size, max_new_tokens, batch_size)
    references = [reference for _, reference in pairs]
    bleu, chrf, signatures = corpus_scores(hypotheses, references)
    examples = [
        GeneratedExample(tokenizer.decode(p), h, r) for p, h, r in zip(prompts, hypotheses, references, strict=True)
    ]
    return GenerationScores(bleu, chrf, signatures, examples)
