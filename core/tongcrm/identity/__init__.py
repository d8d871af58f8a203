"""Identity: who a buyer is across channels."""
