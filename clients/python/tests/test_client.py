"""The client against a running daemon; tests/python.rs starts one and sets the environment:
TOKENBROKER_SOCKET, TOKENBROKER_URL and TOKENBROKER_API_KEY (loopback TCP), TOKENBROKER_ACCOUNT,
and CHECK_URL, the fake provider's API, which accepts only unexpired tokens it issued."""

import datetime
import json
import os
import unittest
import urllib.error
import urllib.request

from tokenbroker_client import Broker, BrokerError, HttpxAuth, RequestsAuth, dropbox_client

ACCOUNT = os.environ["TOKENBROKER_ACCOUNT"]
CHECK_URL = os.environ["CHECK_URL"]


def accepted(access_token):
    """Whether the provider's API accepts the token."""
    request = urllib.request.Request(CHECK_URL, headers={"Authorization": "Bearer " + access_token})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code == 200


class BrokerTest(unittest.TestCase):
    def test_a_token_over_the_socket_and_over_tcp(self):
        for broker in [
            Broker(),
            Broker(url=os.environ["TOKENBROKER_URL"], api_key=os.environ["TOKENBROKER_API_KEY"]),
        ]:
            token = broker.token(ACCOUNT, min_valid=60)
            self.assertTrue(accepted(token.access_token))
            self.assertGreater(token.seconds_left(), 60)
            self.assertEqual(token.token_type.lower(), "bearer")
            self.assertNotIn(token.access_token, repr(token))

    def test_errors_say_what_the_daemon_said(self):
        with self.assertRaises(BrokerError) as raised:
            Broker().token("no-such-account")
        self.assertEqual((raised.exception.status, raised.exception.code), (404, "not_found"))
        with self.assertRaises(BrokerError) as raised:
            Broker(url=os.environ["TOKENBROKER_URL"], api_key="wrong").token(ACCOUNT)
        self.assertEqual(raised.exception.status, 401)

    def test_a_rejected_token_is_replaced_by_a_newer_one(self):
        broker = Broker()
        old = broker.token(ACCOUNT).access_token
        newer = broker.reject(ACCOUNT, old)
        self.assertNotEqual(newer.access_token, old)
        self.assertTrue(accepted(newer.access_token))


class StaleToken:
    """What a cached token looks like once the provider stopped accepting it early."""

    access_token = "revoked-early"

    def seconds_left(self):
        return 3600


class NearlyExpired:
    """A cached token with less time left than the auth asks for."""

    access_token = "about-to-expire"

    def seconds_left(self):
        return 5


class AuthTest(unittest.TestCase):
    def test_a_token_about_to_expire_is_replaced_before_the_request(self):
        import httpx
        import requests

        auth = RequestsAuth(Broker(), ACCOUNT, min_valid=60)
        auth._cached._token = NearlyExpired()
        with requests.Session() as session:
            response = session.get(CHECK_URL, auth=auth)
        self.assertEqual((response.status_code, response.history), (200, []))

        auth = HttpxAuth(Broker(), ACCOUNT, min_valid=60)
        auth._cached._token = NearlyExpired()
        with httpx.Client(auth=auth) as client:
            response = client.get(CHECK_URL)
        self.assertEqual((response.status_code, response.history), (200, []))

    def test_requests_attaches_the_token_and_retries_a_401_once(self):
        import requests

        auth = RequestsAuth(Broker(), ACCOUNT)
        with requests.Session() as session:
            self.assertEqual(session.get(CHECK_URL, auth=auth).status_code, 200)
            auth._cached._token = StaleToken()
            response = session.get(CHECK_URL, auth=auth)
            self.assertEqual(response.status_code, 200)
            self.assertEqual([r.status_code for r in response.history], [401])

    def test_httpx_attaches_the_token_and_retries_a_401_once(self):
        import httpx

        auth = HttpxAuth(Broker(), ACCOUNT)
        with httpx.Client(auth=auth) as client:
            self.assertEqual(client.get(CHECK_URL).status_code, 200)
            auth._cached._token = StaleToken()
            self.assertEqual(client.get(CHECK_URL).status_code, 200)


class DropboxStandIn:
    """A requests transport adapter standing in for Dropbox's API: `check/user` answers its
    query if the bearer token is one the provider accepts, else 401 expired_access_token."""

    def __init__(self):
        import requests.adapters

        self.tokens = []
        outer = self

        class Adapter(requests.adapters.BaseAdapter):
            def send(self, request, **kwargs):
                import requests

                token = request.headers["Authorization"][len("Bearer "):]
                outer.tokens.append(token)
                response = requests.Response()
                response.request = request
                response.url = request.url
                response.headers["Content-Type"] = "application/json"
                if request.url.endswith("/2/check/user") and accepted(token):
                    response.status_code = 200
                    response._content = json.dumps({"result": json.loads(request.body)["query"]}).encode()
                else:
                    response.status_code = 401
                    response._content = json.dumps(
                        {"error_summary": "expired_access_token/", "error": {".tag": "expired_access_token"}}
                    ).encode()
                return response

            def close(self):
                pass

        self.adapter = Adapter()


class DropboxTest(unittest.TestCase):
    def test_the_sdk_gets_tokens_from_the_broker_and_never_a_refresh_token(self):
        import requests

        stand_in = DropboxStandIn()
        session = requests.Session()
        session.mount("https://", stand_in.adapter)
        dbx = dropbox_client(Broker(), ACCOUNT, session=session)
        self.assertIsNone(dbx._oauth2_refresh_token)
        self.assertIsNone(dbx._app_secret)
        self.assertEqual(dbx.check_user("hello").result, "hello")
        # The SDK's expiry is naive UTC, at the token's.
        self.assertIsNone(dbx._oauth2_access_token_expiration.tzinfo)

        # Within the SDK's 5 minutes: the next call takes a token from the broker first.
        dbx._oauth2_access_token = "about-to-expire"
        dbx._oauth2_access_token_expiration = datetime.datetime.now(datetime.timezone.utc).replace(
            tzinfo=None
        ) + datetime.timedelta(seconds=60)
        self.assertEqual(dbx.check_user("again").result, "again")
        self.assertNotIn("about-to-expire", stand_in.tokens)


if __name__ == "__main__":
    unittest.main()
