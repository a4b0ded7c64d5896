"""`make bench`: every benchmark, one table of same-run ratios, one results file.

Runs each benchmark script in its own process (a fresh interpreter each: torch, the
event loop and the allocator start clean), collects the rows each writes, prints them as
one Markdown table and writes ``benchmarks/results/<date>.json`` (``<date>-quick.json``
for ``--quick``) with the machine it ran on: CPU model, core count, torch's CPU
capability, package versions, load average. Exits non-zero when a benchmark failed
(the table still shows the others); a missed goal is reported, not a failure.

    python -m benchmarks.run [--quick] [--only webhook,serving] [--llama-cpp-python PATH]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CLUSTER_LOCK = "/tmp/kaito-cluster.lock"  # engineers sharing a machine take turns on ports
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "aiohttp",
            "httpx", "kubernetes_asyncio", "pydantic", "cryptography", "numpy")

# Arguments of each benchmark per size: "full" (`make bench`, under 30 minutes), "quick"
# (`make bench QUICK=1`, under 3 minutes) and "smoke" (the suite's tests/*/test_bench_*).
SIZES: dict[str, dict[str, list[str]]] = {
    "webhook": {
        "full": ["--requests", "20000", "--concurrency", "64", "--rounds", "3"],
        "quick": ["--requests", "1500", "--concurrency", "64", "--rounds", "3"],
        "smoke": ["--requests", "100", "--concurrency", "4", "--rounds", "1"]},
    "controller": {
        "full": ["--workspaces", "1000", "--repeat", "1", "--webhook-rate", "50",
                 "--webhook-idle-seconds", "20"],
        "quick": ["--workspaces", "40", "--repeat", "1", "--webhook-rate", "50",
                  "--webhook-idle-seconds", "5"],
        "smoke": ["--workspaces", "4", "--repeat", "1", "--webhook-rate", "20",
                  "--webhook-idle-seconds", "2"]},
    "tuning": {
        "full": ["--methods", "lora,qlora", "--batches", "1,8", "--steps", "6",
                 "--loss-steps", "50", "--packing-steps", "24", "--packing-batch", "4"],
        "quick": ["--methods", "lora", "--batches", "4", "--steps", "2", "--loss-steps", "5",
                  "--packing-steps", "4", "--distributed-steps", "4"],
        "smoke": ["--methods", "lora", "--batches", "2", "--steps", "2", "--rows", "24",
                  "--loss-steps", "3", "--packing-steps", "2", "--packing-batch", "2",
                  "--distributed-steps", "0"]},
    "serving": {
        "full": ["--clients", "1,4,16", "--max-tokens", "32", "--per-client", "1",
                 "--rounds", "3"],
        "quick": ["--clients", "1,4", "--max-tokens", "16", "--per-client", "1",
                  "--rounds", "1"],
        "smoke": ["--clients", "1,2", "--max-tokens", "4", "--per-client", "1",
                  "--rounds", "1"]},
}
MODULES = {"webhook": "benchmarks.webhook_latency", "controller": "benchmarks.controller_bench",
           "serving": "benchmarks.serving_bench", "tuning": "benchmarks.tuning_bench"}
NEEDS_CLUSTER = {"controller"}


def machine() -> dict[str, Any]:
    cpu_model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    from runtime.precision import cpu_capability

    capability = cpu_capability()
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu_model": cpu_model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30, 1),
            "torch_cpu_capability": capability.name,
            "native_bfloat16": capability.has_native_bfloat16,
            "capability_forced": capability.is_forced,
            "python": platform.python_version(), "kernel": platform.release(),
            "packages": versions}


def _git_commit() -> str:
    result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def _llama_cpp_version(python: str) -> str | None:
    result = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def run_one(name: str, args: list[str], workdir: Path) -> dict[str, Any]:
    """One benchmark in a child process; its output streams through to the terminal."""
    out = workdir / f"{name}.json"
    command = [sys.executable, "-m", MODULES[name], *args, "--json", str(out)]
    # A cluster of its own takes ports: wait for the other engineers' cluster runs.
    if name in NEEDS_CLUSTER and "--kubeconfig" not in args and shutil.which("flock"):
        command = ["flock", CLUSTER_LOCK, *command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print(f"\n==> {name}: {' '.join(command[command.index('-m') + 1:])}", flush=True)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=REPO, env=env, check=False)
    seconds = round(time.monotonic() - started, 1)
    if completed.returncode != 0 or not out.exists():
        return {"error": f"exit code {completed.returncode}", "seconds": seconds}
    document: dict[str, Any] = json.loads(out.read_text())
    document["seconds"] = seconds
    return document


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| Benchmark | Measure | Ours | Reference (same run) | Ratio | Goal | Met |",
             "|---|---|---|---|---|---|---|"]
    for name in sorted(results, key=list(MODULES).index):
        result = results[name]
        if "error" in result:
            lines.append(f"| {name} | failed: {result['error']} | | | | | |")
            continue
        for r in result["rows"]:
            met = {True: "yes", False: "no", None: ""}[r["is_goal_met"]]
            lines.append(
                f"| {r['benchmark']} | {r['measure']} | {_number(r['ours'])} {r['unit']} | "
                f"{r['reference_name']}: {_number(r['reference'])} {r['unit']} | "
                f"{r['ratio']:.2f}× | {r['goal'] or ''} | {met} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes (under 3 minutes)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes (the suite's smoke runs)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(MODULES)}")
    parser.add_argument("--llama-cpp-python",
                        help="python of the venv with llama-cpp-python[server] "
                             "(benchmarks/venv.sh); without it the serving benchmark "
                             "has no llama.cpp rows")
    parser.add_argument("--kubeconfig", help="controller benchmark: use this cluster instead "
                                             "of starting one")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(MODULES)
    unknown = set(names) - set(MODULES)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}")
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.monotonic()
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    info = machine()
    if args.llama_cpp_python:
        info["packages"]["llama-cpp-python"] = _llama_cpp_version(args.llama_cpp_python)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if mode == "full" else f"-{mode}"
    path = args.results_dir / f"{started_at:%Y-%m-%d}{suffix}.json"
    document: dict[str, Any] = {
        "date": started_at.isoformat(timespec="seconds"), "mode": mode,
        "commit": _git_commit(), "machine": info, "benchmarks": results}

    def save() -> None:
        """After every benchmark, so an interrupted run keeps what it measured."""
        document["load_average_1m"] = {"before": round(load_before[0], 2),
                                       "after": round(os.getloadavg()[0], 2)}
        document["seconds"] = round(time.monotonic() - started, 1)
        path.write_text(json.dumps(document, indent=2) + "\n")

    if args.only and path.exists():
        # A partial rerun (--only) updates its benchmarks in the day's file and keeps the
        # others as they were measured (each result carries its own date and commit).
        earlier = json.loads(path.read_text())
        if earlier.get("mode") == mode:
            for name, result in earlier.get("benchmarks", {}).items():
                if name not in names:
                    result.setdefault("date", earlier.get("date"))
                    result.setdefault("commit", earlier.get("commit"))
                    results[name] = result
    with tempfile.TemporaryDirectory(prefix="kaito-bench-") as workdir:
        for name in names:
            bench_args = list(SIZES[name][mode])
            if name == "serving" and args.llama_cpp_python:
                bench_args += ["--llama-cpp-python", args.llama_cpp_python]
            if name == "controller" and args.kubeconfig:
                bench_args += ["--kubeconfig", args.kubeconfig]
            results[name] = run_one(name, bench_args, Path(workdir))
            results[name]["date"] = datetime.datetime.now(datetime.UTC).isoformat(
                timespec="seconds")
            results[name]["commit"] = document["commit"]
            save()
    print(f"\n{document['mode']} run {started_at:%Y-%m-%d %H:%M} UTC, commit "
          f"{document['commit']}, {info['cpu_model']}, {info['cores_usable']} cores, "
          f"torch CPU capability {info['torch_cpu_capability']}, "
          f"{document['seconds']:.0f} s, load average {load_before[0]:.1f} before\n")
    print(table(results))
    print(f"\nresults: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 1 if any("error" in results[name] for name in names) else 0


if __name__ == "__main__":
    sys.exit(main())
