"""The "faster recipe" levers of issue 19: relu² MLPs, QK-norm, untied embeddings, Muon, and the WSD schedule."""

from __future__ import annotations

import copy
import functools
import math
import signal
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmlab.cli.train import train
from lmlab.errors import LmlabError
from lmlab.models import GPT, GPTConfig
from lmlab.tasks import CausalLMTask, ClassificationTask, MuonAdamW, wsd, wsd_factor
from tests.helpers.compose import compose_train
from tests.helpers.runs import stop_at

TINY = {"vocab_size": 40, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}
LEVERS = {"activation": "relu2", "qk_norm": True, "tie_embeddings": False, "pos_embedding": "rope", "norm": "rmsnorm"}


def gpt(**options: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**TINY, **options)).eval()


def ids(T: int = 12) -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (2, T), generator=torch.Generator().manual_seed(1))  # (B, T)


# --- model options -----------------------------------------------------------------------------------------------


def test_defaults_keep_the_old_model() -> None:
    """No new parameters, the head tied, GELU in the MLP: old checkpoints load, old runs compute the same."""
    model = gpt()
    assert model.lm_head.weight is model.wte.weight
    assert not any("q_norm" in name or "k_norm" in name for name in model.state_dict())
    mlp, x = model.blocks[0].mlp, torch.randn(2, 3, 16)
    assert torch.equal(mlp(x), mlp.proj(F.gelu(mlp.fc(x))))


def test_relu2_squares_the_relu_and_hooks_keep_their_meaning() -> None:
    mlp, x = gpt(activation="relu2").blocks[0].mlp, torch.randn(2, 3, 16)
    seen = {}
    mlp.hook_pre.register_forward_hook(lambda m, i, o: seen.__setitem__("pre", o))
    mlp.hook_post.register_forward_hook(lambda m, i, o: seen.__setitem__("post", o))
    out = mlp(x)
    assert torch.equal(out, mlp.proj(F.relu(mlp.fc(x)) ** 2))
    assert torch.equal(seen["pre"], mlp.fc(x)) and torch.equal(seen["post"], F.relu(seen["pre"]) ** 2)


@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_qk_norm_holds_in_every_attention_path(pos_embedding: str) -> None:
    model, x = gpt(qk_norm=True, pos_embedding=pos_embedding), ids()
    attn = model.blocks[0].attn
    seen = {}
    attn.hook_q.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o))  # (B, T, H, D)
    with torch.no_grad():
        full = model(x)  # (B, T, V): sdpa
        assert torch.allclose(seen["q"].pow(2).mean(-1), torch.ones(()), atol=1e-4)  # unit RMS per head (gain 1)
        cache = model.new_cache(2)
        prefill, cache = model.forward_cached(x[:, :5], cache)
        steps = [model.forward_cached(x[:, t : t + 1], cache)[0] for t in range(5, x.size(1))]
        handles = [block.attn.hook_pattern.register_forward_hook(lambda *a: None) for block in model.blocks]
        explicit = model(x)  # hooked patterns: the step-by-step attention
    for handle in handles:
        handle.remove()
    assert torch.allclose(torch.cat([prefill, *steps], dim=1), full, atol=1e-5)
    assert torch.allclose(explicit, full, atol=1e-5)
    assert not torch.allclose(full, gpt(pos_embedding=pos_embedding)(x))  # the norm changed the function


def test_untied_head_is_its_own_weight_and_counts_once() -> None:
    tied, untied = gpt(), gpt(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.wte.weight
    assert {id(p) for p in untied.parameters()} >= {id(untied.lm_head.weight), id(untied.wte.weight)}
    V, C = TINY["vocab_size"], TINY["n_embd"]
    assert untied.num_parameters() == tied.num_parameters() + V * C
    # FLOPs: the head's matmul is counted once either way; an untied token table is a lookup
    assert untied.num_parameters(non_embedding=True) == tied.num_parameters(non_embedding=True)
    assert untied.flops_per_token() == tied.flops_per_token()


def test_hf_export_maps_relu2_and_an_untied_head() -> None:
    pytest.importorskip("transformers")
    from lmlab.hf.export import gpt_to_transformers

    model, x = gpt(activation="relu2", tie_embeddings=False), ids()
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)  # differs from the token table
        hf, _ = gpt_to_transformers(model)
        assert torch.allclose(hf(input_ids=x).logits, model(x), atol=1e-4)


