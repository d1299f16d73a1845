"""`lmlab export format=hf`: Transformers loads the folder with lmlab's logits and ids, or the export is refused."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from lmlab.cli.train import train
from lmlab.errors import LmlabError
from lmlab.hf import export_checkpoint
from lmlab.models import GPTConfig, LSTMConfig, build_model, model_config_to_dict
from lmlab.models.bert import BertConfig
from lmlab.models.ngram import NGramConfig
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig, Tokenizer
from tests.helpers.compose import TINY_TEXT, compose_train

SAMPLES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n",
    "  leading and trailing spaces  \t\n",
    "unseen: Ωμέγα 中文 🙂 \x00",
    "<mask> <pad> <|endoftext|> written as text",
]


def make_tokenizer(kind: str) -> Tokenizer:
    if kind == "char":
        return CharTokenizerConfig(special_tokens=["<mask>", "<pad>"]).train([TINY_TEXT])
    return BPETokenizerConfig(vocab_size=300).train([TINY_TEXT])


def write_checkpoint(path: Path, config, tokenizer: Tokenizer, seed: int = 0) -> torch.nn.Module:
    """A self-describing lmlab checkpoint of a model with random (not just initial) weights."""
    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))  # non-zero biases and non-unit norm gains
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model": model_config_to_dict(config)},
        "lmlab": {"tokenizer": tokenizer.to_dict(), "config": {}},
        "global_step": 0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return model.eval()


def gpt(tokenizer: Tokenizer, **fields) -> GPTConfig:
    return GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32, **fields)


def max_logit_diff(model: torch.nn.Module, folder: Path, vocab: int) -> tuple[float, str]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    idx = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(1))  # (B, T)
    with torch.no_grad():
        return (hf(input_ids=idx).logits - model(idx)).abs().max().item(), type(hf).__name__


@pytest.mark.parametrize(("kind", "bias"), [("char", False), ("bpe", True)])
def test_gpt2_export_gives_lmlab_logits_and_ids(tmp_path: Path, kind: str, bias: bool) -> None:
    from transformers import AutoTokenizer

    tokenizer = make_tokenizer(kind)
    model = write_checkpoint(tmp_path / "run" / "last.ckpt", gpt(tokenizer, bias=bias), tokenizer)
    result = export_checkpoint(tmp_path / "run", tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in (tmp_path / "hf").iterdir()
    }
    diff, architecture = max_logit_diff(model, tmp_path / "hf", tokenizer.vocab_size)
    assert architecture == "GPT2LMHeadModel" and diff <= 1e-4 and result.max_logit_diff <= 1e-4
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids
        assert hf_tokenizer.decode(ids) == tokenizer.decode(ids)
    assert hf_tokenizer.mask_token == "<mask>" and hf_tokenizer.pad_token == "<pad>"
    assert hf_tokenizer.mask_token_id == tokenizer.special_ids()["mask"]
    if kind == "bpe":
        assert hf_tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.parametrize(
    ("norm", "bias", "architecture"),
    [("rmsnorm", False, "ArceeForCausalLM"), ("rmsnorm", True, "ArceeForCausalLM"),
     ("layernorm", False, "GPTNeoXForCausalLM"), ("layernorm", True, "GPTNeoXForCausalLM")],
)  # fmt: skip
def test_rotary_gpts_map_exactly(tmp_path: Path, norm: str, bias: bool, architecture: str) -> None:
    tokenizer = make_tokenizer("char")
    config = gpt(tokenizer, pos_embedding="rope", norm=norm, bias=bias)
    model = write_checkpoint(tmp_path / "last.ckpt", config, tokenizer)
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf")
    diff, found = max_logit_diff(model, tmp_path / "hf", tokenizer.vocab_size)
    assert found == architecture and diff <= 1e-4


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (GPTConfig(norm="rmsnorm"), "pos_embedding=learned and norm=rmsnorm has no Transformers architecture"),
        (LSTMConfig(n_layer=1, n_embd=8, n_hidden=8), "Transformers has no LSTM"),
        (NGramConfig(order=2), "n-gram table"),
        (BertConfig(n_layer=1, n_head=2, n_embd=8), "pre-norm"),
    ],
    ids=["gpt-learned-rmsnorm", "lstm", "ngram", "bert"],
)
def test_inexpressible_models_are_refused(tmp_path: Path, config, message: str) -> None:
    tokenizer = make_tokenizer("char")
    config.vocab_size = tokenizer.vocab_size
    write_checkpoint(tmp_path / "last.ckpt", config, tokenizer)
    with pytest.raises(LmlabError, match=message) as err:
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # nothing half-written


def test_a_classifier_checkpoint_is_refused(tmp_path: Path) -> None:
    tokenizer = make_tokenizer("char")
    write_checkpoint(tmp_path / "last.ckpt", gpt(tokenizer), tokenizer)
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    checkpoint["lmlab"]["config"] = {"task": {"_target_": "lmlab.tasks.ClassificationTask"}}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    with pytest.raises(LmlabError, match="trained by ClassificationTask, and lmlab export writes causal language"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf")


def test_existing_folder_is_kept_unless_overwrite(tmp_path: Path) -> None:
    tokenizer = make_tokenizer("char")
    write_checkpoint(tmp_path / "last.ckpt", gpt(tokenizer), tokenizer)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(LmlabError, match="exists and is not empty; choose a new folder or pass overwrite=true"):
        export_checkpoint(tmp_path / "last.ckpt", out)
    assert (out / "notes.txt").read_text() == "mine"
    export_checkpoint(tmp_path / "last.ckpt", out, overwrite=True)
    assert (out / "config.json").is_file() and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "last.ckpt"]  # no staging folders left
    with pytest.raises(LmlabError, match="holds the checkpoint"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path, overwrite=True)
    with pytest.raises(LmlabError, match="format='onnx' is not supported; use format=hf"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "other", format="onnx")


def test_a_failed_export_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lmlab.hf.export

    tokenizer = make_tokenizer("char")
    write_checkpoint(tmp_path / "last.ckpt", gpt(tokenizer), tokenizer)

    def mismatch(loaded, folder) -> float:
        raise LmlabError("logits differ")

    monkeypatch.setattr(lmlab.hf.export, "check_logits", mismatch)
    with pytest.raises(LmlabError, match="logits differ"):
        export_checkpoint(tmp_path / "last.ckpt", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_cli_export_writes_only_the_folder(tmp_path: Path) -> None:
    from tests.helpers.cli import run_cli

    tokenizer = make_tokenizer("bpe")
    write_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", gpt(tokenizer), tokenizer)
    result = run_cli("export", "ckpt=run", "out=hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "exported GPT (learned positions, layernorm) as GPT2LMHeadModel" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no outputs/, .hydra/ or log file
    refused = run_cli("export", "ckpt=run", "out=hf", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("error: out=") and "overwrite=true" in refused.stderr


def test_round_trip_continues_training_from_the_same_loss(tmp_path: Path, tiny_corpus: Path) -> None:
    data = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"]
    lmlab_metrics = train(compose_train(tmp_path / "gpt", data))
    export_checkpoint(tmp_path / "gpt" / "run", tmp_path / "hf")
    hf = f"{tmp_path / 'hf'}"
    overrides = ["model=hf_causal", f"model.name_or_path={hf}", "tokenizer=hf", f"tokenizer.name_or_path={hf}"]
    cfg = compose_train(tmp_path / "hf_run", [*data, *overrides, "initial_validation=true", "trainer.max_steps=2"])
    metrics = train(cfg)
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    assert abs(val[0] - lmlab_metrics["val/loss"]) <= 1e-4  # the pretrained weights, before any step
    assert len(val) == 2 and metrics["val/loss"] == val[-1] != val[0] and metrics["train/loss"] > 0
    assert (Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt").is_file()
