"""lmlab GPTs as TransformerLens HookedTransformers: logits and named activations agree, checkpoints bring their
tokenizer, and what cannot convert is refused in one line."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lmlab.checkpoints.load import load_checkpoint
from lmlab.errors import LmlabError
from lmlab.interp import hook_names, run_with_cache
from lmlab.interp.transformer_lens import to_hooked_transformer
from lmlab.models import GPT, GPTConfig, build_model, model_config_to_dict
from lmlab.models.bert import BertConfig
from lmlab.models.lstm import LSTMConfig
from lmlab.models.ngram import NGramConfig
from lmlab.tokenizers import BPETokenizerConfig, CharTokenizerConfig, Tokenizer
from tests.helpers.classification import fake_lm_checkpoint
from tests.helpers.compose import TINY_TEXT

needs_transformer_lens = pytest.mark.skipif(
    importlib.util.find_spec("transformer_lens") is None, reason="needs: pip install -e '.[interp]'"
)
TOLERANCE = 1e-4
"""Largest |difference| allowed between lmlab's and TransformerLens's float32 logits and activations."""
SHAPES = {
    "learned-layernorm-bias": {"pos_embedding": "learned", "norm": "layernorm", "bias": True},
    "rope-rmsnorm-nobias": {"pos_embedding": "rope", "norm": "rmsnorm", "bias": False},
    "learned-rmsnorm-nobias": {"pos_embedding": "learned", "norm": "rmsnorm", "bias": False},
    "rope-layernorm-bias": {"pos_embedding": "rope", "norm": "layernorm", "bias": True},
}
IDS = torch.randint(0, 50, (3, 24), generator=torch.Generator().manual_seed(1))  # (B, T)


def random_gpt(vocab_size: int = 50, **fields: object) -> GPT:
    """A tiny GPT whose every weight is perturbed (norm gains off 1, biases off 0), so no mapping error hides."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32, **fields))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b|, counting equal infinities (masked attention scores) as agreeing."""
    return torch.where(a == b, 0.0, (a - b).abs()).max().item()


def write_checkpoint(path: Path, model: torch.nn.Module, tokenizer: Tokenizer, task: str = "CausalLMTask") -> Path:
    """A self-describing lmlab checkpoint of `model` and `tokenizer`, as trained by `task`."""
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model": model_config_to_dict(model.config)},
        "lmlab": {"tokenizer": tokenizer.to_dict(), "config": {"task": {"_target_": f"lmlab.tasks.{task}"}}},
        "global_step": 0,
    }
    torch.save(checkpoint, path)
    return path


@needs_transformer_lens
@pytest.mark.parametrize("fields", SHAPES.values(), ids=SHAPES.keys())
def test_logits_and_every_shared_hook_agree(fields: dict) -> None:
    model = random_gpt(**fields)
    hooked = to_hooked_transformer(model)
    with torch.no_grad():
        expected, ours = run_with_cache(model, IDS)
        logits, theirs = hooked.run_with_cache(IDS)
    assert (logits - expected).abs().max().item() <= TOLERANCE
    shared = [name for name in hook_names(model) if name in theirs]
    for layer in range(2):
        for name in ("hook_resid_pre", "attn.hook_q", "attn.hook_pattern", "attn.hook_z", "hook_resid_post"):
            assert f"blocks.{layer}.{name}" in shared
    for name in shared:  # lmlab's hook_pos_embed is (T, C), TransformerLens's (B, T, C): compare broadcast
        diff = max_diff(ours[name], theirs[name])
        assert diff <= TOLERANCE, f"{name} differs by {diff:.2e}"


@needs_transformer_lens
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_final_norm_hook_means_what_transformer_lens_means(norm: str) -> None:
    """`ln_final.hook_normalized` is the final norm's input normalised, before its gain and bias, in both."""
    model = random_gpt(norm=norm, bias=True)
    hooked = to_hooked_transformer(model)
    with torch.no_grad():
        logits, ours = run_with_cache(model, IDS, names=["ln_final.hook_normalized"])
        _, theirs = hooked.run_with_cache(IDS, names_filter="ln_final.hook_normalized")
    assert max_diff(ours["ln_final.hook_normalized"], theirs["ln_final.hook_normalized"]) <= TOLERANCE
    assert max_diff(logits, model(IDS)) <= 1e-5  # the two-step norm computes what ln_f does


@needs_transformer_lens
@pytest.mark.parametrize(
    "fields", [SHAPES["learned-layernorm-bias"], SHAPES["rope-rmsnorm-nobias"]], ids=["layernorm", "rmsnorm"]
)
def test_transformer_lens_weight_processing_keeps_the_probabilities(fields: dict) -> None:
    """`process_weights_` (folded norms, centred weights: what `from_pretrained` gives, SAELens's usual setting)."""
    model = random_gpt(**fields)
    hooked = to_hooked_transformer(model)
    hooked.process_weights_()
    with torch.no_grad():
        diff = max_diff(hooked(IDS).log_softmax(-1), model(IDS).log_softmax(-1))
    assert diff <= TOLERANCE and hooked.cfg.normalization_type in ("LNPre", "RMSPre")


