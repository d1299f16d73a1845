"""Direct preference optimisation: preference data (plain and chat renderings, completion-only targets, bad rows),
the DPO loss (ln 2 while policy = reference, log-probabilities summed by hand), a reference that never changes (a
frozen copy, or LoRA adapters off), learning on easy pairs, and `task=dpo` from an lmlab checkpoint."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from lmlab.checkpoints.load import load_checkpoint
from lmlab.cli.train import train
from lmlab.data.conversations import conversation
from lmlab.data.preference import (
    Preference,
    PreferenceDataModule,
    PreferenceFiles,
    collate_pairs,
    encode_pairs,
    read_preferences,
    uses_chat,
)
from lmlab.data.sft import with_template_tokens
from lmlab.data.windows import IGNORE_INDEX
from lmlab.errors import LmlabError
from lmlab.models import GPTConfig, HFCausalConfig
from lmlab.tasks import DPOTask
from lmlab.tasks.base import token_cross_entropy
from lmlab.tasks.dpo import preference_stats, sequence_logps
from lmlab.tokenizers import CharTokenizerConfig
from lmlab.tokenizers.templates import TEMPLATE_TOKENS, render
from tests.helpers.compose import compose_train
from tests.helpers.preference import CHOSEN, PROMPTS, REJECTED, pairs_jsonl, preference_companions

LN2 = math.log(2)
PAIRS = [Preference(p, CHOSEN, REJECTED) for p in PROMPTS]


def char_tokenizer(chat: bool = False):
    config = CharTokenizerConfig()
    texts = [*PROMPTS, CHOSEN, REJECTED]
    return (with_template_tokens(config) if chat else config).train(texts)


# --- data -----------------------------------------------------------------------------------------------------------


def test_plain_rendering_is_prompt_then_completion_without_special_tokens() -> None:
    tokenizer = char_tokenizer()
    assert not uses_chat(tokenizer, "auto") and uses_chat(char_tokenizer(chat=True), "auto")
    ((chosen, rejected),) = encode_pairs(PAIRS[:1], tokenizer, 64, chat=False, split="train")
    prompt = tokenizer.encode(PROMPTS[0])
    assert chosen.ids == prompt + tokenizer.encode(CHOSEN) and rejected.ids == prompt + tokenizer.encode(REJECTED)
    assert chosen.trained == [False] * len(prompt) + [True] * len(CHOSEN)


def test_chat_rendering_is_the_sft_template() -> None:
    tokenizer = char_tokenizer(chat=True)
    ((chosen, rejected),) = encode_pairs(PAIRS[:1], tokenizer, 64, chat=True, split="train")
    assert chosen == render(tokenizer, conversation(("user", PROMPTS[0]), ("assistant", CHOSEN)))
    assert tokenizer.decode(rejected.ids) == f"<|user|>{PROMPTS[0]}<|end|><|assistant|>{REJECTED}<|end|>"
    trained = [t for t, f in zip(rejected.ids, rejected.trained, strict=True) if f]
    assert tokenizer.decode(trained) == f"{REJECTED}<|end|>"  # the reply and its end, as SFT trains


def test_batches_hold_chosen_rows_then_rejected_rows_scoring_completions_only() -> None:
    tokenizer = char_tokenizer()
    rows = encode_pairs(PAIRS[:3], tokenizer, 32, chat=False, split="train")
    batch = collate_pairs(rows, block_size=32, pad_id=0)
    assert batch["pairs"] == 3 and batch["ids"].shape == batch["targets"].shape == (6, 32)
    for b, (chosen, rejected) in enumerate(rows):
        for row, rendered in ((b, chosen), (3 + b, rejected)):
            n = len(rendered.ids) - 1
            expected = [t if f else IGNORE_INDEX for t, f in zip(rendered.ids[1:], rendered.trained[1:], strict=True)]
            assert batch["ids"][row, :n].tolist() == rendered.ids[:-1]
            assert batch["targets"][row].tolist() == expected + [IGNORE_INDEX] * (32 - n)  # prompt, padding: ignored


def test_long_pairs_are_cut_and_pairs_without_a_completion_token_dropped(caplog) -> None:
    tokenizer = char_tokenizer()
    long_prompt = Preference("x" * 40, CHOSEN, REJECTED)  # no completion token within 17 tokens
    with caplog.at_level("WARNING"):
        rows = encode_pairs([PAIRS[0], long_prompt], tokenizer, 16, chat=False, split="train")
    assert len(rows) == 1 and all(len(r.ids) == 17 for r in rows[0])  # "the film was" + 10 > 17: cut
    assert "4 of 4 completions cut to block_size+1=17 tokens, 1 pairs dropped" in caplog.text


def test_datamodule_splits_deterministically_and_serves_pairs(tmp_path: Path) -> None:
    path = pairs_jsonl(tmp_path / "pairs.jsonl", n=40)

    def datamodule() -> PreferenceDataModule:
        module = PreferenceDataModule(PreferenceFiles(str(path)), CharTokenizerConfig(), 32, batch_size=4)
        module.setup()
        return module

    first, second = datamodule(), datamodule()
    assert [len(first.splits.train), len(first.splits.val), len(first.splits.test)] == [32, 4, 4]
    assert first.splits == second.splits and not first.chat
    batch = next(iter(first.train_dataloader()))
    assert batch["pairs"] == 4 and batch["ids"].shape == (8, 32)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n',
         r"^line 2 of .*pairs\.jsonl has no 'rejected'; give it a 'rejected' string$"),
        ('{"prompt": "a", "chosen": 3, "rejected": "c"}\n',
         r"^line 1 of .*: 'chosen' is a number, not a string; write it as a JSON string$"),
        ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a",\n',
         r"^line 2 of .*pairs\.jsonl is not JSON .*; write one JSON object per line$"),
        ('{"chosen": "b", "rejected": "c"}\n', r"^line 1 of .* has no 'prompt'"),
        ("\n", r"holds no preference pairs; give one \{prompt, chosen, rejected\} object per line"),
    ],
)  # fmt: skip
def test_bad_rows_are_one_line_errors_naming_the_file_and_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LmlabError, match=error) as raised:
        read_preferences(path)
    assert "\n" not in str(raised.value)


def test_unknown_template_and_beta_are_refused() -> None:
    with pytest.raises(LmlabError, match=r"data\.template='plain' is unknown; choose one of: auto, chat, none"):
        PreferenceDataModule(PreferenceFiles("x.jsonl"), CharTokenizerConfig(), 16, 4, template="plain")
    with pytest.raises(LmlabError, match=r"task\.beta=0 must be positive"):
        DPOTask(tiny_gpt_config(), beta=0)


# --- the loss ---------------------------------------------------------------------------------------------------------


def tiny_gpt_config(vocab_size: int = 40, dropout: float = 0.0) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=dropout)


def easy_batch(vocab_size: int) -> dict:
    """Every prompt of `PAIRS`, chosen and rejected, in one batch of plain text."""
    tokenizer = char_tokenizer()
    assert tokenizer.vocab_size <= vocab_size
    return collate_pairs(encode_pairs(PAIRS, tokenizer, 31, chat=False, split="train"), 31, pad_id=0)


def test_sequence_log_probabilities_sum_the_completion_tokens_by_hand() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1, IGNORE_INDEX], [IGNORE_INDEX, 6, 0, 2, 5]])
    by_hand = []
    for b in range(2):
        log_probs = torch.log_softmax(logits[b], dim=-1)
        by_hand.append(sum(log_probs[t, int(y)] for t, y in enumerate(targets[b]) if y != IGNORE_INDEX))
    assert torch.allclose(sequence_logps(token_cross_entropy, logits, targets), torch.stack(by_hand), atol=1e-6)
    prompt_changed = logits.clone()
    prompt_changed[0, :2] += 10 * torch.randn(2, 7)  # positions whose targets are prompt tokens
    assert torch.equal(sequence_logps(token_cross_entropy, prompt_changed, targets)[0],
                       sequence_logps(token_cross_entropy, logits, targets)[0])  # fmt: skip


def test_dpo_loss_and_metrics_follow_their_definitions() -> None:
    policy = torch.tensor([-3.0, -5.0, -4.0, -2.0])  # chosen 0, 1; rejected 0, 1
    reference = torch.tensor([-4.0, -5.0, -4.0, -1.0])
    stats = preference_stats(policy, reference, beta=0.5)
    margin = 0.5 * torch.tensor([1.0 - 0.0, 0.0 - (-1.0)])
    assert torch.allclose(stats["loss"], -torch.nn.functional.logsigmoid(margin))
    assert stats["rewards_chosen"].tolist() == [0.5, 0.0] and stats["rewards_rejected"].tolist() == [0.0, -0.5]
    assert stats["reward_margin"].tolist() == [0.5, 0.5] and stats["reward_accuracy"].tolist() == [1.0, 1.0]
    assert stats["logps_chosen"].tolist() == [-3.0, -5.0] and stats["kl"].tolist() == [1.0, 0.0]


def train_steps(task: DPOTask, batch: dict, steps: int, lr: float) -> list[dict[str, float]]:
    """`steps` AdamW steps on one batch (what the Trainer does, without it); the batch stats before each step."""
    optimizer = torch.optim.AdamW(task.param_groups(), lr=lr)
    history = []
    for _ in range(steps):
        stats = preference_stats(*task.logps(batch), task.beta)
        history.append({name: float(values.detach().mean()) for name, values in stats.items()})
        optimizer.zero_grad()
        stats["loss"].mean().backward()
        optimizer.step()
    return history


def test_gpt_starts_at_ln2_learns_easy_pairs_and_its_reference_stays_bit_identical() -> None:
    torch.manual_seed(0)
    task = DPOTask(tiny_gpt_config(dropout=0.2)).train()  # dropout is turned off: policy = reference at step 0
    reference = {k: v.clone() for k, v in task.reference.state_dict().items()}
    trained = {id(p) for group in task.param_groups() for p in group["params"]}
    assert not trained & {id(p) for p in task.reference.parameters()}
    assert not any(p.requires_grad for p in task.reference.parameters())
    history = train_steps(task, easy_batch(40), steps=30, lr=3e-3)
    assert history[0]["loss"] == pytest.approx(LN2, abs=1e-4) and history[0]["reward_accuracy"] == 0.0
    assert history[-1]["loss"] < 0.5 * LN2 and history[-1]["reward_accuracy"] == 1.0
    assert history[-1]["reward_margin"] > 0 and history[-1]["kl"] != 0
    assert all(torch.equal(v, reference[k]) for k, v in task.reference.state_dict().items())
    assert not task.reference.training  # Lightning's train() reaches it; the reference is put back in eval mode


def test_checkpoints_hold_the_policy_only_and_resume_with_the_rebuilt_reference() -> None:
    torch.manual_seed(0)
    task = DPOTask(tiny_gpt_config())
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("reference.") for k in checkpoint["state_dict"])
    resumed = DPOTask(tiny_gpt_config())
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])  # strict, as Lightning loads it
    assert torch.equal(resumed.model.lm_head.weight, task.model.lm_head.weight)


def test_lora_reference_is_the_policy_with_its_adapters_off(tmp_path: Path) -> None:
    from lmlab.models import build_model
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "tiny_causal", " ".join([*PROMPTS, CHOSEN, REJECTED] * 20))
    torch.manual_seed(0)
    task = DPOTask(HFCausalConfig(name_or_path=str(folder), block_size=32, lora=True, lora_dropout=0.1)).train()
    assert task.reference is None  # no copy
    base = {k: v.clone() for k, v in task.model.state_dict().items() if "lora_" not in k}
    torch.manual_seed(1)
    batch = {"ids": torch.randint(0, 300, (4, 12)), "targets": torch.randint(0, 300, (4, 12))}
    batch["targets"][:, :5] = IGNORE_INDEX  # the prompt
    history = train_steps(task, batch, steps=8, lr=1e-2)
    assert history[0]["loss"] == pytest.approx(LN2, abs=1e-4) and history[-1]["loss"] < history[0]["loss"]
    assert all(torch.equal(v, base[k]) for k, v in task.model.state_dict().items() if "lora_" not in k)
    pretrained = build_model(HFCausalConfig(name_or_path=str(folder), block_size=32)).eval()
    with torch.no_grad():
        assert torch.allclose(task.reference_logits(batch["ids"]), pretrained(batch["ids"]), atol=1e-5)


# --- training -------------------------------------------------------------------------------------------------------


def test_dpo_from_an_lmlab_checkpoint_logs_trl_metrics_and_saves_a_plain_model(
    tmp_path: Path, tiny_corpus: Path
) -> None:
    """`task=dpo task.init_from=RUN`: val/loss = ln 2 before the first step, every metric logged, a checkpoint of
    the policy alone (the size of the pretraining run's) that loads as a plain model."""
    pretrain = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "model.block_size=32", "trainer.max_steps=2",
                "tokenizer.special_tokens=['<pad>']"]  # fmt: skip
    train(compose_train(tmp_path / "pre", pretrain))
    start = tmp_path / "pre" / "run"
    dpo = [*preference_companions(tmp_path), "data.template=none", f"task.init_from={start}", "initial_validation=true",
           "trainer.max_steps=4", "trainer.val_check_interval=4", "optimizer.lr=1e-2"]  # fmt: skip
    cfg = compose_train(tmp_path / "dpo", dpo)
    metrics = train(cfg)
    names = ["loss", "rewards_chosen", "rewards_rejected", "reward_margin", "reward_accuracy", "logps_chosen",
             "logps_rejected", "kl"]  # fmt: skip
    assert {f"{split}/{n}" for split in ("train", "val") for n in names} <= set(metrics)
    run = Path(cfg.paths.output_dir)
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    first = next(r for r in rows if r.get("val/loss"))
    assert float(first["val/loss"]) == pytest.approx(LN2, abs=1e-4) and float(first["val/kl"]) == 0.0
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("reference.") for k in saved["state_dict"])
    size, start_size = (
        p.stat().st_size for p in (run / "checkpoints" / "last.ckpt", start / "checkpoints" / "last.ckpt")
    )
    assert size < 1.2 * start_size
    loaded = load_checkpoint(run)
    assert loaded.task_target == "lmlab.tasks.DPOTask" and loaded.model_config.block_size == 32