@pytest.mark.parametrize("option", [{"activation": "relu2"}, {"qk_norm": True}], ids=["relu2", "qk_norm"])
def test_transformer_lens_refuses_what_it_cannot_compute(option: dict) -> None:
    from lmlab.interp.transformer_lens import hooked_transformer_config

    name = next(iter(option))
    with pytest.raises(LmlabError, match=rf"model\.{name}=.*run_with_cache"):
        hooked_transformer_config(GPTConfig(**TINY, **option))


# --- Muon --------------------------------------------------------------------------------------------------------


def muon_task(**options: object) -> CausalLMTask:
    torch.manual_seed(0)
    optimizer = functools.partial(MuonAdamW, lr=1e-3, muon_lr=0.02, fused=None)
    scheduler = functools.partial(wsd, warmup_steps=1, total_steps=6, min_lr=0.0)
    return CausalLMTask(GPTConfig(**TINY, **options), optimizer=optimizer, scheduler=scheduler)


def hidden_names() -> set[str]:
    """The GPT's hidden matrices: every block's attention and MLP weights."""
    layers = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    return {f"blocks.{i}.{layer}.weight" for i in range(TINY["n_layer"]) for layer in layers}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tied: bool) -> None:
    task = muon_task(**(LEVERS | {"tie_embeddings": tied}))
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    names = {id(p): n for n, p in task.model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in optimizer.adamw.param_groups for p in g["params"]}
    assert muon == hidden_names()
    assert {"wte.weight", "ln_f.weight", "blocks.0.attn.q_norm.weight"} <= adamw and not muon & adamw
    assert ("lm_head.weight" in adamw) is not tied  # a tied head is the token table (yielded once, as wte.weight)
    inner = [*optimizer.adamw.param_groups, *optimizer.muon.param_groups]
    assert all(a is b for a, b in zip(optimizer.param_groups, inner, strict=True))  # one set of dicts: one schedule
    assert optimizer.adamw.defaults["fused"]  # fused: null -> the fused kernel on the CPU, as optimizer=adamw
    task.model(ids()).logsumexp(-1).mean().backward()
    optimizer.step()
    scheduler.step()
    wte, qkv = task.model.wte.weight, task.model.blocks[0].attn.qkv.weight
    assert set(optimizer.state[qkv]) == {"momentum_buffer"} and "exp_avg" in optimizer.state[wte]
    factor = wsd_factor(1, 1, 6, 0.2, 0.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-3 * factor] * 2 + [0.02 * factor])


def test_classifier_head_stays_with_adamw_at_its_own_lr() -> None:
    torch.manual_seed(0)
    task = ClassificationTask(
        GPTConfig(**TINY), optimizer=functools.partial(MuonAdamW), label_names=["neg", "pos"], head_lr=5e-3
    )
    optimizer = task.configure_optimizers()
    head = task.head[1].weight
    assert any(head is p and g["lr"] == 5e-3 for g in optimizer.adamw.param_groups for p in g["params"])
    assert all(p.dim() == 2 for g in optimizer.muon.param_groups for p in g["params"])


