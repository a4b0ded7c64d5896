"""Logging of the operator's processes (controller, provisioner, webhook).

The layout itself is ``crds.logs``, shared with the runtimes (which may not import
``kaito``); this module keeps the operator's import path.
"""

from __future__ import annotations

from crds.logs import JsonFormatter, TextFormatter, configure_logging

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]
