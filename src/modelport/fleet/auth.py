"""Token authentication of the fleet's Ray cluster: on by default, one token file per fleet, never ``~/.ray``.

A Ray cluster without authentication runs code for anyone who reaches its ports. Ray (2.5x+) checks a shared token
on every gRPC call when ``RAY_AUTH_MODE=token``; each process reads it from ``RAY_AUTH_TOKEN_PATH`` (or
``RAY_AUTH_TOKEN``, or ``~/.ray/auth_token``). modelport always says which file: the head's token is
``$MODELPORT_HOME/fleet/auth_token`` (or ``--token-file``), written 0600 by ``modelport fleet head``; every other
machine is given a copy with ``--token-file``; ``--cluster auto`` makes a private token for the run in a private
temporary folder. Ray's own ``~/.ray/auth_token`` is never read or written: it is how a stale token once leaked
into every later local cluster on a machine.

Before Ray connects, ``check_token`` asks the head's GCS for its cluster id with the token (one gRPC call, well
under a second): a refused token is one paragraph naming the token file tried, instead of Ray's 20 s retry loop
that ends in "Failed to connect".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelport.errors import InputError, RuntimeUnavailableError

TOKEN_FILE_ENV = "MODELPORT_FLEET_TOKEN_FILE"
TOKEN_NAME = "auth_token"
RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
PREFLIGHT_TIMEOUT_S = 5.0
NO_AUTH_WARNING = ("the fleet runs WITHOUT authentication (--no-auth): anyone who can reach its ports can run code on "
                   "every node. Use it only on a private network you trust.")


def default_token_path() -> Path:
    """``$MODELPORT_HOME/fleet/auth_token`` (the same home as the trust store; see ``core.trust.home``)."""
    from modelport.core.trust import home

    return home() / "fleet" / TOKEN_NAME


@dataclass(frozen=True)
class FleetAuth:
    """How this process authenticates to the fleet: a token file, or explicitly none (``--no-auth``)."""

    token_file: Path | None
    source: str  # what chose it, for messages: "--token-file", "$MODELPORT_FLEET_TOKEN_FILE", "default", …

    @property
    def disabled(self) -> bool:
        return self.token_file is None

    def describe(self) -> str:
        if self.disabled:
            return "no token (--no-auth)"
        return f"the token in {self.token_file} ({self.source})"

    def env(self) -> dict[str, str]:
        """The Ray variables a process (this one, ``ray start``, Ray's workers) needs for this choice."""
        if self.disabled:
            return {"RAY_AUTH_MODE": "disabled"}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}

    def token(self) -> str | None:
        return None if self.token_file is None else read_token(self.token_file)


def create_token_file(path: Path) -> Path:
    """A new random token in ``path`` (mode 0600, its folder 0700 when modelport creates it); refuses to replace."""
    path = Path(path).expanduser().absolute()
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise InputError(f"Token file {path} already exists.", fix="pass it as it is, or another path.") from exc
    except OSError as exc:
        raise InputError(f"Cannot write the fleet token {path}: {exc.strerror}.",
                         fix="pass --token-file a path in a folder you can write.") from exc
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def read_token(path: Path) -> str:
    """The token in ``path``, or one paragraph saying what is wrong with the file."""
    path = Path(path)
    try:
        st = path.stat()
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as exc:
        raise InputError(f"Fleet token file {path} does not exist.",
                         fix="copy the token file 'modelport fleet head' printed to this machine and pass "
                             "--token-file FILE.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the fleet token file {path}: {exc}.",
                         fix="pass --token-file the file 'modelport fleet head' wrote.") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"Fleet token {path} is not a regular file.", fix="pass --token-file a file.")
    if st.st_mode & 0o077:
        raise InputError(f"Fleet token file {path} can be read by other users (mode {stat.S_IMODE(st.st_mode):o}).",
                         fix=f"chmod 600 {path}")
    if len(text) < 32 or any(c.isspace() for c in text):
        raise InputError(f"Fleet token file {path} holds no token (empty, short or several words).",
                         fix="pass the file 'modelport fleet head' wrote, or delete it and start the head again.")
    return text


