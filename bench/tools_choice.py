"""Tool choice on the packaged default model: does `ChatXPU` pick the right tool and fill real arguments?

A fixed set of 16 requests over four tools (plus 4 requests that need no tool), asked through
`ChatXPU.bind_tools(TOOLS, tool_choice=...)` with greedy decoding:

- `any`: the call is forced; we score the tool picked, arguments that contain the expected value, and
  placeholder arguments (a string that starts with "<" or copies the parameter's description);
- `auto`: the model decides; we score "called when a tool fits, answered when none does" and the tool picked.

Prints one JSON line per mode; with --write, appends a row per mode to the table in docs/integrations.md
under "Tool choice (measured)". Run it before and after a change to the tool-call path (greedy: the numbers are
deterministic for a given model and code).

    python -P bench/tools_choice.py --label after [--write]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from typing import Any

import torch
from langchain_core.tools import tool

from xpullm.integrations._engines import shared_llm
from xpullm.integrations.langchain import ChatXPU


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return ""


@tool
def convert_currency(amount: float, source: str, target: str) -> str:
    """Convert an amount of money from one currency code to another."""
    return ""


@tool
def set_timer(minutes: int) -> str:
    """Start a countdown timer for a number of minutes."""
    return ""


@tool
def search_wikipedia(query: str) -> str:
    """Look up a topic in the encyclopedia."""
    return ""


TOOLS = [get_weather, convert_currency, set_timer, search_wikipedia]
# (request, expected tool, {argument: expected value (substring, case-insensitive, or number)})
CASES: list[tuple[str, str | None, dict[str, Any]]] = [
    ("What's the weather like in Paris today?", "get_weather", {"city": "paris"}),
    ("Is it raining in Tokyo?", "get_weather", {"city": "tokyo"}),
    ("How cold is it in Oslo right now?", "get_weather", {"city": "oslo"}),
    ("Tell me the forecast for Cairo.", "get_weather", {"city": "cairo"}),
    ("Convert 100 USD to EUR.", "convert_currency", {"amount": 100, "source": "usd", "target": "eur"}),
    ("How many yen is 50 dollars?", "convert_currency", {"amount": 50}),
    ("Change 20 GBP into USD please.", "convert_currency", {"amount": 20, "source": "gbp", "target": "usd"}),
    ("What is 75 euros in Swiss francs?", "convert_currency", {"amount": 75}),
    ("Set a timer for 10 minutes.", "set_timer", {"minutes": 10}),
    ("Remind me in 5 minutes with a countdown.", "set_timer", {"minutes": 5}),
    ("Start a 25 minute timer for my pomodoro.", "set_timer", {"minutes": 25}),
    ("Countdown 3 minutes for the eggs.", "set_timer", {"minutes": 3}),
    ("Who was Ada Lovelace?", "search_wikipedia", {"query": "ada lovelace"}),
    ("Look up the history of the Eiffel Tower.", "search_wikipedia", {"query": "eiffel"}),
    ("Find encyclopedia information about volcanoes.", "search_wikipedia", {"query": "volcano"}),
    ("Search for the biography of Marie Curie.", "search_wikipedia", {"query": "curie"}),
]
NO_TOOL = [
    ("Hello! How are you?", None, {}),
    ("Write one sentence about friendship.", None, {}),
    ("Thanks, that's all.", None, {}),
    ("What is your name?", None, {}),
]
DESCRIPTIONS = {t.name: t.args for t in TOOLS}


def _placeholder(name: str, args: dict[str, Any]) -> bool:
    for key, value in args.items():
        if not isinstance(value, str):
            continue
        text = value.strip().lower()
        desc = str(DESCRIPTIONS.get(name, {}).get(key, {}).get("description", "")).lower()
        if text.startswith("<") or (desc and text and text in desc) or text in ("string", key.lower()):
            return True
    return False


def _args_ok(args: dict[str, Any], expected: dict[str, Any]) -> bool:
    for key, want in expected.items():
        got = args.get(key)
        if isinstance(want, str):
            if not isinstance(got, str) or want not in got.lower():
                return False
        elif not isinstance(got, (int, float)) or float(got) != float(want):
            return False
    return True


def run(mode: str, chat: ChatXPU) -> dict[str, Any]:
    bound = chat.bind_tools(TOOLS, tool_choice=mode)
    cases = CASES + (NO_TOOL if mode == "auto" else [])
    right_tool = right_args = placeholders = decided = 0
    t0 = time.perf_counter()
    for text, want, expected in cases:
        ai = bound.invoke(text)
        call = ai.tool_calls[0] if ai.tool_calls else None
        decided += (call is not None) == (want is not None)
        if call is None or want is None:
            continue
        right_tool += call["name"] == want
        right_args += call["name"] == want and _args_ok(call["args"], expected)
        placeholders += _placeholder(call["name"], call["args"])
    n = len(CASES)
    return {
        "mode": mode,
        "cases": len(cases),
        "decision": round(decided / len(cases), 3),
        "tool": round(right_tool / n, 3),
        "args": round(right_args / n, 3),
        "placeholders": placeholders,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="current", help="row label, e.g. before / after")
    ap.add_argument("--modes", default="any,auto")
    ap.add_argument("--write", action="store_true", help="print a markdown row per mode for the docs table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    chat = ChatXPU(model=shared_llm(None, "sym_int4", "auto"), max_tokens=32)
    for mode in args.modes.split(","):
        row = {"label": args.label, "commit": commit, **run(mode, chat), "machine": platform.processor()}
        print(json.dumps(row))
        if args.write:
            print(
                f"| {args.label} ({commit}) | {mode} | {row['decision']:.2f} | {row['tool']:.2f} | "
                f"{row['args']:.2f} | {row['placeholders']} | {row['seconds']} |"
            )


if __name__ == "__main__":
    main()
