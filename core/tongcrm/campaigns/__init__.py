"""Campaigns as first-class objects: an audience (a saved segment, frozen at each run), content, a control group,
a response definition, a budget and a schedule; runs through the message dispatcher; evaluation with uplift."""
