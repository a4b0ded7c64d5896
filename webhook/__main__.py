"""`python -m webhook` / `kaito webhook`: the HTTPS admission server for Workspaces.

Settings come from KAITO_WEBHOOK_* environment variables; flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from pydantic import ValidationError

from crds.logs import configure_logging
from webhook.serve import serve
from webhook.settings import WebhookSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaito webhook", description=__doc__)
    add = parser.add_argument
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=int, help="HTTPS port (default 9443)")
    add("--namespace", help="namespace of the certificate Secret and the Service")
    add("--service-name", help="Service name put into the certificate's DNS names")
    add("--secret-name", help="Secret holding the CA and serving certificate")
    add("--mutating-configuration", help="MutatingWebhookConfiguration to patch caBundle into")
    add("--validating-configuration",
        help="ValidatingWebhookConfiguration to patch caBundle into")
    add("--cert-mode", choices=["self-signed", "files"],
        help="make certificates (self-signed) or serve given files (files)")
    add("--cert-file", help="serving certificate (cert mode files)")
    add("--key-file", help="serving key (cert mode files)")
    add("--cert-dir", help="where the self-signed pair is written for TLS")
    add("--dns-name", dest="extra_dns_names", action="append",
        help="extra DNS SAN (repeatable)")
    add("--ip-address", dest="ip_addresses", action="append", help="IP SAN (repeatable)")
    add("--renew-before-days", type=float, help="renew certificates this long before expiry")
    add("--check-interval-seconds", type=float, help="how often certificates are checked")
    add("--kubeconfig", help="kubeconfig file (in-cluster config when unset)")
    add("--fetch-allow-cidr", dest="fetch_allow_cidrs", action="append", metavar="CIDR",
        help="a non-public network tuning input URLs may point at (repeatable)")
    add("--log-level", help="DEBUG, INFO, WARNING, ...")
    add("--log-format", choices=["json", "text"], help="log format (default json)")
    return parser


def _settings(argv: list[str] | None) -> WebhookSettings:
    args = vars(_parser().parse_args(argv))
    overrides: dict[str, Any] = {k: v for k, v in args.items() if v is not None}
    return WebhookSettings(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Runs the webhook until SIGTERM/SIGINT; returns the exit status."""
    try:
        settings = _settings(argv)
    except ValidationError as error:
        configure_logging()  # the settings that choose the layout are what failed
        logging.getLogger("webhook").error("invalid settings", extra={"error": str(error)})
        return 2
    configure_logging(settings.log_level, settings.log_format)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, stop)

    try:
        asyncio.run(run())
    except (ValueError, OSError) as error:
        logging.getLogger("webhook").error("webhook failed to start", extra={"error": str(error)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
