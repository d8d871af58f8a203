"""Programme settings: the operator's knobs of the contact policy and the programme time zone, versioned in
the database and changed through the API and CLI."""
