"""The northbound HTTP API: one ASGI app served on the HTTP and HTTPS ports."""

from fleetbatch.api.app import Phase, create_app, get_runtime, set_phase

__all__ = ["Phase", "create_app", "get_runtime", "set_phase"]
