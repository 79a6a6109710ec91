"""`idp-ops ask "PROMPT"`: ask the box a question; the answer streams to the terminal as it arrives.

It ends with one line of figures: TTFT, tok/s, which endpoint and model answered. ``--json``
prints one object instead (nothing streamed): the Answer's fields (see the README).

Exit status as for every command: 0 answered, 1 the server answered an error (a rejected
key, a 5xx, an answer that broke off), 2 it could not run (empty prompt, unknown endpoint,
no endpoint healthy or serving the model, unreachable, a key file missing).
"""

from __future__ import annotations

import argparse
import sys


def cmd_ask(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit, progress
    from idp_ops.client import Box

    say = progress(args)
    box = Box(
        args.config,
        timeout_s=args.timeout,
        on_retry=lambda attempt, exc: say(f"connection failed ({type(exc).__name__}); retrying once"),
    )
    kwargs = dict(model=args.model, endpoint=args.endpoint, max_tokens=args.max_tokens)
    if args.json:
        answer = box.ask(args.prompt, **kwargs)
        emit(args, answer.to_dict(), lambda _d: "")
        return 0
    last = "\n"
    with box.stream(args.prompt, **kwargs) as stream:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
            last = piece[-1:]
    # The figures start a line of their own, after a blank one.
    print("\n" if last != "\n" else "", end="")
    print(f"\n— {stream.answer.figures_line()}")
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(sub, common) -> None:
    ask = sub.add_parser(
        "ask", parents=[common], help="ask the box a question; streams the answer, then TTFT, tok/s, endpoint, model"
    )
    ask.add_argument("prompt", help="the question (quote it)")
    ask.add_argument("--model", help="the model to answer (default: the chosen endpoint's own)")
    ask.add_argument(
        "--endpoint", help="an endpoint name from settings (default: a healthy one serving the model, faster first)"
    )
    ask.add_argument("--max-tokens", type=_positive, default=256, help="longest answer in tokens (default 256)")
    ask.add_argument("--timeout", type=float, default=120, help="seconds the whole answer may take (default 120)")
    ask.set_defaults(func=cmd_ask)
