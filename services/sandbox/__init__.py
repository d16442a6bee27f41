"""The upstream sandbox: faithful simulators of the five upstream endpoints
(SiemensID, Battery Passport API, Cognito, be.ENERGISED CPO and Pricing APIs) in
one aiohttp app, plus test controls under ``/_control/`` (DESIGN.md §3, §11).

Layout: ``config`` (SandboxConfig), ``keys`` (app keys), ``seed`` (deterministic
data), ``tariffs`` (price arithmetic), ``tokens`` (issuers), ``faults`` (counters
and injected faults), ``owned_list`` (the owned list's possible shapes), one
handler module per upstream, ``control``, ``routes``, ``app`` (create_app) and
``main`` (run).
"""
