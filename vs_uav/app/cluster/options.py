"""The cluster's options and its connection: ``--cluster`` and the rest checked, Ray imported,
started (``local``, on 127.0.0.1) or joined (with this machine's token when the cluster asks)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from vs_uav.errors import UavError, one_line
from vs_uav.untrusted import is_ascii_digits

if TYPE_CHECKING:
    from vs_uav.settings import UpscaleSettings

logger = logging.getLogger(__name__)

LOCAL = "local"
DEFAULT_SEGMENT_SECONDS = 60.0


class ClusterError(UavError, RuntimeError):
    """A cluster render that cannot go on; the message is one line naming what and why."""


def ray_available() -> Optional[str]:
    """Ray's version when it is installed, else None (``uav doctor``); imports nothing heavy."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class ClusterOptions:
    """``--cluster``, ``--workers``, ``--segment-seconds``, ``--split-long``, ``--keep-work``."""

    address: str = LOCAL  # 'local' (a Ray instance on this machine, loopback only), HOST:PORT or ray://HOST:PORT
    workers: Optional[int] = None  # CPU workers; None: one per GPU of the cluster, else one
    segment_seconds: float = DEFAULT_SEGMENT_SECONDS
    split_long: float = 0.0  # seconds; 0: a scene is never split
    keep_work: bool = False

    def __post_init__(self) -> None:
        address = self.address.strip()
        if address != LOCAL:
            host, _, port = address.removeprefix("ray://").rpartition(":")
            if not host or not is_ascii_digits(port) or not 0 < int(port) < 65536:
                raise ValueError(f"--cluster {self.address!r}: accepted: 'local', HOST:PORT (a Ray cluster's "
                                 "address, e.g. 10.0.0.5:6379) or ray://HOST:PORT")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"--workers {self.workers!r}: accepted: an integer >= 1")
        for name, value, least in (("--segment-seconds", self.segment_seconds, "> 0"),
                                   ("--split-long", self.split_long, ">= 0 (0: never)")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (value == 0 and name == "--segment-seconds"):
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                raise ValueError(f"{name} {shown}: accepted: a number of seconds {least}")

    @property
    def loopback(self) -> bool:
        """Whether the cluster is on this machine only (then Ray binds to 127.0.0.1)."""
        host = self.address.removeprefix("ray://").rpartition(":")[0].strip("[]")
        return self.address == LOCAL or host in ("127.0.0.1", "localhost", "::1")


def default_address() -> str:
    """The cluster a bare ``--cluster`` reaches: ``$RAY_ADDRESS`` (Ray's own convention) when
    set, else 'local'."""
    return os.environ.get("RAY_ADDRESS", "").strip() or LOCAL


def driver_settings(settings: "UpscaleSettings") -> "UpscaleSettings":
    """``settings`` with what this process's environment decides made explicit, for the script
    every worker runs: the model folder (``$UAV_MODEL_DIR``, else the user data folder, when not
    given) and ``cache_dir`` as absolute paths. A worker on another node has its own environment,
    home and current folder; these name the driver's (on storage every node sees)."""
    from vs_uav.media.script import absolute
    from vs_uav.weights.folder import default_model_dir

    model = absolute(settings.model or default_model_dir())
    cache = str(absolute(settings.cache_dir)) if settings.cache_dir else ""
    return settings.replace(model=str(model), cache_dir=cache)


def local_cpus() -> int:
    """The cores this process may run on (``taskset`` and container limits count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- Ray: imported, started or joined -----------------------------------------------------------

def import_ray(options: ClusterOptions):
    if options.loopback:
        # A cluster on this machine stays on the loopback interface (Ray otherwise binds to the
        # machine's network address), and sends no usage statistics. Read when Ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.address == LOCAL:  # the instance we start requires Ray's token (said, so Ray does not warn)
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray, which is not installed; install it with "
                           "pip install 'vs-uav[cluster]' (or make setup)") from None
    return ray


def auth_token() -> str:
    """Where Ray finds this machine's authentication token, in words ('' when it has none):
    ``$RAY_AUTH_TOKEN``, the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` (Ray's order)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = os.path.expanduser(os.environ.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")
    try:
        return path if Path(path).read_text(encoding="utf-8").strip() else ""
    except (OSError, UnicodeDecodeError):
        return ""


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: Ray's C++ client logs its retries there, not to logging."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_answers(options: ClusterOptions) -> None:
    """A running cluster at ``options.address`` that lets this machine in, or a ClusterError
    saying what to set: a closed port or a missing token would otherwise cost ray.init 20 to 40
    s of warnings and end in "Failed to connect". A cluster with Ray's token authentication (what
    `ray start --head` turns on by default when its machine has a token) is joined with this
    machine's token: ray.init with an address never turns it on by itself, and a driver in token
    mode cannot run actors on a cluster without it, so the cluster is asked first."""
    import socket

    host, _, port = options.address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"--cluster {options.address}: nothing answers there ({e.strerror or e}); accepted: the "
                           "address of a running Ray cluster (`ray start --head` prints it)") from None
    mode = os.environ.get("RAY_AUTH_MODE", "")
    if not _refused(options.address):
        return
    if not mode and auth_token():
        # Ray has no public switch for this process's auth mode yet: its own helper, as `ray start` uses.
        from ray._private.authentication.authentication_token_setup import _enable_token_auth

        _enable_token_auth()  # RAY_AUTH_MODE=token, for this process's Ray too
        if not _refused(options.address):
            return
    where = auth_token()
    has = (f"RAY_AUTH_MODE={mode} here" if mode.lower() not in ("", "token") else
           f"the token in {where} is not the cluster's" if where else "this machine has no token")
    raise ClusterError(f"--cluster {options.address}: the cluster uses Ray's token authentication and {has}; "
                       "accepted: the head's token (`ray get-auth-token` prints it there) in ~/.ray/auth_token "
                       "here, or in RAY_AUTH_TOKEN")


def _refused(address: str) -> bool:
    """Whether the cluster's GCS refuses this process's credentials (Ray's current auth mode);
    any other failure is left to ray.init, which meets it again and says it."""
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _quiet_stderr():
            GcsClient(address=address)
    except AuthenticationError:
        return True
    except Exception as e:  # noqa: BLE001 - not an answer about credentials: ray.init says it in one line
        logger.debug("cluster: asking %s for its auth mode failed (%s); left to ray.init", address, one_line(e))
    return False


@contextlib.contextmanager
def connected(ray, options: ClusterOptions) -> Iterator[bool]:
    """Ray started (``local``) or joined; yields whether it was already up in this process."""
    if ray.is_initialized():
        yield True
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING, "configure_logging": False}
    try:
        if options.address == LOCAL:
            cpus = max(local_cpus(), options.workers or 1)
            # address='local': a new instance, never one a previous `ray start` left running.
            ray.init(address="local", num_cpus=cpus, object_store_memory=256 * 2**20, **kwargs)
        else:
            if not options.address.startswith("ray://"):
                _check_answers(options)
            ray.init(address=options.address, **kwargs)
    except ClusterError:
        raise
    except Exception as e:  # ConnectionError, RuntimeError, ValueError: Ray's own, for any address
        what = "start" if options.address == LOCAL else "connect"
        raise ClusterError(f"--cluster {options.address}: Ray could not {what} "
                           f"({one_line(e)})") from None
    try:
        yield False
    finally:
        ray.shutdown()
