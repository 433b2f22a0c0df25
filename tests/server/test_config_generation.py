"""Model arguments, deploy files, the serve CLI's config, stop strings and detokenizing."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fineserve.server import cli as serve_cli
from fineserve.server.backend import Delta, ModelInfo
from fineserve.server.codec import IncrementalDetokenizer, TextCodec
from fineserve.server.config import ServeConfig, config_from_dict, parse_model_arg
from fineserve.server.errors import APIError
from fineserve.server.generation import TextGeneration
from fineserve.server.simulated import TOY_TEMPLATE, WordTokenizer

CODEC = TextCodec(WordTokenizer(), TOY_TEMPLATE, {})


def test_model_argument_with_slos_and_options() -> None:
    m = parse_model_arg("llama=/m/llama:slo_ttft=0.5,slo_tpot=0.1,kv_dtype=fp8,max_queue=8")
    assert (m.name, m.path, m.slo_ttft_s, m.slo_tpot_s) == ("llama", Path("/m/llama"), 0.5, 0.1)
    assert (m.kv_dtype, m.max_queue) == ("fp8", 8)
    assert parse_model_arg("a=/x").slo_ttft_s is None
    for bad in ("nopath", "=/x", "a=/x:slo_ttft", "a=/x:bogus=1", "a=/x:slo_ttft=-1"):
        with pytest.raises(ValueError):
            parse_model_arg(bad)


def test_deploy_mapping_and_unique_names(tmp_path: Path) -> None:
    cfg = config_from_dict(
        {"port": 9000, "arena_mb": 2, "models": [{"name": "a", "path": "rel", "slo_ttft": 1}]},
        base=tmp_path,
    )
    assert cfg.port == 9000 and cfg.arena_bytes == 2 << 20 and cfg.host == "127.0.0.1"
    assert cfg.models[0].path == tmp_path / "rel" and cfg.models[0].slo_ttft_s == 1.0
    with pytest.raises(ValueError, match="unique"):
        ServeConfig(models=(parse_model_arg("a=/x"), parse_model_arg("a=/y")))
    with pytest.raises(ValueError, match="models"):
        config_from_dict({"models": "nope"})


def test_serve_cli_config_from_file_flags_and_env(tmp_path: Path, monkeypatch) -> None:
    deploy = tmp_path / "deploy.yaml"
    deploy.write_text("models:\n  - {name: a, path: ma}\nport: 8100\n")
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    monkeypatch.setenv(serve_cli.API_KEY_ENV, "env-key")
    args = parser.parse_args(["--config", str(deploy), "--model", "b=/mb", "--arena-mb", "4"])
    cfg = serve_cli.build_config(args)
    assert [m.name for m in cfg.models] == ["a", "b"] and cfg.port == 8100
    assert cfg.api_key == "env-key" and cfg.arena_bytes == 4 << 20 and cfg.host == "127.0.0.1"


def test_detokenizer_deltas_add_up() -> None:
    detok = IncrementalDetokenizer(CODEC)
    text = "".join(detok.push([i]) for i in (5, 17, 3))
    assert text == CODEC.decode([5, 17, 3]) == " w5 w17 w3"


async def _deltas(groups: list[tuple[int, ...]]) -> AsyncIterator[Delta]:
    for i, ids in enumerate(groups):
        last = i == len(groups) - 1
        yield Delta(ids, finished=last, finish_reason="length" if last else None)


def _run(groups: list[tuple[int, ...]], stop: tuple[str, ...]) -> tuple[str, str | None, int]:
    info = ModelInfo("m", 100, CODEC)

    async def main() -> tuple[str, str | None, int]:
        gen = TextGeneration(None, info, "r", _deltas(groups), stop, 2)  # type: ignore[arg-type]
        text = "".join([p.text async for p in gen.pieces()])
        return text, gen.finish_reason, gen.completion_tokens

    return asyncio.run(main())


def test_stop_strings_cut_and_are_never_returned() -> None:
    assert _run([(1,), (2,), (3,)], ()) == (" w1 w2 w3", "length", 3)
    assert _run([(1,), (22,), (3,)], ("w2",)) == (" w1 ", "stop", 2)
    assert _run([(1,), (22,), (3,)], (" w22 w",)) == (" w1", "stop", 3)
    assert _run([(1,), (2,)], ("w9",)) == (" w1 w2", "length", 2)


def test_rejected_before_any_token_is_a_429() -> None:
    async def rejected() -> AsyncIterator[Delta]:
        yield Delta((), finished=True, finish_reason="rejected", error="cannot meet SLO")

    async def main() -> None:
        gen = TextGeneration(None, ModelInfo("m", 10, CODEC), "r", rejected(), (), 1)  # type: ignore[arg-type]
        with pytest.raises(APIError) as info:
            [p async for p in gen.pieces()]
        assert info.value.status == 429 and info.value.headers()["Retry-After"] == "1"

    asyncio.run(main())


def test_chat_template_renders_messages() -> None:
    text = CODEC.render_chat([{"role": "user", "content": "hi"}])
    assert text == "<user> hi <assistant>"
