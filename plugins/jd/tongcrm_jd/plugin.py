"""Hook implementations of the jd plugin; tongcrm loads this module through the `tongcrm` entry point."""

from __future__ import annotations
