"""Orders from every channel, normalised, with their lines."""
