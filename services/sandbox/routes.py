"""Every route of the sandbox, one place."""

from __future__ import annotations

from aiohttp import web

from services.sandbox import control, cpo, identity, passport, pricing

PASSPORT_PREFIX = "/passport"


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/siemensid/oauth/token", identity.siemensid_token, name="siemensid_token")
    r.add_post("/cognito/token", identity.cognito_token, name="cognito_token")

    p = PASSPORT_PREFIX
    r.add_get(p + "/v1/passports/public/{id}", passport.public_passport, name="passport_public")
    r.add_get(p + "/v1/passports", passport.owned_list, name="passport_owned_list")
    r.add_post(p + "/v1/passports", passport.create, name="passport_create")
    r.add_get(p + "/v1/passports/{id}", passport.owned_get, name="passport_owned_get")
    r.add_put(p + "/v1/passports/{id}", passport.update, name="passport_update")
    r.add_delete(p + "/v1/passports/{id}", passport.delete, name="passport_delete")
    r.add_get(p + "/v1/users/me", passport.users_me, name="users_me")
    r.add_put(p + "/v1/users/me", passport.users_update, name="users_update")
    r.add_post(p + "/v1/users", passport.users_create, name="users_create")

    r.add_get(cpo.PATH, cpo.charging_stations, name="cpo_stations")
    # The docs' path ends in '/'; answer the bare path too rather than 404.
    r.add_get(cpo.PATH.rstrip("/"), cpo.charging_stations)

    r.add_get("/api/pricing/", pricing.single, name="pricing_single")
    r.add_get("/api/pricing", pricing.single)
    r.add_get("/api/pricing/batch", pricing.batch, name="pricing_batch")
    r.add_get("/api/pricing/all_paged", pricing.all_paged, name="pricing_all_paged")

    c = "/_control"
    r.add_get(c + "/calls", control.calls)
    r.add_post(c + "/reset", control.reset)
    r.add_post(c + "/faults", control.add_fault)
    r.add_delete(c + "/faults", control.clear_faults)
    r.add_post(c + "/tokens/revoke", control.revoke)
    r.add_put(c + "/token-lifetime", control.token_lifetime)
    r.add_put(c + "/token-scope", control.token_scope)
    r.add_put(c + "/owned-list", control.owned_list_shape)
    r.add_put(c + "/passports/{id}", control.put_passport)
    r.add_delete(c + "/passports/{id}", control.delete_passport)
    r.add_put(c + "/tariffs/{evse_id}", control.put_tariff)
    r.add_get(c + "/tariffs/{evse_id}", control.get_tariff)
    r.add_post(c + "/evses", control.add_evse)
    r.add_delete(c + "/evses/{evse_id}", control.remove_evse)
    r.add_get(c + "/state", control.state)
