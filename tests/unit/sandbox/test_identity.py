"""The two token endpoints: SiemensID (JSON) and Cognito (query/form/Basic)."""

from __future__ import annotations

import base64

import jwt
import pytest

from tests.fixtures.sandbox import SandboxHandle


def siemens_body(sandbox: SandboxHandle, **over: str) -> dict[str, str]:
    c = sandbox.config
    return {"client_id": c.passport_client_id, "client_secret": c.passport_client_secret,
            "audience": c.passport_audience, "grant_type": "client_credentials", **over}


async def test_siemensid_issues_jwt_with_scope(sandbox: SandboxHandle) -> None:
    async with sandbox.session.post(sandbox.url + "/siemensid/oauth/token",
                                    json=siemens_body(sandbox)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 86400
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert "application.bp_portal.data_viewer" in claims["scope"].split()
    assert claims["aud"] == sandbox.config.passport_audience
    assert claims["exp"] - claims["iat"] == 86400
    assert claims["sub"] and claims["jti"]


@pytest.mark.parametrize("over, status, error", [
    ({"client_secret": "wrong"}, 401, "invalid_client"),
    ({"client_id": "someone-else"}, 401, "invalid_client"),
    ({"audience": "https://elsewhere.example"}, 403, "access_denied"),
    ({"grant_type": "password"}, 400, "invalid_request"),
])
async def test_siemensid_rejections(sandbox: SandboxHandle, over: dict, status: int,
                                    error: str) -> None:
    async with sandbox.session.post(sandbox.url + "/siemensid/oauth/token",
                                    json=siemens_body(sandbox, **over)) as resp:
        assert resp.status == status
        assert (await resp.json())["error"] == error


async def test_siemensid_requires_json(sandbox: SandboxHandle) -> None:
    async with sandbox.session.post(sandbox.url + "/siemensid/oauth/token",
                                    data=siemens_body(sandbox)) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"
    assert (await sandbox.calls())["siemensid.token"] == 1


async def cognito(sandbox: SandboxHandle, *, query: dict | None = None, data=None,
                  headers: dict | None = None):
    async with sandbox.session.post(sandbox.url + "/cognito/token", params=query or {},
                                    data=data, headers=headers or {}) as resp:
        return resp.status, await resp.json()


def creds(sandbox: SandboxHandle, **over: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": sandbox.config.cpo_client_id,
            "client_secret": sandbox.config.cpo_client_secret, **over}


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_cognito_as_documented_credentials_in_query(sandbox: SandboxHandle) -> None:
    status, body = await cognito(sandbox, query=creds(sandbox), headers=FORM)
    assert status == 200
    assert body["token_type"] == "Bearer" and body["expires_in"] == 86400
    assert body["access_token"]


async def test_cognito_form_body_and_basic(sandbox: SandboxHandle) -> None:
    status, _ = await cognito(sandbox, data=creds(sandbox))  # aiohttp sends a form
    assert status == 200
    c = sandbox.config
    basic = base64.b64encode(f"{c.cpo_client_id}:{c.cpo_client_secret}".encode()).decode()
    status, _ = await cognito(sandbox, data={"grant_type": "client_credentials"},
                              headers={"Authorization": f"Basic {basic}"})
    assert status == 200


async def test_cognito_rejections(sandbox: SandboxHandle) -> None:
    status, body = await cognito(sandbox, query=creds(sandbox, client_secret="nope"), headers=FORM)
    assert (status, body) == (400, {"error": "invalid_client"})
    # The content type is required even when everything is in the query string.
    status, body = await cognito(sandbox, query=creds(sandbox),
                                 headers={"Content-Type": "application/json"})
    assert status == 400 and body["error"] == "invalid_request"
    status, body = await cognito(sandbox, query=creds(sandbox, grant_type="password"),
                                 headers=FORM)
    assert status == 400
    assert (await sandbox.calls())["cognito.token"] == 3
