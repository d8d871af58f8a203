"""Audience segments: a versioned JSON condition language compiled to SQL, saved segments with versions,
daily counts, member lists, CSV export and "why is this member in it"."""