def for_head(token_file: Path | None = None, *, no_auth: bool = False) -> tuple[FleetAuth, bool]:
    """The head's token: ``token_file`` or the default path, created when missing. Returns (auth, created)."""
    if no_auth:
        if token_file is not None:
            raise InputError("--no-auth and --token-file contradict each other.", fix="pass one of them.")
        return FleetAuth(None, "--no-auth"), False
    path = Path(token_file).expanduser().absolute() if token_file else default_token_path()
    source = "--token-file" if token_file else "default"
    created = False
    if not path.exists():
        create_token_file(path)
        created = True
    read_token(path)  # a file that exists must be a good one
    return FleetAuth(path, source), created


def for_client(token_file: Path | None = None, *, no_auth: bool = False) -> FleetAuth:
    """The token a joining node or a client uses: ``--token-file``, else ``$MODELPORT_FLEET_TOKEN_FILE``, else the
    default path (this machine is the head, or the file was copied there); none of them is one paragraph."""
    if no_auth:
        if token_file is not None:
            raise InputError("--no-auth and --token-file contradict each other.", fix="pass one of them.")
        return FleetAuth(None, "--no-auth")
    if token_file is not None:
        path, source = Path(token_file).expanduser().absolute(), "--token-file"
    elif os.environ.get(TOKEN_FILE_ENV):
        path, source = Path(os.environ[TOKEN_FILE_ENV]).expanduser().absolute(), f"${TOKEN_FILE_ENV}"
    else:
        path, source = default_token_path(), "default"
        if not path.exists():
            raise InputError(
                f"No fleet token: --token-file was not given, ${TOKEN_FILE_ENV} is not set, and the default "
                f"{path} does not exist.",
                fix="copy the token file 'modelport fleet head' printed to this machine and pass --token-file FILE "
                    "(for a head started with --no-auth, pass --no-auth).",
            )
    read_token(path)
    return FleetAuth(path, source)


@contextlib.contextmanager
def private_token() -> Iterator[FleetAuth]:
    """A token for one ``--cluster auto`` run, in a private temporary folder removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="modelport-fleet-"))
    try:
        os.chmod(folder, 0o700)
        yield FleetAuth(create_token_file(folder / TOKEN_NAME), "private to this run")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def applied(auth: FleetAuth) -> Iterator[None]:
    """This process's Ray auth variables set to ``auth`` (and Ray's cached token dropped), restored on exit."""
    saved = {k: os.environ.get(k) for k in RAY_AUTH_VARS}
    for k in RAY_AUTH_VARS:
        os.environ.pop(k, None)
    os.environ.update(auth.env())
    _reset_ray_token_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reset_ray_token_cache()


def _reset_ray_token_cache() -> None:
    """Ray reads the auth mode and token once per process (C++ side); re-read them after a change."""
    with contextlib.suppress(Exception):  # private Ray API: without it, a second auth choice in one process is stale
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def check_token(address: str, auth: FleetAuth, timeout: float = PREFLIGHT_TIMEOUT_S) -> None:
    """The head at ``HOST:PORT`` answers and accepts ``auth`` (one GCS call), or one paragraph saying which."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Head address '{address}' is not HOST:PORT.", fix="pass HOST:PORT, e.g. 10.0.0.5:6379.")
    token = auth.token()
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                fix = ("pass --token-file with a copy of the head's token file (its path was printed by "
                       "'modelport fleet head')")
                if auth.disabled:
                    fix = "the head uses token authentication: " + fix
                raise RuntimeUnavailableError(
                    f"The fleet head at {address} refused {auth.describe()}: the token is missing or is not the "
                    "head's.", fix=fix + ".") from exc
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise InputError(
                    f"Nothing answers at {address} ({code.name.lower()}).",
                    fix="start the head first ('modelport fleet head' prints its address), or check the address "
                        "and firewall.") from exc
            raise RuntimeUnavailableError(f"The fleet head at {address} answered with an error: {code.name}.",
                                          fix="check that it is a Ray head of the same Ray version.") from exc


__all__ = ["NO_AUTH_WARNING", "RAY_AUTH_VARS", "TOKEN_FILE_ENV", "FleetAuth", "applied", "check_token", "create_token_file",
           "default_token_path", "for_client", "for_head", "private_token", "read_token"]
