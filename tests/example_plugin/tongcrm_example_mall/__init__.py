"""Example Mall: a channel plugin for tongcrm."""
