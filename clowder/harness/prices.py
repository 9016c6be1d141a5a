"""Pricing token usage that a harness reports without a cost (Codex reports none), from
clowder.toml's `[prices."<model>"]`, so `max_cost_usd` stops any harness, not only those that
say what they spent. Prices are USD per million tokens."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clowder.spec import Price

MILLION = 1_000_000


@dataclass(frozen=True)
class Priced:
    cost_usd: float = 0.0  # of the usage lines that had tokens and no cost
    unpriced: tuple[str, ...] = ()  # models of such lines that clowder.toml has no price for ("" = none named)


def cost(price: Price, input_tokens: int, output_tokens: int, cached: int = 0, cache_write: int = 0) -> float:
    """What the tokens cost; `cached` and `cache_write` are parts of `input_tokens`."""
    plain = max(input_tokens - cached - cache_write, 0)
    read = price.input if price.cache_read is None else price.cache_read
    write = price.input if price.cache_write is None else price.cache_write
    return (plain * price.input + cached * read + cache_write * write + output_tokens * price.output) / MILLION


def price_log(path: Path, model: str | None, prices: Mapping[str, Price]) -> Priced:
    """The cost of the action log's usage lines that report tokens but no `cost_usd`, each at
    the price of its own `model`, else of `model` (the harness's). Lines the action log reader
    refuses are skipped here: that reader reports them."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Priced()
    total, unpriced = 0.0, set[str]()
    for raw in data.split(b"\n"):
        event = _usage(raw)
        if event is None or "cost_usd" in event:
            continue
        tokens = [_int(event, k) for k in ("input_tokens", "output_tokens", "cached_input_tokens",
                                           "cache_write_input_tokens")]
        if not any(tokens):
            continue
        own = event.get("model")
        name = own if isinstance(own, str) else model
        price = prices.get(name or "")
        if price is None:
            unpriced.add(name or "")
            continue
        total += cost(price, *tokens)
    return Priced(total, tuple(sorted(unpriced)))


def _usage(raw: bytes) -> dict[str, object] | None:
    if not raw.strip():
        return None
    try:
        event = json.loads(raw)
    except ValueError:
        return None
    return event if isinstance(event, dict) and event.get("type") == "usage" else None


def _int(event: Mapping[str, object], key: str) -> int:
    value = event.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
