"""`fineserve serve`: the OpenAI-compatible server over the in-process engine.

    fineserve serve --model llama=/models/llama:slo_ttft=0.5,slo_tpot=0.1 --model qwen=/m/q
    fineserve serve --config deploy.yaml [--port 8000] [--api-key KEY]
    fineserve serve --placement placement.yaml [--backend inprocess|ray] [--ray-address ADDR]

With `--placement` (a file from `fineserve plan --out`), every GPU group of the placement
becomes one worker hosting its co-located models, in this process (`inprocess`) or as a Ray
actor (`ray`; `--ray-address` joins a running cluster), behind the cluster gateway, which routes
each request by model name; `--model` and `--config` then do not apply. Binds to 127.0.0.1
unless `--host` says otherwise. The API key comes from `--api-key` or the
environment variable `FINESERVE_API_KEY`. Ctrl-C (SIGINT) or SIGTERM drains in-flight requests
before exiting. `--backend sim` serves the simulated executor (instant tokens, no model files).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

API_KEY_ENV = "FINESERVE_API_KEY"
BACKENDS: dict[str, str] = {
    "inprocess": "torch executor in this process",
    "ray": "one Ray actor per GPU group of --placement",
    "sim": "simulated executor (instant tokens, no model files)",
}


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
    parser.add_argument(
        "--placement", type=Path, default=None, help="placement file from `fineserve plan --out`"
    )
    parser.add_argument(
        "--backend", default="inprocess", metavar="|".join(BACKENDS), help="(default inprocess)"
    )
    parser.add_argument("--ray-address", default=None, help="join this Ray cluster (--backend ray)")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=1.0,
        help="seconds between worker pings (--placement)",
    )
    parser.add_argument("--drain-timeout", type=float, default=None, help="seconds (default 30)")
    parser.add_argument("--log-level", default="info")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line knobs that were given (None = not given)."""
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "policy": args.policy,
        "drain_timeout_s": args.drain_timeout,
        "api_key": args.api_key or os.environ.get(API_KEY_ENV) or None,
        "arena_bytes": None if args.arena_mb is None else int(args.arena_mb * (1 << 20)),
    }
    return {k: v for k, v in overrides.items() if v is not None}


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
    return replace(config, **_overrides(args))


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


@dataclass
class Serving:
    """What `fineserve serve` runs: the app, its backend, its config, a banner to print."""

    app: Any
    backend: Any
    config: Any
    banner: list[str]


def _check_backend(args: argparse.Namespace) -> None:
    from fineserve.cli import CliError

    if args.backend not in BACKENDS:
        raise CliError(f"unknown backend {args.backend!r}; choose one of {', '.join(BACKENDS)}")
    if args.placement is None and args.backend == "ray":
        raise CliError("--backend ray serves a placement: add --placement FILE")
    if args.placement is not None and (args.model or args.config):
        raise CliError("--placement names the models: drop --model/--config")
    if args.ray_address and args.backend != "ray":
        raise CliError("--ray-address needs --backend ray")
    if not args.health_interval > 0:
        raise CliError("--health-interval must be > 0")


def placement_backend(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """The cluster gateway over `--placement`, its base config, and banner lines."""
    from fineserve.cli import CliError
    from fineserve.cluster import build_gateway, init_ray
    from fineserve.cluster.serve import describe, load_served_placement, serve_config

    sim = args.backend == "sim"
    try:
        placement = load_served_placement(args.placement, check_folders=not sim)
        config = serve_config(placement, **_overrides(args))
    except (ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    if args.backend == "ray":
        try:
            init_ray(args.ray_address)
        except Exception as exc:  # Ray's connection errors have no common base
            raise CliError(f"cannot start or join Ray: {exc}") from None
    try:
        gateway = build_gateway(
            placement,
            backend="ray" if args.backend == "ray" else "inprocess",
            kind="sim" if sim else "torch",
            base=config,
            health_interval_s=args.health_interval,
        )
        gateway.models()  # every worker's engine is up (Ray: loaded in parallel)
    except (ValueError, OSError, RuntimeError) as exc:
        raise CliError(str(exc)) from None
    return gateway, config, [f"{args.placement} ({args.backend}):", *describe(placement)]


def build_serving(args: argparse.Namespace) -> Serving:
    """Everything `run` serves, without serving it (tests use this with `LiveServer`)."""
    from fineserve.cli import CliError
    from fineserve.server.app import AppConfig, create_app

    _check_backend(args)
    if args.placement is not None:
        backend, config, banner = placement_backend(args)
    else:
        if args.backend == "sim" and not args.model and not args.config:
            args.model = ["sim=."]
        config = build_config(args)
        if args.backend == "inprocess":
            missing = [str(m.path) for m in config.models if not Path(m.path).is_dir()]
            if missing:
                raise CliError(f"model folder(s) not found: {', '.join(missing)}")
        backend, banner = make_backend(config, args.backend), []
    app = create_app(
        backend, AppConfig(config.api_key, config.max_body_bytes, config.drain_timeout_s)
    )
    names = ", ".join(m.name for m in backend.models())
    banner.insert(0, f"fineserve serve: {names} on http://{config.host}:{config.port}/v1")
    return Serving(app, backend, config, banner)


def run(args: argparse.Namespace) -> int:
    from fineserve.server.launch import foreground_server, uvicorn_config

    serving = build_serving(args)
    config = serving.config
    print("\n".join(serving.banner), flush=True)
    server = foreground_server(
        uvicorn_config(
            serving.app, config.host, config.port, config.drain_timeout_s, log_level=args.log_level
        )
    )
    server.run()
    return 0
