"""The `kaito` command: one entry point for every part of the project.

Subcommands import their component lazily, so `kaito version` or `kaito dev up` work
with only the operator extra installed, and nothing here imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

from kaito import __version__

# Subcommands that hand the rest of the command line to a component's own main().
_COMPONENTS = {
    "controller": ("controller.__main__", "run the Workspace controller manager"),
    "provisioner": ("controller.provisioning.__main__",
                    "run the GPU node provisioner (NodeClaims become nodes)"),
    "webhook": ("webhook.__main__", "run the admission webhook server"),
    "serve": ("runtime.serving.__main__", "run the inference server (inside a pod)"),
    "tune": ("runtime.tuning.__main__", "run LoRA/QLoRA tuning (inside a pod)"),
    "fetch": ("runtime.fetch", "download tuning data URLs into a folder (inside a pod)"),
    "fetch-model": ("runtime.fetch_model", "download a model from Hugging Face (inside a pod)"),
    "pull-adapter": ("runtime.adapter_pull", "pull a LoRA adapter OCI artifact (inside a pod)"),
    "dashboard": ("kaito.dashboard", "print (or --write) the generated Grafana dashboard"),
}


def _component_main(module_name: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(module_name)
    return cast(Callable[[list[str]], int], module.main)


def _crds(args: argparse.Namespace) -> int:
    from pathlib import Path

    from crds.generate import render_crds, write_crds

    if args.write:
        for path in write_crds(Path(args.write)):
            print(path)
    else:
        sys.stdout.write(render_crds())
    return 0


def _dev(args: argparse.Namespace) -> int:
    from kaito.devcluster import devcli

    return devcli.run(args)


def _demo(args: argparse.Namespace) -> int:
    if args.kwok:
        from kaito import demo

        return demo.run(args)
    from kaito import realdemo

    return realdemo.run(args)


def _unavailable(reason: str) -> int:
    print(f"kaito: not available in this installation ({reason}); install the "
          "operator or dev extra", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaito", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print the version")

    crds = commands.add_parser("crds", help="print the generated CRD YAML")
    crds.add_argument("--write", metavar="DIR", nargs="?", const="config/crd/bases",
                      help="write one file per CRD into DIR instead (default config/crd/bases)")
    crds.set_defaults(handler=_crds)

    dev = commands.add_parser("dev", help="a local cluster (etcd, apiserver, kwok nodes)")
    demo_parser = commands.add_parser(
        "demo", help="the main job: the seed's quick start on real pods (needs root)")
    try:  # the local-cluster tools need the operator's packages (cryptography)
        from kaito import demo
        from kaito.devcluster import devcli
    except ImportError as err:  # the runtime image: its workload commands still work
        missing = str(err)
        for command in (dev, demo_parser):
            command.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            command.set_defaults(handler=lambda _args: _unavailable(missing))
    else:
        devcli.add_arguments(dev)
        dev.set_defaults(handler=_dev)
        demo.add_arguments(demo_parser)
        demo_parser.add_argument(
            "--kwok", action="store_true",
            help="the simulated variant: kwok nodes, the webhook and controller as local "
                 "processes, no images (no root needed)")
        demo_parser.set_defaults(handler=_demo)

    for name, (_, help_text) in _COMPONENTS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in _COMPONENTS:
        return _component_main(_COMPONENTS[arguments[0]][0])(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.command == "version":
        print(__version__)
        return 0
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
