"""Messaging: messenger accounts, templates, the one contact policy, the send log and care flows.

Every message, from a care flow or a campaign, is a row of the send log (:class:`~.models.Message`) whose
unique ``dedupe_key`` (flow or campaign, member, order) makes "at most once" a database fact. The dispatcher
(:mod:`.dispatch`) asks the contact policy (:mod:`.policy`) right before each send, so an opt-out that arrived
a second ago is honoured.
"""
