"""Bad input across every command: each row must end in ONE `error: ...` line on stderr (no traceback), a non-zero
exit, and every file written before it untouched.

To add a row, append a `Bad(...)` to `ROWS`: an id, the command line (a function of the workspace, a folder of
ready-made good and bad files and checkpoints), a regular expression the error line must match, and optionally
`env={...}` (environment variables for that row). Rows run
in-process through `lmlab.cli.main.main` (fast); a row marked `slow=True` runs `python -m lmlab` in a subprocess
and is deselected by default (`pytest -m slow` runs it).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import random
import re
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmlab.cli.main import COMMAND_ENV, main
from lmlab.interp.steering import SteeringVector
from lmlab.models import BertConfig, GPTConfig, LSTMConfig, NGramConfig, build_model, model_config_to_dict
from lmlab.tasks import ClassificationTask
from lmlab.tokenizers import CharTokenizerConfig
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_TEXT


@dataclass(frozen=True)
class Bad:
    """One bad input: the command line given the workspace, and the error line it must produce."""

    id: str
    argv: Callable[[Path], list[str]]
    error: str
    """Regular expression searched in the one error line (after `error: `)."""
    slow: bool = False
    """Run in a subprocess, deselected by default."""
    env: dict[str, str] | None = None
    """Environment variables for this row (e.g. an unreachable W&B host)."""


# --- the workspace: good and bad files, written once per module ----------------------------------------------------


def save_checkpoint(path: Path, config, task: str = "lmlab.tasks.CausalLMTask", extra_hp: dict | None = None,
                    extra_state: dict | None = None, tokenizer=None) -> Path:  # fmt: skip
    """A self-describing checkpoint as `lmlab train` writes it (untrained weights, a char tokenizer)."""
    tokenizer = tokenizer or CharTokenizerConfig(["<mask>", "<pad>"]).train([TINY_TEXT])
    torch.manual_seed(0)
    model = build_model(config)
    state = {f"model.{k}": v for k, v in model.state_dict().items()} | (extra_state or {})
    checkpoint = {
        "state_dict": state,
        "hyper_parameters": {"model": model_config_to_dict(config), "weight_decay": 0.1} | (extra_hp or {}),
        "lmlab": {"tokenizer": tokenizer.to_dict(), "config": {"task": {"_target_": task}}},
        "global_step": 3,
    }
    torch.save(checkpoint, path)
    return path


VOCAB = CharTokenizerConfig(["<mask>", "<pad>"]).train([TINY_TEXT]).vocab_size
TINY = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 1}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("bad_inputs")
    (w / "corpus.txt").write_text(TINY_TEXT, encoding="utf-8")
    (w / "empty.txt").write_bytes(b"")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (w / "latin1.txt").write_bytes("Der Bär läuft über die Straße.\n".encode("latin-1") * 50)
    (w / "short.txt").write_text("To be.\n", encoding="utf-8")
    (w / "folder").mkdir()
    (w / "folder" / "note.txt").write_text("a file inside a folder\n", encoding="utf-8")
    (w / "a_file").write_text("not a folder\n", encoding="utf-8")
    (w / "texts.txt").write_text("a fine film\na dull film\n", encoding="utf-8")
    gpt = save_checkpoint(w / "gpt.ckpt", GPTConfig(**TINY, n_head=2, n_embd=16))
    save_checkpoint(w / "lstm.ckpt", LSTMConfig(**TINY, n_embd=16, n_hidden=16))
    save_checkpoint(w / "ngram.ckpt", NGramConfig(vocab_size=VOCAB, block_size=16, order=2))
    save_checkpoint(w / "bert.ckpt", BertConfig(**TINY, n_head=2, n_embd=16), task="lmlab.tasks.MaskedLMTask")
    classifier = ClassificationTask(GPTConfig(**TINY, n_head=2, n_embd=16), label_names=["neg", "pos"])
    save_checkpoint(
        w / "classifier.ckpt",
        GPTConfig(**TINY, n_head=2, n_embd=16),
        task="lmlab.tasks.ClassificationTask",
        extra_hp={k: classifier.hparams[k] for k in ("num_classes", "label_names", "pooling")},
        extra_state={k: v for k, v in classifier.state_dict().items() if k.startswith("head.")},
    )
    save_checkpoint(w / "qk_norm.ckpt", GPTConfig(**TINY, n_head=2, n_embd=16, qk_norm=True))
    save_checkpoint(w / "mismatch.ckpt", GPTConfig(**(TINY | {"vocab_size": VOCAB - 5}), n_head=2, n_embd=16))
    data = gpt.read_bytes()
    (w / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (w / "garbage.ckpt").write_bytes(random.Random(0).randbytes(4096))  # seeded: the same bytes every run
    (w / "empty.ckpt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, w / "foreign.ckpt")  # a torch file, not an lmlab checkpoint
    (w / "no_ckpt_run").mkdir()
    (w / "export_done").mkdir()
    (w / "export_done" / "config.json").write_text("{}", encoding="utf-8")  # an earlier export
    (w / "predictions.csv").write_text("text,label\nkept,pos\n", encoding="utf-8")
    for width in (8, 16):  # steering vectors: one too narrow for the 16-wide GPT, one that fits
        SteeringVector(torch.ones(width), 0, "blocks.0.hook_resid_pre").save(w / f"vector{width}.safetensors")
    good = '{"prompt": "hi", "completion": "hello"}\n'
    for name, text in {
        "chat_bad_json.jsonl": good + '{"prompt": "hi", \n',
        "chat_no_reply.jsonl": '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "o"}]}'
        '\n{"messages": [{"role": "user", "content": "hi"}]}\n',
        "chat_bad_role.jsonl": '{"messages": [{"role": "robot", "content": "hi"}]}\n',
        "chat_unknown.jsonl": '{"question": "hi", "answer": "hello"}\n',
        "chat_good.jsonl": good * 10,
        "pairs_good.jsonl": '{"prompt": "To be", "chosen": ", or not", "rejected": " bad"}\n' * 10,
        "pairs_no_rejected.jsonl": '{"prompt": "To be", "chosen": ", or not", "rejected": " bad"}\n'
        '{"prompt": "To be", "chosen": ", or not"}\n',
        "pairs_not_a_string.jsonl": '{"prompt": "To be", "chosen": [", or not"], "rejected": " bad"}\n',
        "pairs_bad_json.jsonl": '{"prompt": "To be", "chosen": ", or not", "rejected": " bad"}\n{"prompt": \n',
    }.items():
        (w / name).write_text(text, encoding="utf-8")
    return w


RUN_NUMBER = itertools.count()


def train(w: Path, *overrides: str, data: str | None = None) -> list[str]:
    """`lmlab train` on the tiny corpus (or `data`), tiny sizes, its run folder inside the workspace."""
    corpus = data or str(w / "corpus.txt")
    return ["train", "data=text_files", f"data.corpus.paths=[{corpus}]", "model.n_layer=1", "model.n_head=2",
            "model.n_embd=16", "model.block_size=16", "trainer.max_steps=2", "trainer.val_check_interval=1",
            "logger=csv", "callbacks=none", "sample.max_new_tokens=4", f"paths.cache_dir={w}/cache",
            f"hydra.run.dir={w}/runs/{next(RUN_NUMBER)}", *overrides]  # fmt: skip


def sft(w: Path, conversations: str, *overrides: str) -> list[str]:
    """`lmlab train task=sft` on a conversation file of the workspace, tiny sizes."""
    return [*train(w, *overrides)[:1], "task=sft", "data=chat_jsonl", f"data.source.train={w}/{conversations}",
            *train(w, *overrides)[3:]]  # fmt: skip


def dpo(w: Path, pairs: str, *overrides: str) -> list[str]:
    """`lmlab train task=dpo` on a preference file of the workspace (plain text), tiny sizes."""
    return [*train(w, *overrides)[:1], "task=dpo", "data=preference_jsonl", f"data.source.train={w}/{pairs}",
            "data.template=none", *train(w, *overrides)[3:]]  # fmt: skip


def benchmark(w: Path, ckpt: str, *overrides: str) -> list[str]:
    """`lmlab benchmark` on a checkpoint of the workspace, its run folder inside the workspace, no W&B."""
    return ["benchmark", f"ckpt={w}/{ckpt}", "device=cpu", "wandb=false", "tensorboard=false",
            f"hydra.run.dir={w}/runs/{next(RUN_NUMBER)}", *overrides]  # fmt: skip


# --- the table -------------------------------------------------------------------------------------------------------

CORRUPT = r"cannot read checkpoint .* it may be truncated or corrupt"

ROWS = [
    # train: config types, unknown keys, impossible shapes
    Bad("train-wrong-type", lambda w: train(w, "model.n_layer=abc"), r"model\.n_layer.*type int"),
    Bad("train-unknown-model-key", lambda w: train(w, "model.n_layyer=4"), r"model\.n_layyer .*did you mean n_layer"),
    Bad("train-unknown-optimizer-key", lambda w: train(w, "optimizer.lrr=1"), r"optimizer\.lrr .*did you mean lr"),
    Bad("train-appended-unknown-key", lambda w: train(w, "+model.n_layyer=4"), r"n_layyer .*did you mean n_layer"),
    Bad(
        "train-tokenizer-type",
        lambda w: train(w, "tokenizer.special_tokens=3"),
        r"tokenizer\.special_tokens",
        slow=True,
    ),
    Bad("train-trainer-type", lambda w: train(w, "trainer.max_steps=many"), r"trainer\.max_steps='many'.*type int"),
    Bad(
        "train-sweep-unknown-key",  # found before the sweep folder or its first job exists
        lambda w: train(w, "-m", "model.n_layyer=1,2", f"hydra.sweep.dir={w}/sweeps/a"),
        r"model\.n_layyer .*did you mean n_layer",
    ),
    Bad(
        "train-sweep-value-that-breaks-a-key",  # model=lstm has no n_head, which the other overrides set
        lambda w: train(w, "-m", "model=gpt,lstm", f"hydra.sweep.dir={w}/sweeps/b"),
        r"model\.n_head is not a setting of model \(LSTMConfig\)",
    ),
    Bad(
        "train-heads-do-not-divide",
        lambda w: train(w, "model.n_head=3"),
        r"not divisible by model\.n_head=3",
        slow=True,
    ),
    Bad("train-zero-batch", lambda w: train(w, "data.batch_size=0"), r"data\.batch_size=0 must be a positive"),
    Bad(
        "train-negative-steps",  # 0 trains nothing (the starting model, validated and saved); -1: max_epochs
        lambda w: train(w, "trainer.max_steps=-2"),
        r"trainer\.max_steps=-2 must be positive, 0 \(no training",
        slow=True,
    ),
    Bad(
        "train-experiment-for-another-model",
        lambda w: train(w, "experiment=shakespeare_char_gpu", "model=lstm"),
        r"model\.n_head, set in experiment/shakespeare_char_gpu, is not a setting of model \(LSTMConfig\)",
    ),
    Bad(
        "train-unknown-group-choice",
        lambda w: train(w, "model=gtp"),
        r"unknown model 'gtp'; did you mean gpt\? choose one of",
    ),
    Bad(
        "train-non-ascii-unquoted",  # Hydra's lexer error named no fix
        lambda w: train(w, "sample.prompt=中国"),
        r"""quote the value: 'sample\.prompt="中国"'$""",
    ),
    Bad(
        "train-non-ascii-file-name-unquoted",
        lambda w: train(w, data=f"{w}/数据.txt"),
        r"""quote the value: 'data\.corpus\.paths=\[".*/数据\.txt"\]'$""",
    ),
    Bad(
        "train-unreadable-override",
        lambda w: train(w, "model.n_layer=[1"),
        r"cannot read the override model\.n_layer=\[1 .*close its brackets or quote the value",
    ),
    Bad(
        "train-null-model", lambda w: train(w, "model=null"), r"model=null: `lmlab train` needs a model; choose one of"
    ),
    # train: data files
    Bad("train-missing-file", lambda w: train(w, data=f"{w}/nope.txt"), r"nope\.txt does not exist"),
    # task=sft: conversation files
    Bad("sft-malformed-json", lambda w: sft(w, "chat_bad_json.jsonl"), r"line 2 of .*chat_bad_json\.jsonl is not JSON"),
    Bad("sft-no-assistant-turn", lambda w: sft(w, "chat_no_reply.jsonl"), r"line 2 of .*chat_no_reply.*no assistant"),
    Bad("sft-unknown-role", lambda w: sft(w, "chat_bad_role.jsonl"), r"chat_bad_role\.jsonl.*'robot'; use one of"),
    Bad("sft-unknown-format", lambda w: sft(w, "chat_unknown.jsonl"), r"chat_unknown\.jsonl is of no known"),
    Bad("sft-missing-file", lambda w: sft(w, "nope.jsonl"), r"nope\.jsonl"),
    Bad(
        "sft-unknown-language",
        lambda w: [*sft(w, "x")[:2], "data=chatterbot", "data.source.language=klingon", *sft(w, "x")[4:]],
        r"klingon",
    ),
    # task=dpo: preference pairs
    Bad(
        "dpo-no-rejected",
        lambda w: dpo(w, "pairs_no_rejected.jsonl"),
        r"line 2 of .*pairs_no_rejected\.jsonl has no 'rejected'; give it a 'rejected' string$",
    ),
    Bad("dpo-not-a-string", lambda w: dpo(w, "pairs_not_a_string.jsonl"), r"line 1 of .*'chosen' is an array, not a"),
    Bad("dpo-malformed-json", lambda w: dpo(w, "pairs_bad_json.jsonl"), r"line 2 of .*pairs_bad_json\.jsonl is not "),
    Bad("dpo-unknown-template", lambda w: dpo(w, "pairs_good.jsonl", "data.template=plain"), r"data\.template='plain"),
    Bad("dpo-zero-beta", lambda w: dpo(w, "pairs_good.jsonl", "task.beta=0"), r"task\.beta=0 must be positive"),
    Bad(
        "dpo-on-conversations",
        lambda w: ["train", "task=dpo", *sft(w, "chat_good.jsonl", "data.batch_size=4")[2:]],
        r"task=dpo trains on preference pairs; use data=preference_jsonl",
    ),
    Bad("train-empty-file", lambda w: train(w, data=f"{w}/empty.txt"), r"0 tokens, fewer than block_size"),
    Bad("train-binary-file", lambda w: train(w, data=f"{w}/binary.bin"), r"binary\.bin", slow=True),
    Bad("train-non-utf8-file", lambda w: train(w, data=f"{w}/latin1.txt"), r"latin1\.txt .*UTF-8"),
    Bad("train-directory-as-file", lambda w: train(w, data=f"{w}/folder"), r"folder"),
    Bad(
        "train-text-shorter-than-a-window",
        lambda w: train(w, data=f"{w}/short.txt"),
        r"block_size|window|short",
        slow=True,
    ),
    Bad("train-unwritable-run-dir", lambda w: [*train(w), f"hydra.run.dir={w}/a_file/run"], r"a_file"),
    Bad(
        "train-val-split-shorter-than-a-window",
        lambda w: train(w, "model.block_size=1000"),
        r"validation split .* fewer than block_size\+1=1001; use more text or a smaller model\.block_size",
    ),
    Bad("train-optimizer-rejects", lambda w: train(w, "optimizer.lr=-1"), r"optimizer settings rejected by AdamW"),
    Bad(
        "train-optimizer-lr-not-a-number",  # was torch's "'<=' not supported between ..."
        lambda w: train(w, "optimizer.lr=abc"),
        r"^error: optimizer\.lr='abc' has the wrong type; give a value of type float$",
    ),
    Bad(
        "train-unknown-activation",
        lambda w: train(w, "model.activation=swiglu"),
        r"model\.activation='swiglu' is unknown; choose one of: gelu, relu2",
    ),
    Bad(
        "train-muon-rejects",  # checked on both inner optimizers before the data is read
        lambda w: train(w, "optimizer=muon", "optimizer.adjust_lr_fn=fast"),
        r"optimizer settings rejected by MuonAdamW: .*fast",
    ),
    Bad(
        "train-wsd-unknown-shape",
        lambda w: train(w, "scheduler=wsd", "scheduler.decay_shape=cosine"),
        r"scheduler\.decay_shape='cosine' is unknown; choose one of: linear, sqrt",
    ),
    Bad("train-init-from-corrupt", lambda w: train(w, f"+task.init_from={w}/garbage.ckpt"), CORRUPT),
    Bad(
        "train-init-from-with-another-tokenizer",
        lambda w: train(w, f"+task.init_from={w}/gpt.ckpt", "tokenizer=bpe"),
        r"takes the model and tokenizer from .*gpt\.ckpt .*drop .*tokenizer=bpe",
    ),
    Bad("train-resume-from-truncated", lambda w: train(w, f"ckpt_path={w}/truncated.ckpt"), CORRUPT),
    Bad("train-resume-other-model", lambda w: train(w, f"ckpt_path={w}/lstm.ckpt"), r"lstm.ckpt"),
    Bad(
        "train-nan-loss",
        lambda w: train(w, "optimizer.lr=1e12", "trainer.max_steps=6"),
        r"training stopped at step \d+: .*not finite.*lower optimizer\.lr",
    ),
    Bad(
        "train-wandb-online-unreachable",
        lambda w: train(w, "logger=wandb"),
        r"W&B mode is online but the server http://127\.0\.0\.1:9 is unreachable; use logger\.wandb\.mode=offline",
        env={"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "f" * 40},
    ),
    # generate
    Bad("generate-missing-ckpt", lambda w: ["generate", f"ckpt={w}/nope.ckpt"], r"nope\.ckpt does not exist"),
    Bad("generate-empty-ckpt", lambda w: ["generate", f"ckpt={w}/empty.ckpt"], CORRUPT),
    Bad("generate-garbage-ckpt", lambda w: ["generate", f"ckpt={w}/garbage.ckpt"], CORRUPT),
    Bad("generate-truncated-ckpt", lambda w: ["generate", f"ckpt={w}/truncated.ckpt"], CORRUPT),
    Bad("generate-foreign-ckpt", lambda w: ["generate", f"ckpt={w}/foreign.ckpt"], r"not an lmlab checkpoint"),
    Bad("generate-run-without-ckpt", lambda w: ["generate", f"ckpt={w}/no_ckpt_run"], r"holds no checkpoint"),
    Bad("generate-encoder-ckpt", lambda w: ["generate", f"ckpt={w}/bert.ckpt"], r"bert"),
    Bad("generate-classifier-ckpt", lambda w: ["generate", f"ckpt={w}/classifier.ckpt"], r"classif"),
    Bad("serve-port-out-of-range", lambda w: ["serve", f"ckpt={w}/gpt.ckpt", "port=70000"], r"port=70000 .*1\.\.65535"),
    Bad(
        "serve-zero-queue", lambda w: ["serve", f"ckpt={w}/gpt.ckpt", "max_queue=0"], r"max_queue=0 must be at least 1"
    ),
    Bad("serve-port-not-int", lambda w: ["serve", "port=http"], r"port"),
    Bad("serve-encoder-ckpt", lambda w: ["serve", f"ckpt={w}/bert.ckpt"], r"bert"),
    Bad("serve-missing-ckpt", lambda w: ["serve", f"ckpt={w}/nope.ckpt"], r"nope\.ckpt does not exist"),
    Bad(
        "generate-binary-prompts",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"prompt_file={w}/binary.bin"],
        r"not UTF-8",
    ),
    Bad(
        "generate-prompts-directory", lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"prompt_file={w}/folder"], r"folder"
    ),
    Bad(
        "generate-wrong-type",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", "max_new_tokens=lots"],
        r"max_new_tokens.*type int",
    ),
    Bad(
        "generate-unknown-key",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", "temprature=0.5"],
        r"temprature .*did you mean temperature",
    ),
    Bad(
        "generate-unknown-processor",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", "processors=[{name:no_repeat_ngrams,size:3}]"],
        r"unknown processor name 'no_repeat_ngrams'; valid names: repetition_penalty, no_repeat_ngram, bad_words",
    ),
    Bad(
        "generate-unsatisfiable-regex",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", "regex='[{}]+'"],
        r"the pattern '\[\{\}\]\+' cannot be followed with this tokenizer: .*change the pattern",
    ),
    Bad(
        "generate-steer-wrong-width",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"steer.vector={w}/vector8.safetensors"],
        r"steering vector is 8 wide but this model's residual stream is 16 wide; build the vector on this model",
    ),
    Bad(
        "generate-steer-layer-out-of-range",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"steer.vector={w}/vector16.safetensors", "steer.layer=3"],
        r"steering layer 3 is out of range; this model has 1 block: choose a layer in 0\.\.0",
    ),
    Bad(
        "generate-steer-infinite-coeff",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"steer.vector={w}/vector16.safetensors", "steer.coeff=inf"],
        r"steering coefficient inf is not a finite number",
    ),
    Bad(
        "generate-steer-not-a-vector",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"steer.vector={w}/corpus.txt"],
        r"corpus\.txt is not a safetensors file",
    ),
    Bad(
        "generate-steer-missing-vector",
        lambda w: ["generate", f"ckpt={w}/gpt.ckpt", f"steer.vector={w}/nope.safetensors"],
        r"nope\.safetensors does not exist; make one with lmlab steer",
    ),
    Bad(
        "generate-steer-lstm",
        lambda w: ["generate", f"ckpt={w}/lstm.ckpt", f"steer.vector={w}/vector16.safetensors"],
        r"steering adds to the residual stream, which a lstm model has not; use a gpt or hf_causal checkpoint",
    ),
    # steer
    Bad(
        "steer-empty-positive-set",
        lambda w: ["steer", f"ckpt={w}/gpt.ckpt", "positive=[]", "negative=[a]"],
        r"the positive texts are empty; give at least one positive text",
    ),
    Bad(
        "steer-empty-negative-file",
        lambda w: ["steer", f"ckpt={w}/gpt.ckpt", f"positive_file={w}/texts.txt", f"negative_file={w}/empty.txt"],
        r"negative_file .*empty\.txt has no negative texts",
    ),
    Bad(
        "steer-layer-out-of-range",
        lambda w: ["steer", f"ckpt={w}/gpt.ckpt", "positive=[a]", "negative=[b]", "layer=2"],
        r"steering layer 2 is out of range; this model has 1 block",
    ),
    Bad(
        "steer-ngram-ckpt",
        lambda w: ["steer", f"ckpt={w}/ngram.ckpt", "positive=[a]", "negative=[b]"],
        r"which a ngram model has not; use a gpt or hf_causal checkpoint",
    ),
    Bad(
        "steer-unknown-position",
        lambda w: ["steer", f"ckpt={w}/gpt.ckpt", "positive=[a]", "negative=[b]", "position=first"],
        r"position='first' is unknown; choose one of: mean, last",
    ),
    Bad(
        "steer-label-not-in-data",
        lambda w: [
            "steer",
            f"ckpt={w}/gpt.ckpt",
            f"labeled_file={w}/predictions.csv",
            "positive_label=good",
            "negative_label=pos",
        ],
        r"positive_label=good is not a label of the data; its labels: pos",
    ),
    Bad(
        "steer-out-under-a-file",
        lambda w: ["steer", f"ckpt={w}/gpt.ckpt", "positive=[a]", "negative=[b]", f"out={w}/a_file/v.safetensors"],
        r"out=.*a_file/v\.safetensors cannot be created",
    ),
    # eval
    Bad("eval-missing-text", lambda w: ["eval", f"ckpt={w}/gpt.ckpt", f"text_file={w}/nope.txt"], r"does not exist"),
    Bad("eval-non-utf8-text", lambda w: ["eval", f"ckpt={w}/gpt.ckpt", f"text_file={w}/latin1.txt"], r"UTF-8"),
    Bad("eval-directory-text", lambda w: ["eval", f"ckpt={w}/gpt.ckpt", f"text_file={w}/folder"], r"folder"),
    Bad("eval-short-text", lambda w: ["eval", f"ckpt={w}/gpt.ckpt", f"text_file={w}/short.txt"], r"block_size"),
    Bad(
        "eval-zero-batch",
        lambda w: ["eval", f"ckpt={w}/gpt.ckpt", f"text_file={w}/corpus.txt", "batch_size=0"],
        r"batch_size",
    ),
    Bad("eval-corrupt-ckpt", lambda w: ["eval", f"ckpt={w}/truncated.ckpt"], CORRUPT),
    # predict
    Bad(
        "predict-lm-ckpt",
        lambda w: ["predict", f"ckpt={w}/gpt.ckpt", f"input={w}/texts.txt", f"output={w}/p.csv"],
        r"not a classifier",
    ),
    Bad(
        "predict-missing-input",
        lambda w: ["predict", f"ckpt={w}/classifier.ckpt", f"input={w}/nope.txt", f"output={w}/p.csv"],
        r"nope\.txt",
    ),
    Bad(
        "predict-binary-input",
        lambda w: ["predict", f"ckpt={w}/classifier.ckpt", f"input={w}/binary.bin", f"output={w}/p.csv"],
        r"binary\.bin",
    ),
    Bad(
        "predict-empty-input",
        lambda w: ["predict", f"ckpt={w}/classifier.ckpt", f"input={w}/empty.txt", f"output={w}/p.csv"],
        r"empty\.txt",
    ),
    Bad(
        "predict-unwritable-output",
        lambda w: ["predict", f"ckpt={w}/classifier.ckpt", f"input={w}/texts.txt", f"output={w}/a_file/p.csv"],
        r"a_file",
    ),
    Bad(
        "predict-zero-batch",
        lambda w: ["predict", f"ckpt={w}/classifier.ckpt", f"input={w}/texts.txt", f"output={w}/p.csv", "batch_size=0"],
        r"batch_size",
    ),
    # export
    Bad("export-ngram-ckpt", lambda w: ["export", f"ckpt={w}/ngram.ckpt", f"out={w}/hf_ngram"], r"ngram"),
    Bad("export-lstm-ckpt", lambda w: ["export", f"ckpt={w}/lstm.ckpt", f"out={w}/hf_lstm"], r"lstm"),
    Bad(
        "export-classifier-ckpt",
        lambda w: ["export", f"ckpt={w}/classifier.ckpt", f"out={w}/hf_cls"],
        r"ClassificationTask",
    ),
    Bad(
        "export-qk-norm-ckpt",  # no Transformers architecture normalises each head's queries and keys
        lambda w: ["export", f"ckpt={w}/qk_norm.ckpt", f"out={w}/hf_qk"],
        r"model\.qk_norm=true .*export a model trained with model\.qk_norm=false",
    ),
    Bad("export-existing-folder", lambda w: ["export", f"ckpt={w}/gpt.ckpt", f"out={w}/export_done"], r"overwrite"),
    Bad("export-out-under-a-file", lambda w: ["export", f"ckpt={w}/gpt.ckpt", f"out={w}/a_file/hf"], r"a_file"),
    Bad("export-unknown-format", lambda w: ["export", f"ckpt={w}/gpt.ckpt", f"out={w}/hf_x", "format=onnx"], r"format"),
    Bad("export-corrupt-ckpt", lambda w: ["export", f"ckpt={w}/garbage.ckpt", f"out={w}/hf_y"], CORRUPT),
    # benchmark
    Bad(
        "benchmark-unknown-task",
        lambda w: benchmark(w, "gpt.ckpt", "tasks=[hellaswag_x]"),
        r"unknown task .*hellaswag_x.*shakespeare_speaker",
    ),
    Bad("benchmark-no-tasks", lambda w: benchmark(w, "gpt.ckpt", "tasks=[]"), r"tasks is empty"),
    Bad("benchmark-zero-limit", lambda w: benchmark(w, "gpt.ckpt", "limit=0"), r"limit=0"),
    Bad("benchmark-classifier-ckpt", lambda w: benchmark(w, "classifier.ckpt"), r"not as a language model"),
    Bad("benchmark-encoder-ckpt", lambda w: benchmark(w, "bert.ckpt"), r"bidirectional encoder"),
    Bad("benchmark-corrupt-ckpt", lambda w: benchmark(w, "garbage.ckpt"), CORRUPT),
]


# --- running a row ---------------------------------------------------------------------------------------------------


def run_in_process(argv: list[str]) -> tuple[int, str]:
    """`lmlab ARGV` in this process: (exit status, stderr). Logging handlers Hydra installs are put back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, os.environ.get(COMMAND_ENV))
    err = io.StringIO()
    code = 0
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as escaped:  # a traceback the user would have seen
            import traceback

            traceback.print_exception(escaped, file=err)
            code = 1
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    if saved[2] is None:
        os.environ.pop(COMMAND_ENV, None)
    return code, err.getvalue()


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads: stderr without blank lines and without Python warnings (they are not errors)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if not re.search(r"(Warning|warnings\.warn)\b", line)]


def params() -> list:
    return [pytest.param(row, id=row.id, marks=[pytest.mark.slow] if row.slow else []) for row in ROWS]


@pytest.mark.parametrize("row", params())
def test_bad_input_is_one_line_and_harmless(row: Bad, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = row.argv(workspace)
    before = file_hashes(workspace)
    for name, value in (row.env or {}).items():
        monkeypatch.setenv(name, value)
    if row.slow:
        result = run_cli(*argv, cwd=workspace, env=row.env)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = run_in_process(argv)
    lines = error_lines(stderr)
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(row.error, lines[0]), lines[0]
    after = file_hashes(workspace)
    assert {k: after.get(k) for k in before} == before, "a file written before the bad input changed"


def test_the_table_covers_every_command_and_is_long() -> None:
    commands = {row.argv(Path("/w"))[0] for row in ROWS}
    assert commands == {"train", "generate", "eval", "predict", "export", "steer", "serve", "benchmark"}
    assert len(ROWS) >= 25 and len({row.id for row in ROWS}) == len(ROWS)
