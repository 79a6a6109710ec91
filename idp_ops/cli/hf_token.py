"""`idp-ops secrets hf-token`: store the Hugging Face token for gated repos.

The token is read from stdin (piped) or a hidden prompt, never from argv: argv shows in `ps`
and shell history. It lands in the secrets dir as a 0600 file (hf_token); the output names the
file and a fingerprint, never the token.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from idp_ops.errors import IdpOpsError


class TokenInputError(IdpOpsError, ValueError):
    """No token came in on stdin or the prompt (exit 2)."""


def cmd_secrets_hf_token(args: argparse.Namespace) -> int:
    from idp_ops.cli.main import emit
    from idp_ops.settings import load_settings
    from idp_ops.stack.secrets import write_hf_token

    settings = load_settings(args.config)
    if sys.stdin.isatty():
        token = getpass.getpass("Hugging Face token (read access; input hidden): ")
    else:
        token = sys.stdin.readline()
    if not token.strip():
        raise TokenInputError("no token given on stdin or at the prompt; nothing written")
    written = write_hf_token(settings.secrets_dir, token)
    verb = "replaced" if written["replaced"] else "written"
    emit(args, written, lambda d: f"Hugging Face token {verb}: {d['path']} (0600, {d['fingerprint']})")
    return 0


def register_secrets(secrets: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    hf_token = secrets.add_parser(
        "hf-token",
        parents=[common],
        help="store the Hugging Face token for gated repos (from stdin or a prompt, never argv)",
    )
    hf_token.set_defaults(func=cmd_secrets_hf_token)
