"""Supervised fine-tuning: chat templates and their trained tokens, response-only targets, packing that keeps
examples apart, and a tiny `task=sft` run whose validation loss falls."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from lmlab.callbacks.throughput import batch_shape as throughput_batch_shape
from lmlab.cli.train import build_datamodule, train
from lmlab.data.conversations import conversation
from lmlab.data.sft import SFTDataModule, collate_rows, encode_examples, pack_rows, with_template_tokens
from lmlab.data.windows import IGNORE_INDEX
from lmlab.errors import LmlabError
from lmlab.models import GPTConfig, LSTMConfig
from lmlab.tasks import SFTTask
from lmlab.tasks.base import token_cross_entropy
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig, HFTokenizer
from lmlab.tokenizers.templates import TEMPLATE_TOKENS, Rendered, render
from tests.helpers.compose import compose_train
from tests.helpers.sft import TINY_SFT, TinyChats, tiny_conversations
from tests.test_chat import TEMPLATE, TOKENS, chat_tokenizer, tiny_json

CHAT = conversation(
    ("system", "be brief"), ("user", "hi"), ("assistant", "hello"), ("user", "bye"), ("assistant", "ok")
)


def char_tokenizer():
    return with_template_tokens(CharTokenizerConfig()).train(m.content for m in CHAT)


def trained_text(tokenizer, rendered) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, trained in zip(rendered.ids, rendered.trained, strict=True):
        if trained:
            current.append(token)
        elif current:
            runs, current = [*runs, tokenizer.decode(current)], []
    return runs + ([tokenizer.decode(current)] if current else [])


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_lmlab_template_round_trips_and_trains_replies_with_their_end(kind: str) -> None:
    config = CharTokenizerConfig() if kind == "char" else BPETokenizerConfig(vocab_size=300, special_tokens=[])
    tokenizer = with_template_tokens(config).train(m.content for m in CHAT)
    rendered = render(tokenizer, CHAT)
    assert tokenizer.decode(rendered.ids) == (
        "<|system|>be brief<|end|><|user|>hi<|end|><|assistant|>hello<|end|><|user|>bye<|end|><|assistant|>ok<|end|>"
    )
    assert trained_text(tokenizer, rendered) == ["hello<|end|>", "ok<|end|>"]
    prompt = render(tokenizer, CHAT[:2], add_generation_prompt=True)
    assert tokenizer.decode(prompt.ids).endswith("<|user|>hi<|end|><|assistant|>") and not any(prompt.trained)


def test_lmlab_template_names_the_missing_tokens() -> None:
    tokenizer = CharTokenizerConfig(special_tokens=["<|user|>"]).train(["hi"])
    with pytest.raises(LmlabError, match=r"lacks the special tokens <\|system\|>, <\|assistant\|>, <\|end\|>.*"):
        render(tokenizer, CHAT)
    assert with_template_tokens(CharTokenizerConfig(special_tokens=["<mask>"])).special_tokens == [
        "<mask>",
        *TEMPLATE_TOKENS,
    ]


def test_pretrained_template_trains_each_assistant_turn_and_its_end() -> None:
    tokenizer = chat_tokenizer()
    chat = conversation(("user", "hi"), ("assistant", "hi there"), ("user", "how are you ?"), ("assistant", "there"))
    rendered = render(tokenizer, chat)
    assert rendered.ids == tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in chat], False)
    assert trained_text(tokenizer, rendered) == ["hi there <|im_end|>", "there <|im_end|>"]  # word-level decode: spaces


def test_a_template_that_rewrites_earlier_turns_is_refused() -> None:
    rewriting = "{% for m in messages|reverse %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    tokenizer = HFTokenizer(tiny_json(), rewriting, TOKENS)
    with pytest.raises(LmlabError, match="rewrites the history"):
        render(tokenizer, conversation(("user", "hi"), ("assistant", "there"), ("user", "how"), ("assistant", "you")))
    assert TEMPLATE  # the well-behaved template of test_chat is the one the test above uses


@pytest.mark.parametrize("template", ["lmlab", "pretrained"])
@pytest.mark.parametrize("packing", [False, True])
def test_targets_are_the_replies_only_and_never_empty(template: str, packing: bool) -> None:
    tokenizer = char_tokenizer() if template == "lmlab" else chat_tokenizer()
    chats = [conversation(("user", "hi"), ("assistant", "hi there" if template == "pretrained" else "hello"))] * 5
    examples = encode_examples(chats, tokenizer, 24, train_on_prompt=False, split="train")
    rows = pack_rows(examples, 25, packing)
    batch = collate_rows(rows, block_size=24, pad_id=0, packing=packing)
    targets = batch["targets"]
    assert (targets != IGNORE_INDEX).any(dim=1).all()  # every row trains something
    for b, row in enumerate(rows):
        flat = [(t, f) for e in row for t, f in zip(e.ids, e.trained, strict=True)]
        starts = {sum(len(e.ids) for e in row[:i]) for i in range(len(row))}  # first token of each example
        expected = [t if f and i + 1 not in starts else IGNORE_INDEX for i, (t, f) in enumerate(flat[1:])]
        assert targets[b, : len(expected)].tolist() == expected
        assert (targets[b, len(expected) :] == IGNORE_INDEX).all()  # padding
    assert ("segments" in batch) == packing


def tiny_gpt(pos_embedding: str = "learned", block_size: int = 32) -> SFTTask:
    torch.manual_seed(0)
    shape = {"n_layer": 2, "n_head": 2, "n_embd": 16}
    config = GPTConfig(vocab_size=40, block_size=block_size, pos_embedding=pos_embedding, **shape)
    return SFTTask(config).eval()


def per_token_nats(task: SFTTask, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = task(batch["ids"], batch.get("segments"))
    return token_cross_entropy(logits, batch["targets"], reduction="none").view(batch["ids"].shape)  # (B, T)


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_packing_keeps_examples_apart(pos_embedding: str) -> None:
    """Changing the first packed example leaves every per-token loss of the second unchanged."""
    tokenizer = char_tokenizer()
    first, other, second = (conversation(("user", "hi"), ("assistant", reply)) for reply in ("hello", "bye bye", "ok"))
    task = tiny_gpt(pos_embedding)
    nats = []
    for head in (first, other):
        examples = encode_examples([head, second], tokenizer, 31, False, "train")
        batch = collate_rows(pack_rows(examples, 32, packing=True), 31, 0, packing=True)
        start = len(examples[0].ids)
        nats.append(per_token_nats(task, batch)[0, start : start + len(examples[1].ids) - 1])
    assert len(nats[0]) and torch.allclose(nats[0], nats[1], atol=1e-6)


def test_best_fit_packing_fills_rows_and_keeps_every_example_once() -> None:
    lengths = [6, 5, 5, 6, 3, 9, 2, 4, 7, 1, 8, 4]
    examples = [Rendered(list(range(n)), [True] * n) for n in lengths]
    rows = pack_rows(examples, 11, packing=True)
    packed = [id(e) for row in rows for e in row]
    assert sorted(packed) == sorted(id(e) for e in examples)  # each example once
    assert all(sum(len(e.ids) for e in row) <= 11 for row in rows)
    assert len(rows) == 6 == -(-sum(lengths) // 11)  # as few rows as the tokens need; data order would take 7
    position = {id(e): i for i, e in enumerate(examples)}
    firsts = [[position[id(e)] for e in row] for row in rows]
    assert firsts == [sorted(r) for r in firsts] and [r[0] for r in firsts] == sorted(r[0] for r in firsts)
    assert pack_rows(examples, 11, packing=False) == [[e] for e in examples]


def test_batches_count_their_real_tokens() -> None:
    examples = [Rendered(list(range(n)), [True] * n) for n in (5, 9, 4)]
    for packing in (False, True):
        batch = collate_rows(pack_rows(examples, 19, packing), 18, 0, packing)  # packed: one row
        assert batch["n_tokens"] == 5 + 9 + 4 - (1 if packing else 3)  # each row's last token is only a target
        assert throughput_batch_shape(batch) == (batch["ids"].size(0), batch["n_tokens"])


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_packed_and_unpacked_batches_give_the_same_loss(pos_embedding: str) -> None:
    chats = tiny_conversations(6)
    tokenizer = with_template_tokens(CharTokenizerConfig()).train(m.content for c in chats for m in c)
    examples = encode_examples(chats, tokenizer, 63, False, "train")
    task = tiny_gpt(pos_embedding, block_size=64)
    losses = []
    for packing in (False, True):
        rows = pack_rows(examples, 64, packing)
        batch = collate_rows(rows, 63, 0, packing)
        losses.append(task.loss(task(batch["ids"], batch.get("segments")), batch["targets"]))
        assert len(rows) == len(examples) if not packing else 1 < len(rows) < len(examples)
    assert torch.allclose(losses[0], losses[1], atol=1e-6)


def test_a_batch_without_reply_tokens_is_an_error() -> None:
    task = tiny_gpt()
    batch = {"ids": torch.zeros(2, 8, dtype=torch.long), "targets": torch.full((2, 8), IGNORE_INDEX)}
    with pytest.raises(LmlabError, match=r"no reply token.*data\.train_on_prompt=true"):
        task.on_before_batch_transfer(batch, 0)
    batch["targets"][1, 3] = 5
    assert task.on_before_batch_transfer(batch, 0) is batch


def test_packing_is_refused_for_models_that_cannot_keep_examples_apart() -> None:
    task = SFTTask(LSTMConfig(vocab_size=40, block_size=16, n_layer=1, n_embd=8, n_hidden=8))
    ids = torch.zeros(1, 4, dtype=torch.long)
    assert task(ids).shape == (1, 4, 40)
    with pytest.raises(LmlabError, match=r"data\.packing=false"):
        task(ids, torch.zeros_like(ids))


def test_datamodule_drops_cut_replies_trains_prompts_on_request_and_packs_with_less_padding() -> None:
    def datamodule(block_size: int, **options) -> SFTDataModule:
        module = SFTDataModule(TinyChats(48), CharTokenizerConfig(), block_size, batch_size=4, **options)
        module.setup()
        return module

    plain, packed = datamodule(40), datamodule(40, packing=True)
    assert len(plain.datasets["train"]) == 38 and len(packed.datasets["train"]) < 38
    assert 0 < packed.padding_fraction < plain.padding_fraction < 1
    assert "<|assistant|>" in plain.tokenizer.special_tokens
    short = datamodule(14)  # a system turn or a long question leaves no reply token within 15 tokens
    kept = short.datasets["train"].rows
    assert 0 < len(kept) < 38 and all(any(row[0].trained[1:]) for row in kept)
    on_prompt = datamodule(14, train_on_prompt=True)
    assert len(on_prompt.datasets["train"]) == 38
    batch = next(iter(plain.train_dataloader()))
    assert batch["ids"].shape == batch["targets"].shape == (4, 40)


def val_losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    return [float(r["val/loss"]) for r in rows if r.get("val/loss")]


def test_tiny_sft_runs_learn_the_replies_and_packing_reaches_the_same_loss(tmp_path: Path) -> None:
    """Packed and unpacked training (same seed and steps, about as many conversations per step: packed rows hold
    several, so fewer rows) both learn, to the same validation loss within noise."""
    overrides = [*TINY_SFT, "model.block_size=48", "initial_validation=true", "trainer.max_steps=40",
                 "trainer.val_check_interval=40", "scheduler=constant", "optimizer.lr=1e-2"]  # fmt: skip
    rows = {}
    for packing in (False, True):
        datamodule = build_datamodule(compose_train(tmp_path / "probe", [*overrides, f"data.packing={packing}"]))
        datamodule.setup()
        rows[packing] = len(datamodule.datasets["train"])
    batch_size = {False: 8, True: max(1, round(8 * rows[True] / rows[False]))}
    final, padding = {}, {}
    for packing in (False, True):
        run = [*overrides, f"data.packing={packing}", f"data.batch_size={batch_size[packing]}"]
        cfg = compose_train(tmp_path / str(packing), run)
        metrics = train(cfg)
        losses = val_losses(Path(cfg.paths.output_dir))
        assert len(losses) == 2 and losses[-1] < 0.7 * losses[0], losses
        assert metrics["val/ppl"] == pytest.approx(torch.exp(torch.tensor(metrics["val/loss"])).item(), rel=1e-4)
        final[packing] = metrics["val/loss"]
        padding[packing] = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())["padding_fraction"]
    assert batch_size[True] < batch_size[False] and 0 < padding[True] < padding[False] < 1
    # noise: over seeds 0-2 unpacked ended at 0.37-0.40 and packed 0.35-0.38, at most 13 % apart (seed 0: 3 %)
    assert final[True] == pytest.approx(final[False], rel=0.15), final


def test_sft_starts_from_a_pretrained_lmlab_checkpoint(tmp_path: Path, tiny_corpus: Path) -> None:
    """task.init_from: the pretrained weights (its val loss before any step differs from a fresh model's), its model
    config and its tokenizer, which must already hold the template tokens."""
    markers = "tokenizer.special_tokens=[" + ",".join(f"'{t}'" for t in TEMPLATE_TOKENS) + "]"
    pretrain = [
        "data=text_files",
        f"data.corpus.paths=[{tiny_corpus}]",
        "model.block_size=48",
        "trainer.max_steps=4",
        "scheduler=constant",
        "optimizer.lr=1e-2",
    ]
    train(compose_train(tmp_path / "pre", [*pretrain, markers]))
    start = [*TINY_SFT, f"task.init_from={tmp_path / 'pre' / 'run'}", "initial_validation=true", "trainer.max_steps=1"]
    tuned, control = (compose_train(tmp_path / name, [*start, f"task.init_weights={name == 'tuned'}"])
                      for name in ("tuned", "control"))  # fmt: skip
    firsts = []
    for cfg in (tuned, control):
        train(cfg)
        firsts.append(val_losses(Path(cfg.paths.output_dir))[0])
        assert cfg.model.block_size == 48
    assert firsts[0] != pytest.approx(firsts[1], abs=1e-3)
    train(compose_train(tmp_path / "plain", pretrain))
    with pytest.raises(LmlabError, match=r"lacks the special tokens"):
        train(compose_train(tmp_path / "refused", [*TINY_SFT, f"task.init_from={tmp_path / 'plain' / 'run'}"]))


def test_a_pretrained_causal_lm_keeps_packed_examples_apart(tmp_path: Path, tiny_corpus: Path) -> None:
    """model=hf_causal packs through position_ids and a 4D mask: the same logits as each example alone."""
    from lmlab.models import HFCausalConfig, build_model
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "tiny_causal", tiny_corpus.read_text())
    model = build_model(HFCausalConfig(name_or_path=str(folder), block_size=32)).eval()
    a, b = torch.randint(0, 300, (1, 5)), torch.randint(0, 300, (1, 7))
    segments = torch.tensor([[0] * 5 + [1] * 7])
    with torch.no_grad():
        packed = model(torch.cat([a, b], dim=1), segments)
        alone = torch.cat([model(a), model(b)], dim=1)
    assert torch.allclose(packed, alone, atol=1e-5)
