"""Webhooks for tongcrm: domain events POSTed to subscribed endpoints, signed as Standard Webhooks describes.

Built only on the public plugin contract (event hooks, the ``jobs`` hook, the store facade, routes,
migrations) — the proof that a third party could have written it.
"""
