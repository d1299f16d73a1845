"""Security guarantees: checkpoints never unpickle code, Hugging Face loading never runs remote code unless asked,
and credentials in the environment never reach a run directory."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from lmlab.checkpoints.load import read_checkpoint
from lmlab.errors import LmlabError
from tests.helpers.cli import run_cli
from tests.helpers.compose import TINY_TEXT

SOURCE = Path(__file__).resolve().parent.parent / "src" / "lmlab"


def calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call of an attribute or function called `name` in lmlab's source."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == name:
                    found.append((path, node))
    return found


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only() -> None:
    torch_loads = [(p, c) for p, c in calls("load") if ast.unparse(c.func) == "torch.load"]
    assert torch_loads, "the audit found no torch.load at all: did the source move?"
    for path, call in torch_loads:
        value = keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"
    for path, call in calls("fit"):  # resuming through Lightning loads a checkpoint too
        if keyword(call, "ckpt_path") is not None:
            value = keyword(call, "weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"


def test_every_from_pretrained_states_trust_remote_code() -> None:
    """Transformers' `from_pretrained`/`from_config` say trust_remote_code explicitly (False, or the config's key).
    `tokenizers.Tokenizer.from_pretrained` (a tokenizer.json download) cannot run code and takes no such argument."""
    checked = 0
    for name in ("from_pretrained", "from_config"):
        for path, call in calls(name):
            if ast.unparse(call.func).startswith("_HFTokenizer."):
                continue
            value = keyword(call, "trust_remote_code")
            assert value is not None, f"{path}:{call.lineno} loads without stating trust_remote_code"
            assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}:{call.lineno}"
            checked += 1
    assert checked >= 5


def test_hf_configs_default_to_no_remote_code() -> None:
    from omegaconf import OmegaConf

    from lmlab.config.groups import config_dir

    for name in ("model/hf_causal", "model/hf_encoder", "tokenizer/hf"):
        assert OmegaConf.load(config_dir() / f"{name}.yaml").trust_remote_code is False, name


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_a_pickled_object_in_a_checkpoint_is_refused_not_run(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "lmlab": {}, "payload": Exploit()}, path)
    with pytest.raises(LmlabError, match="cannot read checkpoint") as error:
        read_checkpoint(path)
    assert "pwned" not in capsys.readouterr().out
    message = str(error.value)  # why (unsafe, not damaged) and what to do, in one line
    assert "refused as unsafe" in message and "(print)" in message and "only load checkpoints you trust" in message
    assert "corrupt" not in message and "\n" not in message


FAKE = {"WANDB_API_KEY": "fakewandbkey0123456789abcdef0123456789abcd", "HF_TOKEN": "hf_FakeTokenForLmlabTests0123",
        "HUGGING_FACE_HUB_TOKEN": "hf_FakeHubTokenForLmlabTests456"}  # fmt: skip


@pytest.mark.slow
def test_credentials_never_reach_the_run_directory(tmp_path: Path) -> None:
    """A tiny training with W&B (offline) and fake credentials in the environment: no file written anywhere under the
    working directory (run folder, W&B's offline run, Hydra's .hydra/, logs, checkpoints) contains them."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    result = run_cli(
        "train", "data=text_files", f"data.corpus.paths=[{corpus}]", "model.n_layer=1", "model.n_head=2",
        "model.n_embd=16", "model.block_size=16", "trainer.max_steps=2", "trainer.val_check_interval=1",
        "data.batch_size=4", "sample.max_new_tokens=4", f"paths.cache_dir={tmp_path}/cache", "logger=default",
        cwd=tmp_path, env={**FAKE, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts for p in files), "W&B wrote nothing: the check would prove little"
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".ckpt" for p in files)
    for secret in FAKE.values():
        assert secret not in result.stdout + result.stderr
        leaks = [p for p in files if secret.encode() in p.read_bytes()]
        assert not leaks, f"{secret[:8]}... written to {leaks}"


def test_a_config_holding_a_credential_is_refused(tmp_path: Path, tiny_corpus: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from lmlab.config.validate import check_run_config
    from tests.helpers.compose import compose_train

    monkeypatch.setenv("HF_TOKEN", FAKE["HF_TOKEN"])
    data = ["data=text_files", f"data.corpus.paths=[{tiny_corpus}]"]
    cfg = compose_train(tmp_path, [*data, "logger.csv.name=${oc.env:HF_TOKEN}"])
    with pytest.raises(LmlabError, match=r"logger\.csv\.name holds the value of \$HF_TOKEN; remove it"):
        check_run_config(OmegaConf.to_container(cfg, resolve=True))
    check_run_config(OmegaConf.to_container(compose_train(tmp_path, data), resolve=True))  # the token alone is fine
