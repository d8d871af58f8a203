"""Hook implementations of the offline_pos plugin; tongcrm loads this module through the `tongcrm` entry point."""

from __future__ import annotations
