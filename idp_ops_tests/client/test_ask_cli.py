"""`idp-ops ask`: streamed text and the figures line against the real llama-server on both
protocols, the documented `--json` shape, and the exit codes (the scripted local server
stands in only for a server error)."""

from __future__ import annotations

import json
import sys

import pytest

from idp_ops.cli.main import main
from idp_ops_harness.fake_llm_server import FakeServer
from idp_ops_harness.ports import free_port
from idp_ops_harness.settings_files import write_settings

# The README's "Using the box from scripts" documents exactly these keys.
JSON_KEYS = {
    "text",
    "endpoint",
    "model",
    "protocol",
    "url",
    "ttft_ms",
    "e2e_ms",
    "tok_s",
    "tok_s_source",
    "output_tokens",
    "prompt_tokens",
    "attempts",
    "chosen_because",
    "skipped",
}


class _Writes:
    """sys.stdout that records each write: streamed text arrives in several writes, before the figures."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.writes)


@pytest.mark.docker
@pytest.mark.model
@pytest.mark.parametrize("name", ["openai-standin", "llamacpp-cpu"])
def test_ask_streams_the_answer_then_prints_the_figures(config_file, monkeypatch, name):
    out = _Writes()
    monkeypatch.setattr(sys, "stdout", out)
    code = main(
        ["--config", str(config_file), "ask", "Tell me about the moon.", "--endpoint", name, "--max-tokens", "24"]
    )
    monkeypatch.undo()
    assert code == 0
    assert out.text.endswith("\n")
    *answer, figures = out.text.rstrip("\n").split("\n")
    assert "".join(answer).strip(), "some text came"
    protocol = "openai" if name == "openai-standin" else "llamacpp"
    # — TTFT 123 ms, 41.0 tok/s, 24 tokens · llamacpp-cpu (llamacpp) · model gemma-3-270m
    assert figures.startswith("— TTFT ") and " ms, " in figures and " tok/s, " in figures
    assert figures.endswith(f" · {name} ({protocol}) · model gemma-3-270m")
    # streamed: the answer's text came in several writes before the figures line
    text_writes = out.writes[: out.writes.index("\n")] if "\n" in out.writes else out.writes
    assert len([w for w in text_writes if w]) >= 2


@pytest.mark.docker
@pytest.mark.model
def test_ask_json_is_one_object_of_the_documented_shape(config_file, capsys):
    code = main(["--config", str(config_file), "ask", "Tell me about the sun.", "--max-tokens", "16", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # one object, nothing streamed before it
    assert set(data) == JSON_KEYS
    assert data["text"].strip() and data["endpoint"] == "openai-standin" and data["model"] == "gemma-3-270m"
    assert data["protocol"] == "openai" and data["url"].startswith("http://127.0.0.1:")
    assert data["ttft_ms"] > 0 and data["e2e_ms"] >= data["ttft_ms"]
    assert data["tok_s"] > 0 and data["tok_s_source"] == "server"
    assert 1 <= data["output_tokens"] <= 16 and data["prompt_tokens"] > 3 and data["attempts"] == 1
    assert data["skipped"] == {"llamacpp-cpu": "fits, but comes later (no nightly figures)"}

    code = main(
        ["--config", str(config_file), "ask", "Hi.", "--endpoint", "llamacpp-cpu", "--max-tokens", "8", "--json"]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["endpoint"] == "llamacpp-cpu" and data["protocol"] == "llamacpp" and 1 <= data["output_tokens"] <= 8


@pytest.mark.docker
@pytest.mark.model
def test_ask_exit_codes_on_the_real_stack(config_file, capsys):
    assert main(["--config", str(config_file), "ask", "Hi.", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no endpoint can answer for model 'no-such-model'" in err
    assert "openai-standin: serves ['gemma-3-270m'], not 'no-such-model'" in err


def test_ask_exit_codes_for_bad_input_and_a_server_error(tmp_path, capsys):
    with FakeServer("http_500") as server:
        config = write_settings(
            tmp_path / "idp-ops.yaml",
            home=tmp_path / "home",
            endpoints=[
                {"name": "broken", "protocol": "openai", "url": server.url, "model": "m"},
                {"name": "dead", "protocol": "llamacpp", "url": f"http://127.0.0.1:{free_port()}", "model": "m"},
            ],
        )
        assert main(["--config", str(config), "ask", "Hi.", "--endpoint", "broken"]) == 1
        assert "idp-ops: broken answered HTTP 500" in capsys.readouterr().err
        assert len(server.requests) == 1
    assert main(["--config", str(config), "ask", "Hi.", "--endpoint", "nope"]) == 2
    assert "no endpoint named 'nope'; configured: ['broken', 'dead']" in capsys.readouterr().err
    assert main(["--config", str(config), "ask", " ", "--endpoint", "dead"]) == 2
    assert "the prompt is empty" in capsys.readouterr().err
    assert main(["--config", str(config), "ask", "Hi.", "--endpoint", "dead", "--json"]) == 2
    captured = capsys.readouterr()
    assert "could not be reached after 2 attempts" in captured.err and captured.out == ""
    assert "retrying once" in captured.err
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "ask", "Hi.", "--max-tokens", "0"])
    assert exited.value.code == 2
