"""Globus Compute: the SDK's Executor for an endpoint, with errors that say what to do.

Everything eqflow sends through an Executor is a module-level function of an eqflow module
(``eqflow.gc_queue.gc_run_op``, ``eqflow.workers.launchers.remote_start`` etc.) with plain
data arguments (str, int, float, None, dict, list), so the SDK's default strategies
serialize the functions by reference and the endpoint imports them from its own eqflow.

What ``globus_compute_sdk.Executor(endpoint_id=...)`` does when built (SDK 4.x): it makes a
``Client()``, which checks the SDK version against the web service. That request needs a
Globus login, so without stored tokens (``~/.globus_compute/storage.db``) or client
credentials (``GLOBUS_COMPUTE_CLIENT_ID``/``GLOBUS_COMPUTE_CLIENT_SECRET``) the SDK starts
its command-line login: on a terminal it prints a URL and waits for the code; without one
it raises an EOFError at once. With credentials it contacts auth.globus.org and the service,
and raises a network error when they cannot be reached. ``globus_executor`` turns these into
a ConfigError that says what to do.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Executor
from types import ModuleType
from typing import Any

from eqflow.errors import ConfigError

INSTALL_HINT = "pip install 'eqflow[globus]'"
LOGIN_HINT = (
    "Globus Compute needs a Globus login and this process cannot ask for one (stdin is not a terminal). "
    "Log in once from a terminal: python -c 'from globus_compute_sdk import Client; Client()' "
    "(tokens are kept under ~/.globus_compute), or set GLOBUS_COMPUTE_CLIENT_ID and "
    "GLOBUS_COMPUTE_CLIENT_SECRET to use a confidential client."
)


def require_sdk(what: str = "Globus Compute") -> ModuleType:
    """``globus_compute_sdk``, or a ConfigError naming the extra to install."""
    try:
        import globus_compute_sdk  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(f"{what} needs globus-compute-sdk: {INSTALL_HINT}") from None
    return globus_compute_sdk


def check_endpoint_id(endpoint_id: Any) -> str:
    """The endpoint id as a canonical UUID string; a ConfigError for anything else."""
    try:
        return str(uuid.UUID(str(endpoint_id)))
    except ValueError:
        raise ConfigError(f"a Globus Compute endpoint id is a UUID, got {endpoint_id!r}") from None


def globus_executor(endpoint_id: str, *, client: Any = None, **options: Any) -> Executor:
    """``globus_compute_sdk.Executor`` for ``endpoint_id`` (checked to be a UUID first, offline).

    ``client`` (a ``globus_compute_sdk.Client``) and ``options`` (e.g. ``label``,
    ``batch_size``, ``user_endpoint_config``) go to the Executor as they are. Raises
    ConfigError when the SDK is missing, no login is available, or the service cannot be
    reached; the SDK's own exception is chained.
    """
    endpoint = check_endpoint_id(endpoint_id)
    sdk = require_sdk()
    import globus_sdk

    try:
        executor: Executor = sdk.Executor(endpoint_id=endpoint, client=client, **options)
    except EOFError as exc:  # the SDK's CommandLineLoginFlowEOFError: no tokens, no terminal
        raise ConfigError(LOGIN_HINT) from exc
    except globus_sdk.NetworkError as exc:
        raise ConfigError(f"cannot reach Globus Compute to build the executor for endpoint {endpoint}: {exc}. "
                          "Check the network (or proxy) of this machine.") from exc
    except globus_sdk.GlobusAPIError as exc:
        raise ConfigError(f"Globus refused the executor for endpoint {endpoint}: {exc}") from exc
    return executor