def train_steps(task: CausalLMTask, optimizer: MuonAdamW, scheduler: object, steps: int) -> None:
    for _ in range(steps):
        x = ids()
        optimizer.zero_grad()
        loss = F.cross_entropy(task.model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        scheduler.step()


def test_state_dict_round_trip_gives_identical_next_steps() -> None:
    first = muon_task(**LEVERS)
    configured = first.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    train_steps(first, optimizer, scheduler, 2)
    saved = copy.deepcopy((first.model.state_dict(), optimizer.state_dict(), scheduler.state_dict()))  # a checkpoint

    second = muon_task(**LEVERS)
    configured = second.configure_optimizers()
    resumed, resumed_scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    second.model.load_state_dict(saved[0])
    resumed.load_state_dict(saved[1])
    resumed_scheduler.load_state_dict(saved[2])
    assert resumed.muon.param_groups[0] is resumed.param_groups[-1] and resumed.muon.state is resumed.state
    train_steps(first, optimizer, scheduler, 2)
    train_steps(second, resumed, resumed_scheduler, 2)
    for (name, p), q in zip(first.model.named_parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert [g["lr"] for g in resumed.param_groups] == [g["lr"] for g in optimizer.param_groups]


# --- warmup-stable-decay -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "linear", "sqrt"),
    [(0, 1 / 11, 1 / 11), (10, 1.0, 1.0), (79, 1.0, 1.0), (80, 1.0, 1.0), (90, 0.55, 1 - 0.9 * math.sqrt(0.5)),
     (100, 0.1, 0.1), (150, 0.1, 0.1)],
)  # fmt: skip
def test_wsd_factor(step: int, linear: float, sqrt: float) -> None:
    """Warmup 10 steps, peak until 80, decay over the last 20 % of 100 steps to 10 % of the peak."""
    assert wsd_factor(step, 10, 100, 0.2, 0.1, "linear") == pytest.approx(linear)
    assert wsd_factor(step, 10, 100, 0.2, 0.1, "sqrt") == pytest.approx(sqrt)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [({"total_steps": -1}, "needs a step budget"), ({"min_lr": 1.0}, "min_lr=1.0 exceeds"),
     ({"decay_fraction": 0.0}, "decay_fraction=0.0"), ({"decay_shape": "cosine"}, "decay_shape='cosine'")],
)  # fmt: skip
def test_wsd_refuses_bad_settings(arguments: dict, error: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    with pytest.raises(LmlabError, match=error):
        wsd(optimizer, **({"warmup_steps": 0, "total_steps": 10, "min_lr": 0.0} | arguments))


# --- all levers together, through the Hydra config ---------------------------------------------------------------

LEVER_OVERRIDES = ["model.activation=relu2", "model.qk_norm=true", "model.tie_embeddings=false",
                   "model.pos_embedding=rope", "model.norm=rmsnorm", "optimizer=muon", "scheduler=wsd"]  # fmt: skip


def lever_run(tiny_corpus: Path, *extra: str) -> list[str]:
    return [*LEVER_OVERRIDES, "data=text_files", f"data.corpus.paths=[{tiny_corpus}]", "trainer.max_steps=4",
            "trainer.val_check_interval=4", "scheduler.warmup_steps=1", "sample.max_new_tokens=2", *extra]  # fmt: skip


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_levers_compose_train_and_resume_exactly(tmp_path: Path, tiny_corpus: Path) -> None:
    """Every lever at once through the Hydra config; stopped after 2 of 4 steps and resumed, the run ends with the
    weights of the uninterrupted one (Muon's and AdamW's state and both lrs come back from the checkpoint)."""

    straight = compose_train(tmp_path / "straight", lever_run(tiny_corpus))
    metrics = train(straight)
    assert math.isfinite(metrics["val/loss"])
    expected = last_checkpoint(Path(straight.paths.output_dir))
    (state,) = expected["optimizer_states"]
    assert [g["initial_lr"] for g in state["param_groups"]] == [1e-3, 1e-3, 0.02]  # AdamW groups, then Muon's

    stopped = compose_train(tmp_path / "stopped", lever_run(tiny_corpus, *stop_at([2], [int(signal.SIGTERM)])))
    run_dir = Path(stopped.paths.output_dir)
    with pytest.raises(SystemExit):
        train(stopped)
    assert last_checkpoint(run_dir)["global_step"] == 2
    assert train(compose_train(tmp_path / "resumed", lever_run(tiny_corpus, f"resume={run_dir}"))) == metrics
    resumed = last_checkpoint(run_dir)
    for key, weights in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], weights), key
