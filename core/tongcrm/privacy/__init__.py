"""Personal data: what may be kept and logged (:mod:`.redact`, :mod:`.sealed`), and members' rights under
PIPL — a copy of their data and its erasure (:mod:`.service`)."""