@needs_transformer_lens
def test_weights_are_copies_and_the_model_is_left_alone() -> None:
    model = random_gpt()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooked = to_hooked_transformer(model)
    with torch.no_grad():
        hooked.embed.W_E.zero_()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not hooked.training and hooked.cfg.device == "cpu"


@needs_transformer_lens
@pytest.mark.parametrize("specials", [(), ("<pad>",), ("<|endoftext|>", "<s>")], ids=["none", "pad", "eos-bos"])
def test_a_char_checkpoint_brings_its_tokenizer(tmp_path: Path, specials: tuple[str, ...]) -> None:
    path = fake_lm_checkpoint(tmp_path / "char.ckpt", TINY_TEXT, block_size=32, special_tokens=specials)
    loaded = load_checkpoint(path)
    hooked = to_hooked_transformer(path)
    text = "Speak, speak. <|endoftext|>"
    ids = loaded.tokenizer.encode(text)
    assert hooked.to_tokens(text)[0].tolist() == ids  # no BOS by default: lmlab trains without one
    assert hooked.to_string(torch.tensor(ids)) == loaded.tokenizer.decode(ids)
    with torch.no_grad():
        assert (hooked(text) - loaded.model(torch.tensor([ids]))).abs().max().item() <= TOLERANCE
    bos = loaded.tokenizer.special_ids().get("bos")
    assert hooked.to_tokens(text, prepend_bos=True)[0].tolist() == ([bos] if bos is not None else []) + ids
    batch = hooked.to_tokens(["Speak", "First Citizen"])  # padded with a real id, so the embedding accepts it
    assert batch.shape == (2, 13) and int(batch.max()) < loaded.tokenizer.vocab_size


@needs_transformer_lens
def test_a_bpe_checkpoint_of_a_rotary_gpt_round_trips(tmp_path: Path) -> None:
    tokenizer = BPETokenizerConfig(vocab_size=300, special_tokens=["<|endoftext|>", "<pad>"]).train([TINY_TEXT])
    model = random_gpt(tokenizer.vocab_size, pos_embedding="rope", norm="rmsnorm")
    path = write_checkpoint(tmp_path / "bpe.ckpt", model, tokenizer, task="SFTTask")
    hooked = to_hooked_transformer(path)
    text = "First Citizen:\nBefore we proceed"
    ids = tokenizer.encode(text)
    assert hooked.to_tokens(text)[0].tolist() == ids
    with torch.no_grad():
        assert (hooked(text) - model(torch.tensor([ids]))).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (BertConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16), "model=bert.*run_with_cache"),
        (LSTMConfig(vocab_size=40, n_embd=8, n_hidden=8, n_layer=1), "model=lstm.*convert a GPT"),
        (NGramConfig(vocab_size=40, order=2), "model=ngram.*convert a GPT"),
    ],
    ids=["bert", "lstm", "ngram"],
)
def test_other_families_are_refused(tmp_path: Path, config: object, message: str) -> None:
    model = build_model(config)
    with pytest.raises(LmlabError, match=message):
        to_hooked_transformer(model)
    tokenizer = CharTokenizerConfig().train([TINY_TEXT])
    with pytest.raises(LmlabError, match=message):
        to_hooked_transformer(write_checkpoint(tmp_path / "model.ckpt", model, tokenizer))


def test_hf_causal_points_to_transformer_lens_from_pretrained(tmp_path: Path) -> None:
    from lmlab.models import HFCausal, HFCausalConfig
    from tests.helpers.hf import save_tiny_causal

    folder = save_tiny_causal(tmp_path / "llama", TINY_TEXT)
    model = HFCausal(HFCausalConfig(name_or_path=str(folder), block_size=64))
    with pytest.raises(LmlabError, match=r"model=hf_causal.*lmlab export format=hf.*HookedTransformer.from_pretrained"):
        to_hooked_transformer(model)


def test_a_classifier_checkpoint_is_refused(tmp_path: Path) -> None:
    tokenizer = CharTokenizerConfig().train([TINY_TEXT])
    path = write_checkpoint(tmp_path / "cls.ckpt", random_gpt(tokenizer.vocab_size), tokenizer, "ClassificationTask")
    with pytest.raises(LmlabError, match=r"ClassificationTask.*task=causal_lm"):
        to_hooked_transformer(path)


def test_missing_transformer_lens_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # `import transformer_lens` raises ImportError
    with pytest.raises(LmlabError, match=r"pip install -e '\.\[interp\]'"):
        to_hooked_transformer(random_gpt())
