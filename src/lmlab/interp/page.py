"""A self-contained HTML page of per-token loss: the text coloured by how surprised the model was, each token's
top predictions on hover (CSS only: no script, no font or stylesheet fetched)."""

from __future__ import annotations

import html
from dataclasses import dataclass

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; color: #222; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; }
.tok { position: relative; border-radius: 2px; }
.tok .tip { display: none; position: absolute; left: 0; top: 1.6em; z-index: 1; background: #fff;
  border: 1px solid #999; padding: 0.3em 0.5em; white-space: pre; font-size: 0.8em; box-shadow: 0 1px 4px #0003; }
.tok:hover .tip { display: block; }
table { border-collapse: collapse; margin: 1rem 0; } td, th { padding: 0.2em 0.8em; text-align: left; }
.legend span { padding: 0 0.6em; }
"""


@dataclass
class TokenLoss:
    """One token of the text: what it is, the model's loss on it, and what the model expected instead."""

    text: str
    loss: float | None
    """Nats; None for the first token, which nothing predicts."""
    top: list[tuple[str, float]]
    """The model's most likely tokens at this position, with probabilities."""


def shade(loss: float | None, worst: float) -> str:
    """Background colour: white for no surprise, deep red at `worst` nats and above."""
    if loss is None:
        return "#eee"
    level = max(0.0, min(1.0, loss / worst)) if worst > 0 else 0.0
    return f"rgb(255,{round(255 * (1 - 0.75 * level))},{round(255 * (1 - 0.85 * level))})"


def visible(text: str) -> str:
    """A token as the tooltip shows it: whitespace written out."""
    return text.replace("\n", "\\n").replace("\t", "\\t") if text.strip() else repr(text)


def token_span(token: TokenLoss, worst: float) -> str:
    """One token as a coloured span whose tooltip lists the loss and the top predictions."""
    if token.loss is None:
        head = "first token: nothing predicts it"
    else:
        head = f"loss {token.loss:.3f} nats ({token.loss / 0.6931471805599453:.2f} bits)"
    lines = [head, *(f"{p:6.1%}  {visible(t)}" for t, p in token.top)]
    tip = html.escape("\n".join(lines))
    return (f'<span class="tok" style="background:{shade(token.loss, worst)}">{html.escape(token.text)}'
            f'<span class="tip">{tip}</span></span>')  # fmt: skip


def render_token_page(tokens: list[TokenLoss], title: str, summary: dict[str, str]) -> str:
    """The whole page: a title, a summary table, a legend and the coloured text."""
    losses = [t.loss for t in tokens if t.loss is not None]
    worst = max(4.0, max(losses, default=0.0))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in summary.items())
    legend = "".join(f'<span style="background:{shade(v, worst)}">{v:.1f}</span>' for v in (0, worst / 4, worst / 2,
                                                                                          worst))  # fmt: skip
    body = "".join(token_span(t, worst) for t in tokens)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{html.escape(title)}</h1>\n<table>{rows}</table>\n"
        f'<p class="legend">loss in nats: {legend} (hover a token for its top predictions)</p>\n'
        f'<div class="text">{body}</div>\n</body>\n</html>\n'
    )