def test_dpo_refuses_data_that_is_not_pairs(tmp_path: Path) -> None:
    from tests.helpers.sft import TINY_SFT

    cfg = compose_train(tmp_path, ["task=dpo", *TINY_SFT[1:], "trainer.num_sanity_val_steps=0"])
    with pytest.raises(LmlabError, match=r"task=dpo trains on preference pairs; use data=preference_jsonl"):
        train(cfg)


def test_the_template_tokens_are_added_only_for_chat() -> None:
    chat = PreferenceDataModule(PreferenceFiles("x.jsonl"), CharTokenizerConfig(), 16, 4, template="chat")
    plain = PreferenceDataModule(PreferenceFiles("x.jsonl"), CharTokenizerConfig(), 16, 4, template="none")
    assert chat.tokenizer_config.special_tokens == list(TEMPLATE_TOKENS) and plain.tokenizer_config.special_tokens == []


# --- end to end (slow): the CLI in a subprocess ---------------------------------------------------------------------


def dpo_cli(tmp_path: Path, name: str, *overrides: str) -> Path:
    """`lmlab train task=dpo` on `pairs_jsonl` in a subprocess, validated before the first step; its run folder."""
    from tests.helpers.cli import run_cli

    run_dir = tmp_path / name
    result = run_cli(
        "train", *preference_companions(tmp_path), *overrides, "initial_validation=true", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "data.batch_size=4", "logger=csv", "sample.max_new_tokens=4",
        f"hydra.run.dir={run_dir}", cwd=tmp_path, env={"LMLAB_CACHE": str(tmp_path / "cache")}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    first = next(r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get("val/loss"))
    assert float(first["step"]) == 0 and float(first["val/loss"]) == pytest.approx(LN2, abs=1e-4)
    return run_dir


@pytest.mark.slow
def test_cli_dpo_on_a_bpe_gpt_checkpoint_then_generate(tmp_path: Path, tiny_corpus: Path) -> None:
    """The lead's command on a GPT language model with a BPE tokenizer holding <pad> (as experiment=imdb_pretrain's),
    then `lmlab generate` on the new run."""
    from tests.helpers.cli import run_cli

    pretrain = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "tokenizer=bpe", "tokenizer.vocab_size=300",
                "model.block_size=32", "trainer.max_steps=2"]  # fmt: skip
    train(compose_train(tmp_path / "pre", pretrain))
    start = tmp_path / "pre" / "run"
    run_dir = dpo_cli(tmp_path, "dpo", "data.template=none", f"task.init_from={start}", "task.beta=0.1")
    result = run_cli("generate", f"ckpt={run_dir}", "prompt=the film was", "max_new_tokens=4", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("the film was"), result.stderr[-3000:]


@pytest.mark.slow
def test_cli_dpo_with_lora_on_a_pretrained_causal_lm(tmp_path: Path, tiny_corpus: Path) -> None:
    """`model=hf_causal model.lora=true` (a tiny random Llama standing in for SmolLM2): the reference is the model
    with its adapters off, and the checkpoint holds the adapters."""
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "tiny_causal", tiny_corpus.read_text())
    run_dir = dpo_cli(tmp_path, "lora", "model=hf_causal", f"model.name_or_path={folder}", "model.lora=true",
                      "model.block_size=32", "tokenizer=hf", f"tokenizer.name_or_path={folder}")  # fmt: skip
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["model"]["lora"] is True
    assert any("lora_B" in k for k in saved["state_dict"]) and not any("reference" in k for k in saved["state_dict"])
    assert load_checkpoint(run_dir).model_config.lora is True
