"""The storage proxy's shared token: every gRPC call carries it, the proxy refuses any call without it.

The proxy (``tagsearch storage-proxy``) can create and delete studies, write trials that ``retrain``
trusts and hold the budget lock, so whoever reaches its port owns the study. With a token, the
server checks ``authorization: Bearer <token>`` on every call (Optuna's storage service and the
lease-lock service alike, by a server interceptor) and answers UNAUTHENTICATED otherwise.

Where the token comes from, on both sides: ``TAGSEARCH_PROXY_TOKEN``, or a file named by
``TAGSEARCH_PROXY_TOKEN_FILE`` (the server also takes ``--token-file``) that only its owner can read
(mode 0600: a token readable by others is refused). ``launch`` passes the environment on to its
workers (``--ray`` forwards ``TAGSEARCH_*`` variables), so they read the same token.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from tagsearch.errors import UserError

TOKEN_ENV = "TAGSEARCH_PROXY_TOKEN"
TOKEN_FILE_ENV = "TAGSEARCH_PROXY_TOKEN_FILE"
HEADER = "authorization"
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]  # as Optuna's own client channel


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path``, which must be readable by its owner only (0600 or stricter)."""
    path = Path(path).expanduser()
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"proxy token file {str(path)!r}: {exc.strerror}; expected a file holding the token") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"proxy token file {str(path)!r} has mode {stat.S_IMODE(info.st_mode):04o}, readable by "
                        f"others; expected 0600 (chmod 600 {path})")
    if not text:
        raise UserError(f"proxy token file {str(path)!r} is empty; expected the token")
    return text


def token_from_environment(token_file: str | os.PathLike | None = None) -> str | None:
    """The token: ``token_file``, else ``TAGSEARCH_PROXY_TOKEN``, else ``TAGSEARCH_PROXY_TOKEN_FILE``; None if none."""
    if token_file:
        return read_token_file(token_file)
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    if os.environ.get(TOKEN_FILE_ENV, "").strip():
        return read_token_file(os.environ[TOKEN_FILE_ENV].strip())
    return None


# ---------------------------------------------------------------------------------------------
# Server


def server_interceptor(token: str):
    """A ``grpc.ServerInterceptor`` that lets through only calls bearing ``token``."""
    import grpc

    expected = f"Bearer {token}".encode("utf-8")

    def refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "this storage proxy needs its token (TAGSEARCH_PROXY_TOKEN)")

    refusal = grpc.unary_unary_rpc_method_handler(refuse)

    class Check(grpc.ServerInterceptor):
        def intercept_service(self, continuation, details):
            given = dict(details.invocation_metadata or ()).get(HEADER, "")
            given = given.encode("utf-8") if isinstance(given, str) else given
            if hmac.compare_digest(given, expected):
                return continuation(details)
            return refusal

    return Check()


# ---------------------------------------------------------------------------------------------
# Clients


def channel(host: str, port: int):
    """A gRPC channel to the proxy at ``host:port`` whose calls carry the token (if one is set)."""
    import grpc

    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    plain = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    token = token_from_environment()
    if token is None:
        return plain
    metadata = ((HEADER, f"Bearer {token}"),)

    class AddToken(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            details = details._replace(metadata=tuple(details.metadata or ()) + metadata) \
                if hasattr(details, "_replace") else _Details(details, metadata)
            return continuation(details, request)

    return grpc.intercept_channel(plain, AddToken())


class _Details:
    """``grpc.ClientCallDetails`` with the token added (for call details that are not namedtuples)."""

    def __init__(self, details, metadata):
        self.method, self.timeout, self.credentials = details.method, details.timeout, details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)
        self.metadata = tuple(details.metadata or ()) + metadata


def storage_client(host: str, port: int):
    """Optuna's ``GrpcStorageProxy`` on ``host:port``, its calls bearing the token (``check_admitted``
    then tells a refused client why)."""
    from optuna.storages import GrpcStorageProxy
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.client import GrpcClientCache

    class TokenStorageProxy(GrpcStorageProxy):
        def _setup(self) -> None:  # Optuna's, with the token-bearing channel (also after unpickling)
            self._channel = channel(self._host, self._port)
            self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
            self._cache = GrpcClientCache(self._stub)

    return TokenStorageProxy(host=host, port=port)


def check_admitted(storage, url: str) -> None:
    """One cheap call, so a refused client hears why at once (not as a traceback mid-study)."""
    import grpc

    try:
        storage.get_study_id_from_name("tagsearch: is this client admitted?")  # (no NUL: PostgreSQL refuses it)
    except KeyError:
        return  # admitted: the study does not exist
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            storage.close()
            how = ("its token differs from the proxy's" if token_from_environment()
                   else "no token is set")
            raise UserError(f"the storage proxy at {url} refused this client: {how}; expected the proxy's token in "
                            f"{TOKEN_ENV}, or in a 0600 file named by {TOKEN_FILE_ENV}") from None
        # admitted: any other answer is the storage's, which the study's own calls will meet
