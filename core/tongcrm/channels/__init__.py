"""Channel accounts: one shop or store on one channel, its credentials and its sync state."""
