"""Using the box from scripts: ``Box().ask("...")``, streamed or whole, sync or async.

See :mod:`idp_ops.client.box` for the request and its figures and
:mod:`idp_ops.client.choice` for how an endpoint is chosen when none is named.
"""

from idp_ops.client.box import (
    Answer,
    AnswerStream,
    AnswerStreamError,
    AsyncAnswerStream,
    Box,
    BoxConnectionError,
    ServerAnswerError,
)
from idp_ops.client.choice import Choice, NoEndpointError, choose_endpoint, last_figures

__all__ = [
    "Answer",
    "AnswerStream",
    "AnswerStreamError",
    "AsyncAnswerStream",
    "Box",
    "BoxConnectionError",
    "Choice",
    "NoEndpointError",
    "ServerAnswerError",
    "choose_endpoint",
    "last_figures",
]
