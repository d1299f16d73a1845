"""`lmlab generate ckpt=RUN prompt='...'`: sample text from a checkpoint of any causal model (gpt, lstm, ngram)."""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from lmlab.cli.runner import hydra_entry
from lmlab.errors import LmlabError
from lmlab.terminal import visible

if TYPE_CHECKING:
    from torch import nn

    from lmlab.checkpoints.load import LoadedCheckpoint
    from lmlab.generation import Completion, GenerationConfig
    from lmlab.interp.steering import SteeringVector

_ESCAPE = re.compile(r"\\([nt\\])")


def unescape(text: str) -> str:
    """Read `\\n`, `\\t` and `\\\\` as newline, tab and backslash (the shell passes them literally through Hydra)."""
    return _ESCAPE.sub(lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m[1]], text)


def read_prompts(prompt: str | None, prompt_file: str | None) -> list[str]:
    """The prompts to continue: `prompt`, the lines of `prompt_file` (blank ones skipped), or a newline."""
    if prompt_file is None:
        return [unescape(prompt) if prompt is not None else "\n"]
    if prompt is not None:
        raise LmlabError("give prompt or prompt_file, not both")
    return read_lines(prompt_file, "prompt_file", "prompt")


def read_lines(file: str, key: str, what: str) -> list[str]:
    """The non-blank lines of the UTF-8 text file that setting `key` names (`\\n` and `\\t` read as such); each
    line is one `what` (named in the errors)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise LmlabError(f"{key} {path} does not exist; give a UTF-8 text file with one {what} per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise LmlabError(
            f"{key} {path} is not UTF-8 text (invalid byte at offset {err.start}); convert it, e.g. with iconv"
        ) from err
    texts = [unescape(line) for line in lines if line.strip()]
    if not texts:
        raise LmlabError(f"{key} {path} has no {what}s; write one {what} per line")
    return texts


def generation_config(cfg: DictConfig) -> GenerationConfig:
    """The decoding settings of the command line."""
    from omegaconf import OmegaConf

    from lmlab.generation import GenerationConfig, SamplingOptions

    sampling = SamplingOptions(
        temperature=float(cfg.temperature),
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        min_p=cfg.get("min_p"),
        repetition_penalty=float(cfg.repetition_penalty),
    )
    processors = OmegaConf.to_container(cfg.processors, resolve=True) if cfg.get("processors") else []
    return GenerationConfig(
        max_new_tokens=int(cfg.max_new_tokens),
        sampling=sampling,
        stop=[unescape(str(s)) for s in cfg.stop or []],
        num_samples=int(cfg.get("num_samples", 1)),
        seed=int(cfg.seed),
        use_cache=bool(cfg.use_cache),
        processors=[_processor_spec(spec) for spec in processors],
        regex=cfg.get("regex"),
        json_schema=_schema(cfg.get("json_schema")),
    )


def _schema(value: object) -> object:
    """A JSON schema from the command line: a file path or JSON text as given, an inline mapping as plain dicts."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _processor_spec(spec: object) -> dict:
    """One processor of the command line: a mapping with a `name` (a bare name is refused with an example); its
    texts read `\\n` and `\\t` as `stop` does."""
    if not isinstance(spec, dict):
        raise LmlabError(f"each of processors is a mapping with a name, e.g. "
                         f"\"processors=[{{name:no_repeat_ngram,size:3}}]\"; got {spec!r}")  # fmt: skip
    return {_unescape_all(k): _unescape_all(v) for k, v in spec.items()}


def _unescape_all(value: object) -> object:
    """`value` with `\\n`, `\\t` and `\\\\` read as such in every string of it (keys too)."""
    if isinstance(value, str):
        return unescape(value)
    if isinstance(value, dict):
        return {_unescape_all(k): _unescape_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unescape_all(v) for v in value]
    return value


