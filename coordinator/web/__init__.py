"""`bridgestat web`: the coordinators' workspace in the browser (see `app`).

Modules: `app` (routes, pages, serving), `security` (token, session, CSRF, binding),
`forms` (the catalogue and the forms generated from the analysis kinds), `runs` (runs that
spend budget, their progress, downloads) and `state` (members' last contact, confirmations,
the spend log).
"""
