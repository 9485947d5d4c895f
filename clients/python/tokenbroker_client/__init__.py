"""Get OAuth access tokens from a local tokenbroker daemon.

Standard library only. `Broker` talks to the daemon over its Unix socket (or loopback TCP
with an API key); `RequestsAuth` and `HttpxAuth` attach its tokens to `requests` and `httpx`
calls; `dropbox_client` makes an official Dropbox SDK client that gets its tokens from the
broker.
"""

import datetime
import http.client
import json
import os
import socket
import threading
import urllib.parse

__all__ = [
    "Broker",
    "BrokerError",
    "Token",
    "RequestsAuth",
    "HttpxAuth",
    "dropbox_client",
]

DEFAULT_SOCKET = "/run/tokenbroker/tokenbroker.sock"


class BrokerError(Exception):
    """The daemon could not give a token: `status` (HTTP), `code` and `message` as it said."""

    def __init__(self, status, code, message):
        super().__init__("%s (%s, HTTP %d)" % (message, code, status))
        self.status = status
        self.code = code
        self.message = message


class Token:
    """An access token as the broker hands it out. `repr` never shows the token."""

    def __init__(self, body):
        self.access_token = body["access_token"]
        self.token_type = body["token_type"]
        self.expires_in = int(body["expires_in"])
        self.scope = body.get("scope")
        self.expires_at = datetime.datetime.strptime(
            body["expires_at"], "%Y-%m-%dT%H:%M:%SZ"
        ).replace(tzinfo=datetime.timezone.utc)

    def seconds_left(self):
        now = datetime.datetime.now(datetime.timezone.utc)
        return (self.expires_at - now).total_seconds()

    def __repr__(self):
        return "Token(expires_at=%s, scope=%r)" % (self.expires_at.isoformat(), self.scope)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Broker:
    """The daemon, over its Unix socket (default: `$TOKENBROKER_SOCKET`, else
    /run/tokenbroker/tokenbroker.sock) or, with `url`, over loopback TCP with `api_key`."""

    def __init__(self, socket_path=None, url=None, api_key=None, timeout=90):
        if url is None:
            self._socket = socket_path or os.environ.get("TOKENBROKER_SOCKET", DEFAULT_SOCKET)
            self._address = None
        else:
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme != "http" or not parsed.hostname:
                raise ValueError("url is http://HOST:PORT (the daemon's loopback listener)")
            self._socket = None
            self._address = (parsed.hostname, parsed.port or 80)
        self._api_key = api_key
        self._timeout = timeout

    def token(self, account, min_valid=None):
        """The account's current token, with at least `min_valid` seconds left (the daemon
        refreshes first if it must)."""
        path = "/v1/token/" + urllib.parse.quote(account, safe="")
        if min_valid is not None:
            path += "?min_valid=%d" % int(min_valid)
        return Token(self._call("GET", path))

    def reject(self, account, access_token):
        """Reports that the provider refused `access_token` before its expiry; returns a
        newer token (the daemon refreshes if it was still the current one)."""
        path = "/v1/token/" + urllib.parse.quote(account, safe="")
        return Token(self._call("POST", path, {"rejected": access_token}))

    def _connection(self):
        if self._socket is not None:
            return _UnixConnection(self._socket, self._timeout)
        return http.client.HTTPConnection(*self._address, timeout=self._timeout)

    def _call(self, method, path, body=None):
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        if self._api_key is not None:
            headers["Authorization"] = "Bearer " + self._api_key
        connection = self._connection()
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            answer = json.loads(data)
        except ValueError:
            raise BrokerError(response.status, "bad_answer", "the daemon's answer is not JSON")
        if response.status != 200:
            raise BrokerError(
                response.status, answer.get("error", "unknown"), answer.get("message", "")
            )
        return answer


class _Cached:
    """One account's token, fetched again once it has less than `min_valid` seconds left."""

    def __init__(self, broker, account, min_valid):
        self._broker = broker
        self._account = account
        self._min_valid = min_valid
        self._token = None
        self._lock = threading.Lock()

    def current(self):
        with self._lock:
            if self._token is None or self._token.seconds_left() < self._min_valid:
                self._token = self._broker.token(self._account, min_valid=self._min_valid)
            return self._token.access_token

    def rejected(self, access_token):
        with self._lock:
            self._token = self._broker.reject(self._account, access_token)
            return self._token.access_token


def _bearer(authorization):
    if authorization and authorization.startswith("Bearer "):
        return authorization[len("Bearer "):]
    return None


class RequestsAuth:
    """`requests` auth: the account's token on every request; on a 401 the token is reported
    rejected and the request sent once more with a newer one."""

    def __init__(self, broker, account, min_valid=60):
        self._cached = _Cached(broker, account, min_valid)

    def __call__(self, request):
        request.headers["Authorization"] = "Bearer " + self._cached.current()
        request.register_hook("response", self._retry_on_401)
        return request

    def _retry_on_401(self, response, **kwargs):
        if response.status_code != 401 or getattr(response.request, "_tokenbroker_retried", False):
            return response
        sent = _bearer(response.request.headers.get("Authorization"))
        fresh = self._cached.rejected(sent)
        response.content  # read the refused answer, so its connection can be reused
        response.close()
        retry = response.request.copy()
        retry._tokenbroker_retried = True
        retry.headers["Authorization"] = "Bearer " + fresh
        again = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again


try:  # httpx is optional
    import httpx as _httpx

    _HttpxBase = _httpx.Auth
except ImportError:  # pragma: no cover - without httpx, HttpxAuth cannot be used
    _HttpxBase = object


class HttpxAuth(_HttpxBase):
    """`httpx` auth (sync and async clients): the account's token on every request; on a
    401 the token is reported rejected and the request sent once more with a newer one."""

    def __init__(self, broker, account, min_valid=60):
        self._cached = _Cached(broker, account, min_valid)

    def auth_flow(self, request):
        sent = self._cached.current()
        request.headers["Authorization"] = "Bearer " + sent
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = "Bearer " + self._cached.rejected(sent)
            yield request


def dropbox_client(broker, account, **kwargs):
    """An official Dropbox SDK client (`dropbox.Dropbox`) that holds only an access token and
    its expiry: never the refresh token or the app secret. When the SDK would refresh (less
    than 5 minutes left), the token comes from the broker instead. `kwargs` go to
    `dropbox.Dropbox` (a `session`, `timeout`, …)."""
    import dropbox

    # The SDK refreshes when less than this many seconds are left; ask for a little more.
    buffer = getattr(dropbox.dropbox_client, "TOKEN_EXPIRATION_BUFFER", 300)
    min_valid = buffer + 60

    def naive_utc(token):
        return token.expires_at.astimezone(datetime.timezone.utc).replace(tzinfo=None)

    class _BrokeredDropbox(dropbox.Dropbox):
        def check_and_refresh_access_token(self):
            # Compared as the SDK does, in naive UTC.
            soon = datetime.datetime.now(datetime.timezone.utc).replace(
                tzinfo=None
            ) + datetime.timedelta(seconds=buffer)
            expiration = self._oauth2_access_token_expiration
            if not self._oauth2_access_token or expiration is None or soon >= expiration:
                token = broker.token(account, min_valid=min_valid)
                self._oauth2_access_token = token.access_token
                self._oauth2_access_token_expiration = naive_utc(token)

    token = broker.token(account, min_valid=min_valid)
    return _BrokeredDropbox(
        oauth2_access_token=token.access_token,
        oauth2_access_token_expiration=naive_utc(token),
        **kwargs
    )