def print_streamed(
    loaded: LoadedCheckpoint, prompts: Sequence[str | list[int]], texts: Sequence[str], config: GenerationConfig
) -> list[Completion]:
    """Generate one sequence at a time, printing each as it grows (per-sequence seeds keep the batch's results)."""
    from lmlab.generation import generate_text

    completions = []
    many = len(prompts) * config.num_samples > 1
    block_size = loaded.model_config.block_size
    for number, (prompt, text) in enumerate(zip(prompts, texts, strict=True), start=1):
        for sample in range(config.num_samples):
            if many:
                print(_header(number, sample, config.num_samples))
            sys.stdout.write(visible(text))
            one = dataclasses.replace(config, num_samples=1, seed=config.seed + sample)
            (done,) = generate_text(loaded.model, loaded.tokenizer, [prompt], one, block_size, on_text=_write)
            done.sample = sample
            completions.append(done)
            sys.stdout.write("\n")
            sys.stdout.flush()
    return completions


def print_completions(completions: Sequence[Completion], texts: Sequence[str], num_samples: int) -> None:
    """Each prompt followed by its continuation; a header line per sequence when there are several."""
    many = len(completions) > 1
    for index, completion in enumerate(completions):
        if many:
            print(_header(index // num_samples + 1, completion.sample, num_samples))
        print(visible(texts[index // num_samples] + completion.text))


def _header(prompt_number: int, sample: int, num_samples: int) -> str:
    suffix = f" · sample {sample + 1}/{num_samples}" if num_samples > 1 else ""
    return f"─── prompt {prompt_number}{suffix} ───"


def _write(index: int, piece: str) -> None:
    sys.stdout.write(visible(piece))  # printed only: the completion keeps the model's text
    sys.stdout.flush()


def load_language_model(ckpt: str, device: str) -> LoadedCheckpoint:
    """Load a checkpoint that can generate text: a causal model trained as a language model."""
    from lmlab.compute.hardware import pick_device
    from lmlab.inference.language_model import load_language_model as load

    return load(ckpt, pick_device(device))


def steering_vector(settings: DictConfig | None) -> SteeringVector | None:
    """The vector file of `steer.vector`, read (None without one); `steer.layer` alone steers nothing: refused."""
    if settings is None or settings.vector is None:
        if settings is not None and settings.layer is not None:
            raise LmlabError(f"steer.layer={settings.layer} is set but steer.vector is null; give steer.vector=FILE "
                             "(made by lmlab steer)")  # fmt: skip
        return None
    from lmlab.interp.steering import SteeringVector

    return SteeringVector.load(settings.vector)


def steered(model: nn.Module, vector: SteeringVector | None, settings: DictConfig | None) -> AbstractContextManager:
    """`steer.coeff` times the vector added to the model's residual stream inside the block (nothing without one)."""
    if vector is None or settings is None:
        return nullcontext()
    from lmlab.interp.steering import steering

    return steering(model, vector, float(settings.coeff), settings.layer)


def generate(cfg: DictConfig) -> list[Completion]:
    """Load the checkpoint, continue every prompt (steered by `steer.vector` if given), print the text; return the
    completions."""
    config = generation_config(cfg)
    texts = read_prompts(cfg.prompt, cfg.prompt_file)
    vector = steering_vector(cfg.get("steer"))
    loaded = load_language_model(str(cfg.ckpt), str(cfg.device))
    with steered(loaded.model, vector, cfg.get("steer")):
        return continue_prompts(cfg, loaded, texts, config)


def continue_prompts(
    cfg: DictConfig, loaded: LoadedCheckpoint, texts: list[str], config: GenerationConfig
) -> list[Completion]:
    """Continue every prompt (as chat turns with `chat=true`), streaming or in one batch, and print the text."""
    from lmlab.generation import generate_text

    prompts: list[str | list[int]] = list(texts)
    if cfg.chat:
        from lmlab.generation.chat import chat_inputs  # (imports the data package: only when asked)

        prompts, texts, config = chat_inputs(loaded.tokenizer, texts, config)
    stream = cfg.stream if cfg.stream is not None else len(texts) * config.num_samples == 1
    if stream:
        return print_streamed(loaded, prompts, texts, config)
    completions = generate_text(loaded.model, loaded.tokenizer, prompts, config, loaded.model_config.block_size)
    print_completions(completions, texts, config.num_samples)
    return completions


main = hydra_entry("generate", generate)
