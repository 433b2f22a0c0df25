"""Run a third-party load generator (`guidellm` or `vllm bench serve`) against FineServe.

Checks that our server is OpenAI-compatible enough for the tools others use. The tools are
never installed into the project's venv: point `--venv` at a side venv that has them (or put
them on PATH). When neither is found, the benchmark prints "skipped" and exits 0.

    python benchmarks/peer_bench.py [--tool guidellm|vllm|auto] [--venv /path/to/venv] [--json]

It makes a tiny FP16 model (its tokenizer is what the tools load), serves it with
`fineserve serve` on a free 127.0.0.1 port, runs a short bounded workload, and reports the
tool's exit status and the tail of its output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fineserve.server.launch import spawn_serve


def find_tool(name: str, venv: Path | None) -> str | None:
    exe = "guidellm" if name == "guidellm" else "vllm"
    if venv is not None and (venv / "bin" / exe).is_file():
        return str(venv / "bin" / exe)
    return shutil.which(exe)


def tool_command(tool: str, exe: str, url: str, model: str, tokenizer: Path) -> list[str]:
    if tool == "guidellm":  # guidellm >= 0.8 takes `run` with kind=... option groups
        return [exe, "run", "--backend", f"kind=openai_http,target={url},model={model}",
                "--profile", "kind=constant,rate=2", "--constraint",
                "kind=max_requests,count=20", "--data",
                "kind=synthetic_text,prompt_tokens=32,output_tokens=16", "--tokenizer",
                f"kind=hf_auto,model={tokenizer}",
                "--disable-console-interactive"]  # fmt: skip
    return [exe, "bench", "serve", "--backend", "openai", "--base-url", url, "--model", model,
            "--tokenizer", str(tokenizer), "--dataset-name", "random", "--random-input-len",
            "32", "--random-output-len", "16", "--num-prompts", "20",
            "--request-rate", "2"]  # fmt: skip


def serve(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    return spawn_serve(["--model", f"tiny={folder}", "--log-level", "warning"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", default="auto", choices=("auto", "guidellm", "vllm"))
    parser.add_argument("--venv", type=Path, default=None, help="side venv holding the tool")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    tools = ("guidellm", "vllm") if args.tool == "auto" else (args.tool,)
    found = [(t, exe) for t in tools if (exe := find_tool(t, args.venv))]
    if not found:
        print(json.dumps({"skipped": f"none of {tools} found"}) if args.json else "skipped")
        return 0
    tool, exe = found[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiny"
        subprocess.run([sys.executable, "-m", "fineserve.cli", "make-model", "--arch", "llama",
                        "--size", "tiny", "--precision", "fp16", "--out", str(folder)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        proc, url = serve(folder)
        try:
            start = time.monotonic()
            cmd = tool_command(tool, exe, url, "tiny", folder)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            wall = time.monotonic() - start
        finally:
            proc.terminate()
            proc.wait(30)
    result = {"tool": tool, "command": cmd, "returncode": done.returncode,
              "wall_s": round(wall, 1), "tail": (done.stdout + done.stderr)[-3000:]}  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else result["tail"])
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
