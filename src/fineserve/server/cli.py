"""`fineserve serve`: the OpenAI-compatible server over the in-process engine.

    fineserve serve --model llama=/models/llama:slo_ttft=0.5,slo_tpot=0.1 --model qwen=/m/q
    fineserve serve --config deploy.yaml [--port 8000] [--api-key KEY]

Binds to 127.0.0.1 unless `--host` says otherwise. The API key comes from `--api-key` or the
environment variable `FINESERVE_API_KEY`. Ctrl-C (SIGINT) or SIGTERM drains in-flight requests
before exiting. `--backend sim` serves the simulated executor (instant tokens, no model files).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

API_KEY_ENV = "FINESERVE_API_KEY"
BACKENDS: dict[str, str] = {"inprocess": "torch executor in this process", "sim": "simulated"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="deploy YAML file")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH[:opts]",
        help="model to serve; opts: slo_ttft,slo_tpot,kv_dtype,dtype,max_queue",
    )
    parser.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help=f"require this key (or ${API_KEY_ENV})")
    parser.add_argument("--arena-mb", type=float, default=None, help="KV arena size in MiB")
    parser.add_argument("--policy", default=None, help="local scheduling policy (default saab)")
    parser.add_argument("--backend", default="inprocess", choices=tuple(BACKENDS))
    parser.add_argument("--drain-timeout", type=float, default=None, help="seconds (default 30)")
    parser.add_argument("--log-level", default="info")


def build_config(args: argparse.Namespace) -> Any:
    """The `ServeConfig` from a deploy file and/or `--model`s, with command-line overrides."""
    from fineserve.cli import CliError
    from fineserve.server.config import ServeConfig, load_deploy_file, parse_model_arg

    try:
        base = load_deploy_file(args.config) if args.config else None
        models = tuple(parse_model_arg(m) for m in args.model)
        if base is None:
            config = ServeConfig(models=models)
        else:
            config = replace(base, models=base.models + models)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "policy": args.policy,
        "drain_timeout_s": args.drain_timeout,
        "api_key": args.api_key or os.environ.get(API_KEY_ENV) or None,
        "arena_bytes": None if args.arena_mb is None else int(args.arena_mb * (1 << 20)),
    }
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def make_backend(config: Any, kind: str) -> Any:
    from fineserve.cli import CliError

    if kind == "sim":
        from fineserve.server.simulated import simulated_backend

        return simulated_backend(tuple(m.name for m in config.models))
    from fineserve.server.torch_backend import load_torch_backend

    try:
        return load_torch_backend(config)
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from fineserve.cli import CliError
    from fineserve.server.app import AppConfig, create_app
    from fineserve.server.launch import foreground_server, uvicorn_config

    if args.backend == "sim" and not args.model and not args.config:
        args.model = ["sim=."]
    config = build_config(args)
    if args.backend == "inprocess":
        missing = [str(m.path) for m in config.models if not Path(m.path).is_dir()]
        if missing:
            raise CliError(f"model folder(s) not found: {', '.join(missing)}")
    backend = make_backend(config, args.backend)
    app = create_app(
        backend, AppConfig(config.api_key, config.max_body_bytes, config.drain_timeout_s)
    )
    names = ", ".join(m.name for m in config.models)
    print(f"fineserve serve: {names} on http://{config.host}:{config.port}/v1", flush=True)
    server = foreground_server(
        uvicorn_config(
            app, config.host, config.port, config.drain_timeout_s, log_level=args.log_level
        )
    )
    server.run()
    return 0
